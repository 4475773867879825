package prompts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// simPrompt is EmptyImage -> ImageInvert -> SaveImage, or with previews
// EmptyImage -> upscale (progress previews) -> SaveImage. The prefix also
// sets the colour, so no two prompts share cached nodes.
func simPrompt(prefix string, previews bool) json.RawMessage {
	color := 0
	for _, c := range prefix {
		color = color*31 + int(c)
	}
	color &= 0xffffff
	if previews {
		return json.RawMessage(fmt.Sprintf(`{
		"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": %d}},
		"2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "RealESRGAN_x2plus.pth"}},
		"3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
		"9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": %q}}}`, color, prefix))
	}
	return json.RawMessage(fmt.Sprintf(`{
		"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": %d}},
		"2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
		"9": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": %q}}}`, color, prefix))
}

func simSubmit(t *testing.T, p *testPool, id string, prompt json.RawMessage, sink Sink) SubmitResult {
	t.Helper()
	res, err := p.Submit(t.Context(), SubmitRequest{
		Body:     map[string]json.RawMessage{"prompt": prompt, "client_id": json.RawMessage(`"their-client"`)},
		PromptID: id,
		ClientID: "their-client",
		Sink:     sink,
	})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	if res.Status != 200 || res.Prompt == nil {
		t.Fatalf("submit: %d %s", res.Status, res.Body)
	}
	return res
}

// simPool starts a pool in front of the simulators and waits for their sockets.
func simPool(t *testing.T, mut func(*config.Config), sims ...*comfysim.Server) (*testPool, *recListener) {
	t.Helper()
	var addrs []string
	for _, s := range sims {
		addrs = append(addrs, s.Addr())
	}
	cfg := promptsConfig(addrs...)
	if mut != nil {
		mut(cfg)
	}
	return fakePool(t, cfg)
}

// checkOwnEvents fails unless every event names id (binary frames skipped).
func checkOwnEvents(t *testing.T, evs []Event, id string) {
	t.Helper()
	for _, ev := range evs {
		if ev.PromptID != id {
			t.Fatalf("event %s for %s in the sink of %s", ev.Type, ev.PromptID, id)
		}
		if !ev.Binary && !strings.Contains(string(ev.Data), id) {
			t.Fatalf("event %s does not name %s: %s", ev.Type, id, ev.Data)
		}
	}
}

// withoutProgressState drops progress_state and binary frames, whose
// number depends on timing.
func withoutProgressState(evs []Event) string {
	var keep []Event
	for _, ev := range evs {
		if ev.Type != "progress_state" && !ev.Binary && ev.Type != "progress" {
			keep = append(keep, ev)
		}
	}
	return types(keep)
}

func TestSimPromptsOnTwoInstancesReachTheirSinks(t *testing.T) {
	t.Parallel()
	s1 := testkit.Sim(t, comfysim.Options{Delay: 10 * time.Millisecond})
	s2 := testkit.Sim(t, comfysim.Options{Delay: 10 * time.Millisecond})
	p, l := simPool(t, nil, s1, s2)
	const n = 6
	sinks := make([]*recSink, n)
	ids := make([]string, n)
	var wg sync.WaitGroup
	for k := range n {
		sinks[k], ids[k] = newRecSink(), newUUID()
		wg.Add(1)
		go func() {
			defer wg.Done()
			simSubmit(t, p, ids[k], simPrompt(fmt.Sprintf("t%d", k), k%2 == 0), sinks[k])
		}()
	}
	wg.Wait()
	s1.BroadcastCustom("custom.hello", map[string]any{"x": 1})
	for k := range n {
		evs := sinks[k].until(t, 10*time.Second)
		checkOwnEvents(t, evs, ids[k])
		// The model loader may be cached from an earlier prompt.
		got := withoutProgressState(evs)
		want := "execution_start,execution_cached,executing,executing,executing,executed,execution_success,executing"
		if k%2 == 0 && got != want {
			want = "execution_start,execution_cached,executing,executing,executing,executing,executed,execution_success,executing"
		}
		if got != want {
			t.Fatalf("prompt %d: events %s\nwant %s", k, got, want)
		}
		previews := 0
		for _, ev := range evs {
			if ev.Binary {
				previews++
			}
		}
		if (k%2 == 0) != (previews > 0) {
			t.Fatalf("prompt %d: %d previews", k, previews)
		}
		sinks[k].none(t)
	}
	if s1.PromptsExecuted() == 0 || s2.PromptsExecuted() == 0 {
		t.Fatalf("prompts not spread: %d / %d", s1.PromptsExecuted(), s2.PromptsExecuted())
	}
	select {
	case ev := <-l.bc:
		if ev.Type != "custom.hello" {
			t.Fatalf("broadcast %s %s", ev.Type, ev.Data)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("custom broadcast not relayed")
	}
	testkit.Eventually(t, "all done", func() bool { return p.Outstanding() == 0 })
}

func TestSimOldVersionWorksThroughIDMapping(t *testing.T) {
	t.Parallel()
	s := testkit.Sim(t, comfysim.Options{Delay: 5 * time.Millisecond, Steps: 2, Version: "0.3.40"})
	p, _ := simPool(t, nil, s)
	if p.Instances()[0].SupportsClientPromptID() {
		t.Fatal("0.3.40 should be detected as not accepting client prompt ids")
	}
	for k := range 3 {
		sink, id := newRecSink(), newUUID()
		res := simSubmit(t, p, id, simPrompt(fmt.Sprintf("old%d", k), true), sink)
		if res.Prompt.UpstreamID() == id {
			t.Fatal("an old instance mints its own id")
		}
		evs := sink.until(t, 10*time.Second)
		checkOwnEvents(t, evs, id)
		previews := 0
		for _, ev := range evs {
			if ev.Binary {
				previews++
			}
		}
		if previews == 0 {
			t.Fatalf("type-1 previews should be attributed to the running prompt; got %s", types(evs))
		}
		if evs[len(evs)-2].Type != "execution_success" {
			t.Fatalf("events %s", types(evs))
		}
	}
}

func TestSimKillMidPromptFinishesElsewhere(t *testing.T) {
	t.Parallel()
	s1 := testkit.Sim(t, comfysim.Options{Delay: 300 * time.Millisecond})
	s2 := testkit.Sim(t, comfysim.Options{Delay: 300 * time.Millisecond})
	p, _ := simPool(t, nil, s1, s2)
	sink, id := newRecSink(), newUUID()
	res := simSubmit(t, p, id, simPrompt("kill", false), sink)
	victim, other := s1, s2
	if res.Instance.Addr == s2.Addr() {
		victim, other = s2, s1
	}
	for ev := sink.next(t); ev.Type != "execution_start"; ev = sink.next(t) {
	}
	killed := time.Now()
	victim.Kill()
	evs := sink.until(t, 10*time.Second)
	t.Logf("finished %v after the kill; %s", time.Since(killed), withoutProgressState(evs))
	got := withoutProgressState(evs)
	if !strings.Contains(got, "execution_start") || !strings.HasSuffix(got, "execution_success,executing") {
		t.Fatalf("the sink should see the prompt start again and finish: %s", got)
	}
	checkOwnEvents(t, evs, id)
	if res.Prompt.Instance().Addr != other.Addr() || other.PromptsExecuted() != 1 {
		t.Fatal("the prompt should have run on the other instance")
	}
}

func TestSimKillWithoutResubmitsGivesError(t *testing.T) {
	t.Parallel()
	s1 := testkit.Sim(t, comfysim.Options{Delay: 300 * time.Millisecond})
	s2 := testkit.Sim(t, comfysim.Options{Delay: 300 * time.Millisecond})
	p, _ := simPool(t, func(c *config.Config) { c.Failover.MaxResubmits = 0 }, s1, s2)
	sink, id := newRecSink(), newUUID()
	res := simSubmit(t, p, id, simPrompt("lost", false), sink)
	victim := s1
	if res.Instance.Addr == s2.Addr() {
		victim = s2
	}
	for ev := sink.next(t); ev.Type != "execution_start"; ev = sink.next(t) {
	}
	victim.Kill()
	evs := sink.until(t, 10*time.Second)
	got := withoutProgressState(evs)
	if !strings.HasSuffix(got, "execution_error,executing") || !strings.Contains(string(evs[len(evs)-2].Data), "comfygate.InstanceLost") {
		t.Fatalf("want the synthesized execution_error: %s", got)
	}
}

func TestSimRestartReconnectsSocket(t *testing.T) {
	t.Parallel()
	s := testkit.Sim(t, comfysim.Options{Delay: 5 * time.Millisecond})
	p, _ := simPool(t, nil, s)
	inst := p.Instances()[0]
	s.Kill()
	testkit.Eventually(t, "socket down", func() bool { return !inst.State().SocketUp() })
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "socket up again", func() bool { return inst.State().SocketUp() && inst.State().Healthy() })
	sink, id := newRecSink(), newUUID()
	simSubmit(t, p, id, simPrompt("after", false), sink)
	evs := sink.until(t, 10*time.Second)
	checkOwnEvents(t, evs, id)
}

// TestSimTimeoutKeepsPromptPinned: the instance takes the POST but answers
// too late; Submit fails without resubmitting, and when the instance does
// run it, its events still reach the sink.
func TestSimTimeoutKeepsPromptPinned(t *testing.T) {
	t.Parallel()
	s1 := testkit.Sim(t, comfysim.Options{Delay: 5 * time.Millisecond})
	p, _ := simPool(t, func(c *config.Config) { c.Timeout = 300 * time.Millisecond }, s1)
	s1.SetHang(true)
	sink, id := newRecSink(), newUUID()
	_, err := p.Submit(t.Context(), SubmitRequest{
		Body:     map[string]json.RawMessage{"prompt": simPrompt("late", false)},
		PromptID: id,
		Sink:     sink,
	})
	if err == nil {
		t.Fatal("want a timeout error")
	}
	if _, ok := p.Prompt(id); !ok {
		t.Fatal("a prompt that may have been accepted stays pinned")
	}
	s1.SetHang(false) // the held POST goes through now
	evs := sink.until(t, 10*time.Second)
	checkOwnEvents(t, evs, id)
	if s1.PromptsExecuted() != 1 {
		t.Fatalf("executed %d times, want exactly once", s1.PromptsExecuted())
	}
	testkit.Eventually(t, "nothing outstanding", func() bool { return p.Outstanding() == 0 })
}

// Two submissions of one client id at once: one keeps it, the other gets
// a fresh id, and neither is orphaned (live but not findable by its id).
func TestConcurrentSubmitsOfOneIDGetDistinctIDs(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f)
	for round := range 20 {
		id := newUUID()
		var res [2]SubmitResult
		var wg sync.WaitGroup
		start := make(chan struct{})
		for k := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				r, err := p.Submit(context.Background(), SubmitRequest{Body: map[string]json.RawMessage{"prompt": json.RawMessage(`{}`)}, PromptID: id})
				if err != nil {
					t.Errorf("submit: %v", err)
				}
				res[k] = r
			}()
		}
		close(start)
		wg.Wait()
		if t.Failed() {
			return
		}
		a, b := res[0].Prompt, res[1].Prompt
		if a == nil || b == nil {
			t.Fatalf("round %d: no prompt in a result", round)
		}
		if a.ID == b.ID || (a.ID != id && b.ID != id) {
			t.Fatalf("round %d: ids %s %s, want %s and a fresh one", round, a.ID, b.ID, id)
		}
		for _, pr := range []*Prompt{a, b} {
			if got, ok := p.Prompt(pr.ID); !ok || got != pr {
				t.Fatalf("round %d: prompt %s not findable by its id", round, pr.ID)
			}
			if !bytes.Contains(res[0].Body, quoteJSON(a.ID)) || !bytes.Contains(res[1].Body, quoteJSON(b.ID)) {
				t.Fatalf("round %d: answers %s %s do not carry their ids", round, res[0].Body, res[1].Body)
			}
		}
	}
	if n := p.Outstanding(); n != 40 {
		t.Fatalf("%d prompts in flight, want 40", n)
	}
}

// Two submissions of one id at once that are the same submission (the
// same Submission fingerprint and Owner: a client's request and its
// retry): one is sent, the other is not and gets ErrRepeated.
func TestConcurrentRepeatsAreSentOnce(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f)
	const rounds = 20
	for round := range rounds {
		id := newUUID()
		var res [2]SubmitResult
		var errs [2]error
		var wg sync.WaitGroup
		start := make(chan struct{})
		for k := range res {
			wg.Go(func() {
				<-start
				res[k], errs[k] = p.Submit(context.Background(), SubmitRequest{Body: map[string]json.RawMessage{"prompt": json.RawMessage(`{}`)},
					PromptID: id, Owner: "k", Submission: "fp-" + id})
			})
		}
		close(start)
		wg.Wait()
		sent, repeated := 0, 0
		for k := range res {
			switch {
			case errs[k] == nil && res[k].Prompt != nil && res[k].Prompt.ID == id:
				sent++
			case errors.Is(errs[k], ErrRepeated) && res[k].Prompt == nil:
				repeated++
			}
		}
		if sent != 1 || repeated != 1 {
			t.Fatalf("round %d: %d sent and %d repeats (results %+v, errors %v), want one of each", round, sent, repeated, res, errs)
		}
	}
	if n := p.Outstanding(); n != rounds {
		t.Fatalf("%d prompts in flight, want %d", n, rounds)
	}
}
