package prompts

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/upstream"
)

// TestUnansweredPromptMovesWhenItsInstanceDies: the instance hangs, so the
// POST /prompt times out (the prompt may or may not be there); then it
// dies. The prompt runs on the other instance right away, under its id and
// to its sink, instead of being dropped after the ~10 s confirmation wait.
func TestUnansweredPromptMovesWhenItsInstanceDies(t *testing.T) {
	t.Parallel()
	x := testkit.Sim(t, comfysim.Options{})
	y := testkit.Sim(t, comfysim.Options{})
	p, _ := simPool(t, func(c *config.Config) { c.Timeout = 300 * time.Millisecond }, x, y)
	ix, iy := p.Instances()[0], p.Instances()[1]

	x.SetHang(true)
	id, sink := newUUID(), newRecSink()
	res, err := p.Submit(context.Background(), SubmitRequest{
		Body:     map[string]json.RawMessage{"prompt": simPrompt("unanswered", false)},
		PromptID: id,
		Sink:     sink,
		Prefer:   ix,
	})
	if err == nil || res.Instance != ix {
		t.Fatalf("submit to the hung instance: %v on %s, want no answer from %s", err, nameOf(res.Instance), ix.Name)
	}
	pr, ok := p.Prompt(id)
	if !ok || pr.Instance() != ix {
		t.Fatal("the unanswered prompt should stay pinned to its instance")
	}
	killed := time.Now()
	x.Kill()
	evs := sink.until(t, 5*time.Second)
	took := time.Since(killed)
	t.Logf("unanswered prompt finished elsewhere %v after the kill", took)
	if took > 3*time.Second {
		t.Errorf("it took %v to move; want it moved as soon as the death is confirmed", took)
	}
	checkOwnEvents(t, evs, id)
	if got := types(evs); got[len(got)-len("execution_success,executing"):] != "execution_success,executing" {
		t.Fatalf("events %s, want a run to success", got)
	}
	if pr.Instance() != iy || pr.Attempts() != 2 || pr.State() != PromptDone {
		t.Fatalf("prompt on %s after %d attempts, state %v; want done on %s after 2", nameOf(pr.Instance()), pr.Attempts(), pr.State(), iy.Name)
	}
	if _, ok := pr.Number(); !ok {
		t.Error("the moved prompt was accepted: it should have its fleet number")
	}
	if y.PromptsExecuted() != 1 {
		t.Errorf("y executed %d prompts, want 1", y.PromptsExecuted())
	}
}

// markDown makes inst look as InstanceDown finds it (socket lost, health
// check failed) and tells the prompt table.
func markDown(p *testPool, inst *upstream.Instance) {
	inst.State().SetSocketUp(false)
	inst.State().ForceHealthy(false)
	p.prompts.InstanceDown(inst)
}

// TestPromptUnderWayIsLeftToItsSend: an instance confirmed dead while a
// POST /prompt to it is under way does not make comfygate send the prompt
// a second time: the POST's own outcome decides. Answered, it stays; with
// no answer it moves at once.
func TestPromptUnderWayIsLeftToItsSend(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	cfg := promptsConfig(f1.Addr(), f2.Addr())
	cfg.Timeout = 500 * time.Millisecond
	p, _ := fakePool(t, cfg, f1, f2)
	i1 := p.Instances()[0]
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	answer := make(chan bool, 4) // per POST: true = answer, false = hang until cleanup
	f1.BeforeAnswer(func(string) {
		if !<-answer {
			<-release
		}
	})
	send := func(id string, sink Sink) (SubmitResult, error) {
		return p.Submit(context.Background(), SubmitRequest{
			Body:     map[string]json.RawMessage{"prompt": json.RawMessage(`{}`)},
			PromptID: id,
			Sink:     sink,
			Prefer:   i1,
		})
	}

	// Answered after the death is confirmed: it stays where it was accepted.
	type result struct {
		res SubmitResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := send(newUUID(), newRecSink())
		done <- result{res, err}
	}()
	testkit.Eventually(t, "POST under way", func() bool { return f1.PromptCount() == 1 })
	markDown(p, i1)
	if n := f2.PromptCount(); n != 0 {
		t.Fatalf("resubmitted while its POST was under way (%d at the other instance)", n)
	}
	answer <- true
	r := <-done
	if r.err != nil || r.res.Status != 200 || r.res.Prompt.Instance() != i1 {
		t.Fatalf("answered submission: %v %d", r.err, r.res.Status)
	}
	if n := f2.PromptCount(); n != 0 {
		t.Fatalf("an answered prompt was sent again (%d at the other instance)", n)
	}
	first := r.res.Prompt
	f1.Start(first.UpstreamID()) // it ends there, so the next markDown moves nothing but the next prompt
	f1.Finish(first.UpstreamID(), "first.png")
	testkit.Eventually(t, "first prompt done", func() bool { return first.State() == PromptDone })

	// No answer, death confirmed meanwhile: moved as soon as the POST ends.
	i1.State().ForceHealthy(true)
	i1.State().SetSocketUp(true)
	id, sink := newUUID(), newRecSink()
	go func() {
		res, err := send(id, sink)
		done <- result{res, err}
	}()
	testkit.Eventually(t, "second POST under way", func() bool { return f1.PromptCount() == 2 })
	markDown(p, i1)
	answer <- false
	if r := <-done; r.err == nil {
		t.Fatalf("want the timeout, got %d", r.res.Status)
	}
	ended := time.Now()
	testkit.Eventually(t, "moved", func() bool { return f2.PromptCount() == 1 })
	var got string
	_ = json.Unmarshal(f2.LastBody()["prompt_id"], &got)
	if got != id {
		t.Fatalf("the other instance got prompt %q, want %q", got, id)
	}
	t.Logf("moved %v after its POST timed out", time.Since(ended))
	// At once: before, it was dropped after a ~10 s wait and never moved.
	if since := time.Since(ended); since > 2*time.Second {
		t.Errorf("moved %v after the timeout, want at once", since)
	}
	f2.Start(id)
	f2.Finish(id, "moved.png")
	if got := types(sink.until(t, 5*time.Second)); got != "execution_start,execution_cached,executing,progress,executed,execution_success,executing" {
		t.Fatalf("events %s", got)
	}
}

// TestAnsweredByDeadInstanceIsMoved: the POST to an instance is answered,
// but the instance was confirmed dead meanwhile (InstanceDown skipped the
// prompt, under way) and does not have it: it moves to another instance.
func TestAnsweredByDeadInstanceIsMoved(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f1, f2)
	i1 := p.Instances()[0]
	f1.BeforeAnswer(func(uid string) {
		markDown(p, i1)
		f1.RemovePending(uid)
	})
	id := newUUID()
	res, err := p.Submit(context.Background(), SubmitRequest{
		Body:     map[string]json.RawMessage{"prompt": json.RawMessage(`{}`)},
		PromptID: id,
		Prefer:   i1,
	})
	if err != nil || res.Status != 200 || res.Instance != i1 {
		t.Fatalf("submit: %v %d", err, res.Status)
	}
	testkit.Eventually(t, "moved", func() bool { return f2.PromptCount() == 1 })
	if pr, _ := p.Prompt(id); pr.Instance() != p.Instances()[1] {
		t.Fatalf("pinned to %v, want the other instance", pr.Instance())
	}
}
