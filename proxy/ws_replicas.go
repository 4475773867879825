package proxy

// Events between replicas (state.url set: state.Events in Redis).
//
// A prompt's events arrive at the replica that submitted it (its event
// socket to the instance). When that replica holds no socket of the
// prompt's clientId, it publishes each event to the clientId's stream and
// channel instead of keeping it in its own backlog; the replica holding
// the clientId's socket follows the clientId (one subscription per
// clientId with a socket there) and delivers the events as its own, with
// the same rules: only to a socket of the key that owns the prompt
// (ws_keys.go), previews in the form the socket negotiated.
//
//   - The stream is the backlog: a socket that connects, on any replica,
//     gets the entries after the position its clientId's last socket left
//     at (every entry when none is recorded), then live events, each once
//     and in order. Until that catch-up is done, the replica holds the
//     events of its own prompts for the clientId (bounded by
//     websocket.backlog_size), then delivers them after it.
//   - A socket that leaves hands over: what it was given and did not
//     write is published (what came from the stream is there already),
//     then the last stream entry it wrote is recorded as the clientId's
//     position. With a close handshake this is done before the close is
//     answered, so a reconnect elsewhere starts exactly where it left; a
//     socket cut without one hands over once the replica notices.
//   - A stream that was lost (Redis restarted, or the window passed) has
//     a new epoch: a reconnect gets nothing from before, as an expired
//     backlog, and what was published since.
//   - Redis not answering: local delivery goes on; what had to cross is
//     lost, counted (comfygate_ws_cross_replica_failures_total) and logged.

import (
	"encoding/binary"
	"time"

	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/state"
)

// leaveWait bounds how long a socket's close waits for its hand-over.
const leaveWait = time.Second

// crossReplicas turns on events between replicas over ev; before serving.
func (h *Hub) crossReplicas(ev state.Events) { h.xr = ev }

// xFlagBinary marks a binary frame in an encoded event.
const xFlagBinary = 1

// encodeXEvent is an event as it crosses: a flags byte, the owning key's
// name (uvarint length first) and the frame's bytes.
func encodeXEvent(bin bool, owner string, parts ...[]byte) []byte {
	n := 1 + binary.MaxVarintLen64 + len(owner)
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 0, n)
	var flags byte
	if bin {
		flags |= xFlagBinary
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(owner)))
	b = append(b, owner...)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// decodeXEvent reads encodeXEvent's bytes.
func decodeXEvent(b []byte) (bin bool, owner string, data []byte, ok bool) {
	if len(b) < 2 {
		return false, "", nil, false
	}
	bin = b[0]&xFlagBinary != 0
	n, w := binary.Uvarint(b[1:])
	if w <= 0 || uint64(len(b)-1-w) < n {
		return false, "", nil, false
	}
	off := 1 + w
	return bin, string(b[off : off+int(n)]), b[off+int(n):], true
}

// publishLocked sends an event of a prompt of key owner to the replica
// holding clientID's socket. h.mu is held: publishes and follows keep the
// order they are decided in.
func (h *Hub) publishLocked(clientID string, ev prompts.Event, owner string) {
	h.xr.Publish(clientID, encodeXEvent(ev.Binary, owner, ev.Data))
}

// followLocked starts following s's clientId for its first socket here:
// its own prompts' events wait until the catch-up is done. h.mu is held.
func (h *Hub) followLocked(s *session) {
	h.xgen++
	s.xgen = h.xgen
	s.syncing = true
	if err := h.xr.Follow(s.id, xFollower{h: h, id: s.id, gen: s.xgen}); err != nil {
		s.syncing = false
	}
}

// holdLocked keeps f of a session whose catch-up runs (the oldest goes
// past websocket.backlog_size). h.mu is held.
func (h *Hub) holdLocked(s *session, f frame) {
	if len(s.hold) >= max(h.ws.BacklogSize, 1) {
		s.hold = s.hold[1:]
	}
	s.hold = append(s.hold, f)
}

// leaveLocked hands s over as its socket c leaves this replica: leftover
// and held frames that came from no stream entry are published, the last
// entry c wrote is recorded, and s is forgotten here. h.mu is held. The
// channel reports the hand-over done.
func (h *Hub) leaveLocked(s *session, c *wsClient, leftover []frame) <-chan error {
	seen := s.start
	if c != nil {
		if p := c.seen.Load(); p != nil {
			seen = *p
		}
	}
	var out [][]byte
	for _, list := range [][]frame{leftover, s.hold} {
		for _, f := range list {
			if f.pos == nil {
				out = append(out, encodeXEvent(f.binary, s.key, f.head, f.data))
			}
		}
	}
	s.hold = nil
	delete(h.sessions, s.id)
	return h.xr.Leave(s.id, seen, out)
}

// awaitLeave waits for a hand-over, at most leaveWait.
func (h *Hub) awaitLeave(done <-chan error) {
	if done == nil {
		return
	}
	t := time.NewTimer(leaveWait)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			h.log.Warn("websocket hand-over to other replicas failed", "err", err)
		}
	case <-t.C:
		h.log.Warn("websocket hand-over to other replicas timed out", "after", leaveWait)
	}
}

// xFollower receives the events of a clientId followed for session
// generation gen.
type xFollower struct {
	h   *Hub
	id  string
	gen uint64
}

// sessionLocked is the session followed, with its socket; nil when it
// left or was followed again since. h.mu is held.
func (f xFollower) sessionLocked() *session {
	s := f.h.sessions[f.id]
	if s == nil || s.xgen != f.gen || s.client == nil {
		return nil
	}
	return s
}

// Event delivers an event another replica (or this one, before the socket
// came) published: to the socket, if its key may see it.
func (f xFollower) Event(ev state.Event) {
	h := f.h
	bin, owner, data, ok := decodeXEvent(ev.Payload)
	if !ok {
		return
	}
	v := newVariants(prompts.Event{Binary: bin, Data: data})
	pos := ev.Pos
	h.mu.Lock()
	s := f.sessionLocked()
	if s == nil || !h.mayReceive(s.client, owner) {
		h.mu.Unlock()
		return
	}
	c := s.client
	if fr, ok := v.forClient(c.metadata.Load()); ok {
		fr.pos = &pos
		if !c.offer(fr) {
			h.dropSlowLocked(s, fr)
		}
	}
	h.mu.Unlock()
	kind := "text"
	if bin {
		kind = "binary"
	}
	h.m.IncEventsRouted(kind)
}

// CaughtUp delivers what was held during the catch-up; from now on the
// replica's own events go straight to the socket.
func (f xFollower) CaughtUp(start state.Position) {
	h := f.h
	h.mu.Lock()
	defer h.mu.Unlock()
	s := f.sessionLocked()
	if s == nil {
		return
	}
	s.start, s.syncing = start, false
	hold := s.hold
	s.hold = nil
	for i, fr := range hold {
		if !s.client.offer(fr) {
			s.hold = hold[i+1:]
			h.dropSlowLocked(s, fr)
			return
		}
	}
}
