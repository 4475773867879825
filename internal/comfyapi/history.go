package comfyapi

import (
	"encoding/json"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// ParseHistory reads a GET /history or /history/{id} answer, {prompt_id:
// entry}. Key order (oldest first) is not kept; use internal/jsonobj where
// it matters. /history/{id} answers {} while the prompt is queued or
// running, after eviction, and for an unknown id alike.
func ParseHistory(body []byte) (map[string]json.RawMessage, error) {
	if !isObject(body) {
		return nil, errNotObject
	}
	var h map[string]json.RawMessage
	err := json.Unmarshal(body, &h)
	return h, err
}

// HistoryEntry is one /history entry: {prompt: queue tuple, outputs:
// {node: {"images": [file ref], ...}}, status: {...}, meta: {...}}.
type HistoryEntry struct {
	Prompt  json.RawMessage            `json:"prompt"`
	Outputs map[string]json.RawMessage `json:"outputs"`
	Status  HistoryStatus              `json:"status"`
	Meta    json.RawMessage            `json:"meta"`
}

// HistoryStatus is a history entry's status. ComfyUI writes status_str
// "success" when the prompt ran to its end and "error" otherwise
// (interrupts included); entries written before status existed (2023)
// have none, status_str "".
type HistoryStatus struct {
	StatusStr string            `json:"status_str"`
	Completed bool              `json:"completed"`
	Messages  []json.RawMessage `json:"messages"` // [[event, data], ...]
}

// Status strings of a history entry.
const (
	StatusSuccess = "success"
	StatusError   = "error"
)

// ParseHistoryEntry reads one history entry leniently: a field of an
// unexpected type is left empty rather than failing the entry. It fails
// only when raw is not a JSON object.
func ParseHistoryEntry(raw []byte) (HistoryEntry, error) {
	var e HistoryEntry
	if !isObject(raw) {
		return e, errNotObject
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return e, err
	}
	e.Prompt, e.Meta = m["prompt"], m["meta"]
	if isObject(m["outputs"]) {
		_ = json.Unmarshal(m["outputs"], &e.Outputs)
	}
	if isObject(m["status"]) {
		var st map[string]json.RawMessage
		_ = json.Unmarshal(m["status"], &st)
		e.Status.StatusStr, _ = String(st["status_str"])
		e.Status.Completed = string(st["completed"]) == "true"
		_ = json.Unmarshal(st["messages"], &e.Status.Messages)
	}
	return e, nil
}

// Message is one [event, data] pair of status.messages.
type Message struct {
	Type string
	Data json.RawMessage
}

// ParseMessage reads one [event, data] pair; ok is false for any other
// shape.
func ParseMessage(raw []byte) (Message, bool) {
	var pair []json.RawMessage
	if json.Unmarshal(raw, &pair) != nil || len(pair) != 2 {
		return Message{}, false
	}
	typ, ok := String(pair[0])
	if !ok {
		return Message{}, false
	}
	return Message{Type: typ, Data: pair[1]}, true
}

// Terminal returns the message that ended the prompt: the last
// execution_success, execution_interrupted or execution_error (an
// ExecutionBlocked error is not one). ok is false when status.messages has
// none (an entry of a server older than these messages).
func (s HistoryStatus) Terminal() (m Message, ok bool) {
	for _, raw := range s.Messages {
		msg, good := ParseMessage(raw)
		if !good || !IsTerminal(msg.Type, exceptionType(msg.Data)) {
			continue
		}
		m, ok = msg, true
	}
	return m, ok
}

// Outcome is how a prompt ended, as its history entry records it.
type Outcome int

const (
	// OutcomeUnknown: the entry says neither (no status, no terminal
	// message: a server older than November 2023).
	OutcomeUnknown Outcome = iota
	OutcomeSuccess
	OutcomeError
	OutcomeInterrupted
)

func (o Outcome) String() string {
	switch o {
	case OutcomeSuccess:
		return "success"
	case OutcomeError:
		return "error"
	case OutcomeInterrupted:
		return "interrupted"
	}
	return "unknown"
}

// Outcome reads how the prompt ended: its terminal message when status.
// messages has one, else status_str (servers before July 2024 sent no
// execution_success), else OutcomeUnknown.
func (e HistoryEntry) Outcome() Outcome {
	if m, ok := e.Status.Terminal(); ok {
		switch m.Type {
		case TypeExecutionSuccess:
			return OutcomeSuccess
		case TypeExecutionInterrupted:
			return OutcomeInterrupted
		}
		return OutcomeError
	}
	switch e.Status.StatusStr {
	case StatusSuccess:
		return OutcomeSuccess
	case StatusError:
		return OutcomeError
	}
	return OutcomeUnknown
}

// exceptionType returns data.exception_type of an event's data.
func exceptionType(data json.RawMessage) string {
	if !isObject(data) {
		return ""
	}
	var d struct {
		ExceptionType json.RawMessage `json:"exception_type"`
	}
	_ = json.Unmarshal(data, &d)
	s, _ := String(d.ExceptionType)
	return s
}

// LastTimestamp returns the timestamp (ms) of the last status message that
// carries one: the prompt's completion time (ComfyUI orders /history by
// completion).
func (s HistoryStatus) LastTimestamp() (int64, bool) {
	for i := len(s.Messages) - 1; i >= 0; i-- {
		m, ok := ParseMessage(s.Messages[i])
		if !ok || !isObject(m.Data) {
			continue
		}
		var d struct {
			Timestamp json.RawMessage `json:"timestamp"`
		}
		_ = json.Unmarshal(m.Data, &d)
		if f, ok := Number(d.Timestamp); ok {
			return int64(f), true
		}
	}
	return 0, false
}

// ExceptionMessage returns data.exception_message of the message (an
// execution_error's); "" when it has none or it is not a string.
func (m Message) ExceptionMessage() string {
	s, _ := String(objectMembers(m.Data)["exception_message"])
	return s
}

// HistoryItem is one entry of a GET /history answer with its prompt id.
type HistoryItem struct {
	ID    string
	Entry json.RawMessage
}

// HistoryEntries reads a GET /history or /history/{id} answer, {prompt_id:
// entry}, in the instance's order (oldest first; ParseHistory does not
// keep it). It fails when body is not a JSON object.
func HistoryEntries(body []byte) ([]HistoryItem, error) {
	ms, err := jsonobj.Members(body)
	if err != nil {
		return nil, err
	}
	items := make([]HistoryItem, len(ms))
	for i, m := range ms {
		items[i] = HistoryItem{ID: m.Key, Entry: m.Val}
	}
	return items, nil
}
