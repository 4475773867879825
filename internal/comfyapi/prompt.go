package comfyapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// Fields of a POST /prompt body that comfygate reads or sets. ComfyUI
// copies "client_id" into extra_data.client_id (overriding it); "number"
// is a priority (float(number)); a truthy "front" queues ahead; "prompt_id"
// is honoured from v0.3.45.
const (
	FieldPrompt    = "prompt"
	FieldClientID  = "client_id"
	FieldExtraData = "extra_data"
	FieldPromptID  = "prompt_id"
	FieldNumber    = "number"
	FieldFront     = "front"
)

// PromptRequest is the part of a POST /prompt body comfygate reads. The
// raw values are kept as sent (nil when absent); use the methods to read
// them the way ComfyUI does.
type PromptRequest struct {
	Prompt    json.RawMessage
	ClientID  json.RawMessage
	ExtraData json.RawMessage
	PromptID  json.RawMessage
	Number    json.RawMessage
	Front     json.RawMessage
	// Fields are the body's members, exact-case and last-wins as in
	// Python's json; forwarding re-encodes them.
	Fields map[string]json.RawMessage
}

// ParsePromptRequest reads a POST /prompt body, one level deep. It fails
// only when the body is not a JSON object (ComfyUI answers 500 then); the
// error is encoding/json's (a *json.SyntaxError for text that is not
// JSON) or, for JSON null, one of its own.
func ParsePromptRequest(body []byte) (PromptRequest, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return PromptRequest{}, err
	}
	if m == nil {
		return PromptRequest{}, errNotObject
	}
	return PromptRequestOf(m), nil
}

// PromptRequestOf reads the members of a POST /prompt body already split
// one level deep (fields is kept as the request's Fields).
func PromptRequestOf(fields map[string]json.RawMessage) PromptRequest {
	return PromptRequest{
		Prompt: fields[FieldPrompt], ClientID: fields[FieldClientID], ExtraData: fields[FieldExtraData],
		PromptID: fields[FieldPromptID], Number: fields[FieldNumber], Front: fields[FieldFront],
		Fields: fields,
	}
}

// HasPrompt reports a "prompt" member (ComfyUI answers 400 no_prompt
// without one, from Oct-2025).
func (r PromptRequest) HasPrompt() bool { return r.has(FieldPrompt, r.Prompt) }

// HasNumber reports a "number" member: ComfyUI then takes it as the
// priority and ignores "front".
func (r PromptRequest) HasNumber() bool { return r.has(FieldNumber, r.Number) }

func (r PromptRequest) has(field string, raw json.RawMessage) bool {
	_, ok := r.Fields[field]
	return ok || raw != nil
}

// IsFront reports a truthy "front" (Python's bool of the value).
func (r PromptRequest) IsFront() bool { return Truthy(r.Front) }

// EffectiveClientID is the client id ComfyUI will send the prompt's events
// to: "client_id" when it is present, else extra_data.client_id; "" for
// none or a value that is not a string.
func (r PromptRequest) EffectiveClientID() string {
	if len(bytes.TrimSpace(r.ClientID)) > 0 {
		s, _ := String(r.ClientID)
		return s
	}
	var extra struct {
		ClientID json.RawMessage `json:"client_id"`
	}
	if isObject(r.ExtraData) && json.Unmarshal(r.ExtraData, &extra) == nil {
		s, _ := String(extra.ClientID)
		return s
	}
	return ""
}

// ClientPromptID returns a client-chosen prompt_id as ComfyUI (Oct-2025)
// stringifies it: a JSON string as is, an integer as its digits; "" when
// absent, null, empty or of another type (which comfygate does not pass
// on).
func ClientPromptID(raw []byte) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return ""
	}
	if raw[0] == '"' {
		s, _ := String(raw)
		return s
	}
	if raw[0] == '-' || ('0' <= raw[0] && raw[0] <= '9') {
		if _, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
			return string(raw)
		}
	}
	return ""
}

// PromptAnswer is ComfyUI's 200 answer to POST /prompt:
// {"prompt_id", "number", "node_errors"}. Values are kept raw: prompt_id is
// a string on every released version, but comfygate reads any JSON value.
type PromptAnswer struct {
	PromptID   json.RawMessage `json:"prompt_id"`
	Number     json.RawMessage `json:"number"`
	NodeErrors json.RawMessage `json:"node_errors"`
}

// ParsePromptAnswer reads a POST /prompt answer.
func ParsePromptAnswer(body []byte) (PromptAnswer, error) {
	var a PromptAnswer
	if !isObject(body) {
		return a, errNotObject
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return a, err
	}
	a.PromptID, a.Number, a.NodeErrors = m["prompt_id"], m["number"], m["node_errors"]
	return a, nil
}

// ID returns the answer's prompt_id as text: a JSON string's value, any
// other JSON value's text (4242 -> "4242"); "" when absent or null.
func (a PromptAnswer) ID() string { return IDText(a.PromptID) }

// QueueNumber returns the answer's number (the prompt's priority).
func (a PromptAnswer) QueueNumber() (float64, bool) { return Number(a.Number) }

// HasNodeErrors reports a non-empty node_errors: ComfyUI accepted the
// prompt but dropped the outputs that failed validation.
func (a PromptAnswer) HasNodeErrors() bool { return Truthy(a.NodeErrors) }

// WithID returns answer (the POST /prompt answer a was read from) with
// its prompt_id set to id, every other byte kept: the value a read is
// replaced where it stands, and an answer without one gets the member
// added (the answer is then written anew, keys sorted). An answer that is
// not a JSON object is returned unchanged.
func (a PromptAnswer) WithID(answer []byte, id string) []byte {
	if len(a.PromptID) > 0 {
		if out := bytes.Replace(answer, a.PromptID, jsonobj.Quote(id), 1); !bytes.Equal(out, answer) {
			return out
		}
	}
	if !isObject(answer) {
		return answer
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(answer, &m) != nil {
		return answer
	}
	m[FieldPromptID] = jsonobj.Quote(id)
	out, err := marshalNoEscape(m)
	if err != nil {
		return answer
	}
	return out
}

// PromptError is ComfyUI's error answer to POST /prompt (400, also for a
// prompt that failed validation): {"error": {"type", "message", "details",
// "extra_info"}, "node_errors": {node: {"errors": [{"type", "message",
// "details", "extra_info"}], "dependent_outputs": [...], "class_type"}}}
// (every version since node_errors, 2023).
type PromptError struct {
	Type, Message, Details string
	// NodeErrors are the errors of each node, by node id.
	NodeErrors map[string]NodeError
}

// NodeError is one node's entry of node_errors.
type NodeError struct {
	ClassType string
	Errors    []ErrorItem
}

// ErrorItem is one error of a node_errors entry.
type ErrorItem struct {
	Type, Message, Details string
}

// ParsePromptError reads a POST /prompt error answer leniently: a field
// that is absent or not a string reads as "", a node entry or error that
// is not an object is skipped. ok is false when the answer is not an
// object with an "error" object.
func ParsePromptError(body []byte) (e PromptError, ok bool) {
	m := objectMembers(body)
	if m == nil {
		return e, false
	}
	top := objectMembers(m["error"])
	if top == nil {
		return e, false
	}
	e.Type, _ = String(top["type"])
	e.Message, _ = String(top["message"])
	e.Details, _ = String(top["details"])
	for id, raw := range objectMembers(m["node_errors"]) {
		node := objectMembers(raw)
		if node == nil {
			continue
		}
		var ne NodeError
		ne.ClassType, _ = String(node["class_type"])
		var list []json.RawMessage
		_ = json.Unmarshal(node["errors"], &list)
		for _, it := range list {
			f := objectMembers(it)
			if f == nil {
				continue
			}
			var item ErrorItem
			item.Type, _ = String(f["type"])
			item.Message, _ = String(f["message"])
			item.Details, _ = String(f["details"])
			ne.Errors = append(ne.Errors, item)
		}
		if e.NodeErrors == nil {
			e.NodeErrors = map[string]NodeError{}
		}
		e.NodeErrors[id] = ne
	}
	return e, true
}

// ForwardBody writes the POST /prompt body comfygate sends an instance:
// fields (a client's body split one level, see PromptRequest.Fields) with
// "client_id" and extra_data.client_id set to clientID (every other
// extra_data member kept; an extra_data that is not an object is
// replaced), and "prompt_id" set to promptID, or removed when it is "".
// Members are written sorted, without HTML escaping (prompts carry text a
// user wrote). It fails when extra_data starts like an object but is not
// valid JSON.
func ForwardBody(fields map[string]json.RawMessage, clientID, promptID string) ([]byte, error) {
	m := make(map[string]json.RawMessage, len(fields)+3)
	for k, v := range fields {
		m[k] = v
	}
	cid := jsonobj.Quote(clientID)
	m[FieldClientID] = cid
	extra := map[string]json.RawMessage{}
	if raw := fields[FieldExtraData]; isObject(raw) {
		if err := json.Unmarshal(raw, &extra); err != nil {
			return nil, fmt.Errorf("extra_data: %w", err)
		}
	}
	extra[FieldClientID] = cid
	eb, err := marshalNoEscape(extra)
	if err != nil {
		return nil, err
	}
	m[FieldExtraData] = eb
	if promptID != "" {
		m[FieldPromptID] = jsonobj.Quote(promptID)
	} else {
		delete(m, FieldPromptID)
	}
	return marshalNoEscape(m)
}

// marshalNoEscape is json.Marshal without HTML escaping.
func marshalNoEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// WithNumber returns a POST /prompt answer with its "number" set to
// number (raw JSON), every other byte kept; an answer without a number,
// or that is not an object, comes back unchanged.
func WithNumber(answer []byte, number json.RawMessage) []byte {
	ms, err := jsonobj.Members(answer)
	if err != nil {
		return answer
	}
	for i, m := range ms {
		if m.Key == FieldNumber {
			ms[i].Val = number
			return jsonobj.Append(make([]byte, 0, len(answer)+8), ms)
		}
	}
	return answer
}
