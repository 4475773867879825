package prompts

import (
	"fmt"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/upstream"
)

// TestIdleInstanceTakesWaitingPrompts: 6 prompts split 3/3 over two
// instances; one instance holds its queue (a slow GPU), the other runs its
// share and, idle, takes the held instance's waiting prompts one by one
// until that one has a single prompt left. Every prompt runs exactly once,
// each client sees one start and one success under its own id, and the
// held instance runs only what stayed.
func TestIdleInstanceTakesWaitingPrompts(t *testing.T) {
	t.Parallel()
	ss := testkit.Sims(t, 2, comfysim.Options{RecordRuns: true})
	p, _ := simPool(t, func(c *config.Config) { c.Routing.MovePending = true }, ss...)
	in := p.Instances()
	for _, s := range ss {
		s.SetPaused(true)
	}
	const n = 6
	sinks := make([]*countSink, n)
	ids := make([]string, n)
	first := map[*upstream.Instance]int{}
	for k := range n {
		ids[k], sinks[k] = newUUID(), newCountSink()
		res := simSubmit(t, p, ids[k], simPrompt(fmt.Sprintf("move-%d", k), false), sinks[k])
		first[res.Instance]++
	}
	if first[in[0]] != 3 || first[in[1]] != 3 {
		t.Fatalf("split %d/%d, want 3/3", first[in[0]], first[in[1]])
	}
	held, free := ss[0], ss[1]
	free.SetPaused(false)
	// The free instance runs its 3, then takes 2 of the held one's 3: the
	// last one waits for nobody (nothing runs before it there).
	finished := func() int {
		done := 0
		for _, s := range sinks {
			if s, _ := s.counts(); s > 0 {
				done++
			}
		}
		return done
	}
	testkit.Poll(20*time.Second, func() bool { return finished() >= 5 })
	if got := finished(); got != 5 {
		for _, inst := range in {
			st := inst.Status()
			t.Logf("%s: in flight %d, queue %d", inst.Name, st.Inflight, st.QueueDepth)
		}
		for k, id := range ids {
			pr, _ := p.Prompt(id)
			t.Logf("prompt %d: %+v at %s", k, pr.Life(), pr.Instance().Name)
		}
		t.Fatalf("%d prompts finished, want 5", got)
	}
	if got := free.PromptsExecuted(); got != 5 {
		t.Fatalf("the free instance ran %d prompts, want 5", got)
	}
	if got := simQueueLen(t, held); got != 1 {
		t.Fatalf("the held instance has %d prompts queued, want 1", got)
	}
	held.SetPaused(false)
	for k, s := range sinks {
		if !s.waitDone(10 * time.Second) {
			t.Fatalf("prompt %d did not finish", k)
		}
	}
	runs := free.Runs()
	for id, c := range held.Runs() {
		runs[id] += c
	}
	for k, id := range ids {
		pr, ok := p.Prompt(id)
		if !ok {
			t.Fatalf("prompt %d unknown", k)
		}
		if c := runs[pr.UpstreamID()]; c != 1 {
			t.Errorf("prompt %d ran %d times", k, c)
		}
		s := sinks[k]
		s.mu.Lock()
		starts, succ := s.starts, s.successes
		s.mu.Unlock()
		if starts != 1 || succ != 1 {
			t.Errorf("prompt %d: its client saw %d starts and %d successes, want 1 and 1", k, starts, succ)
		}
	}
	if got := held.PromptsExecuted(); got != 1 {
		t.Errorf("the held instance ran %d prompts, want 1", got)
	}
}

// TestMovePendingOff: with routing.move_pending false (the default), a
// prompt stays at the instance it was sent to.
func TestMovePendingOff(t *testing.T) {
	t.Parallel()
	ss := testkit.Sims(t, 2, comfysim.Options{})
	p, _ := simPool(t, func(c *config.Config) { c.Routing.MovePending = false }, ss...)
	for _, s := range ss {
		s.SetPaused(true)
	}
	sinks := make([]*countSink, 4)
	for k := range sinks {
		sinks[k] = newCountSink()
		simSubmit(t, p, newUUID(), simPrompt(fmt.Sprintf("stay-%d", k), false), sinks[k])
	}
	ss[1].SetPaused(false)
	testkit.Eventually(t, "the free instance ran its share", func() bool { return ss[1].PromptsExecuted() == 2 })
	// Its empty queue was reported; nothing else comes to it.
	testkit.Eventually(t, "the free instance reported an empty queue", func() bool { return p.Instances()[1].Workload().QueueDepth() == 0 })
	if got := simQueueLen(t, ss[0]); got != 2 {
		t.Fatalf("the held instance has %d prompts queued, want 2", got)
	}
	ss[0].SetPaused(false)
	for k, s := range sinks {
		if !s.waitDone(10 * time.Second) {
			t.Fatalf("prompt %d did not finish", k)
		}
	}
}
