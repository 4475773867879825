package prompts

// A reclaim (tombstones.go) and a client's cancel (Cancel) are, like a
// failover (move.go), states of the owner of the prompt they act on: the
// owner takes each decision in a message it runs, and each call to an
// instance is a worker whose result comes back as the next message. The
// messages go to the owner of the instance the prompt is at when each
// runs (the step rule, steps.step), so they step the prompt themselves.

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/comfygate/comfygate/upstream"
)

// follow is one such sequence about one prompt. What it keeps is touched
// only by its messages, which run one at a time on an owner.
type follow struct {
	owners *owners
	run    *run
	log    *slog.Logger
	ctx    context.Context // the calls' context (a client's, for a cancel)
	pr     *Prompt
	what   string // what it is, for a panic's log
	done   chan struct{}
	once   sync.Once
}

// newFollow begins a sequence about pr, its calls on ctx; what names it
// in a panic's log.
func newFollow(ctx context.Context, o *owners, r *run, log *slog.Logger, pr *Prompt, what string) *follow {
	return &follow{owners: o, run: r, log: log, ctx: ctx, pr: pr, what: what, done: make(chan struct{})}
}

// post runs f on the owner of the instance fl's prompt is at when f runs,
// with that instance. The sequence ends there when the prompt is at no
// instance or the owner stopped (the table closed).
func (fl *follow) post(f func(at *upstream.Instance)) {
	inst := fl.pr.Instance()
	if inst == nil {
		fl.end()
		return
	}
	ok := fl.owners.socketFor(inst).box.post(func() {
		if fl.pr.Instance() != inst {
			fl.post(f) // it moved meanwhile: on to its owner
			return
		}
		defer func() {
			if r := recover(); r != nil {
				fl.log.Error("prompts: panic in "+fl.what, "prompt_id", fl.pr.ID, "panic", fmt.Sprint(r))
				fl.end()
			}
		}()
		f(inst)
	})
	if !ok {
		fl.end()
	}
}

// work runs call in a worker and posts the message it returns to the
// prompt's owner. The sequence ends if call panicked or the table closed.
func (fl *follow) work(call func(ctx context.Context) func(at *upstream.Instance)) {
	if !fl.run.goRun(func() {
		then := func(*upstream.Instance) { fl.end() } // call panicked
		defer func() { fl.post(then) }()
		safely(fl.log, fl.what, func() { then = call(fl.ctx) })
	}) {
		fl.end()
	}
}

// end tells the sequence's caller it is over.
func (fl *follow) end() { fl.once.Do(func() { close(fl.done) }) }

// wait returns when the sequence is over. Not on an owner.
func (fl *follow) wait() { <-fl.done }
