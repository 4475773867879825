package proxy

import (
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/prompts"
	"github.com/fasthttp/websocket"
)

var (
	_ prompts.Sink     = (*Hub)(nil)
	_ prompts.Listener = (*Hub)(nil)
)

// PromptEvent delivers one event of a prompt submitted through comfygate to
// the socket registered under the prompt's client_id, or to its backlog.
// The output file references of `executed` events are handed out with
// their instance in the subfolder (outputref.go).
// Prompts without client_id follow ComfyUI: only progress, progress_state,
// execution_interrupted, previews (as type 1) and TEXT frames go to every
// socket; the rest is dropped. It never blocks. With isolation, the
// prompts of a key have the Sink sinkFor gives (ws_keys.go).
func (h *Hub) PromptEvent(p *prompts.Prompt, ev prompts.Event) { h.promptEvent(p, ev, "") }

// promptEvent is PromptEvent for a prompt of key owner ("" with keys off).
func (h *Hub) promptEvent(p *prompts.Prompt, ev prompts.Event, owner string) {
	if p == nil {
		return
	}
	if p.ClientID == "" {
		h.broadcastUnowned(ev, owner)
		return
	}
	kind := "text"
	if ev.Binary {
		kind = "binary"
	}
	if ev.Type == "executed" && !ev.Binary && ev.Instance != nil {
		// The client's file references name their instance (outputref.go);
		// the pool and the jobs package keep the raw ones.
		ev.Data = encodeExecutedFrame(instanceToken(ev.Instance), ev.Data)
	}
	if !ev.Binary {
		// An isolated key's file names, as the key sent them (keyfiles.go).
		ev.Data = stripAnyNamespace(ev.Data)
	}
	v := newVariants(ev)
	h.mu.Lock()
	if h.closed && h.xr == nil {
		h.mu.Unlock()
		return
	}
	s := h.sessions[p.ClientID]
	switch {
	case s != nil && s.client != nil && !h.closed:
		c := s.client
		if !h.mayReceive(c, owner) {
			break
		}
		if f, ok := v.forClient(c.metadata.Load()); ok {
			if s.syncing {
				h.holdLocked(s, f) // after the catch-up (ws_replicas.go)
			} else if !c.offer(f) {
				h.dropSlowLocked(s, f)
			}
		}
	case h.xr != nil:
		// No socket here: to the replica that has it, or its stream.
		h.publishLocked(p.ClientID, ev, owner)
	case h.ws.BacklogGrace > 0:
		if s == nil {
			s = &session{id: p.ClientID, key: owner, expires: time.Now().Add(h.ws.BacklogGrace)}
			h.sessions[p.ClientID] = s
		}
		if f, ok := v.forClient(s.metadata); ok && h.mayKeepLocked(s, owner) {
			h.keepLocked(s, f)
		}
	}
	h.mu.Unlock()
	h.m.IncEventsRouted(kind)
}

// broadcastUnowned applies ComfyUI's rule for events whose prompt has no
// client_id (its server.client_id is None): a few kinds go to every socket
// that may see the prompts of key owner.
func (h *Hub) broadcastUnowned(ev prompts.Event, owner string) {
	var f frame
	if ev.Binary {
		switch typ, _ := comfyapi.BinaryType(ev.Data); typ {
		case comfyapi.BinPreviewImage, comfyapi.BinText:
			f = frame{binary: true, data: ev.Data}
		case comfyapi.BinPreviewImageWithMetadata:
			// ComfyUI sends type 1 to sid None: nobody negotiated for it.
			var ok bool
			if f, ok = toPreviewType1(ev.Data); !ok {
				return
			}
		default:
			return
		}
	} else {
		switch ev.Type {
		case "progress", "progress_state", "execution_interrupted":
			f = frame{data: ev.Data}
		default:
			return
		}
	}
	h.mu.Lock()
	h.broadcastLocked(variants{meta: f, plain: f, okMeta: true, okPlain: true}, owner)
	h.mu.Unlock()
	h.m.IncEventsRouted("broadcast")
}

// Broadcast sends an event that belongs to no prompt to every socket; with
// isolation, one that came while a prompt ran goes only to the sockets
// that may see that prompt (runningOwner).
func (h *Hub) Broadcast(ev prompts.Event) {
	v := newVariants(ev)
	owner := h.runningOwner(ev)
	h.mu.Lock()
	h.broadcastLocked(v, owner)
	h.mu.Unlock()
	h.m.IncEventsRouted("broadcast")
}

// QueueChanged sends every socket ComfyUI's status message (without sid).
func (h *Hub) QueueChanged(queueRemaining int) {
	f := frame{data: comfyapi.StatusMessage(int64(queueRemaining), "", false)}
	h.mu.Lock()
	h.queueN = queueRemaining
	h.queueGen++
	h.broadcastLocked(variants{meta: f, plain: f, okMeta: true, okPlain: true}, "")
	h.mu.Unlock()
}

// broadcastLocked offers v to every registered socket that may see the
// prompts of key owner ("": every socket); a full queue drops that socket.
// h.mu is held.
func (h *Hub) broadcastLocked(v variants, owner string) {
	if h.closed {
		return
	}
	for c := range h.live {
		if !h.mayReceive(c, owner) {
			continue
		}
		f, ok := v.forClient(c.metadata.Load())
		if ok && !c.offer(f) {
			if s := h.sessions[c.id]; s != nil && s.client == c {
				h.dropSlowLocked(s, f)
			}
		}
	}
}

// dropSlowLocked drops the socket of s, whose queue is full: close code
// 1008, and what it had queued plus f go to the backlog. h.mu is held.
func (h *Hub) dropSlowLocked(s *session, f frame) {
	c := s.client
	delete(h.live, c)
	c.stop(websocket.ClosePolicyViolation, "policy violation: client too slow")
	h.m.IncSlowClientDropped()
	h.log.Warn("websocket client too slow, dropped", "client_id", c.id, "buffer", h.ws.ClientBuffer)
	leftover := c.drain(nil)
	h.disconnectLocked(s, c, append(leftover, f))
}

// register makes c the clientId's socket and sets what it writes first:
// the status message (queue count n, read at generation gen, unless a
// QueueChanged came since), then the backlog or the frames its replaced
// predecessor had not written. It returns how many backlog frames it
// replays; ok=false once the hub is closed.
func (h *Hub) register(c *wsClient, gen uint64, n int) (replayed int, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0, false
	}
	if gen != h.queueGen {
		n = h.queueN
	}
	c.hello = frame{data: comfyapi.StatusMessage(int64(n), c.id, true)}
	s := h.sessions[c.id]
	if s == nil {
		s = &session{id: c.id, key: c.key}
		h.sessions[c.id] = s
	}
	if c.isolated && s.key != c.key {
		// What another key's socket or prompts left here is not c's to see.
		s.backlog = backlog{}
		s.hold = nil
		if s.client != nil {
			s.client.drain(nil)
		}
	}
	s.key = c.key
	if old := s.client; old != nil {
		delete(h.live, old)
		c.pending = old.drain(nil)
		if p := old.seen.Load(); p != nil {
			c.seen.Store(p)
		}
		now := time.Now()
		if now.Sub(s.replacedAt) > replaceWindow {
			s.replaced, s.replacedAt = 0, now
		}
		s.replaced++
		if s.replaced <= replaceLimit {
			old.stop(closeReplaced, "replaced by a newer connection with the same clientId")
		} else if s.replaced == replaceLimit+1 {
			h.log.Warn("websocket clientId keeps reconnecting on two sockets; leaving the older open and silent",
				"client_id", c.id)
		}
	} else if s.backlog.len() > 0 {
		if d := s.backlog.dropped; d > 0 {
			h.log.Warn("websocket backlog overflowed; oldest events lost", "client_id", c.id, "dropped", d)
		}
		c.pending = s.backlog.take()
		replayed = len(c.pending)
	}
	first := s.client == nil
	s.client = c
	s.expires = time.Time{}
	if h.xr != nil && first {
		h.followLocked(s)
	}
	h.live[c] = struct{}{}
	h.conns[c] = struct{}{}
	h.wg.Add(1)
	return replayed, true
}

// unregister forgets c after its writer ended. If c is still its clientId's
// socket (a newer socket may have replaced it: ComfyUI's close race), the
// clientId turns into a backlog holding what c did not write (between
// replicas, it is handed over: the channel reports when that is done).
func (h *Hub) unregister(c *wsClient) <-chan error {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.conns, c)
	s := h.sessions[c.id]
	if s == nil || s.client != c {
		return nil
	}
	delete(h.live, c)
	var leftover []frame
	if c.unsent != nil {
		leftover = append(leftover, *c.unsent)
	}
	leftover = append(leftover, c.pending...)
	leftover = c.drain(leftover)
	return h.disconnectLocked(s, c, leftover)
}

// featureFlags records c's negotiation and answers it, as ComfyUI does.
func (h *Hub) featureFlags(c *wsClient, metadata bool) {
	c.metadata.Store(metadata)
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions[c.id]
	if s == nil || s.client != c {
		c.offer(frame{data: featureFlagsReply}) // replaced: best effort
		return
	}
	s.metadata = metadata
	if f := (frame{data: featureFlagsReply}); !c.offer(f) {
		h.dropSlowLocked(s, f)
	}
}

// queueSnapshot returns the QueueChanged generation and count.
func (h *Hub) queueSnapshot() (gen uint64, n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.queueGen, h.queueN
}

// variants holds an event as frames for sockets with and without preview
// metadata; they differ only for type-4 previews.
type variants struct {
	meta, plain     frame
	okMeta, okPlain bool
}

func newVariants(ev prompts.Event) variants {
	f := frame{binary: ev.Binary, data: ev.Data}
	v := variants{meta: f, plain: f, okMeta: true, okPlain: true}
	if typ, _ := comfyapi.BinaryType(ev.Data); ev.Binary && typ == comfyapi.BinPreviewImageWithMetadata {
		v.plain, v.okPlain = toPreviewType1(ev.Data)
	}
	return v
}

func (v *variants) forClient(metadata bool) (frame, bool) {
	if metadata {
		return v.meta, v.okMeta
	}
	return v.plain, v.okPlain
}

// toPreviewType1 turns a type-4 preview into the type-1 frame of a client
// that did not negotiate metadata, without copying the image.
func toPreviewType1(b []byte) (frame, bool) {
	head, img, ok := comfyapi.PreviewToType1(b)
	if !ok {
		return frame{}, false
	}
	return frame{binary: true, head: head[:], data: img}, true
}
