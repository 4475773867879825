package metrics

import (
	"slices"
	"testing"
	"time"
)

// TestRecent: finished prompts land in the step they finished in, oldest
// step first, failures counted apart, and steps older than the window
// fall out.
func TestRecent(t *testing.T) {
	t.Parallel()
	m := New("test")
	now := time.Date(2026, 12, 7, 10, 0, 1, 0, time.UTC)
	m.now = func() time.Time { return now }
	m.PromptFinished("a", OutcomeSuccess, time.Second)
	m.PromptFinished("b", OutcomeError, time.Second)
	m.PromptFinished("a", OutcomeInterrupted, time.Second)
	now = now.Add(RecentStep)
	m.PromptFinished("a", OutcomeSuccess, time.Second)

	r := m.Stats().Recent
	if r.StepSeconds != RecentStep.Seconds() || len(r.Finished) != RecentSteps || len(r.Failed) != RecentSteps {
		t.Fatalf("shape: %+v", r)
	}
	wantDone, wantFailed := make([]int64, RecentSteps), make([]int64, RecentSteps)
	wantDone[RecentSteps-2], wantFailed[RecentSteps-2], wantDone[RecentSteps-1] = 3, 2, 1
	if !slices.Equal(r.Finished, wantDone) || !slices.Equal(r.Failed, wantFailed) {
		t.Errorf("after two steps: finished %v failed %v, want %v %v", r.Finished, r.Failed, wantDone, wantFailed)
	}

	now = now.Add(RecentStep * (RecentSteps - 1))
	r = m.Stats().Recent
	if r.Finished[0] != 1 || r.Failed[0] != 0 || sum(r.Finished) != 1 {
		t.Errorf("a window later the last step stays, oldest: %v %v", r.Finished, r.Failed)
	}
	now = now.Add(RecentStep)
	if r = m.Stats().Recent; sum(r.Finished) != 0 || sum(r.Failed) != 0 {
		t.Errorf("past the window: %v %v, want nothing", r.Finished, r.Failed)
	}
}

func sum(xs []int64) (n int64) {
	for _, x := range xs {
		n += x
	}
	return n
}
