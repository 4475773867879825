package prompts

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/upstream"
)

// mover is the table's moving of prompts between instances: failover of
// a dead or hung instance's prompts (move.go), reconciling an instance
// after its socket came back, moves of waiting prompts to idle instances
// (steal.go), and the tombstones and clean-up that keep a moved prompt
// from running twice (tombstones.go).
type mover struct {
	p       fleet
	cfg     *config.Config
	m       *metrics.Metrics
	log     *slog.Logger
	run     *run
	idx     *index
	owners  *owners
	steps   *steps
	submits *submitter // the sends of the prompts it moves
	events  *delivery  // a lost prompt's error
	files   *fileStore // the outputs of a run found in a history
}

// failoverParallel bounds the resubmissions one dead instance causes at once.
const failoverParallel = 8

// InstanceDown is told that inst is confirmed dead: every prompt pinned to
// it that is not done moves to another instance under the same
// client-facing id, or, when it cannot, its sink gets ComfyUI's
// execution_error saying why. That includes the prompts whose POST
// /prompt got no answer (confirmLater was waiting to learn whether inst
// took them): a dead instance cannot run them, so they move at once
// rather than be dropped when the wait ends. A POST still under way is
// left to its send, which fails it over when it ends without an answer.
// Idempotent; returns when all are settled.
func (t *Table) InstanceDown(inst *upstream.Instance) {
	prompts := t.idx.livePinnedTo(inst)
	if len(prompts) == 0 {
		return
	}
	t.log.Warn("prompts: instance down, failing over its prompts", "instance", inst.Name, "prompts", len(prompts))
	ctx := t.run.runCtx()
	sem := make(chan struct{}, failoverParallel)
	var wg sync.WaitGroup
	for _, pr := range prompts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			safely(t.log, "failover", func() {
				t.moves.failover(ctx, pr, inst, fmt.Sprintf("instance %s died", inst.Name), false)
			})
		}()
	}
	wg.Wait()
}

// loseOwned ends pr as "lost" and tells its sink in ComfyUI's words: an
// execution_error, then the executing-null that ends every prompt. On
// the owner of pr's instance.
func (t *mover) loseOwned(pr *Prompt, from *upstream.Instance, what, why string) {
	if st, ok := t.steps.step(pr, lifecycle.Event{Kind: lifecycle.Close, Outcome: metrics.OutcomeLost}, nil); !ok || st.Outcome != metrics.OutcomeLost {
		return // it ended otherwise first
	}
	t.log.Warn("prompts: prompt lost", "prompt_id", pr.ID, "instance", from.Name, "reason", why)
	msg := fmt.Sprintf("comfygate: %s and the prompt could not be resubmitted: %s", what, why)
	errEv := struct {
		Type string          `json:"type"`
		Data lostErrorFields `json:"data"`
	}{"execution_error", lostErrorFields{
		PromptID:         pr.ID,
		Executed:         []string{},
		ExceptionMessage: msg,
		ExceptionType:    "comfygate.InstanceLost",
		Traceback:        []string{},
		CurrentInputs:    map[string]any{},
		CurrentOutputs:   []string{},
		Timestamp:        time.Now().UnixMilli(),
	}}
	data, _ := marshalNoEscape(errEv)
	t.events.deliver(pr, Event{Instance: from, Type: "execution_error", PromptID: pr.ID, Data: data}, true)
	t.events.deliver(pr, Event{Instance: from, Type: "executing", PromptID: pr.ID, Data: comfyapi.ExecutingNull(pr.ID)}, true)
}

// lostErrorFields is execution_error's data, in ComfyUI's field order.
type lostErrorFields struct {
	PromptID         string         `json:"prompt_id"`
	NodeID           *string        `json:"node_id"`
	NodeType         string         `json:"node_type"`
	Executed         []string       `json:"executed"`
	ExceptionMessage string         `json:"exception_message"`
	ExceptionType    string         `json:"exception_type"`
	Traceback        []string       `json:"traceback"`
	CurrentInputs    map[string]any `json:"current_inputs"`
	CurrentOutputs   []string       `json:"current_outputs"`
	Timestamp        int64          `json:"timestamp"`
}

// reconcile runs after inst's socket came back: events may have been
// missed. For each of its prompts: finished per /history → its sink gets
// the completion it missed; in /queue → keep waiting; neither → the
// instance lost it (restart), so it is resubmitted.
func (t *mover) reconcile(ctx context.Context, inst *upstream.Instance) {
	var running, pending map[string]bool
	for _, pr := range t.idx.livePinnedTo(inst) {
		v := pr.snap()
		uid, ph := v.life.UpstreamID, v.life.Phase
		// Queued or running there; not while unanswered, moving or done.
		skip := (ph != lifecycle.Queued && ph != lifecycle.Running) || uid == "" || v.instance != inst
		if skip {
			continue
		}
		entry, ok := historyEntry(ctx, inst, uid)
		if !ok {
			return // not answering: the health check decides about it
		}
		if entry != nil {
			t.completeFromHistory(inst, pr, uid, entry)
			continue
		}
		if running == nil {
			var err error
			if running, pending, err = queueIDs(ctx, inst); err != nil {
				return
			}
		}
		if running[uid] || pending[uid] {
			continue
		}
		// It may have finished between the two looks.
		if entry, ok := historyEntry(ctx, inst, uid); !ok {
			return
		} else if entry != nil {
			t.completeFromHistory(inst, pr, uid, entry)
			continue
		}
		t.failover(ctx, pr, inst, fmt.Sprintf("instance %s lost the prompt (restarted)", inst.Name), true)
	}
}

// completeFromHistory delivers the end of a prompt that finished while
// comfygate's socket was away: the terminal message its history recorded,
// then executing-null. Nothing is sent if the live stream ended it first.
func (t *mover) completeFromHistory(inst *upstream.Instance, pr *Prompt, uid string, entry json.RawMessage) {
	f := t.historyEnd(inst, uid, entry)
	t.owners.socketFor(inst).box.do(func() { t.completeOwned(inst, pr, uid, f) })
}

// completeOwned is completeFromHistory's delivery, on inst's owner.
func (t *mover) completeOwned(inst *upstream.Instance, pr *Prompt, uid string, f frame) {
	v := pr.snap()
	stale := stateOf(v.life) == PromptDone || v.instance != inst || v.life.UpstreamID != uid
	if stale {
		return
	}
	t.steps.apply(pr, inst, f)
	t.steps.apply(pr, inst, frame{typ: "executing", uid: uid, nodeNull: true, data: comfyapi.ExecutingNull(uid), at: time.Now()})
	// The live stream's own ending, if it comes, would repeat it.
	t.steps.step(pr, lifecycle.Event{Kind: lifecycle.Close}, nil)
}

// historyEnd pins the outputs of the history entry of uid at inst and
// returns the terminal message it records (execution_success, or an
// execution_error saying why), as inst would have sent it.
func (t *mover) historyEnd(inst *upstream.Instance, uid string, entry json.RawMessage) frame {
	h, _ := comfyapi.ParseHistoryEntry(entry)
	t.files.pinOutputs(inst, h.Files())
	f := frame{at: time.Now(), uid: uid}
	if m, ok := h.Status.Terminal(); ok {
		f.typ = m.Type
		if md, err := comfyapi.ParseWSText(fmt.Appendf(nil, `{"type": %s, "data": %s}`, quoteJSON(m.Type), m.Data)); err == nil {
			f.excType, f.data = md.ExceptionType(), md.Raw
		}
	}
	if f.typ == "" {
		if h.Status.StatusStr == comfyapi.StatusSuccess || h.Status.StatusStr == "" {
			f.typ = comfyapi.TypeExecutionSuccess
			f.data = fmt.Appendf(nil, `{"type": "execution_success", "data": {"prompt_id": %s, "timestamp": %d}}`,
				quoteJSON(uid), time.Now().UnixMilli())
		} else {
			f.typ, f.excType = comfyapi.TypeExecutionError, "comfygate.HistoryError"
			ev := struct {
				Type string          `json:"type"`
				Data lostErrorFields `json:"data"`
			}{"execution_error", lostErrorFields{
				PromptID: uid, Executed: []string{}, ExceptionType: f.excType,
				ExceptionMessage: "comfygate: the prompt failed while comfygate's connection to instance " + inst.Name + " was down",
				Traceback:        []string{}, CurrentInputs: map[string]any{}, CurrentOutputs: []string{},
				Timestamp: time.Now().UnixMilli(),
			}}
			f.data, _ = marshalNoEscape(ev)
		}
	}
	return f
}

// confirmLater settles a prompt sent to inst without an answer (timeout):
// accepted if the instance shows it (its events do too, see apply); moved
// elsewhere at once if inst is confirmed dead (it cannot run it); given
// up after two looks that do not find it, or after the call timeout. A
// first submission is then forgotten (its client got the error); a
// resubmission moves on. inst's owner follows it: its waits are timers
// and its looks workers, whose expiries and results are messages to the
// owner. Not on an owner.
func (t *submitter) confirmLater(pr *Prompt, inst *upstream.Instance, uid string) {
	s := t.owners.socketFor(inst)
	u := &unconfirmed{pr: pr, uid: uid, deadline: time.Now().Add(max(t.cfg.Timeout, 10*time.Second)), delay: 500 * time.Millisecond}
	s.box.post(func() { s.passes.confirmRound(u) })
}

// unconfirmed is a prompt sent without an answer, as its instance's owner
// follows it (confirmLater). Only that owner touches it.
type unconfirmed struct {
	pr       *Prompt
	uid      string
	deadline time.Time     // given up after this
	delay    time.Duration // the wait before the next look
	misses   int           // looks the instance answered without it
}

// still reports whether pr is still sent to inst under uid, unanswered.
func (u *unconfirmed) still(inst *upstream.Instance) bool {
	v := u.pr.snap()
	return v.instance == inst && v.life.UpstreamID == u.uid && v.life.Phase == lifecycle.Unconfirmed
}

// confirmRound begins one round: an instance confirmed dead cannot run
// the prompt, so it moves at once (InstanceDown may have come while the
// POST was under way: it leaves a prompt being sent to its send);
// otherwise the owner waits, then looks. On the owner.
func (s *passes) confirmRound(u *unconfirmed) {
	t := s.t
	if !u.still(s.inst) {
		return
	}
	if s.inst.ConfirmedDown() {
		t.run.goBackground(func(ctx context.Context) {
			defer s.box.post(func() { s.confirmWait(u) })
			t.moves.failover(ctx, u.pr, s.inst, fmt.Sprintf("instance %s died", s.inst.Name), false)
		})
		return
	}
	s.confirmWait(u)
}

// confirmWait arms the timer of the next look. On the owner.
func (s *passes) confirmWait(u *unconfirmed) {
	t := s.t
	if !u.still(s.inst) {
		return
	}
	d := u.delay
	u.delay = min(u.delay*2, 5*time.Second)
	t.p.Clock().AfterFunc(d, func() { s.box.post(func() { s.confirmLook(u) }) })
}

// confirmLook asks the instance, in a worker, whether it has the prompt.
// On the owner.
func (s *passes) confirmLook(u *unconfirmed) {
	t := s.t
	if !u.still(s.inst) {
		return
	}
	t.run.goBackground(func(ctx context.Context) {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout(t.cfg.HealthCheck.Timeout))
		st, found, answered := probeAt(pctx, s.inst, u.uid)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.box.post(func() { s.confirmFound(u, st, found, answered) })
	})
}

// confirmFound acts on a look's answer. On the owner.
func (s *passes) confirmFound(u *unconfirmed, st PromptState, found, answered bool) {
	t := s.t
	inst, pr := s.inst, u.pr
	if found {
		if u.still(inst) {
			t.steps.step(pr, lifecycle.Event{Kind: lifecycle.Seen}, nil)
		}
		if st == PromptDone {
			t.run.goBackground(func(ctx context.Context) { t.submits.settleFromHistory(ctx, pr, inst, u.uid) })
		}
		return
	}
	if answered {
		u.misses++
	}
	if u.misses < 2 && time.Now().Before(u.deadline) {
		s.confirmRound(u)
		return
	}
	// A first submission (its client got the error) is dropped, and
	// tombstoned there so that it cannot run late; an accepted one moves.
	if !u.still(inst) {
		return // it moved on or ended meanwhile: no longer this wait's
	}
	if _, ok := t.steps.step(pr, lifecycle.Event{Kind: lifecycle.Drop}, nil); ok {
		t.log.Warn("prompts: unanswered prompt not found at its instance, dropped", "prompt_id", pr.ID, "instance", inst.Name)
		return
	}
	t.run.goBackground(func(ctx context.Context) {
		t.moves.failover(ctx, pr, inst, fmt.Sprintf("instance %s did not take the prompt", inst.Name), false)
	})
}

// probeAt asks inst whether it has uid: the queue first, then the
// history. That order cannot miss it: ComfyUI moves a prompt from the
// queue to the history in one step, so one that is in neither the queue
// before nor the history after was not there. (History first would miss a
// prompt that finished between the two questions.) answered is false when
// the instance did not answer.
func probeAt(ctx context.Context, inst *upstream.Instance, uid string) (st PromptState, found, answered bool) {
	running, pending, err := queueIDs(ctx, inst)
	if err != nil {
		return 0, false, false
	}
	switch {
	case running[uid]:
		return PromptRunning, true, true
	case pending[uid]:
		return PromptQueued, true, true
	}
	entry, ok := historyEntry(ctx, inst, uid)
	if !ok {
		return 0, false, false
	}
	if entry != nil {
		return PromptDone, true, true
	}
	return 0, false, true
}

// checkDeleted looks for prompts deleted from inst's queue behind
// comfygate's back (POST /queue delete or clear): ComfyUI sends no event
// for them, so without this they would look pending forever and be
// resubmitted on a failover. The instance reported n queued+running; if
// comfygate holds more accepted prompts there, ask its queue (one check
// at a time). On the owner.
func (s *passes) checkDeleted(n int64) {
	t := s.t
	count := int64(0)
	if t.idx.nlive.Load() <= n {
		return
	}
	t.idx.eachLive(func(pr *Prompt) bool {
		v := pr.snap()
		if ph := v.life.Phase; v.instance == s.inst && (ph == lifecycle.Queued || ph == lifecycle.Running) {
			count++
		}
		return count <= n
	})
	if count > n {
		s.wantVerify()
	}
}

// wantVerify starts a check of s's instance's queue for deleted
// prompts (verify), or asks for another after the one running (a prompt
// found missing after it asked the queue). On the owner.
func (s *passes) wantVerify() {
	if s.verifying {
		s.verifyAgain = true
		return
	}
	s.verifyAgain = false
	s.verifying = true
	s.verify()
}

// verifyEnd ends the queue check, and starts the one asked for meanwhile.
// On the owner.
func (s *passes) verifyEnd() {
	s.verifying = false
	if s.verifyAgain && s.t.run.running() {
		s.wantVerify()
	}
}

// work runs call in a worker on the run's context and posts the message
// it returns to s's owner. fail runs on the owner instead when call or
// that message panicked, and at once when the table is not running.
func (s *passes) work(call func(ctx context.Context) func(), fail func()) {
	if !s.t.run.goBackground(func(ctx context.Context) {
		then := fail // call panicked
		defer func() { s.box.post(guarded(s.t.log, then, fail)) }()
		then = call(ctx)
	}) {
		fail()
	}
}

// guarded returns f, which runs fail instead of crashing when it panics.
func guarded(log *slog.Logger, f, fail func()) func() {
	return func() {
		defer func() {
			if r := recover(); r != nil {
				log.Error("prompts: panic recovered", "in", "instance owner", "panic", fmt.Sprint(r))
				fail()
			}
		}()
		f()
	}
}

// queueCheck is one check of an instance's queue for deleted prompts,
// as its owner follows it: the prompts the queue did not show, each
// asked of the instance's history in turn.
type queueCheck struct {
	missing []queueMiss
	dying   func() bool // the instance is going down: failover's business
}

// queueMiss is a queued prompt the instance's queue did not show.
type queueMiss struct {
	pr  *Prompt
	uid string
}

// verify asks, in a worker, for the queue of s's instance; the prompts
// queued there it no longer has and never ran are marked done: deleted
// behind comfygate's back. On the owner.
func (s *passes) verify() {
	t, inst := s.t, s.inst
	// An instance that is dying also loses its queue: that is failover's
	// business, not a deletion. Checked again after every call below.
	c := &queueCheck{dying: func() bool { return inst.State().Suspect() || !inst.State().SocketUp() || !inst.State().Healthy() }}
	if c.dying() {
		s.verifyEnd()
		return
	}
	// Only prompts the instance had accepted before it was asked can be
	// missing from its answer because they were deleted: one accepted while
	// /queue was on its way is in no snapshot of it.
	asked := time.Now()
	// One accepted before the socket's current connection may have been
	// lost in a restart while the socket was away: reconcile, which runs on
	// every connection, resubmits those.
	since := time.Unix(0, s.upSince.Load())
	s.work(func(ctx context.Context) func() {
		running, pending, err := queueIDs(ctx, inst)
		if err != nil {
			return s.verifyEnd
		}
		return func() {
			for _, pr := range t.idx.livePinnedTo(inst) {
				v := pr.snap()
				uid := v.life.UpstreamID
				skip := v.life.Phase != lifecycle.Queued || uid == "" || v.instance != inst || !v.life.AcceptedAt.Before(asked) ||
					v.life.AcceptedAt.Before(since)
				if !skip && !running[uid] && !pending[uid] {
					c.missing = append(c.missing, queueMiss{pr, uid})
				}
			}
			s.verifyNext(c)
		}
	}, s.verifyEnd)
}

// verifyNext asks the instance's history, in a worker, for the next
// prompt its queue did not show. On the owner.
func (s *passes) verifyNext(c *queueCheck) {
	if len(c.missing) == 0 {
		s.verifyEnd()
		return
	}
	m := c.missing[0]
	c.missing = c.missing[1:]
	if !s.queuedHere(m) {
		s.verifyNext(c)
		return
	}
	s.work(func(ctx context.Context) func() {
		entry, ok := historyEntry(ctx, s.inst, m.uid)
		return func() { s.verifyRan(c, m, entry != nil || !ok) }
	}, s.verifyEnd)
}

// queuedHere reports whether m's prompt is still queued at s's instance
// under m's id. On the owner.
func (s *passes) queuedHere(m queueMiss) bool {
	v := m.pr.snap()
	return v.instance == s.inst && v.life.UpstreamID == m.uid && v.life.Phase == lifecycle.Queued
}

// verifyRan decides about a prompt the queue did not show, once the
// history answered: ran (or no answer), its events tell the rest; never
// run, it was deleted. On the owner.
func (s *passes) verifyRan(c *queueCheck, m queueMiss, ran bool) {
	t, inst, pr := s.t, s.inst, m.pr
	switch {
	case ran:
		s.verifyNext(c)
		return
	case c.dying():
		s.verifyEnd()
		return
	case !s.queuedHere(m):
		s.verifyNext(c) // it moved, ran or ended meanwhile
		return
	case pr.Life().DeleteSent:
		// The delete of a move that got no answer landed after all:
		// comfygate removed it, not a client; it runs elsewhere.
		s.work(func(ctx context.Context) func() {
			t.moves.failover(ctx, pr, inst, fmt.Sprintf("it was moved off instance %s", inst.Name), true)
			return func() { s.verifyNext(c) }
		}, s.verifyEnd)
		return
	}
	if t.steps.markDone(pr, metrics.OutcomeInterrupted) {
		t.log.Info("prompts: prompt deleted from its instance's queue", "prompt_id", pr.ID, "instance", inst.Name)
	}
	s.verifyNext(c)
}

// wantReconcile starts reconcile of s's instance in a worker after a
// (re)connection, or asks for another after the one running (it
// connected again meanwhile). On the owner.
func (s *passes) wantReconcile() {
	if s.reconciling {
		s.reconcileAgain = true
		return
	}
	s.reconcileAgain = false
	s.reconciling = s.t.run.goBackground(func(ctx context.Context) {
		defer s.box.post(func() { // its end, even after a panic
			s.reconciling = false
			if s.reconcileAgain && ctx.Err() == nil {
				s.wantReconcile()
			}
		})
		s.t.moves.reconcile(ctx, s.inst)
	})
}
