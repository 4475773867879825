package jobs

import (
	"testing"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/prompts"
)

// TestLine: the operator's view of the facade lists the wait line in
// order, cut at max with the whole length, and the jobs taken from it.
func TestLine(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	s := newFakeService(t, f, func(c *config.Config) { c.Jobs.MaxConcurrent = 1 })
	release := make(chan struct{})
	f.mu.Lock()
	f.submitFn = func(req prompts.SubmitRequest) (prompts.SubmitResult, error) {
		<-release
		return f.accept(req), nil
	}
	f.mu.Unlock()
	t.Cleanup(func() { close(release) })

	// Not started: every job waits, in submission order.
	ids := []string{submitFake(t, s, "/api/upscale-image"), submitFake(t, s, "/api/remove-background"), submitFake(t, s, "/api/upscale-image")}
	l := s.Line(2)
	if l.WaitingTotal != 3 || len(l.Waiting) != 2 || l.Waiting[0].ID != ids[0] || l.Waiting[1].ID != ids[1] ||
		l.Waiting[1].Workflow != "remove-background" || l.Waiting[0].State != "waiting" || l.ActiveTotal != 0 || len(l.Active) != 0 {
		t.Fatalf("Line(2) before start: %+v", l)
	}

	// Started with one slot: the first is being submitted, two wait.
	s.Start(t.Context())
	f.waitSubmitted()
	testkit.Eventually(t, "the first job taken from the line", func() bool {
		l = s.Line(10)
		return l.ActiveTotal == 1 && l.WaitingTotal == 2
	})
	if a := l.Active[0]; a.ID != ids[0] || a.State != "submitting" || len(l.Waiting) != 2 || l.Waiting[0].ID != ids[1] {
		t.Errorf("Line(10) after start: %+v", l)
	}
}
