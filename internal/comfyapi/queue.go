package comfyapi

import (
	"bytes"
	"encoding/json"
)

// Queue is GET /queue's answer: {"queue_running": [item], "queue_pending":
// [item]}. Each item is ComfyUI's queue tuple [number, prompt_id, prompt,
// extra_data, outputs_to_execute] (2026 adds a sixth element); it is kept
// raw so a proxy can pass what it does not rewrite through unchanged.
// Pending items come in heap order, not sorted: sort by number.
type Queue struct {
	Running []json.RawMessage `json:"queue_running"`
	Pending []json.RawMessage `json:"queue_pending"`
}

// IDSets returns the prompt ids of the running and of the pending items as
// sets (items without a string id are left out).
func (q Queue) IDSets() (running, pending map[string]bool) {
	ids := func(items []json.RawMessage) map[string]bool {
		out := make(map[string]bool, len(items))
		for _, it := range items {
			if id, ok := ItemID(it); ok {
				out[id] = true
			}
		}
		return out
	}
	return ids(q.Running), ids(q.Pending)
}

// ParseQueue reads a GET /queue answer.
func ParseQueue(body []byte) (Queue, error) {
	var q Queue
	if !isObject(body) {
		return q, errNotObject
	}
	err := json.Unmarshal(body, &q)
	return q, err
}

// Find returns the number of the item with prompt id id, and whether it is
// running; ok is false when neither list holds it.
func (q Queue) Find(id string) (number json.RawMessage, running, ok bool) {
	for i, list := range [2][]json.RawMessage{q.Running, q.Pending} {
		for _, raw := range list {
			it, err := ParseQueueItem(raw)
			if err != nil {
				continue
			}
			if got, ok := it.ID(); ok && got == id {
				return it.NumberRaw(), i == 0, true
			}
		}
	}
	return nil, false, false
}

// Queue tuple positions.
const (
	ItemNumber = iota
	ItemPromptID
	ItemPrompt
	ItemExtraData
	ItemOutputsToExecute
)

// QueueItem is one queue tuple (also the "prompt" of a history entry),
// element by element.
type QueueItem []json.RawMessage

// ParseQueueItem reads a queue tuple. It fails when raw is not a JSON
// array.
func ParseQueueItem(raw []byte) (QueueItem, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '[' {
		return nil, errNotArray
	}
	var it QueueItem
	err := json.Unmarshal(raw, &it)
	return it, err
}

func (it QueueItem) at(i int) json.RawMessage {
	if i < len(it) {
		return it[i]
	}
	return nil
}

// ID returns the item's prompt id (ComfyUI always stores a string).
func (it QueueItem) ID() (string, bool) { return String(it.at(ItemPromptID)) }

// NumberRaw returns the item's number as the instance wrote it.
func (it QueueItem) NumberRaw() json.RawMessage { return it.at(ItemNumber) }

// Number returns the item's number (its priority: lower runs first).
func (it QueueItem) Number() (float64, bool) { return Number(it.at(ItemNumber)) }

// ExtraData returns the item's extra_data object (nil when absent).
func (it QueueItem) ExtraData() json.RawMessage { return it.at(ItemExtraData) }

// OutputsToExecute returns the item's outputs_to_execute list (nil when
// absent).
func (it QueueItem) OutputsToExecute() json.RawMessage { return it.at(ItemOutputsToExecute) }

// ItemID returns the prompt id of a raw queue tuple.
func ItemID(raw []byte) (string, bool) {
	it, err := ParseQueueItem(raw)
	if err != nil {
		return "", false
	}
	return it.ID()
}

// ItemNumberOf returns the number of a raw queue tuple.
func ItemNumberOf(raw []byte) (float64, bool) {
	it, err := ParseQueueItem(raw)
	if err != nil {
		return 0, false
	}
	return it.Number()
}

// DeleteOrClear is a POST /queue or POST /history body: {"clear": truthy}
// empties the pending queue (or the whole history), {"delete": [ids]}
// removes those prompts; both may come together, clear first.
type DeleteOrClear struct {
	// Clear is Python's truth value of "clear": {"clear": [ ]} clears
	// nothing, as in ComfyUI ("if json_data['clear']:").
	Clear bool
	// Delete holds the string ids of "delete", in order. ComfyUI compares
	// each element with the stored (string) ids, so non-strings match
	// nothing and are dropped here.
	Delete []string
	// HasDelete reports that the body had a "delete" key.
	HasDelete bool
}

// ParseDeleteOrClear reads a POST /queue or POST /history body. It fails
// when the body is not a JSON object (ComfyUI answers 500 then). A
// "delete" that is not a list deletes nothing.
func ParseDeleteOrClear(body []byte) (DeleteOrClear, error) {
	var d DeleteOrClear
	if !isObject(body) {
		return d, errNotObject
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return d, err
	}
	d.Clear = Truthy(m["clear"])
	raw, ok := m["delete"]
	d.HasDelete = ok
	var list []json.RawMessage
	if ok && json.Unmarshal(raw, &list) == nil {
		for _, r := range list {
			if id, ok := String(r); ok {
				d.Delete = append(d.Delete, id)
			}
		}
	}
	return d, nil
}
