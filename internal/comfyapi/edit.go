package comfyapi

import (
	"encoding/json"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// The Edit walkers rewrite ComfyUI documents a proxy passes on (to filter
// or to rename what they hold) without reading them whole: members keep
// their order and every byte not edited is kept, so a client sees the
// instance's own answer wherever comfygate had nothing to change.

// Members of a GET /queue answer and of a history entry.
const (
	QueueRunning = "queue_running"
	QueuePending = "queue_pending"

	EntryPrompt  = "prompt"
	EntryOutputs = "outputs"
	EntryStatus  = "status"
	EntryMeta    = "meta"
)

// EditQueue rewrites a GET /queue answer, {"queue_running": [item],
// "queue_pending": [item]} (items are queue tuples, see QueueItem): edit
// gets every item of both lists in order and returns its replacement, or
// keep false to leave it out. A list that is not a JSON array becomes [];
// other members are kept. Lists are written with Python's separators. It
// fails when body is not a JSON object.
func EditQueue(body []byte, edit func(item json.RawMessage) (out json.RawMessage, keep bool)) ([]byte, error) {
	ms, err := jsonobj.Members(body)
	if err != nil {
		return nil, err
	}
	for i, m := range ms {
		if m.Key != QueueRunning && m.Key != QueuePending {
			continue
		}
		var items []json.RawMessage
		if json.Unmarshal(m.Val, &items) != nil {
			ms[i].Val = json.RawMessage("[]")
			continue
		}
		kept := items[:0]
		for _, it := range items {
			if out, ok := edit(it); ok {
				kept = append(kept, out)
			}
		}
		ms[i].Val = AppendArray(nil, kept)
	}
	return jsonobj.Append(nil, ms), nil
}

// EditHistory rewrites a GET /history or /history/{id} answer, {prompt_id:
// entry} in the instance's order (oldest first): edit gets each entry and
// returns its key and value, or keep false to leave it out. It fails when
// body is not a JSON object.
func EditHistory(body []byte, edit func(id string, entry json.RawMessage) (newID string, out json.RawMessage, keep bool)) ([]byte, error) {
	ms, err := jsonobj.Members(body)
	if err != nil {
		return nil, err
	}
	kept := ms[:0]
	for _, m := range ms {
		id, out, ok := edit(m.Key, m.Val)
		if !ok {
			continue
		}
		kept = append(kept, jsonobj.Member{Key: id, Val: out})
	}
	return jsonobj.Append(make([]byte, 0, len(body)+64), kept), nil
}

// EditHistoryEntry rewrites one history entry, {"prompt": queue tuple,
// "outputs": {...}, "status": {...}, "meta": {...}} (see HistoryEntry):
// edit gets each member's name (EntryPrompt, ...) and value and returns
// the value to keep. It fails when entry is not a JSON object.
func EditHistoryEntry(entry []byte, edit func(member string, val json.RawMessage) json.RawMessage) ([]byte, error) {
	ms, err := jsonobj.Members(entry)
	if err != nil {
		return nil, err
	}
	for i, m := range ms {
		ms[i].Val = edit(m.Key, m.Val)
	}
	return jsonobj.Append(nil, ms), nil
}

// EditStatusMessages rewrites the data of each [event, data] pair of a
// history entry's status.messages (or of a job's execution_status, the
// same shape): edit gets each pair's data and returns its replacement.
// The list is written anew (compact); the status's other members are
// kept. ok is false, and status is to be kept as it is, when status is
// not an object or its messages not a list of lists.
func EditStatusMessages(status []byte, edit func(data json.RawMessage) json.RawMessage) (out []byte, ok bool) {
	ms, err := jsonobj.Members(status)
	if err != nil {
		return nil, false
	}
	for i, m := range ms {
		if m.Key != "messages" {
			continue
		}
		var msgs [][]json.RawMessage
		if json.Unmarshal(m.Val, &msgs) != nil {
			return nil, false
		}
		for _, msg := range msgs {
			if len(msg) >= 2 {
				msg[1] = edit(msg[1])
			}
		}
		if b, err := json.Marshal(msgs); err == nil {
			ms[i].Val = b
		}
	}
	return jsonobj.Append(nil, ms), true
}

// AppendArray writes items as a JSON array with Python's separators.
func AppendArray(dst []byte, items []json.RawMessage) []byte {
	dst = append(dst, '[')
	for i, it := range items {
		if i > 0 {
			dst = append(dst, ", "...)
		}
		dst = append(dst, it...)
	}
	return append(dst, ']')
}

// OutputsFiles returns the file references in a history entry's (or a
// job's) outputs, {node: {"images": [file ref], ...}}: every node's, of
// every kind (see NodeOutputFiles). Nil when raw is not an object.
func OutputsFiles(raw json.RawMessage) []FileRef {
	if !isObject(raw) {
		return nil
	}
	var outputs map[string]json.RawMessage
	if json.Unmarshal(raw, &outputs) != nil {
		return nil
	}
	var refs []FileRef
	for _, out := range outputs {
		refs = append(refs, NodeOutputFiles(out, "")...)
	}
	return refs
}

// Files returns the file references of the entry's outputs, every node's
// and every kind's.
func (e HistoryEntry) Files() []FileRef {
	var refs []FileRef
	for _, out := range e.Outputs {
		refs = append(refs, NodeOutputFiles(out, "")...)
	}
	return refs
}

// ClientIDEdit is what to do with one extra_data.client_id: keep it,
// replace it (with Value, a JSON string), or drop the member.
type ClientIDEdit int

// ClientIDEdit values.
const (
	KeepClientID ClientIDEdit = iota
	ReplaceClientID
	DropClientID
)

// EditExtraDataClientID rewrites the "client_id" member of an extra_data
// object (a queue tuple's, a job workflow's): edit gets its value ("" when
// it is not a string) and decides. Every other byte is kept; raw comes
// back unchanged when nothing changed or it is not an object.
func EditExtraDataClientID(raw json.RawMessage, edit func(cur string) (ClientIDEdit, string)) json.RawMessage {
	ms, err := jsonobj.Members(raw)
	if err != nil {
		return raw
	}
	out := ms[:0]
	changed := false
	for _, m := range ms {
		if m.Key == FieldClientID {
			cur, _ := String(m.Val)
			switch what, val := edit(cur); what {
			case DropClientID:
				changed = true
				continue
			case ReplaceClientID:
				m.Val, changed = jsonobj.Quote(val), true
			}
		}
		out = append(out, m)
	}
	if !changed {
		return raw
	}
	return jsonobj.Append(nil, out)
}

// ReplacePromptIDField rewrites the "prompt_id" of an object (an event's
// data, a job's execution_error) from from to to; every other byte is
// kept, and raw comes back unchanged when it holds no prompt_id equal to
// from or is not an object.
func ReplacePromptIDField(raw json.RawMessage, from, to string) json.RawMessage {
	ms, err := jsonobj.Members(raw)
	if err != nil {
		return raw
	}
	changed := false
	for i, m := range ms {
		if m.Key == FieldPromptID {
			if cur, ok := String(m.Val); ok && cur == from {
				ms[i].Val, changed = jsonobj.Quote(to), true
			}
		}
	}
	if !changed {
		return raw
	}
	return jsonobj.Append(nil, ms)
}

// DropExtraData returns an extra_data object without the members drop
// names (as credentials such as api_key_comfy_org), every other byte
// kept. It fails when raw is not a JSON object.
func DropExtraData(raw []byte, drop func(key string) bool) ([]byte, error) {
	ms, err := jsonobj.Members(raw)
	if err != nil {
		return nil, err
	}
	kept := ms[:0]
	for _, m := range ms {
		if !drop(m.Key) {
			kept = append(kept, m)
		}
	}
	return jsonobj.Append(nil, kept), nil
}
