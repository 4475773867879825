package auth

import (
	"bytes"
	"encoding/json"
	"slices"

	"github.com/comfygate/comfygate/internal/comfyapi"
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
	out, err := comfyapi.EditQueue(body, v.promptItem)
	if err != nil {
		return v.unreadable(body, []byte(`{"queue_running": [], "queue_pending": []}`))
	}
	return out
}

// History filters a GET /history or /history/{id} answer ({id: {"prompt":
// [number, id, prompt, extra_data, outputs], ...}}).
func (v View) History(body []byte) []byte {
	if v.Visible == nil && !v.mayRedact(body) {
		return body
	}
	out, err := comfyapi.EditHistory(body, func(id string, entry json.RawMessage) (string, json.RawMessage, bool) {
		if !v.visible(id) {
			return "", nil, false
		}
		if v.own(id) || !v.mayRedact(entry) {
			return id, entry, true
		}
		edited, err := comfyapi.EditHistoryEntry(entry, func(member string, val json.RawMessage) json.RawMessage {
			if member == comfyapi.EntryPrompt {
				if out, ok := v.promptItem(val); ok {
					return out
				}
			}
			return val
		})
		if err != nil {
			return "", nil, false
		}
		return id, edited, true
	})
	if err != nil {
		return v.unreadable(body, []byte(`{}`))
	}
	return out
}

// Jobs filters a GET /api/jobs answer ({"jobs": [{"id": ...}, ...], ...})
// and redacts an "extra_data" member of each job shown.
func (v View) Jobs(body []byte) []byte {
	if v.Visible == nil && !v.mayRedact(body) {
		return body
	}
	out, err := comfyapi.EditJobs(body, func(j json.RawMessage) (json.RawMessage, bool) { return v.Job(j) })
	if err != nil {
		return v.unreadable(body, []byte(`{"jobs": []}`))
	}
	return out
}

// Job filters one job object ({"id": ..., "extra_data": {...}, ...}); it
// reports false when the job may not be shown.
func (v View) Job(raw []byte) ([]byte, bool) {
	id, err := comfyapi.AnyJobID(raw)
	if err != nil || !v.visible(id) {
		return nil, false
	}
	if v.own(id) || !v.mayRedact(raw) {
		return raw, true
	}
	out, err := comfyapi.EditJob(raw, func(member string, val json.RawMessage) json.RawMessage {
		if member == comfyapi.FieldExtraData {
			return v.redactExtra(val)
		}
		return val
	})
	if err != nil {
		return nil, false
	}
	return out, true
}

// promptItem filters one [number, id, prompt, extra_data, ...] queue
// tuple.
func (v View) promptItem(raw json.RawMessage) (json.RawMessage, bool) {
	it, err := comfyapi.ParseQueueItem(raw)
	if err != nil {
		return nil, false
	}
	id, ok := it.ID()
	if !ok || !v.visible(id) {
		return nil, false
	}
	extra := it.ExtraData()
	if extra == nil || v.own(id) || !v.mayRedact(extra) {
		return raw, true
	}
	it[comfyapi.ItemExtraData] = v.redactExtra(extra)
	return comfyapi.AppendArray(nil, it), true
}

// redactExtra removes the redacted members of an extra_data object.
func (v View) redactExtra(raw []byte) []byte {
	out, err := comfyapi.DropExtraData(raw, func(key string) bool { return slices.Contains(v.Redact, key) })
	if err != nil {
		return []byte("{}")
	}
	return out
}

// unreadable is the answer for a body that could not be parsed: unchanged
// when nothing in it could be hidden, else empty.
func (v View) unreadable(body, empty []byte) []byte {
	if v.Visible == nil && !v.mayRedact(body) {
		return body
	}
	return empty
}
