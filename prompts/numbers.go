package prompts

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/state"
)

// The fleet queue numbers (Prompt.Number). A prompt takes its number at
// its first send's step, from the table's own counter (numbering). With
// replicas (state.url), each replica counting on its own would hand out
// the same numbers, so the submitter draws the number from the replicas'
// shared counter before that step (sharedNumbers.draw) and the step gives
// the drawn one: steps do no I/O.

const (
	// numberTimeout bounds one draw from the shared counter: every
	// submission waits for it.
	numberTimeout = 200 * time.Millisecond
	// numberPause is how long draws are not tried after one failed: while
	// Redis does not answer, submissions are numbered locally at once
	// instead of each waiting numberTimeout.
	numberPause = time.Second
)

// numbering is the table's counter of the fleet queue numbers: the next one.
type numbering struct{ n atomic.Int64 }

// next gives pr its fleet number (Prompt.Number): the one its submitter
// drew from the replicas' counter, else the next of this counter; 0, none
// taken, when the client chose its own. A truthy "front" negates it.
func (c *numbering) next(pr *Prompt) int64 {
	if pr.ownNumber {
		return 0
	}
	n := pr.drawn
	if !pr.hasDrawn {
		n = c.take()
	}
	if pr.front {
		n = -n // ComfyUI's front: -counter
	}
	return n
}

// take returns the counter's next number.
func (c *numbering) take() int64 { return c.n.Add(1) - 1 }

// follow moves the counter past n, a number drawn from the replicas'
// counter: a number this counter hands out when a draw fails comes after
// the ones this replica saw.
func (c *numbering) follow(n int64) {
	for {
		cur := c.n.Load()
		if cur > n || c.n.CompareAndSwap(cur, n+1) {
			return
		}
	}
}

// sharedNumbers draws the fleet numbers from the replicas' counter
// (state.url). When the counter does not answer within numberTimeout, a
// prompt is numbered by the table's own counter rather than refused (the
// failure logged and counted): its number may then be one another replica
// hands out too, and /queue orders the two by instance.
type sharedNumbers struct {
	c        state.Counter
	local    *numbering // the table's counter: the fallback
	m        *metrics.Metrics
	log      *slog.Logger
	failedAt atomic.Int64 // unix nanoseconds of the last failed draw
}

// draw gives pr, before its first send's step, the fleet number that step
// gives it (numbering.next). Nothing for a prompt whose client chose its
// own number, or one that has a number: a resend keeps it, and so does a
// first send retried after a refusal. On the submitter's goroutine, before
// the step: the step reads what it set.
func (sn *sharedNumbers) draw(ctx context.Context, pr *Prompt) {
	if pr.ownNumber || pr.hasDrawn || pr.Life().Numbered {
		return
	}
	n, ok := sn.next(ctx)
	if !ok {
		n = sn.local.take()
	}
	pr.drawn, pr.hasDrawn = n, true
}

// next is the replicas' counter's next number, and false when it did not
// answer within numberTimeout (or a draw failed within numberPause). The
// store's calls end at their context's deadline, even on a server that
// accepted the connection and answers nothing (state.Open).
func (sn *sharedNumbers) next(ctx context.Context) (int64, bool) {
	if f := sn.failedAt.Load(); f != 0 && time.Since(time.Unix(0, f)) < numberPause {
		sn.m.StateIndexError("number")
		return 0, false
	}
	// Not cut short by a client that left: the send goes on, numbered.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), numberTimeout)
	n, err := sn.c.Next(dctx, sn.local.n.Load())
	cancel()
	if err == nil {
		sn.local.follow(n)
		return n, true
	}
	sn.failedAt.Store(time.Now().UnixNano())
	sn.m.StateIndexError("number")
	sn.log.Warn("prompts: shared queue number not drawn, numbered by this replica", "err", err)
	return 0, false
}

// ShareNumbers makes the table number its prompts from c, the replicas'
// shared counter, instead of its own (which stays the fallback when c does
// not answer). A nil c (memory) leaves the table to its own counter. Call
// it before the table takes prompts.
func (t *Table) ShareNumbers(c state.Counter) {
	if c == nil {
		return
	}
	t.submits.numbers.Store(&sharedNumbers{c: c, local: &t.steps.numbers, m: t.m, log: t.log})
}
