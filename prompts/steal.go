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
	return inst.Available() && !inst.Suspect() && inst.SocketUp() && inst.Work() == 0
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
			at.Held() || at.Leaving() || at.Suspect() || !at.SocketUp() {
			return true
		}
		if w := at.Work(); w >= 2 {
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
// verifyQueue resubmits it instead of taking it for a client's delete.
// The client sees nothing of the move: same prompt_id, same number, its
// events from wherever it runs.
func (t *mover) moveWaiting(ctx context.Context, pr *Prompt, from, to *upstream.Instance) {
	uid := pr.UpstreamID()
	// Asked before the prompt is held for the move, with a short bound:
	// an instance that does not answer at once (hung, dying) is failover's
	// business, which must find its prompts free to move, and no delete
	// goes to it. A prompt deleted behind comfygate's back (a client's
	// clear sent straight to the instance) looks queued until verifyQueue
	// sees it gone: it must not come back to life elsewhere.
	qctx, cancel := context.WithTimeout(ctx, moveProbeTimeout)
	_, pending, err := queueIDs(qctx, from)
	cancel()
	if err != nil || uid == "" {
		return
	}
	if !pending[uid] {
		s := t.socketFor(from)
		s.box.post(s.passes.wantVerify)
		return
	}
	st, ok := t.stepVia(pr, lifecycle.Event{Kind: lifecycle.MoveBegin, Instance: from.Name}, nil)
	if !ok {
		return
	}
	left, deleteSent := false, false
	defer func() {
		if left {
			return
		}
		if _, ok := t.stepVia(pr, lifecycle.Event{Kind: lifecycle.MoveAbort, DeleteSent: deleteSent}, nil); ok && from.ConfirmedDown() {
			// from died while the prompt was held here: its failover
			// passed the prompt over.
			t.failover(ctx, pr, from, fmt.Sprintf("instance %s died", from.Name), false)
		}
	}()
	if st.Resume != lifecycle.Queued || st.UpstreamID != uid || !idleNow(to) {
		return
	}
	base, err := parseBody(pr.lastBody())
	if err != nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout(t.cfg.HealthCheck.Timeout))
	del, _ := json.Marshal(map[string][]string{"delete": {uid}})
	status, _, delErr := from.Call(pctx, "POST", "/queue", map[string]string{"Content-Type": "application/json"}, del)
	if delErr != nil && isNotSent(delErr) {
		cancel()
		return // nothing reached from: it is still queued there
	}
	if delErr != nil || status != 200 {
		// No answer (from stopped as the delete left?): it may run there
		// yet, or the delete may land later. It stays; should it vanish
		// from from's queue, verifyQueue sends it elsewhere (DeleteSent)
		// instead of taking it for a client's delete, and if from died,
		// its failover moves it.
		cancel()
		deleteSent = true
		return
	}
	// Asked after the delete: a prompt that started before it is running
	// or in the history now, and one that did not is gone for good.
	_, found, answered := probeAt(pctx, from, uid)
	cancel()
	if found {
		return
	}
	if !answered {
		deleteSent = true
		return
	}
	if _, ok := t.stepVia(pr, lifecycle.Event{Kind: lifecycle.Leave}, nil); !ok {
		return // it finished meanwhile
	}
	left = true
	t.log.Debug("upstream: moving a waiting prompt to an idle instance", "prompt_id", pr.ID, "from", from.Name, "to", to.Name)
	var tried []*upstream.Instance
	for {
		inst, err := t.submits.pick(pr, tried)
		if err != nil {
			t.lose(pr, from, "it was moved off instance "+from.Name, "no instance is available")
			return
		}
		tried = append(tried, inst)
		res, outcome, err := t.submits.send(ctx, pr, inst, t.submits.bodyFor(ctx, pr, inst, base), true)
		switch {
		case outcome == sentRefused:
			continue
		case outcome == sentAmbiguous:
			return // confirmLater settles it
		case err == nil && res.Status == 200:
			return
		default:
			why := fmt.Sprintf("instance %s refused it with status %d", inst.Name, res.Status)
			if err != nil {
				why = fmt.Sprintf("instance %s refused it", inst.Name)
			}
			t.lose(pr, from, "it was moved off instance "+from.Name, why)
			return
		}
	}
}
