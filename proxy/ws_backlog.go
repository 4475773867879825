package proxy

import (
	"time"

	"github.com/comfygate/comfygate/state"
)

// session is what the hub knows about one clientId: its live socket, or,
// while it has none, the backlog of its events waiting for a reconnect.
//
// Backlog rules (websocket.backlog_grace, websocket.backlog_size):
//   - A clientId without a socket keeps the events of its prompts, at most
//     backlog_size frames (the oldest go first: the end of a prompt matters
//     most to a client waiting for `executing {"node": null}`), for
//     backlog_grace after the socket closed, or after the first event for a
//     clientId never seen connected. The grace is not extended by new
//     events, so memory is bounded by time and size.
//   - A socket that reconnects with the clientId within the grace gets its
//     first status message, then the backlog in order, then live events:
//     the hub moves the backlog and registers the socket under one lock, so
//     nothing is lost or sent twice.
//   - What the backlog holds: the events routed to the clientId (its
//     prompts' events), plus what a closed or dropped socket had queued but
//     not written. Broadcasts and status messages that arrive while it is
//     disconnected are not kept: the first status message on reconnect
//     carries the current queue count.
//   - Previews are stored in the form the clientId's last socket negotiated
//     (type 4 with supports_preview_metadata, else type 1; type 1 for a
//     clientId never seen connected), because the reconnecting socket's own
//     feature_flags arrive only after the replay has begun.
//   - A frame a socket was writing when it failed or was dropped may be lost.
//   - backlog_grace 0 disables the backlog: events for a clientId without a
//     socket are dropped, as ComfyUI does.
type session struct {
	id     string
	client *wsClient // live socket; nil while disconnected
	key    string    // the key of its last socket, or of the prompt that made it ("" with keys off)

	backlog  backlog
	expires  time.Time // while client == nil: when the backlog is dropped
	metadata bool      // the last socket negotiated supports_preview_metadata

	replaced   int       // replacements in the window starting at replacedAt
	replacedAt time.Time // see replaceLimit

	// Events between replicas (ws_replicas.go).
	xgen    uint64         // the follow of this session's clientId
	syncing bool           // its catch-up runs: this replica's own events wait in hold
	hold    []frame        // ditto
	start   state.Position // where the catch-up started
}

// backlog is a bounded FIFO of frames (drop oldest).
type backlog struct {
	frames  []frame
	start   int // frames[start:] are queued
	dropped int // frames dropped because it was full
}

func (b *backlog) len() int { return len(b.frames) - b.start }

// push appends f, dropping the oldest frame when limit frames are queued.
func (b *backlog) push(f frame, limit int) {
	if b.len() >= limit {
		b.frames[b.start] = frame{}
		b.start++
		b.dropped++
	}
	// Compact once half the slice is dead, so append keeps it bounded.
	if b.start > 0 && b.start >= len(b.frames)/2 {
		n := copy(b.frames, b.frames[b.start:])
		clear(b.frames[n:])
		b.frames = b.frames[:n]
		b.start = 0
	}
	b.frames = append(b.frames, f)
}

// take returns the queued frames in order and empties the backlog.
func (b *backlog) take() []frame {
	out := b.frames[b.start:]
	*b = backlog{}
	return out
}

// sweepEvery is how often expired backlogs are dropped: a quarter of the
// grace, within [10ms, 1s].
func sweepEvery(grace time.Duration) time.Duration {
	return min(max(grace/4, 10*time.Millisecond), time.Second)
}

// sweepLoop drops the sessions whose grace ended, until Close.
func (h *Hub) sweepLoop() {
	defer h.wg.Done()
	t := time.NewTicker(sweepEvery(h.ws.BacklogGrace))
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case now := <-t.C:
			h.sweepOnce(now)
		}
	}
}

// sweepOnce drops every session without socket whose grace ended by now.
func (h *Hub) sweepOnce(now time.Time) {
	defer func() {
		if r := recover(); r != nil {
			h.log.Error("websocket backlog sweep panicked", "panic", r)
		}
	}()
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, s := range h.sessions {
		if s.client == nil && !now.Before(s.expires) {
			if n := s.backlog.len(); n > 0 {
				h.log.Debug("websocket backlog expired", "client_id", id, "frames", n)
			}
			delete(h.sessions, id)
		}
	}
}

// keepLocked appends frames to the backlog of s, which has no socket.
// h.mu is held.
func (h *Hub) keepLocked(s *session, frames ...frame) {
	for _, f := range frames {
		s.backlog.push(f, h.ws.BacklogSize)
	}
}

// disconnectLocked turns s, whose socket c left, into a backlog for the
// grace (or forgets it when the backlog is off; between replicas, hands it
// over: the channel reports when that is done). h.mu is held.
func (h *Hub) disconnectLocked(s *session, c *wsClient, leftover []frame) <-chan error {
	if h.xr != nil {
		done := h.leaveLocked(s, c, leftover)
		s.client = nil
		return done
	}
	s.client = nil
	if h.ws.BacklogGrace <= 0 {
		delete(h.sessions, s.id)
		return nil
	}
	s.expires = time.Now().Add(h.ws.BacklogGrace)
	h.keepLocked(s, leftover...)
	return nil
}
