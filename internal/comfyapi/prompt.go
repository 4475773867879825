package comfyapi

import (
	"bytes"
	"encoding/json"
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
// raw values are kept as sent; use the methods to read them the way
// ComfyUI does.
type PromptRequest struct {
	Prompt    json.RawMessage `json:"prompt"`
	ClientID  json.RawMessage `json:"client_id"`
	ExtraData json.RawMessage `json:"extra_data"`
	PromptID  json.RawMessage `json:"prompt_id"`
	Number    json.RawMessage `json:"number"`
	Front     json.RawMessage `json:"front"`
}

// ParsePromptRequest reads a POST /prompt body. It fails only when the
// body is not a JSON object (ComfyUI answers 500 then).
func ParsePromptRequest(body []byte) (PromptRequest, error) {
	var r PromptRequest
	if !isObject(body) {
		return r, errNotObject
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return r, err
	}
	r.Prompt, r.ClientID, r.ExtraData = m[FieldPrompt], m[FieldClientID], m[FieldExtraData]
	r.PromptID, r.Number, r.Front = m[FieldPromptID], m[FieldNumber], m[FieldFront]
	return r, nil
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
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if enc.Encode(m) != nil {
		return answer
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}
