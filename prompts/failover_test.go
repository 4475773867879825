package prompts

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit"
)

// TestFailoverMovesPromptOfDeadInstance: the instance running a prompt dies;
// the prompt is resubmitted to the other under the same id, and the sink
// sees it start again and finish there.
func TestFailoverMovesPromptOfDeadInstance(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f1, f2)
	sink := newRecSink()
	id := newUUID()
	res := submit(t, p, id, sink)
	from := fakeOf(res.Instance, f1, f2)
	to := f1
	if from == f1 {
		to = f2
	}
	from.Start(id)
	// The first run's events reach the sink before the instance dies, so
	// that what follows is the second run alone.
	var first []Event
	for range 3 {
		first = append(first, sink.next(t))
	}
	if got := types(first); got != "execution_start,execution_cached,executing" {
		t.Fatalf("first run's events: %s", got)
	}
	killed := time.Now()
	from.Kill()
	testkit.Eventually(t, "resubmitted", func() bool { return to.PromptCount() == 1 })
	t.Logf("resubmitted %v after the kill", time.Since(killed))
	body := to.LastBody()
	var pid, cid string
	_ = json.Unmarshal(body["prompt_id"], &pid)
	_ = json.Unmarshal(body["client_id"], &cid)
	newInst := res.Prompt.Instance()
	if pid != id || newInst.Addr != to.Addr() || cid != newInst.SocketClientID() {
		t.Fatalf("resubmitted with prompt_id %q client_id %q to %s", pid, cid, newInst.Addr)
	}
	if res.Prompt.Attempts() != 2 {
		t.Fatalf("attempts %d, want 2", res.Prompt.Attempts())
	}
	to.Start(id)
	to.Finish(id, "moved.png")
	// The sink sees the prompt start again and finish, and nothing else:
	// no event of the dead instance, no synthesized error.
	const want = "execution_start,execution_cached,executing,progress,executed,execution_success,executing"
	if got := types(sink.until(t, 5*time.Second)); got != want {
		t.Fatalf("events after the failover: %s, want %s", got, want)
	}
	if inst, err := p.LocatePrompt(t.Context(), id); err != nil || inst != newInst {
		t.Fatal("the pin should follow the prompt")
	}
	testkit.Eventually(t, "nothing outstanding", func() bool { return p.Outstanding() == 0 })
}

// TestFailoverExhaustedTellsTheClient: with max_resubmits 0 the sink gets
// ComfyUI's execution_error saying why, then executing-null.
func TestFailoverExhaustedTellsTheClient(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	cfg := promptsConfig(f1.Addr(), f2.Addr())
	cfg.Failover.MaxResubmits = 0
	p, _ := fakePool(t, cfg, f1, f2)
	sink := newRecSink()
	id := newUUID()
	res := submit(t, p, id, sink)
	from := fakeOf(res.Instance, f1, f2)
	from.Kill()
	evs := sink.until(t, 5*time.Second)
	if got := types(evs); got != "execution_error,executing" {
		t.Fatalf("got %s, want execution_error,executing", got)
	}
	var msg struct {
		Type string `json:"type"`
		Data struct {
			PromptID         string   `json:"prompt_id"`
			ExceptionType    string   `json:"exception_type"`
			ExceptionMessage string   `json:"exception_message"`
			Traceback        []string `json:"traceback"`
		} `json:"data"`
	}
	if err := json.Unmarshal(evs[0].Data, &msg); err != nil {
		t.Fatal(err)
	}
	if msg.Data.PromptID != id || msg.Data.ExceptionType != "comfygate.InstanceLost" ||
		!strings.Contains(msg.Data.ExceptionMessage, res.Instance.Name) || msg.Data.Traceback == nil {
		t.Fatalf("execution_error %s", evs[0].Data)
	}
	if res.Prompt.State() != PromptDone || p.Outstanding() != 0 {
		t.Fatal("a lost prompt is done")
	}
	if f1.PromptCount()+f2.PromptCount() != 1 {
		t.Fatal("nothing may be resubmitted with max_resubmits 0")
	}
}

// TestDonePromptIsNeverResubmitted: an instance dying after a prompt
// finished moves nothing.
func TestDonePromptIsNeverResubmitted(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f1, f2)
	sink := newRecSink()
	id := newUUID()
	res := submit(t, p, id, sink)
	from := fakeOf(res.Instance, f1, f2)
	from.Start(id)
	from.Finish(id, "d.png")
	sink.until(t, 5*time.Second)
	from.Kill()
	testkit.Eventually(t, "instance down", func() bool { return !res.Instance.State().Healthy() })
	p.prompts.InstanceDown(res.Instance) // again, explicitly: idempotent
	if n := f1.PromptCount() + f2.PromptCount(); n != 1 {
		t.Fatalf("%d submissions, want 1", n)
	}
	sink.none(t)
}

// TestRestartedInstanceLostPromptIsResubmitted: the instance restarts
// quickly (health never fails long enough); on reconnect the prompt is in
// neither its history nor its queue, so it is resubmitted.
func TestRestartedInstanceLostPromptIsResubmitted(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f)
	sink := newRecSink()
	id := newUUID()
	submit(t, p, id, sink)
	f.Start(id)
	sink.next(t)
	f.Restart()
	testkit.Eventually(t, "socket back", func() bool { return f.SocketCount() == 1 })
	testkit.Eventually(t, "resubmitted", func() bool { return f.PromptCount() == 2 })
	f.Start(id)
	f.Finish(id, "again.png")
	evs := sink.until(t, 5*time.Second)
	if got := types(evs); !strings.HasSuffix(got, "execution_start,execution_cached,executing,progress,executed,execution_success,executing") {
		t.Fatalf("got %s", got)
	}
}
