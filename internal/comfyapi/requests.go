package comfyapi

import (
	"encoding/json"
	"errors"
)

// InterruptRequest is a POST /interrupt body read as ComfyUI reads it:
// a body that is not JSON counts as {} (the JSONDecodeError is caught),
// and json_data.get("prompt_id") targets the interrupt when it is truthy.
type InterruptRequest struct {
	// Targeted reports a truthy prompt_id: ComfyUI then interrupts only
	// a running prompt of that id, and a prompt_id that is no string (5,
	// [1], {"a":1}) matches none, so it interrupts nothing.
	Targeted bool
	// PromptID is prompt_id's value when it is a string.
	PromptID string
	// Fields are the body's members, exact-case and last-wins as in
	// Python's json; forwarding re-encodes them.
	Fields map[string]json.RawMessage
}

// Global reports an interrupt of whatever runs, fleet-wide.
func (r InterruptRequest) Global() bool { return !r.Targeted }

// ParseInterrupt reads a POST /interrupt body. It fails only for JSON
// that is not an object, which ComfyUI answers with a 500 (its .get
// raises).
func ParseInterrupt(body []byte) (InterruptRequest, error) {
	var r InterruptRequest
	var v any
	if json.Unmarshal(body, &v) != nil {
		return r, nil // not JSON: {} in ComfyUI
	}
	if _, ok := v.(map[string]any); !ok {
		return r, errNotObject
	}
	if err := json.Unmarshal(body, &r.Fields); err != nil {
		return r, err
	}
	raw := r.Fields[FieldPromptID]
	r.Targeted = Truthy(raw)
	if r.Targeted {
		r.PromptID, _ = String(raw)
	}
	return r, nil
}

// ErrJobIDsNotList and ErrInvalidJobIDs are ComfyUI's two 400 answers to
// a POST /api/jobs/cancel body whose job_ids is not a list, or holds an
// element that is not a non-empty string.
var (
	ErrJobIDsNotList = errors.New("job_ids must be a list")
	ErrInvalidJobIDs = errors.New("job_ids contains invalid id(s)")
	ErrNotJSON       = errors.New("request body must be valid JSON")
)

// JobCancelRequest is a POST /api/jobs/cancel body: {"job_ids": [ids]}.
type JobCancelRequest struct {
	IDs []string
	// Invalid holds the JSON text of each element that is not a non-empty
	// string, for ComfyUI's invalid_ids answer.
	Invalid []string
}

// ParseJobCancel reads a POST /api/jobs/cancel body, exact-case and
// last-wins. Its errors are ErrNotJSON, ErrJobIDsNotList and
// ErrInvalidJobIDs (with Invalid filled).
func ParseJobCancel(body []byte) (JobCancelRequest, error) {
	var r JobCancelRequest
	var v any
	if json.Unmarshal(body, &v) != nil {
		return r, ErrNotJSON
	}
	obj, _ := v.(map[string]any)
	list, ok := obj["job_ids"].([]any)
	if !ok {
		return r, ErrJobIDsNotList
	}
	for _, e := range list {
		if s, ok := e.(string); ok && s != "" {
			r.IDs = append(r.IDs, s)
			continue
		}
		b, _ := json.Marshal(e)
		r.Invalid = append(r.Invalid, string(b))
	}
	if len(r.Invalid) > 0 {
		return r, ErrInvalidJobIDs
	}
	return r, nil
}

// ParseSettings reads a user's settings as ComfyUI keeps them
// (comfy.settings.json, GET /settings' answer, a POST /settings body):
// {setting_id: value}, exact-case and last-wins. It fails when body is
// not a JSON object.
func ParseSettings(body []byte) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errNotObject
	}
	return m, nil
}
