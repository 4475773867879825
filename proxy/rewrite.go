package proxy

// Rewriting of what instances say about prompts into what the client knows.
//
// An instance knows a prompt by its upstream id (the client's id on v0.3.45+
// instances, one the instance minted on older ones) and by comfygate's own
// client_id for that instance (every prompt goes upstream with it, so the
// events come to comfygate's socket). Everything that passes through —
// history entries, queue items, jobs — is rewritten back: the prompt id to
// the client-facing one, the queue number (item[0], a job's priority) to
// the fleet number (prompts.Prompt.Number), extra_data.client_id to the
// client's own (removed when the client sent none, as ComfyUI stores none
// then), and output file references to ones that name their instance
// (outputref.go). Entries of prompts comfygate did not submit keep their
// ids and numbers, except that comfygate's own client_id never leaks;
// their file references are rewritten too.
//
// JSON objects whose key order matters to clients (history is ordered
// oldest first by its keys) are decoded and written as ordered entries.

import (
	"encoding/json"
	"strconv"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/jsonobj"

	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
)

// rewriter turns what instances say about prompts (history entries,
// queue items, jobs) into what the client knows, and learns the output
// files they name.
type rewriter struct {
	prompts *prompts.Table
}

func quoteJSON(s string) []byte { return jsonobj.Quote(s) }

// promptView is how the client knows one prompt an instance reports.
type promptView struct {
	id       string // client-facing prompt id
	clientID string // the client's client_id; "" = none
	known    bool   // comfygate submitted it (or adopted it)
	socketID string // comfygate's client_id at that instance
	number   []byte // the fleet queue number (JSON); nil = keep the instance's
}

// viewOf returns the client's view of the prompt inst knows as upID.
func (s *rewriter) viewOf(inst *upstream.Instance, upID string) promptView {
	v := promptView{id: upID, socketID: inst.SocketClientID()}
	if p, ok := s.prompts.PromptByUpstreamID(inst, upID); ok {
		v.id, v.clientID, v.known = p.ID, p.ClientID, true
		v.number = fleetNumber(p)
	}
	return v
}

// fleetNumber is p's fleet queue number as JSON (prompts.Prompt.Number),
// nil when it has none and the instance's number stands.
func fleetNumber(p *prompts.Prompt) []byte {
	n, ok := p.Number()
	if !ok {
		return nil
	}
	return strconv.AppendFloat(nil, n, 'f', -1, 64)
}

// setAnswerNumber sets "number" in a POST /prompt answer to the prompt's
// fleet number, keeping the answer's key order; the answer is returned
// unchanged when the prompt has none or the answer is not an object.
func setAnswerNumber(body []byte, p *prompts.Prompt) []byte {
	num := fleetNumber(p)
	if num == nil {
		return body
	}
	return comfyapi.WithNumber(body, num)
}

// fixExtraData rewrites extra_data.client_id for the client.
func (v promptView) fixExtraData(raw json.RawMessage) json.RawMessage {
	return comfyapi.EditExtraDataClientID(raw, func(cur string) (comfyapi.ClientIDEdit, string) {
		switch {
		case v.known && v.clientID == "":
			return comfyapi.DropClientID, "" // the client sent none
		case v.known && cur != v.clientID:
			return comfyapi.ReplaceClientID, v.clientID
		case !v.known && v.socketID != "" && cur == v.socketID:
			return comfyapi.DropClientID, "" // comfygate's own id never leaks
		}
		return comfyapi.KeepClientID, ""
	})
}

// rewriteTuple rewrites a queue item / history "prompt" tuple
// [number, prompt_id, prompt, extra_data, outputs_to_execute, ...]: the
// fleet number, the client's prompt id and client_id.
func (v promptView) rewriteTuple(raw json.RawMessage) json.RawMessage {
	items, err := comfyapi.ParseQueueItem(raw)
	if err != nil || len(items) <= comfyapi.ItemExtraData {
		return raw
	}
	if v.number != nil {
		items[comfyapi.ItemNumber] = v.number
	}
	items[comfyapi.ItemPromptID] = quoteJSON(v.id)
	items[comfyapi.ItemExtraData] = v.fixExtraData(items.ExtraData())
	out, err := json.Marshal(items)
	if err != nil {
		return raw
	}
	return out
}

// rewriteMessages rewrites the prompt_id inside history status.messages
// ([[event, {prompt_id, ...}], ...]).
func (v promptView) rewriteStatus(raw json.RawMessage, upID string) json.RawMessage {
	if v.id == upID {
		return raw
	}
	out, ok := comfyapi.EditStatusMessages(raw, func(data json.RawMessage) json.RawMessage {
		return v.fixPromptIDField(data, upID)
	})
	if !ok {
		return raw
	}
	return out
}

// fixPromptIDField rewrites obj.prompt_id from upID to the client's id.
func (v promptView) fixPromptIDField(raw json.RawMessage, upID string) json.RawMessage {
	return comfyapi.ReplacePromptIDField(raw, upID, v.id)
}

// rewriteHistoryEntry rewrites one history entry of inst known there as
// upID, learns where its output files live, and hands the output file
// references out with the instance in their subfolder (outputref.go). It
// returns the client's key for it.
func (s *rewriter) rewriteHistoryEntry(inst *upstream.Instance, upID string, raw json.RawMessage) (string, json.RawMessage) {
	return s.rewriteHistoryEntryView(inst, upID, raw, s.viewOf(inst, upID))
}

// rewriteHistoryEntryView is rewriteHistoryEntry with the client's view
// of the prompt given.
func (s *rewriter) rewriteHistoryEntryView(inst *upstream.Instance, upID string, raw json.RawMessage, v promptView) (string, json.RawMessage) {
	out, err := comfyapi.EditHistoryEntry(raw, func(member string, val json.RawMessage) json.RawMessage {
		switch member {
		case comfyapi.EntryPrompt:
			return v.rewriteTuple(val)
		case comfyapi.EntryStatus:
			return v.rewriteStatus(val, upID)
		case comfyapi.EntryOutputs:
			s.learnOutputs(inst, val) // the instance's own refs
			return encodeOutputs(instanceToken(inst), val)
		}
		return val
	})
	if err != nil {
		return v.id, raw
	}
	return v.id, out
}

// rewriteHistoryObject rewrites a {prompt_id: entry, ...} answer of inst.
func (s *rewriter) rewriteHistoryObject(inst *upstream.Instance, body []byte) []byte {
	out, err := comfyapi.EditHistory(body, func(id string, entry json.RawMessage) (string, json.RawMessage, bool) {
		id, entry = s.rewriteHistoryEntry(inst, id, entry)
		return id, entry, true
	})
	if err != nil {
		return body
	}
	return out
}

// learnOutputs pins every file an outputs object names ({node: {kind:
// [{filename, subfolder, type}, ...]}}) to inst, so /view finds it.
func (s *rewriter) learnOutputs(inst *upstream.Instance, raw json.RawMessage) {
	for _, f := range comfyapi.OutputsFiles(raw) {
		s.prompts.PinFile(f, inst)
	}
}

// rewriteJob rewrites one /api/jobs job object of inst: its id, its
// priority (the fleet number), the client_id inside workflow.extra_data,
// and its file references (with the
// instance in their subfolder, outputref.go); it learns its files.
func (s *rewriter) rewriteJob(inst *upstream.Instance, raw json.RawMessage) (string, json.RawMessage) {
	return s.rewriteJobView(inst, raw, nil)
}

// rewriteJobView is rewriteJob with the client's view of the prompt given
// (nil: the one the prompt table has).
func (s *rewriter) rewriteJobView(inst *upstream.Instance, raw json.RawMessage, given *promptView) (string, json.RawMessage) {
	upID, err := comfyapi.JobID(raw)
	if err != nil {
		return "", raw
	}
	v := s.viewOf(inst, upID)
	if given != nil {
		v = *given
	}
	out, err := comfyapi.EditJob(raw, func(member string, val json.RawMessage) json.RawMessage {
		switch member {
		case "id":
			return quoteJSON(v.id)
		case "priority": // the queue number, as in /queue
			if v.number != nil {
				return v.number
			}
		case "outputs":
			s.learnOutputs(inst, val) // the instance's own refs
			return encodeOutputs(instanceToken(inst), val)
		case "preview_output":
			for _, f := range comfyapi.ListFiles(comfyapi.AppendArray(nil, []json.RawMessage{val})) {
				s.prompts.PinFile(f, inst)
			}
			out, _ := encodeFileRef(instanceToken(inst), val)
			return out
		case "workflow":
			wf, err := comfyapi.EditJob(val, func(member string, val json.RawMessage) json.RawMessage {
				if member == comfyapi.FieldExtraData {
					return v.fixExtraData(val)
				}
				return val
			})
			if err == nil {
				return wf
			}
		case "execution_status":
			return v.rewriteStatus(val, upID)
		case "execution_error":
			return v.fixPromptIDField(val, upID)
		}
		return val
	})
	if err != nil {
		return v.id, raw
	}
	return v.id, out
}
