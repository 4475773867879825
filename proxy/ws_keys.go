package proxy

// API keys on the WebSocket side. With isolation on (auth.isolation and
// keys configured) every socket of a non-admin key is isolated:
//   - its clientId is held for that key while the socket lives
//     (auth.Owners.HoldClient), so no other key can claim it, whatever
//     the churn of claims elsewhere;
//   - it receives the events of its own key's prompts only. Events of a
//     prompt without client_id, which ComfyUI sends to every socket,
//     reach the sockets of the prompt's key (and admin sockets); an event
//     routed by client_id reaches it only when its prompt is its key's;
//     a backlog keeps and replays only its key's events;
//   - an event that names no prompt but came while the instance ran a
//     prompt of a key (a custom node's message to the running prompt's
//     client is indistinguishable from its broadcast on comfygate's
//     socket) reaches only the sockets that may see that prompt.
//
// Fleet-wide messages (status, and events that name no prompt while no
// prompt of a key runs) still reach every socket. With keys off, or
// isolation off, nothing here applies.

import (
	"github.com/comfygate/comfygate/prompts"
	"github.com/valyala/fasthttp"
)

// clientHolds is what the hub uses of auth.Owners.
type clientHolds interface {
	HoldClient(clientID, key string) bool
	ReleaseClient(clientID, key string)
	PromptOwner(id string) string
}

// isolate turns isolation on: sockets of non-admin keys hold their
// clientId in o and see only their own key's prompts.
func (h *Hub) isolate(o clientHolds) { h.holds = o }

// isolating reports whether isolation is on.
func (h *Hub) isolating() bool { return h.holds != nil }

// socketKey is the key a socket is opened with ("" with keys off) and
// whether the socket is isolated.
func (h *Hub) socketKey(ctx *fasthttp.RequestCtx) (key string, isolated bool) {
	k := requestKey(ctx)
	if k == nil {
		return "", false
	}
	return k.Name, h.isolating() && !k.Admin
}

// holdClient holds clientID for an isolated socket's key; false when
// another key has it.
func (h *Hub) holdClient(clientID, key string, isolated bool) bool {
	return !isolated || h.holds.HoldClient(clientID, key)
}

// releaseClient ends holdClient.
func (h *Hub) releaseClient(clientID, key string, isolated bool) {
	if isolated {
		h.holds.ReleaseClient(clientID, key)
	}
}

// mayReceive reports whether c may get an event of a prompt of key owner
// ("" with keys off). With isolation on, no socket gets another key's
// prompt events, an admin's included: an admin sees every prompt in the
// listings, but a socket's events are its own key's, as a client of one
// ComfyUI gets only its own client_id's.
func (h *Hub) mayReceive(c *wsClient, owner string) bool {
	return !h.isolating() || owner == "" || c.key == owner
}

// mayKeepLocked reports whether s's backlog may keep an event of a prompt of
// key owner. h.mu is held.
func (h *Hub) mayKeepLocked(s *session, owner string) bool {
	return !h.isolating() || owner == "" || s.key == owner
}

// keySink is the Sink of the prompts one key submits: the hub, knowing
// the prompt's key.
type keySink struct {
	h     *Hub
	owner string
}

// PromptEvent delivers ev as Hub.PromptEvent does, to the sockets that may
// see the owner's prompts.
func (k keySink) PromptEvent(p *prompts.Prompt, ev prompts.Event) { k.h.promptEvent(p, ev, k.owner) }

// keyName is the name of the request's key ("" with keys off).
func keyName(ctx *fasthttp.RequestCtx) string {
	if k := requestKey(ctx); k != nil {
		return k.Name
	}
	return ""
}

// sinkFor returns the Sink of the prompts key submits: the hub itself
// with keys off (key "").
func (h *Hub) sinkFor(key string) prompts.Sink {
	if key == "" {
		return h
	}
	return keySink{h: h, owner: key}
}

// runningOwner is, with isolation, the key of the prompt a broadcast event
// came during ("": none, or keys or isolation off): the Sink's key for a
// prompt of POST /prompt, else the owner table's (a job's prompt).
func (h *Hub) runningOwner(ev prompts.Event) string {
	if !h.isolating() || ev.Running == nil {
		return ""
	}
	if ks, ok := ev.Running.Sink.(keySink); ok {
		return ks.owner
	}
	return h.holds.PromptOwner(ev.Running.ID)
}
