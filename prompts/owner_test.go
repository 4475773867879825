package prompts

import (
	"log/slog"
	"testing"

	"github.com/comfygate/comfygate/internal/testkit"
)

// The owner runs messages one at a time in the order they were posted,
// including the ones a message posts to its own owner, and do returns
// only after its message ran.
func TestMailboxRunsInOrder(t *testing.T) {
	t.Parallel()
	r := newRun(nil)
	b := newMailbox(r, slog.New(slog.DiscardHandler))
	var got []int // touched only by the owner's messages
	for i := range 100 {
		b.post(func() {
			got = append(got, i)
			if i == 99 {
				b.post(func() { got = append(got, 100) }) // from the owner itself
			}
		})
	}
	var n int
	if !b.do(func() {}) || !b.do(func() { n = len(got) }) {
		t.Fatal("do reported the owner stopped while it runs")
	}
	if n != 101 {
		t.Fatalf("after do, %d messages ran; want 101", n)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("message %d ran as %d: out of order (%v)", i, v, got)
		}
	}
	r.close()
	r.wait()
	if b.post(func() {}) || b.do(func() { t.Error("a message ran after the owner stopped") }) {
		t.Fatal("post or do accepted a message after the owner stopped")
	}
}

// An idle owner holds no goroutine: the one that drained its queue ends,
// and the next message starts another, which the run counts (Close
// waits for it).
func TestIdleOwnerHoldsNoGoroutine(t *testing.T) {
	t.Parallel()
	r := newRun(nil)
	b := newMailbox(r, slog.New(slog.DiscardHandler))
	for range 3 {
		if !b.do(func() {}) {
			t.Fatal("do reported the owner stopped while the table runs")
		}
		if !testkit.Poll(testkit.WaitBound, func() bool { return r.n.Load() == 0 }) {
			t.Fatalf("%d goroutines still counted with the queue empty", r.n.Load())
		}
	}
	r.close()
	r.wait()
}
