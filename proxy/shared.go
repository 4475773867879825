package proxy

// Prompts another replica submitted (state.url set). A read that names a
// prompt this replica's table does not know consults the replicas' shared
// index (prompts.Table.SharedPrompt) and goes to the instance the record
// names, with the id it has there, rewritten back as for a local prompt.
// An isolated key's ownership of such a prompt is the owner the record
// holds. The record is only read: the prompt stays the other replica's,
// and an interrupt or a delete goes to its instance as for a local one.
// Without a record (none written, or Redis not answering: logged and
// counted) the prompt is answered as one nobody knows.

import (
	"context"
	"encoding/json"
	"strconv"

	"github.com/comfygate/comfygate/auth"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
)

// maxSharedOwnerLookups caps the shared-index lookups of one answer or
// one list of ids (a history listing, a delete list): ids beyond it that
// this replica does not know count as another key's.
const maxSharedOwnerLookups = 64

// sharedOwner is the owner another replica recorded for prompt id ("":
// none, or no shared index).
func (s *keyGuard) sharedOwner(id string) string {
	sp, _ := s.prompts.SharedPrompt(context.Background(), id)
	return sp.Owner
}

// ownFunc reports, for each id, whether k owns it: the owners this
// replica knows, else those of the shared index, looked up at most
// maxSharedOwnerLookups times per function (each id once).
func (s *keyGuard) ownFunc(k *auth.Key) func(id string) bool {
	if k == nil {
		return func(string) bool { return false }
	}
	if !s.prompts.SharesIndex() {
		return func(id string) bool { return s.ownerOf(id) == k.Name }
	}
	var seen map[string]bool
	left := maxSharedOwnerLookups
	return func(id string) bool {
		if o := s.ownerOf(id); o != "" {
			return o == k.Name
		}
		if mine, ok := seen[id]; ok {
			return mine
		}
		if left <= 0 {
			return false
		}
		left--
		mine := s.sharedOwner(id) == k.Name
		if seen == nil {
			seen = map[string]bool{}
		}
		seen[id] = mine
		return mine
	}
}

// remotePrompt returns another replica's record of prompt id when this
// replica's table does not hold it (or holds only a note of where an
// instance showed it, which the record supersedes); found false
// otherwise.
func (s *pinnedRoutes) remotePrompt(ctx context.Context, id string) (prompts.SharedPrompt, bool) {
	if p, known := s.prompts.Prompt(id); known && !p.Life().Adopted {
		return prompts.SharedPrompt{}, false
	}
	return s.prompts.SharedPrompt(ctx, id)
}

// remoteView is how the client knows a prompt of another replica's record
// at inst.
func remoteView(inst *upstream.Instance, sp prompts.SharedPrompt) promptView {
	v := promptView{id: sp.ID, clientID: sp.ClientID, known: true, socketID: inst.SocketClientID()}
	if sp.Numbered {
		v.number = strconv.AppendInt(nil, sp.Number, 10)
	}
	return v
}

// rewriteHistoryObjectAs is rewriteHistoryObject with the entry of upID
// seen as v (a prompt of another replica's record).
func (s *rewriter) rewriteHistoryObjectAs(inst *upstream.Instance, body []byte, upID string, v promptView) []byte {
	out, err := comfyapi.EditHistory(body, func(id string, entry json.RawMessage) (string, json.RawMessage, bool) {
		if id == upID {
			id, entry = s.rewriteHistoryEntryView(inst, id, entry, v)
		} else {
			id, entry = s.rewriteHistoryEntry(inst, id, entry)
		}
		return id, entry, true
	})
	if err != nil {
		return body
	}
	return out
}
