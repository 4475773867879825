package prompts

import (
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

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

// do on an idle owner runs its message on the calling goroutine (no
// goroutine started, no wake-up); on a busy one it waits its turn behind
// the queued messages; what is posted while a message runs on the caller
// runs after it, on a goroutine of the owner's.
func TestDoRunsHereWhenIdle(t *testing.T) {
	t.Parallel()
	r := newRun(nil)
	b := newMailbox(r, slog.New(slog.DiscardHandler))
	// caller: the message runs on the goroutine that called do, not on
	// one of the owner's, whose stack has drain under it.
	caller := func() bool {
		buf := make([]byte, 64<<10)
		return !strings.Contains(string(buf[:runtime.Stack(buf, false)]), "(*mailbox).drain")
	}
	var here bool
	if !b.do(func() { here = caller() }) || !here {
		t.Fatal("do on an idle owner did not run its message on the calling goroutine")
	}

	// Busy: a message holds the owner; do waits behind it, on the owner.
	release, holding := make(chan struct{}), make(chan struct{})
	b.post(func() { close(holding); <-release })
	<-holding
	var order []string // the owner's
	done := make(chan bool)
	go func() {
		done <- b.do(func() { order = append(order, "do"); here = caller() })
	}()
	b.post(func() { order = append(order, "posted meanwhile") })
	select {
	case <-done:
		t.Fatal("do returned while the owner was busy with an earlier message")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if !<-done || here {
		t.Fatal("do on a busy owner ran its message on the calling goroutine")
	}

	// Posted while a message runs here: it runs after, on the owner.
	ran := make(chan bool, 1)
	b.do(func() {
		b.post(func() { ran <- caller() })
		order = append(order, "here")
	})
	if <-ran {
		t.Fatal("a message posted during do ran on the calling goroutine")
	}
	b.do(func() {})
	if len(order) != 3 || order[2] != "here" {
		t.Fatalf("order %v", order)
	}
	r.close()
	r.wait()
}
