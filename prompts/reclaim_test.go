package prompts

import (
	"strings"
	"testing"

	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
)

// TestMovedPromptThatRanAfterAllIsReclaimed: a prompt moved off an
// instance that was only unreachable (its process alive, its queue
// running) ran to success there. It ends with that run: its sink gets the
// success once, the copy queued at the other instance is deleted there,
// and the prompt is pinned where it ran (its /history and outputs).
func TestMovedPromptThatRanAfterAllIsReclaimed(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f1, f2)
	i1, i2 := p.Instances()[0], p.Instances()[1]
	sink := newRecSink()
	res := submit(t, p, newUUID(), sink)
	if res.Instance != i1 {
		t.Fatalf("submitted to %s, want %s", nameOf(res.Instance), i1.Name)
	}
	pr := res.Prompt
	uid := pr.UpstreamID()

	markDown(p, i1)
	testkit.Eventually(t, "the copy at the other instance", func() bool { return f2.PromptCount() == 1 && pr.Instance() == i2 })
	if pr.State() == PromptDone {
		t.Fatal("moved prompt done before anything ran")
	}

	// The old instance ran it after all; its events reach comfygate.
	i1.State().SetSocketUp(true)
	i1.State().ForceHealthy(true)
	f1.Start(uid)
	f1.Finish(uid, "ran-at-first.png")

	evs := sink.until(t, testkit.WaitBound)
	if got := types(evs); !strings.HasSuffix(got, "execution_success,executing") || strings.Count(got, "execution_success") != 1 {
		t.Fatalf("events %s, want one success and the end", got)
	}
	checkOwnEvents(t, evs, pr.ID)
	if pr.Instance() != i1 || pr.UpstreamID() != uid || pr.State() != PromptDone {
		t.Fatalf("prompt at %s under %q, state %v; want done at %s under %q", nameOf(pr.Instance()), pr.UpstreamID(), pr.State(), i1.Name, uid)
	}
	copyID := ""
	testkit.Eventually(t, "the copy deleted", func() bool {
		for _, post := range f2.Posts() {
			if strings.HasPrefix(post, "POST /queue ") && strings.Contains(post, `"delete"`) {
				copyID = post
				return true
			}
		}
		return false
	})
	if !strings.Contains(copyID, pr.ID) {
		t.Fatalf("the other instance got %s, want its copy %s deleted", copyID, pr.ID)
	}
	sink.none(t)
}

// TestMovedPromptRunAtBothIsCounted: the copy of a moved prompt ended at
// the other instance first; then the old instance, woken, runs the
// prompt it was running to success as well. Too late to remove, it is
// counted in comfygate_prompts_ran_twice_total, and the client heard of
// one success only.
func TestMovedPromptRunAtBothIsCounted(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	m := metrics.New("test")
	p, _ := fakePoolMetrics(t, nil, m, f1, f2)
	i1, i2 := p.Instances()[0], p.Instances()[1]
	sink := newRecSink()
	res := submit(t, p, newUUID(), sink)
	if res.Instance != i1 {
		t.Fatalf("submitted to %s, want %s", nameOf(res.Instance), i1.Name)
	}
	pr := res.Prompt
	uid := pr.UpstreamID()
	markDown(p, i1)
	var copyUID string
	testkit.Eventually(t, "the copy at the other instance", func() bool {
		if f2.PromptCount() != 1 || pr.Instance() != i2 {
			return false
		}
		copyUID = pr.UpstreamID()
		return true
	})
	f2.Start(copyUID)
	f2.Finish(copyUID, "ran-at-second.png")
	testkit.Eventually(t, "the copy's end", func() bool { return pr.State() == PromptDone })

	i1.State().SetSocketUp(true)
	i1.State().ForceHealthy(true)
	f1.Start(uid)
	f1.Finish(uid, "ran-at-first-too.png")
	testkit.Eventually(t, "the second run counted", func() bool {
		return counterSum(t, m, "comfygate_prompts_ran_twice_total") == 1
	})
	evs := sink.until(t, testkit.WaitBound)
	if got := types(evs); strings.Count(got, "execution_success") != 1 {
		t.Fatalf("events %s, want one success", got)
	}
}

// counterSum is the sum of a counter's series in m.
func counterSum(t *testing.T, m *metrics.Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, c := range mf.GetMetric() {
				sum += c.GetCounter().GetValue()
			}
		}
	}
	return sum
}
