package prompts

// Borrowed sockets (state.url set). ComfyUI sends a prompt's events to
// the socket registered under the client_id the prompt was sent with,
// the socket id of the replica that sent it. A prompt this replica goes
// on with that carries another id (adopted from a replica that stopped,
// or sent by this replica under the id it had before it lost its
// liveness lease) has its events sent to a socket under that id only.
// ComfyUI's /ws takes any clientId and registers the newest socket under
// it, so the replica borrows the id: a second socket to the instance
// under it, one per (instance, id), shared by every such prompt there
// while follow (adopt.go) watches it. Its frames go to the instance's
// owner like those of the replica's own socket, in the instance's order,
// and are applied the same way, to the prompts sent under that id only;
// its status messages and broadcasts are dropped (the replica's own
// socket delivers them). It closes when the last of those prompts leaves
// the instance (ended, moved, let go) or follow stops borrowing (the
// instance's lease is gone). ComfyUI unregisters whatever socket holds an
// id when any socket under that id closes, so a borrowed socket can be
// deaf without a sign (the replica that used the id closed its own late):
// follow's look at the instance's history then delivers the prompt's end.

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
)

// borrowed is one socket to an instance under a client_id that is not
// the instance's SocketClientID.
type borrowed struct {
	s        *instSocket
	clientID string
	stop     context.CancelFunc
	done     chan struct{}   // closed when its connection is closed for good
	after    <-chan struct{} // the previous socket under the same id, which must close first
	live     atomic.Bool     // connected and registered (its first status came)
	// The owner's:
	users   int    // follows holding it
	closing bool   // given back by its last user
	running string // upstream id of the prompt the instance executes for clientID
}

// borrow returns the socket borrowed under clientID at s's instance,
// opening it for its first user; nil when the table closed. Each borrow
// is matched by one giveBack.
func (s *instSocket) borrow(clientID string) *borrowed {
	var b *borrowed
	s.box.do(func() {
		prev := s.borrows[clientID]
		if prev != nil && !prev.closing {
			prev.users++
			b = prev
			return
		}
		ctx, cancel := context.WithCancel(s.t.run.runCtx())
		nb := &borrowed{s: s, clientID: clientID, stop: cancel, done: make(chan struct{}), users: 1}
		if prev != nil {
			// ComfyUI unregisters the id when the old socket closes: the
			// new one registers after.
			nb.after = prev.done
		}
		if !s.t.run.goRun(func() { safely(s.t.log, "borrowed socket", func() { nb.run(ctx) }) }) {
			cancel()
			return
		}
		if s.borrows == nil {
			s.borrows = map[string]*borrowed{}
		}
		s.borrows[clientID] = nb
		b = nb
	})
	return b
}

// giveBack ends one borrow of b (nil: none); the last closes it.
func (s *instSocket) giveBack(b *borrowed) {
	if b == nil {
		return
	}
	s.box.post(func() {
		if b.users--; b.users > 0 || b.closing {
			return
		}
		b.closing = true
		b.stop()
	})
}

// run keeps one connection under b's id until b is given back,
// reconnecting with jittered exponential backoff.
func (b *borrowed) run(ctx context.Context) {
	s := b.s
	defer func() {
		close(b.done)
		s.box.post(func() {
			if s.borrows[b.clientID] == b {
				delete(s.borrows, b.clientID)
			}
		})
	}()
	if b.after != nil {
		select {
		case <-b.after:
		case <-ctx.Done():
			return
		}
	}
	cfg := s.t.cfg.WebSocket
	minB, maxB := max(cfg.ReconnectMin, 10*time.Millisecond), max(cfg.ReconnectMax, cfg.ReconnectMin)
	backoff := minB
	clk := s.t.p.Clock()
	for ctx.Err() == nil {
		conn, first, err := s.dialAs(ctx, b.clientID)
		if err != nil {
			if ctx.Err() != nil || !sleepCtx(ctx, clk, jitter(backoff)) {
				return
			}
			backoff = min(backoff*2, maxB)
			continue
		}
		backoff = minB
		s.box.do(func() {
			b.up()
			b.onText(first)
		})
		b.live.Store(true)
		s.t.log.Debug("prompts: socket borrowed", "instance", s.inst.Name)
		err = s.serve(ctx, conn, b.onText, b.onBinary)
		b.live.Store(false)
		if ctx.Err() != nil {
			return
		}
		s.t.log.Debug("prompts: borrowed socket lost", "instance", s.inst.Name, "error", err)
		if !sleepCtx(ctx, clk, jitter(minB)) {
			return
		}
	}
}

// up records a fresh connection: the re-sync `executing` (without
// prompt_id) and previews without one belong to the prompt sent under b's
// id that comfygate believes is running. On the owner.
func (b *borrowed) up() {
	b.running = ""
	for _, pr := range b.s.t.idx.livePinnedTo(b.s.inst) {
		if v := pr.snap(); pr.sentSocket() == b.clientID && stateOf(v.life) == PromptRunning {
			b.running = v.life.UpstreamID
		}
	}
}

// onText routes one text frame of the borrowed socket. On the owner.
func (b *borrowed) onText(data []byte) {
	msg, _ := comfyapi.ParseWSText(data)
	if msg.Type == comfyapi.TypeStatus || msg.Type == comfyapi.TypeFeatureFlags {
		return
	}
	f := textFrame(msg, data)
	b.running = runningAfter(b.running, &f)
	b.route(f)
}

// onBinary routes one binary frame of the borrowed socket: type 4 by its
// metadata's prompt_id, anything else to the prompt executing for b's id.
// On the owner.
func (b *borrowed) onBinary(data []byte) { b.route(binaryFrame(data, b.running)) }

// route applies f to its prompt when this replica holds it as sent under
// b's id; broadcasts and the frames of other prompts under the same id
// (another replica's) are dropped. On the owner.
func (b *borrowed) route(f frame) {
	if f.uid == "" {
		return
	}
	pr := b.s.t.idx.getUpstream(b.s.inst, f.uid)
	if pr == nil || pr.abandoned.Load() || pr.sentSocket() != b.clientID {
		return
	}
	b.s.t.steps.apply(pr, b.s.inst, f)
}
