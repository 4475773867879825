package prompts

import (
	"log/slog"
	"sync"
	"testing"
)

// The owner runs messages one at a time in the order they were posted,
// including the ones a message posts to its own owner, and do returns
// only after its message ran.
func TestMailboxRunsInOrder(t *testing.T) {
	t.Parallel()
	tbl := &Table{run: newRun(nil)}
	b := newMailbox()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		b.serve(slog.New(slog.DiscardHandler), tbl.run.quit)
	}()
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
	tbl.run.close()
	wg.Wait()
	if b.post(func() {}) || b.do(func() { t.Error("a message ran after the owner stopped") }) {
		t.Fatal("post or do accepted a message after the owner stopped")
	}
}
