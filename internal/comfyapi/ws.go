package comfyapi

import (
	"bytes"
	"encoding/json"
)

// WebSocket text message types ComfyUI sends (and feature_flags, which the
// client sends first and the server answers).
const (
	TypeStatus               = "status"
	TypeFeatureFlags         = "feature_flags"
	TypeExecutionStart       = "execution_start"
	TypeExecutionCached      = "execution_cached"
	TypeExecuting            = "executing"
	TypeProgress             = "progress"
	TypeProgressState        = "progress_state"
	TypeExecuted             = "executed"
	TypeExecutionSuccess     = "execution_success"
	TypeExecutionError       = "execution_error"
	TypeExecutionInterrupted = "execution_interrupted"
)

// ExceptionExecutionBlocked is the exception_type of the execution_error a
// node's ExecutionBlocker message produces. It is not terminal: the prompt
// goes on and may still succeed.
const ExceptionExecutionBlocked = "ExecutionBlocked"

// IsTerminal reports whether a message of type typ (with exception_type
// exc for execution_error) ends its prompt's run. The executing message
// with node null that follows every run is not counted here; see
// WSMessage.Ends.
func IsTerminal(typ, exc string) bool {
	switch typ {
	case TypeExecutionSuccess, TypeExecutionInterrupted:
		return true
	case TypeExecutionError:
		return exc != ExceptionExecutionBlocked
	}
	return false
}

// WSMessage is a WebSocket text message, {"type", "data"}, with the data
// fields comfygate routes and tracks prompts by. Raw keeps the message as
// received.
type WSMessage struct {
	Type string
	Data WSData
	Raw  []byte
	// dataObject reports that data was a JSON object (NodeNull needs it:
	// a message without one says nothing about its node).
	dataObject bool
}

// WSData holds the data fields of ComfyUI's messages that comfygate reads.
// Values are kept raw where their type varies or null means something.
type WSData struct {
	// PromptID is data.prompt_id (a string on every released server).
	PromptID json.RawMessage `json:"prompt_id"`
	// Node is data.node: a node id, or null on the executing message that
	// ends a run.
	Node        json.RawMessage `json:"node"`
	DisplayNode json.RawMessage `json:"display_node"`
	// Execution errors.
	NodeID           json.RawMessage `json:"node_id"`
	NodeType         json.RawMessage `json:"node_type"`
	ExceptionType    json.RawMessage `json:"exception_type"`
	ExceptionMessage json.RawMessage `json:"exception_message"`
	// Output is executed's UI output {"images": [...], ...} (may be null).
	Output json.RawMessage `json:"output"`
	// Value and Max are progress's step counts.
	Value json.RawMessage `json:"value"`
	Max   json.RawMessage `json:"max"`
	// Nodes is execution_cached's [ids] or progress_state's {id: state}.
	Nodes json.RawMessage `json:"nodes"`
	// Status is status's {"exec_info": {"queue_remaining": N}}.
	Status json.RawMessage `json:"status"`
	// SID is the sid of the first status message on a socket.
	SID json.RawMessage `json:"sid"`
}

// ParseWSText reads a text message. It fails only when b is not a JSON
// object; a data that is not an object (custom nodes send anything) leaves
// Data empty, and fields of unexpected types stay raw. Keys are matched
// exactly, as the dict a Python client decodes, and a key given twice
// counts once, the last one. Every frame of every prompt passes here, so
// it validates the message once and then only walks its members: no
// reflection, no second scan of data.
func ParseWSText(b []byte) (WSMessage, error) {
	m := WSMessage{Raw: b}
	if !isObject(b) {
		return m, errNotObject
	}
	if !json.Valid(b) {
		var v any
		return m, json.Unmarshal(b, &v) // the syntax error, said as encoding/json says it
	}
	var data []byte
	eachMember(b, func(key, v []byte) {
		switch string(key) {
		case "type":
			m.Type, _ = String(v)
		case "data":
			data = v
		}
	})
	if isObject(data) {
		m.dataObject = true
		d := &m.Data
		eachMember(data, func(key, v []byte) {
			var field *json.RawMessage
			switch string(key) {
			case "prompt_id":
				field = &d.PromptID
			case "node":
				field = &d.Node
			case "display_node":
				field = &d.DisplayNode
			case "node_id":
				field = &d.NodeID
			case "node_type":
				field = &d.NodeType
			case "exception_type":
				field = &d.ExceptionType
			case "exception_message":
				field = &d.ExceptionMessage
			case "output":
				field = &d.Output
			case "value":
				field = &d.Value
			case "max":
				field = &d.Max
			case "nodes":
				field = &d.Nodes
			case "status":
				field = &d.Status
			case "sid":
				field = &d.SID
			default:
				return
			}
			*field = v
		})
	}
	return m, nil
}

// PromptID returns data.prompt_id as text ("" when absent or null).
func (m WSMessage) PromptID() string { return IDText(m.Data.PromptID) }

// HasPromptID reports that data.prompt_id is present and not null (the
// re-sync executing after a reconnect has none).
func (m WSMessage) HasPromptID() bool {
	v := bytes.TrimSpace(m.Data.PromptID)
	return len(v) > 0 && string(v) != "null"
}

// NodeNull reports data.node null or absent in a data object: on
// executing, the end of the prompt's run.
func (m WSMessage) NodeNull() bool {
	if !m.dataObject {
		return false
	}
	v := bytes.TrimSpace(m.Data.Node)
	return len(v) == 0 || string(v) == "null"
}

// Node returns the node an event is about: display_node when the node was
// expanded at run time, else node ("" for none).
func (m WSMessage) Node() string {
	if s, _ := String(m.Data.DisplayNode); s != "" {
		return s
	}
	s, _ := String(m.Data.Node)
	return s
}

// ExceptionType returns an execution_error's exception_type.
func (m WSMessage) ExceptionType() string { s, _ := String(m.Data.ExceptionType); return s }

// ExceptionMessage returns an execution_error's exception_message.
func (m WSMessage) ExceptionMessage() string { s, _ := String(m.Data.ExceptionMessage); return s }

// Terminal reports execution_success, execution_interrupted or a
// non-ExecutionBlocked execution_error.
func (m WSMessage) Terminal() bool { return IsTerminal(m.Type, m.ExceptionType()) }

// Ends reports any message after which the prompt's run is over: a
// terminal message or executing with node null.
func (m WSMessage) Ends() bool {
	return m.Terminal() || (m.Type == TypeExecuting && m.NodeNull())
}

// QueueRemaining returns a status message's
// data.status.exec_info.queue_remaining.
func (m WSMessage) QueueRemaining() (int64, bool) {
	if m.Type != TypeStatus || !isObject(m.Data.Status) {
		return 0, false
	}
	var st struct {
		ExecInfo struct {
			QueueRemaining json.RawMessage `json:"queue_remaining"`
		} `json:"exec_info"`
	}
	if json.Unmarshal(m.Data.Status, &st) != nil {
		return 0, false
	}
	f, ok := Number(st.ExecInfo.QueueRemaining)
	if !ok || f < 0 || f != float64(int64(f)) {
		return 0, false
	}
	return int64(f), true
}

// Progress returns a progress message's value and max (0 when absent).
func (m WSMessage) Progress() (value, max float64) {
	value, _ = Number(m.Data.Value)
	max, _ = Number(m.Data.Max)
	return value, max
}

// CachedNodes returns execution_cached's node ids.
func (m WSMessage) CachedNodes() []string {
	var raw []json.RawMessage
	if json.Unmarshal(m.Data.Nodes, &raw) != nil {
		return nil
	}
	ids := make([]string, 0, len(raw))
	for _, r := range raw {
		if id, ok := String(r); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// NodeProgress is one node of a progress_state message (July 2025).
type NodeProgress struct {
	Value         float64 `json:"value"`
	Max           float64 `json:"max"`
	State         string  `json:"state"` // "running", "finished"
	NodeID        string  `json:"node_id"`
	DisplayNodeID string  `json:"display_node_id"`
}

// NodeStates returns progress_state's nodes by id. Nodes of another shape
// are left out.
func (m WSMessage) NodeStates() map[string]NodeProgress {
	if !isObject(m.Data.Nodes) {
		return nil
	}
	var raw map[string]json.RawMessage
	if json.Unmarshal(m.Data.Nodes, &raw) != nil {
		return nil
	}
	out := make(map[string]NodeProgress, len(raw))
	for id, r := range raw {
		if !isObject(r) {
			continue
		}
		var f map[string]json.RawMessage
		if json.Unmarshal(r, &f) != nil {
			continue
		}
		var np NodeProgress
		np.Value, _ = Number(f["value"])
		np.Max, _ = Number(f["max"])
		np.State, _ = String(f["state"])
		np.NodeID, _ = String(f["node_id"])
		np.DisplayNodeID, _ = String(f["display_node_id"])
		out[id] = np
	}
	return out
}

// ParseFeatureFlags reads the feature_flags message a client sends first:
// ok reports {"type": "feature_flags", ...}, and previewMetadata that its
// data sets supports_preview_metadata to true (ComfyUI tests the flag with
// "is True", so 1 or "true" do not count). A data that is not an object is
// still a feature_flags message: ComfyUI stores it and answers.
func ParseFeatureFlags(msg []byte) (previewMetadata, ok bool) {
	m, err := ParseWSText(msg)
	if err != nil || m.Type != TypeFeatureFlags {
		return false, false
	}
	var top struct {
		Data json.RawMessage `json:"data"`
	}
	_ = json.Unmarshal(msg, &top)
	if !isObject(top.Data) {
		return false, true
	}
	var d struct {
		SupportsPreviewMetadata json.RawMessage `json:"supports_preview_metadata"`
	}
	_ = json.Unmarshal(top.Data, &d)
	return string(bytes.TrimSpace(d.SupportsPreviewMetadata)) == "true", true
}
