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
	// Status is status's {"exec_info": {"queue_remaining": N}}.
	Status json.RawMessage `json:"status"`
	// SID is the sid of the first status message on a socket.
	SID json.RawMessage `json:"sid"`
}

// ParseWSText reads a text message. It fails only when b is not a JSON
// object; a data that is not an object (custom nodes send anything) leaves
// Data empty, and fields of unexpected types stay raw.
func ParseWSText(b []byte) (WSMessage, error) {
	m := WSMessage{Raw: b}
	if !isObject(b) {
		return m, errNotObject
	}
	var top struct {
		Type json.RawMessage `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &top); err != nil {
		return m, err
	}
	m.Type, _ = String(top.Type)
	if isObject(top.Data) {
		_ = json.Unmarshal(top.Data, &m.Data)
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

// NodeNull reports data.node null or absent: on executing, the end of the
// prompt's run.
func (m WSMessage) NodeNull() bool {
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
