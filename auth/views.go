package auth

import (
	"bytes"
	"encoding/json"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// View decides what one request may see of ComfyUI's queue, history and
// job documents: Visible says whether a prompt id may be shown (nil: all),
// and Redact names extra_data fields removed from every prompt shown
// (credentials such as api_key_comfy_org), unless Own says the prompt is
// the requester's own.
type View struct {
	Visible func(id string) bool
	Own     func(id string) bool
	Redact  []string
}

func (v View) visible(id string) bool { return v.Visible == nil || v.Visible(id) }
func (v View) own(id string) bool     { return v.Own != nil && v.Own(id) }

// mayRedact is a cheap pre-check: a body naming no redacted field needs
// no redaction.
func (v View) mayRedact(body []byte) bool {
	for _, r := range v.Redact {
		if bytes.Contains(body, []byte(r)) {
			return true
		}
	}
	return false
}

// Queue filters a GET /queue answer ({"queue_running": [...],
// "queue_pending": [...]}, items [number, id, prompt, extra_data,
// outputs]). A body it cannot read is returned unchanged unless it might
// carry a redacted field, then as an empty queue.
func (v View) Queue(body []byte) []byte {
	if v.Visible == nil && !v.mayRedact(body) {
		return body
	}
	ms, err := jsonobj.Members(body)
	if err != nil {
		return v.unreadable(body, []byte(`{"queue_running": [], "queue_pending": []}`))
	}
	for i, m := range ms {
		if m.Key != "queue_running" && m.Key != "queue_pending" {
			continue
		}
		var items []json.RawMessage
		if json.Unmarshal(m.Val, &items) != nil {
			ms[i].Val = json.RawMessage("[]")
			continue
		}
		kept := items[:0]
		for _, it := range items {
			if out, ok := v.promptItem(it); ok {
				kept = append(kept, out)
			}
		}
		ms[i].Val = appendArray(nil, kept)
	}
	return jsonobj.Append(nil, ms)
}

// History filters a GET /history or /history/{id} answer ({id: {"prompt":
// [number, id, prompt, extra_data, outputs], ...}}).
func (v View) History(body []byte) []byte {
	if v.Visible == nil && !v.mayRedact(body) {
		return body
	}
	ms, err := jsonobj.Members(body)
	if err != nil {
		return v.unreadable(body, []byte(`{}`))
	}
	kept := ms[:0]
	for _, m := range ms {
		if !v.visible(m.Key) {
			continue
		}
		if !v.own(m.Key) && v.mayRedact(m.Val) {
			entry, err := jsonobj.Members(m.Val)
			if err != nil {
				continue
			}
			for j, e := range entry {
				if e.Key == "prompt" {
					if out, ok := v.promptItem(e.Val); ok {
						entry[j].Val = out
					}
				}
			}
			m.Val = jsonobj.Append(nil, entry)
		}
		kept = append(kept, m)
	}
	return jsonobj.Append(nil, kept)
}

// Jobs filters a GET /api/jobs answer ({"jobs": [{"id": ...}, ...], ...})
// and redacts an "extra_data" member of each job shown.
func (v View) Jobs(body []byte) []byte {
	if v.Visible == nil && !v.mayRedact(body) {
		return body
	}
	ms, err := jsonobj.Members(body)
	if err != nil {
		return v.unreadable(body, []byte(`{"jobs": []}`))
	}
	for i, m := range ms {
		if m.Key != "jobs" {
			continue
		}
		var jobs []json.RawMessage
		if json.Unmarshal(m.Val, &jobs) != nil {
			ms[i].Val = json.RawMessage("[]")
			continue
		}
		kept := jobs[:0]
		for _, j := range jobs {
			if out, ok := v.Job(j); ok {
				kept = append(kept, out)
			}
		}
		ms[i].Val = appendArray(nil, kept)
	}
	return jsonobj.Append(nil, ms)
}

// Job filters one job object ({"id": ..., "extra_data": {...}, ...}); it
// reports false when the job may not be shown.
func (v View) Job(raw []byte) ([]byte, bool) {
	ms, err := jsonobj.Members(raw)
	if err != nil {
		return nil, false
	}
	id := ""
	for _, m := range ms {
		if m.Key == "id" || m.Key == "prompt_id" || m.Key == "job_id" {
			_ = json.Unmarshal(m.Val, &id)
			break
		}
	}
	if !v.visible(id) {
		return nil, false
	}
	if v.own(id) || !v.mayRedact(raw) {
		return raw, true
	}
	for i, m := range ms {
		if m.Key == "extra_data" {
			ms[i].Val = v.redactExtra(m.Val)
		}
	}
	return jsonobj.Append(nil, ms), true
}

// promptItem filters one [number, id, prompt, extra_data, ...] array.
func (v View) promptItem(raw []byte) ([]byte, bool) {
	var it []json.RawMessage
	if json.Unmarshal(raw, &it) != nil || len(it) < 2 {
		return nil, false
	}
	var id string
	if json.Unmarshal(it[1], &id) != nil || !v.visible(id) {
		return nil, false
	}
	if len(it) < 4 || v.own(id) || !v.mayRedact(it[3]) {
		return raw, true
	}
	it[3] = v.redactExtra(it[3])
	return appendArray(nil, it), true
}

// redactExtra removes the redacted members of an extra_data object.
func (v View) redactExtra(raw []byte) []byte {
	ms, err := jsonobj.Members(raw)
	if err != nil {
		return []byte("{}")
	}
	kept := ms[:0]
	for _, m := range ms {
		drop := false
		for _, r := range v.Redact {
			if m.Key == r {
				drop = true
				break
			}
		}
		if !drop {
			kept = append(kept, m)
		}
	}
	return jsonobj.Append(nil, kept)
}

// unreadable is the answer for a body that could not be parsed: unchanged
// when nothing in it could be hidden, else empty.
func (v View) unreadable(body, empty []byte) []byte {
	if v.Visible == nil && !v.mayRedact(body) {
		return body
	}
	return empty
}

// appendArray writes items as a JSON array with Python's separators.
func appendArray(dst []byte, items []json.RawMessage) []byte {
	dst = append(dst, '[')
	for i, it := range items {
		if i > 0 {
			dst = append(dst, ", "...)
		}
		dst = append(dst, it...)
	}
	return append(dst, ']')
}
