package prompts

// This file keeps every instance busy when their speeds differ: an
// instance that ran out of work takes a prompt that waits in another
// instance's queue (routing.move_pending).

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/upstream"
)

// idle is called when inst reported an empty queue or finished its last
// prompt. If inst has nothing
// of comfygate's either, and another instance has a prompt of comfygate's
// waiting behind others, that prompt moves to inst (in the background, one
// move per instance at a time).
//
// Selection alone cannot do this: it places a prompt when it comes, by the
// work each instance has then, so a burst splits evenly over a fast and a
// slow instance and the fast one idles at the end while the slow one still
// has a queue.
func (t *mover) idle(s *instSocket) {
	inst := s.inst
	if !t.cfg.Routing.MovePending || !idleNow(inst) {
		return
	}
	s.box.post(func() { s.passes.wantMove() })
}

// wantMove starts a worker that moves one waiting prompt to s's instance,
// or asks for another look after the one running: a moved prompt can run
// and end before its move returns, and its end calls again. One prompt at
// a time: the moved prompt makes the instance busy. On the owner.
func (s *passes) wantMove() {
	t := s.t
	if s.moving {
		s.moveAgain = true
		return
	}
	s.moveAgain = false
	inst := s.inst
	s.moving = t.run.goBackground(func(ctx context.Context) {
		defer s.box.post(func() { // its end, even after a panic
			s.moving = false
			if s.moveAgain && ctx.Err() == nil {
				s.wantMove()
			}
		})
		if idleNow(inst) {
			if pr, from := t.moves.waitingFor(inst); pr != nil {
				t.moves.moveWaiting(ctx, pr, from, inst)
			}
		}
	})
}

// finishedAt is called when a prompt finished at inst: if that was its
// last work (its empty queue may have been reported already), it is idle.
func (t *mover) finishedAt(inst *upstream.Instance) {
	if !t.cfg.Routing.MovePending || !idleNow(inst) {
		return
	}
	if s := t.owners.get(inst); s != nil {
		t.idle(s)
	}
}

// moveProbeTimeout bounds the look at a busy instance's queue before one
// of its prompts is held for a move: an instance that answers /queue
// slower than this is left alone.
const moveProbeTimeout = time.Second

// idleNow reports an instance that can take work and has none.
func idleNow(inst *upstream.Instance) bool {
	return inst.Available() && !inst.State().Suspect() && inst.State().SocketUp() && inst.Workload().Total() == 0
}

// waitingFor returns the prompt inst should take, and where it waits: of
// the instance with the most work (at least 2: one running, one waiting),
// comfygate's queued prompt it would run next (the lowest queue number), if
// it may run on inst and never moved before (so that no prompt moves
// twice, and moves never use up failover's resubmissions). A drained
// instance keeps its queue (it finishes its own prompts). nil if none.
func (t *mover) waitingFor(inst *upstream.Instance) (*Prompt, *upstream.Instance) {
	type waiting struct {
		pr       *Prompt
		at       *upstream.Instance
		work     int64
		num      int64
		eligible func(*upstream.Instance) bool
	}
	var cands []waiting
	t.idx.eachLive(func(pr *Prompt) bool {
		v := pr.snap()
		at, life, num, eligible := v.instance, v.life, v.life.Number, pr.eligible
		if at == nil || at == inst || life.Phase != lifecycle.Queued || life.Posting || life.Attempts != 1 || life.UpstreamID == "" ||
			at.State().Held() || at.State().Leaving() || at.State().Suspect() || !at.State().SocketUp() {
			return true
		}
		if w := at.Workload().Total(); w >= 2 {
			cands = append(cands, waiting{pr, at, w, num, eligible})
		}
		return true
	})
	// Eligibility asks the catalogue: after the walk.
	var best *waiting
	for k := range cands {
		c := &cands[k]
		if c.eligible != nil && !c.eligible(inst) {
			continue
		}
		if best == nil || c.work > best.work || (c.at == best.at && c.num < best.num) {
			best = c
		}
	}
	if best == nil {
		return nil, nil
	}
	return best.pr, best.at
}

// moveWaiting moves pr, queued at from, to an instance with no work (to,
// unless selection finds another as idle): if from still has it waiting,
// it is deleted from from's queue, and moves only if from then shows it
// gone and never run. If from started or ran it meanwhile, it stays. If
// from does not answer the delete or the look after it, it stays too (it
// may run there yet), marked DeleteSent (lifecycle.State): should the delete land later,
// the queue check for deleted prompts (passes.verify) resubmits it instead
// of taking it for a client's delete.
// The client sees nothing of the move: same prompt_id, same number, its
// events from wherever it runs.
//
// Like a failover, it is a state of the owner of pr (move): each call to
// an instance is a worker whose answer comes back to that owner, which
// decides what follows. Not on an owner: it returns when the move is over.
func (t *mover) moveWaiting(ctx context.Context, pr *Prompt, from, to *upstream.Instance) {
	mv := &move{t: t, ctx: ctx, pr: pr, from: from, done: make(chan struct{}),
		what: "it was moved off instance " + from.Name, noneWhy: "no instance is available", quiet: true}
	mv.uid = pr.UpstreamID()
	if mv.uid == "" {
		return
	}
	// Asked before the prompt is held for the move, with a short bound:
	// an instance that does not answer at once (hung, dying) is failover's
	// business, which must find its prompts free to move, and no delete
	// goes to it. A prompt deleted behind comfygate's back (a client's
	// clear sent straight to the instance) looks queued until the queue check
	// sees it gone: it must not come back to life elsewhere.
	mv.work(func(ctx context.Context) func() {
		qctx, cancel := context.WithTimeout(ctx, moveProbeTimeout)
		_, pending, err := queueIDs(qctx, from)
		cancel()
		return func() { mv.stealLooked(to, pending, err) }
	})
	<-mv.done
}

// stealLooked holds the prompt if from still has it waiting, and sends
// from the delete of it. On the owner.
func (mv *move) stealLooked(to *upstream.Instance, pending map[string]bool, err error) {
	t, pr, from, uid := mv.t, mv.pr, mv.from, mv.uid
	if err != nil {
		mv.end()
		return
	}
	if !pending[uid] {
		s := t.owners.socketFor(from)
		s.box.post(s.passes.wantVerify)
		mv.end()
		return
	}
	st, ok := t.steps.step(pr, lifecycle.Event{Kind: lifecycle.MoveBegin, Instance: from.Name}, nil)
	if !ok {
		mv.end()
		return
	}
	mv.held = true
	base, err := parseBody(pr.lastBody())
	if st.Resume != lifecycle.Queued || st.UpstreamID != uid || !idleNow(to) || err != nil {
		mv.stealStays(false)
		return
	}
	mv.base, mv.attempts = base, st.Attempts
	mv.work(func(ctx context.Context) func() {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout(t.cfg.HealthCheck.Timeout))
		defer cancel()
		del, _ := json.Marshal(map[string][]string{"delete": {uid}})
		status, _, delErr := from.Transport().Call(pctx, "POST", "/queue", map[string]string{"Content-Type": "application/json"}, del)
		switch {
		case delErr != nil && isNotSent(delErr):
			return func() { mv.stealStays(false) } // nothing reached from: it is still queued there
		case delErr != nil || status != 200:
			// No answer (from stopped as the delete left?): it may run
			// there yet, or the delete may land later. It stays; should
			// it vanish from from's queue, the queue check sends it elsewhere
			// (DeleteSent) instead of taking it for a client's delete, and
			// if from died, its failover moves it.
			return func() { mv.stealStays(true) }
		}
		// Asked after the delete: a prompt that started before it is
		// running or in the history now, and one that did not is gone
		// for good.
		_, found, answered := probeAt(pctx, from, uid)
		return func() { mv.stealDeleted(to, found, answered) }
	})
}

// stealDeleted lets the prompt leave from once from showed it gone and
// never run, and sends it on. On the owner.
func (mv *move) stealDeleted(to *upstream.Instance, found, answered bool) {
	t, pr, from := mv.t, mv.pr, mv.from
	switch {
	case found:
		mv.stealStays(false)
		return
	case !answered:
		mv.stealStays(true)
		return
	}
	if _, ok := t.steps.step(pr, lifecycle.Event{Kind: lifecycle.Leave}, nil); !ok {
		mv.stealStays(false) // it finished meanwhile
		return
	}
	mv.left = true
	t.log.Debug("upstream: moving a waiting prompt to an idle instance", "prompt_id", pr.ID, "from", from.Name, "to", to.Name)
	mv.deadline = time.Now() // no waiting for an instance: it was running where it was
	mv.pick()
}

// stealStays gives the prompt back to from; if from died while the
// prompt was held here, its failover passed the prompt over: it fails
// over now, in a worker. On the owner.
func (mv *move) stealStays(deleteSent bool) {
	t, pr, from := mv.t, mv.pr, mv.from
	mv.settled = true
	if _, ok := t.steps.step(pr, lifecycle.Event{Kind: lifecycle.MoveAbort, DeleteSent: deleteSent}, nil); ok && from.ConfirmedDown() {
		mv.work(func(ctx context.Context) func() {
			t.failover(ctx, pr, from, fmt.Sprintf("instance %s died", from.Name), false)
			return mv.end
		})
		return
	}
	mv.end()
}
