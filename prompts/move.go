package prompts

// A failover, and a move of a waiting prompt to an idle instance (steal.go),
// is a state of the owner of the prompt it moves, in the shape
// of the owner's other passes: the owner takes every decision (hold the
// prompt, pick an instance, let it leave, try the next instance, give up)
// in a message it runs, and each call to an instance (a probe, a wait for
// an instance to become available, the send to the next instance) is a
// worker whose result comes back as a message to the owner. The messages
// go to the owner of the instance the prompt is at when each is posted
// (the step rule, steps.step): a send that the next instance refused
// without taking it leaves the prompt there, and the failover goes on
// on that instance's owner.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/upstream"
)

// move is one failover of one prompt. Its fields are touched only by the
// messages it posts, which run one at a time on an owner.
type move struct {
	t         *mover
	ctx       context.Context
	pr        *Prompt
	from      *upstream.Instance
	what      string // what happened to from, for a client's error
	allowSame bool   // it may go back to from (from lost it in a restart)
	noneWhy   string // why it is lost when no instance can take it ("" : none other is available)
	quiet     bool   // not a resubmission (a move to an idle instance): not counted as one

	attempts int
	uid      string // its id at from
	base     map[string]json.RawMessage
	deadline time.Time            // wait for an instance until then
	tried    []*upstream.Instance // from first
	held     bool                 // it is held for the move (MoveBegin)
	left     bool                 // it left from (Leave)
	settled  bool                 // it stays at from (MoveAbort) or ended
	done     chan struct{}        // closed when the failover ended
	endOnce  sync.Once
}

// failover resubmits pr, pinned to from, elsewhere, and returns when that
// is settled. what says what happened to from (for the error a client sees
// when it cannot). allowSame lets the prompt go back to from when no other
// instance can take it (from is alive but lost the prompt in a restart).
// Not on an owner: the owners run it (move).
func (t *mover) failover(ctx context.Context, pr *Prompt, from *upstream.Instance, what string, allowSame bool) {
	mv := &move{t: t, ctx: ctx, pr: pr, from: from, what: what, allowSame: allowSame, done: make(chan struct{})}
	mv.post(mv.begin)
	<-mv.done
}

// post runs f on the owner of the instance mv's prompt is at when f runs.
// If the owner stopped (the table closed), the failover ends there.
func (mv *move) post(f func()) {
	inst := mv.pr.Instance()
	if inst == nil {
		mv.end()
		return
	}
	ok := mv.t.owners.socketFor(inst).box.post(func() {
		if mv.pr.Instance() != inst {
			mv.post(f) // it moved meanwhile: on to its owner
			return
		}
		defer func() {
			if r := recover(); r != nil {
				mv.t.log.Error("prompts: panic in a failover", "prompt_id", mv.pr.ID, "panic", fmt.Sprint(r))
				mv.finish()
			}
		}()
		f()
	})
	if !ok {
		mv.end()
	}
}

// work runs call in a worker and posts its result (then) to the owner.
// The failover ends if the table closed.
func (mv *move) work(call func(ctx context.Context) func()) {
	if !mv.t.run.goBackground(func(context.Context) {
		then := func() { mv.finish() } // call panicked
		defer func() { mv.post(then) }()
		then = call(mv.ctx)
	}) {
		mv.finish()
	}
}

// begin holds the prompt for the move. Only a queued, running or
// unanswered prompt of from moves, and one failover at a time: done
// prompts never move, a POST under way is settled by its send (refused:
// tried elsewhere; no answer: confirmLater). On the owner.
func (mv *move) begin() {
	t, pr := mv.t, mv.pr
	st, ok := t.steps.step(pr, lifecycle.Event{Kind: lifecycle.MoveBegin, Instance: mv.from.Name}, nil)
	if !ok {
		mv.end()
		return
	}
	mv.held = true
	mv.attempts, mv.uid = st.Attempts, st.UpstreamID
	if mv.attempts > t.cfg.Failover.MaxResubmits {
		mv.lose(fmt.Sprintf("it was already resubmitted %d times (failover.max_resubmits)", mv.attempts-1))
		return
	}
	base, err := parseBody(pr.lastBody())
	if err != nil {
		mv.lose("its body could not be read back")
		return
	}
	mv.base = base
	// With no other instance, wait up to suspect_grace for one (or for from
	// to come back: a quick restart) before giving up.
	mv.deadline = time.Now().Add(t.cfg.Failover.SuspectGrace)
	mv.tried = []*upstream.Instance{mv.from}
	mv.pick()
}

// refusedRetry is how soon a failover with no instance left tries again
// the instances that refused its connection.
const refusedRetry = 200 * time.Millisecond

// pick looks for the next instance. On the owner.
func (mv *move) pick() {
	t, from := mv.t, mv.from
	watch := t.p.AvailWatch()
	inst, err := t.submits.pick(mv.pr, mv.tried)
	if err != nil && (mv.allowSame || !mv.left) && from.Available() && !slices.Contains(mv.tried[1:], from) {
		if !mv.allowSame && mv.uid != "" && !mv.left {
			// from is back: it may still have the prompt. Asked in a worker.
			uid := mv.uid
			mv.work(func(ctx context.Context) func() {
				st, found, answered := probeAt(ctx, from, uid)
				return func() { mv.probed(watch, st, found, answered) }
			})
			return
		}
		if mv.allowSame {
			inst, err = from, nil
		}
	}
	mv.picked(watch, mv.deadline, inst, err)
}

// probed acts on from's answer (pick). On the owner.
func (mv *move) probed(watch <-chan struct{}, st PromptState, found, answered bool) {
	t, pr, from, uid := mv.t, mv.pr, mv.from, mv.uid
	retry := mv.deadline
	switch {
	case found && st == PromptDone:
		mv.stay()
		mv.work(func(ctx context.Context) func() {
			if entry, ok := historyEntry(ctx, from, uid); ok && entry != nil {
				t.completeFromHistory(from, pr, uid, entry)
			}
			return mv.finish
		})
		return
	case found:
		mv.finish() // still queued or running there: it stays
		return
	case answered:
		mv.allowSame = true // it restarted and lost it
	default:
		// No answer (a stale connection to a restarted instance): ask
		// again shortly.
		retry = time.Now().Add(100 * time.Millisecond)
	}
	var inst *upstream.Instance
	var err error = upstream.ErrNoUpstream
	if mv.allowSame {
		inst, err = from, nil
	}
	mv.picked(watch, retry, inst, err)
}

// picked sends the prompt to inst, or, with none (err), waits in a worker
// until an instance may be available (at most until retry) and picks
// again; past the deadline, it gives up. On the owner.
func (mv *move) picked(watch <-chan struct{}, retry time.Time, inst *upstream.Instance, err error) {
	t, pr := mv.t, mv.pr
	if err != nil {
		if time.Now().Before(mv.deadline) && mv.ctx.Err() == nil {
			if len(mv.tried) > 1 {
				// Those tried refused the connection (a breaker, no free
				// connection, a dial that failed): none is ruled out for
				// the rest of the wait, each is tried again shortly.
				mv.tried = mv.tried[:1]
				if soon := time.Now().Add(refusedRetry); soon.Before(retry) {
					retry = soon
				}
			}
			wait := mv.deadline
			if retry.Before(wait) {
				wait = retry
			}
			mv.work(func(ctx context.Context) func() {
				upstream.AwaitAvailable(ctx, watch, wait)
				return mv.pick
			})
			return
		}
		why := mv.noneWhy
		if why == "" {
			why = "no other instance is available"
		}
		mv.lose(why)
		return
	}
	mv.tried = append(mv.tried, inst)
	if !mv.left {
		// It leaves from: uncounted there, what from still sends about
		// it is stale, and from may hold it still (hung, not dead), so
		// it must not run it there: a tombstone. Not when from showed
		// it lost it (allowSame: restarted).
		if _, ok := t.steps.step(pr, lifecycle.Event{Kind: lifecycle.Leave, Tombstone: !mv.allowSame}, nil); !ok {
			mv.finish() // it finished meanwhile
			return
		}
		mv.left = true
	}
	base := mv.base
	mv.work(func(ctx context.Context) func() {
		res, outcome, err := t.submits.send(ctx, pr, inst, t.submits.bodyFor(ctx, pr, inst, base), true)
		return func() { mv.sent(inst, res, outcome, err) }
	})
}

// sent acts on the send to inst: refused without reaching it, the next
// instance is tried; otherwise the failover ends. On the owner.
func (mv *move) sent(inst *upstream.Instance, res SubmitResult, outcome sendOutcome, err error) {
	t, pr, from := mv.t, mv.pr, mv.from
	switch {
	case outcome == sentRefused:
		mv.pick()
		return
	case mv.quiet && (outcome == sentAmbiguous || err == nil && res.Status == 200):
		// Sent on (or confirmLater settles it).
	case outcome == sentAmbiguous:
		// confirmLater settles it (and moves it again if inst never took it).
		t.m.IncResubmission(from.Name, inst.Name, true)
		t.log.Warn("prompts: prompt resubmitted, answer pending", "prompt_id", pr.ID, "from", from.Name, "to", inst.Name, "error", err)
	case err == nil && res.Status == 200:
		t.m.IncResubmission(from.Name, inst.Name, true)
		t.log.Info("prompts: prompt resubmitted", "prompt_id", pr.ID, "from", from.Name, "to", inst.Name, "attempt", mv.attempts+1)
	default:
		if !mv.quiet {
			t.m.IncResubmission(from.Name, inst.Name, false)
		}
		why := fmt.Sprintf("instance %s refused it with status %d", inst.Name, res.Status)
		if err != nil {
			why = fmt.Sprintf("instance %s refused it", inst.Name)
		}
		mv.lose(why)
		return
	}
	mv.finish()
}

// lose ends the prompt as lost (lose) and the failover. On the owner.
func (mv *move) lose(why string) {
	mv.t.loseOwned(mv.pr, mv.from, mv.what, why)
	mv.finish()
}

// stay gives the prompt back to from unless it left. On the owner.
func (mv *move) stay() {
	if mv.held && !mv.left && !mv.settled {
		mv.settled = true
		mv.t.steps.step(mv.pr, lifecycle.Event{Kind: lifecycle.MoveAbort}, nil)
	}
}

// finish ends the failover: a prompt still held goes back to from (a
// no-op once lost or finished), and a pick whose send never started is
// given back. On the owner.
func (mv *move) finish() {
	mv.stay()
	mv.t.submits.unreserve(mv.pr)
	mv.end()
}

// end tells the failover's caller it is over.
func (mv *move) end() { mv.endOnce.Do(func() { close(mv.done) }) }
