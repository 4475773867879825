package jobs

import (
	"context"
	"errors"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
)

// watchdog expires finished jobs (sweep, with the engine) and settles the
// jobs at the instances whose end no event reported: a prompt the prompt
// table forgot, or one its instance's history says has ended.
type watchdog struct {
	eng *engine
	del *delivery // reads an instance's history
	be  backend
	ctx context.Context
	// staleAfter is how long an active job may go without an event before
	// the watchdog asks the prompt table whether its prompt ended unseen.
	staleAfter time.Duration
}

// sweep removes expired jobs and watches the jobs at the instances.
func (s *watchdog) sweep() {
	now := s.eng.timeNow()
	s.eng.lock()
	watch := s.eng.sweepLocked(now)
	s.eng.unlock()
	for _, j := range watch {
		s.watch(j, now)
	}
}

// atInstance reports whether the prompt table has the job's prompt: submitted and
// answered (or seen running). the engine's lock must be held.
func atInstance(j *job) bool {
	return j.submitted && !j.restored && (j.state == stQueued || j.state == stRunning)
}

// watch settles a job at an instance that the prompt table no longer knows (an
// unconfirmed submission the instance never took is dropped: the job goes
// back in line) or that the pool reports finished although no terminal
// event reached the job (events lost in a socket reconnect: the
// instance's history says how it ended, asked at most once per staleAfter).
func (s *watchdog) watch(j *job, now time.Time) {
	// The pool is asked without the engine's lock held: it may hold its own locks
	// while it delivers events, which take jobsMu.
	p, ok := s.be.Prompt(j.id)
	done := ok && p.State() == prompts.PromptDone
	s.eng.lock()
	if !atInstance(j) {
		s.eng.unlock()
		return
	}
	if !ok {
		if !j.sawEvent {
			s.eng.requeueLocked(j, errors.New("the instance never confirmed the prompt"))
		} else {
			s.eng.finishLocked(j, stFailed, "comfygate lost track of the job's prompt")
			s.eng.releaseLocked(j)
		}
		s.eng.unlock()
		return
	}
	last := j.lastEvent
	if last.IsZero() {
		last = j.dispatched
	}
	if !done || now.Sub(last) < s.staleAfter {
		s.eng.unlock()
		return
	}
	j.lastEvent = now // one look per staleAfter
	s.eng.unlock()
	inst := p.Instance()
	if inst == nil {
		return
	}
	refs, entry := s.del.historyOutputs(s.ctx, inst, p.UpstreamID())
	s.eng.lock()
	defer s.eng.unlock()
	if j.state.terminal() || j.state == stFetching || entry == nil {
		return
	}
	s.endFromHistoryLocked(j, p, inst, entry, refs)
}

// endFromHistoryLocked ends j as its history entry at inst says: done with
// the outputs refs, cancelled, or failed with the entry's error. An entry
// without a status (a server older than November 2023) counts as a
// success when it holds the job's output. the engine's lock held.
func (s *watchdog) endFromHistoryLocked(j *job, p *prompts.Prompt, inst *upstream.Instance, entry *comfyapi.HistoryEntry, refs []outRef) {
	outcome := entry.Outcome()
	if outcome == comfyapi.OutcomeSuccess || (outcome == comfyapi.OutcomeUnknown && hasNode(refs, j.wf.cfg.OutputNode)) {
		j.addOutputsLocked(refs)
		j.outInst = inst
		s.eng.succeededLocked(j, p, inst)
		return
	}
	if outcome == comfyapi.OutcomeInterrupted {
		s.eng.finishLocked(j, stCancelled, "")
		s.eng.releaseLocked(j)
		return
	}
	s.eng.finishLocked(j, stFailed, historyError(entry))
	s.eng.releaseLocked(j)
}

// deletedUnseen reports whether a job that never started has a prompt the
// prompt table reports done although its instance has no history of it.
func (s *watchdog) deletedUnseen(ctx context.Context, j *job) bool {
	s.eng.lock()
	queued := j.state == stQueued
	s.eng.unlock()
	if !queued {
		return false
	}
	p, found := s.be.Prompt(j.id)
	if !found || p.State() != prompts.PromptDone || p.Instance() == nil {
		return false
	}
	entry, answered := s.del.readHistory(ctx, p.Instance(), p.UpstreamID())
	return answered && entry == nil
}
