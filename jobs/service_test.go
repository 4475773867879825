package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
)

func TestProgressMapping(t *testing.T) {
	t.Parallel()
	nodes := map[string]*graphNode{"1": {}, "2": {}, "3": {}, "4": {}}
	p := newProgress(nodes)
	type step struct {
		do   func()
		want int
	}
	for i, s := range []step{
		{func() {}, 0},
		{func() { p.executing("1") }, 0},
		{func() { p.executing("2") }, 25},                       // 1 done
		{func() { p.finish("2") }, 50},                          // 2 done
		{func() { p.step("3", 1, 4) }, 56},                      // 2 + 1/4
		{func() { p.step("3", 2, 4) }, 62},                      // 2 + 2/4
		{func() { p.step("x", 4, 4) }, 62},                      // not a node of the graph
		{func() { p.restart() }, 62},                            // resubmitted: never goes down
		{func() { p.cached([]string{"1", "2"}) }, 62},           // 50 < 62
		{func() { p.step("3", 4, 4) }, 75},                      //
		{func() { p.executing("4"); p.finish("4") }, 99},        // all done: 99 until completion
		{func() { p.cached([]string{"1", "2", "3", "4"}) }, 99}, //
		{func() { p.complete() }, 100},
	} {
		s.do()
		if got := p.percent(); got != s.want {
			t.Fatalf("step %d: %d, want %d", i, got, s.want)
		}
	}
}

func TestEWMAAndEstimate(t *testing.T) {
	t.Parallel()
	var e ewma
	if e.value(10*time.Second) != 10*time.Second {
		t.Fatal("seed not used before a measurement")
	}
	e.add(2 * time.Second)
	if e.value(10*time.Second) != 2*time.Second {
		t.Fatalf("first measurement: %v", e.value(0))
	}
	e.add(4 * time.Second)
	if got := e.value(0); got != 2600*time.Millisecond {
		t.Fatalf("after 2s, 4s: %v, want 2.6s", got)
	}
	if got := completionEstimate(8*time.Second, 2*time.Second, 2); got != 6*time.Second {
		t.Fatalf("estimate %v", got)
	}
	if estimateSeconds(10*time.Millisecond) != 0.1 || estimateSeconds(1234*time.Millisecond) != 1.3 || retryAfterSeconds(100*time.Millisecond) != 1 {
		t.Fatal("rounding")
	}

	// Through the service: more jobs ahead, longer; more instances, shorter;
	// a measured run replaces the seed.
	f := newFake(t, 2)
	s := newFakeService(t, f, func(c *config.Config) { c.Jobs.MaxConcurrent = 4 })
	estimate := func() float64 {
		body, _ := json.Marshal(map[string]any{"image_base64": testPNG(t, 4, 4)})
		_, code, _, resp := serve(t, s, "POST", "/api/upscale-image", "application/json", body)
		var a acceptedView
		if code != 202 || json.Unmarshal(resp, &a) != nil {
			t.Fatalf("%d %s", code, resp)
		}
		return a.Estimated
	}
	first := estimate() // nothing ahead: one run at the seed
	if first != 10 {
		t.Fatalf("first estimate %v, want 10 (seed)", first)
	}
	if second := estimate(); second != 15 { // one ahead, two instances: 10/2 + 10
		t.Fatalf("second estimate %v, want 15", second)
	}
	f.setHealthy(f.insts[0])
	if third := estimate(); third != 30 { // two ahead, one instance: 20/1 + 10
		t.Fatalf("third estimate %v, want 30", third)
	}
	s.eng.jobsMu.Lock()
	s.eng.line.est["upscale-image"] = &ewma{mean: time.Second, n: 1}
	s.eng.jobsMu.Unlock()
	if fourth := estimate(); fourth != 4 { // three ahead at 1s each, one instance
		t.Fatalf("fourth estimate %v, want 4", fourth)
	}
}

func TestWaitLineFull(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	s := newFakeService(t, f, func(c *config.Config) { c.Jobs.MaxWaiting = 2 })
	// Not started: nothing leaves the line.
	submitFake(t, s, "/api/upscale-image")
	submitFake(t, s, "/api/remove-background")
	body, _ := json.Marshal(map[string]any{"image_base64": testPNG(t, 4, 4)})
	_, code, hdr, resp := serve(t, s, "POST", "/api/upscale-image", "application/json", body)
	if code != 429 || string(hdr.Peek("Retry-After")) == "" || !bytes.Contains(resp, []byte(`"queue_full"`)) {
		t.Fatalf("third job: %d Retry-After %q %s", code, hdr.Peek("Retry-After"), resp)
	}
	// No instance at all: 503, not a job nobody can run.
	f.setHealthy()
	_, code, hdr, resp = serve(t, s, "POST", "/api/upscale-image", "application/json", body)
	if code != 503 || string(hdr.Peek("Retry-After")) == "" || !bytes.Contains(resp, []byte(`"no_upstream"`)) {
		t.Fatalf("no instance: %d %s", code, resp)
	}
}

// TestWaitLineBytes: the wait line is bounded by the bytes of the images
// it holds as well as by count; a lone job over the cap may still wait.
func TestWaitLineBytes(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	img := testPNG(t, 64, 64)
	s := newFakeService(t, f, func(c *config.Config) { c.Jobs.MaxWaitingBytes = 1 })
	body, _ := json.Marshal(map[string]any{"image_base64": img})
	if _, code, _, resp := serve(t, s, "POST", "/api/upscale-image", "application/json", body); code != 202 {
		t.Fatalf("first job: %d %s", code, resp)
	}
	_, code, hdr, resp := serve(t, s, "POST", "/api/upscale-image", "application/json", body)
	if code != 429 || string(hdr.Peek("Retry-After")) == "" || !bytes.Contains(resp, []byte("max_waiting_bytes")) {
		t.Fatalf("second job over the byte cap: %d Retry-After %q %s", code, hdr.Peek("Retry-After"), resp)
	}
}

func TestEventsDriveJob(t *testing.T) {
	t.Parallel()
	f := newFake(t, 2)
	s := newFakeService(t, f, nil)
	s.Start(t.Context())
	id := submitFake(t, s, "/api/upscale-image")
	if got := f.waitSubmitted(); got != id {
		t.Fatalf("submitted %s, want %s", got, id)
	}
	// The image went to the instance that took the job only, pinned, and
	// the prompt loads it from comfygate's subfolder, named after the job.
	var req prompts.SubmitRequest
	var uploads, pins int
	testkit.Eventually(t, "the image uploaded", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		req = f.submits[0]
		uploads, pins = f.uploads["fake1"]+f.uploads["fake2"], len(f.pins)
		return pins > 0
	})
	if uploads != 1 || f.uploads["fake1"] != 1 || pins != 1 || req.PromptID != id || req.Sink == nil {
		t.Fatalf("uploads %d pins %d req %+v", uploads, pins, req)
	}
	if !bytes.Contains(req.Body["prompt"], []byte(`"comfygate/`+id+`.png"`)) {
		t.Fatalf("prompt does not load the upload: %s", req.Body["prompt"])
	}
	a, b := f.insts[0], f.insts[1]
	st := func() statusView {
		_, code, _, resp := serve(t, s, "GET", "/api/jobs/"+id+"/status", "", nil)
		var v statusView
		if code != 200 || json.Unmarshal(resp, &v) != nil {
			t.Fatalf("status: %d %s", code, resp)
		}
		return v
	}
	if v := st(); v.Status != statusPending || v.QueuePosition == nil || *v.QueuePosition != 0 {
		t.Fatalf("queued at the instance: %+v", v)
	}
	f.event(id, a, "execution_start", map[string]any{"timestamp": 1})
	f.event(id, a, "execution_cached", map[string]any{"nodes": []string{"1", "2"}})
	f.event(id, a, "executing", map[string]any{"node": "3", "display_node": "3"})
	f.event(id, a, "progress", map[string]any{"node": "3", "value": 2, "max": 4})
	if v := st(); v.Status != statusProcessing || v.Progress != 62 || deref(v.Instance) != "fake1" || v.Estimated == nil {
		t.Fatalf("running: %+v", v)
	}
	// The instance dies; the prompt table resubmits to the other one: progress
	// starts over there but the number never goes down.
	f.event(id, b, "execution_start", map[string]any{"timestamp": 2})
	f.event(id, b, "executing", map[string]any{"node": "1"})
	if v := st(); v.Progress != 62 || deref(v.Instance) != "fake2" {
		t.Fatalf("after resubmission: %+v", v)
	}
	// ExecutionBlocked is not the end.
	f.event(id, b, "execution_error", map[string]any{"exception_type": "ExecutionBlocked", "exception_message": "blocked"})
	f.event(id, b, "progress_state", map[string]any{"nodes": map[string]any{
		"1": map[string]any{"state": "finished", "value": 1, "max": 1},
		"2": map[string]any{"state": "finished", "value": 1, "max": 1},
		"3": map[string]any{"state": "running", "value": 3, "max": 4},
	}})
	if v := st(); v.Status != statusProcessing || v.Progress != 68 {
		t.Fatalf("progress_state: %+v", v)
	}
	_, code, _, resp := serve(t, s, "GET", "/api/jobs/"+id+"/result", "", nil)
	if code != 409 || !bytes.Contains(resp, []byte(`"processing"`)) {
		t.Fatalf("result while running: %d %s", code, resp)
	}
	f.event(id, b, "executed", map[string]any{"node": "4", "display_node": "4", "output": map[string]any{
		"images": []map[string]string{{"filename": "comfygate-upscale_00001_.png", "subfolder": "", "type": "output"}}}})
	f.event(id, b, "execution_success", map[string]any{"timestamp": 3})
	f.event(id, b, "executing", map[string]any{"node": nil})
	testkit.Eventually(t, "completion", func() bool { return jobState(s, id) == stCompleted })
	if v := st(); v.Status != statusCompleted || v.Progress != 100 || v.FinishedAt == nil || v.Estimated != nil {
		t.Fatalf("completed: %+v", v)
	}
	_, code, hdr, resp := serve(t, s, "GET", "/api/jobs/"+id+"/result", "", nil, "Accept", "image/png")
	if code != 200 || string(hdr.ContentType()) != "image/png" || !bytes.Equal(resp, f.viewBody) {
		t.Fatalf("raw result: %d %s", code, hdr.ContentType())
	}
	s.eng.jobsMu.Lock()
	measured := s.eng.line.est["upscale-image"] != nil && s.eng.line.est["upscale-image"].n == 1
	inFlight := s.eng.inFlight
	s.eng.jobsMu.Unlock()
	if !measured || inFlight != 0 {
		t.Fatalf("measured %v inFlight %d", measured, inFlight)
	}
}

func TestFailedJobs(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	s := newFakeService(t, f, nil)
	s.Start(t.Context())
	inst := f.insts[0]

	// ComfyUI's runtime error.
	id := submitFake(t, s, "/api/remove-background")
	f.waitSubmitted()
	f.event(id, inst, "execution_start", map[string]any{})
	f.event(id, inst, "execution_error", map[string]any{"node_id": "2", "node_type": "Image Rembg (Remove Background)",
		"exception_type": "RuntimeError", "exception_message": "CUDA out of memory"})
	_, _, _, resp := serve(t, s, "GET", "/api/jobs/"+id+"/status", "", nil)
	var v statusView
	_ = json.Unmarshal(resp, &v)
	if v.Status != statusFailed || deref(v.Error) != "CUDA out of memory" || v.ErrorDetails == nil || v.ErrorDetails.NodeID != "2" {
		t.Fatalf("failed: %s", resp)
	}

	// The pool's "lost" (no instance to resubmit to).
	id = submitFake(t, s, "/api/remove-background")
	f.waitSubmitted()
	f.event(id, inst, "execution_error", map[string]any{"node_id": nil, "exception_type": "comfygate.InstanceLost",
		"exception_message": "comfygate: instance fake1 died and the prompt could not be resubmitted"})
	f.event(id, inst, "executing", map[string]any{"node": nil})
	if st := jobState(s, id); st != stFailed {
		t.Fatalf("lost: state %d", st)
	}

	// ComfyUI rejects the prompt (validation): the job fails with its message.
	f.mu.Lock()
	f.submitFn = func(req prompts.SubmitRequest) (prompts.SubmitResult, error) {
		return prompts.SubmitResult{Instance: inst, Status: 400, Body: []byte(`{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": ""}, "node_errors": {"2": {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "model: 'x' not in [...]"}], "class_type": "UpscaleModelLoader"}}}`)}, nil
	}
	f.mu.Unlock()
	id = submitFake(t, s, "/api/upscale-image")
	f.waitSubmitted()
	testkit.Eventually(t, "rejection", func() bool { return jobState(s, id) == stFailed })
	s.eng.jobsMu.Lock()
	msg := s.eng.jobs[id].errMsg
	s.eng.jobsMu.Unlock()
	if !strings.Contains(msg, "Prompt outputs failed validation") || !strings.Contains(msg, "node 2 (UpscaleModelLoader)") || !strings.Contains(msg, "model: 'x'") {
		t.Fatalf("message %q", msg)
	}
}

func TestNoInstanceJobWaits(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	s := newFakeService(t, f, nil)
	calls := 0
	f.mu.Lock()
	f.submitFn = func(req prompts.SubmitRequest) (prompts.SubmitResult, error) {
		f.mu.Lock()
		calls++
		n := calls
		f.mu.Unlock()
		if n == 1 {
			return prompts.SubmitResult{}, upstream.ErrNoUpstream
		}
		return f.accept(req), nil
	}
	f.mu.Unlock()
	s.Start(t.Context())
	id := submitFake(t, s, "/api/upscale-image")
	f.waitSubmitted()
	// Back in the line, not failed; then submitted again after the backoff.
	if got := f.waitSubmitted(); got != id {
		t.Fatalf("resubmitted %s", got)
	}
	testkit.Eventually(t, "queued", func() bool { return jobState(s, id) == stQueued })
	s.eng.jobsMu.Lock()
	attempts := s.eng.jobs[id].attempts
	s.eng.jobsMu.Unlock()
	if attempts != 0 {
		t.Fatalf("no-instance counted as a failed attempt: %d", attempts)
	}
}

func TestCancelStates(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	s := newFakeService(t, f, func(c *config.Config) { c.Jobs.MaxConcurrent = 1 })
	inst := f.insts[0]
	release := make(chan struct{})
	f.mu.Lock()
	f.submitFn = func(req prompts.SubmitRequest) (prompts.SubmitResult, error) {
		<-release
		return f.accept(req), nil
	}
	f.mu.Unlock()
	ctx := context.Background()

	// Waiting (service not started): out of the line, at once.
	w := submitFake(t, s, "/api/upscale-image")
	if known, ok := s.CancelJob(ctx, w, ""); !known || !ok || jobState(s, w) != stCancelled {
		t.Fatalf("waiting: %v %v", known, ok)
	}
	s.eng.jobsMu.Lock()
	lineLen := s.eng.line.len()
	s.eng.jobsMu.Unlock()
	if lineLen != 0 {
		t.Fatalf("line still holds %d", lineLen)
	}

	// Submitting: cancelled at once; once Submit returns the prompt is
	// taken back and the slot freed.
	s.Start(t.Context())
	sub := submitFake(t, s, "/api/upscale-image")
	f.waitSubmitted()
	if known, ok := s.CancelJob(ctx, sub, ""); !known || !ok || jobState(s, sub) != stCancelled {
		t.Fatalf("submitting: %v %v", known, ok)
	}
	if _, ok := s.WaitingJob(sub, ""); ok {
		t.Fatal("WaitingJob for a cancelled job")
	}
	close(release)
	testkit.Eventually(t, "slot freed", func() bool { s.eng.jobsMu.Lock(); defer s.eng.jobsMu.Unlock(); return s.eng.inFlight == 0 })
	f.mu.Lock()
	cancels := append([]string(nil), f.cancels...)
	f.mu.Unlock()
	if len(cancels) != 1 || cancels[0] != sub {
		t.Fatalf("pool cancels %v", cancels)
	}

	// Queued at the instance: deleted there, slot freed at once.
	q := submitFake(t, s, "/api/upscale-image")
	f.waitSubmitted()
	testkit.Eventually(t, "queued", func() bool { return jobState(s, q) == stQueued })
	if known, ok := s.CancelJob(ctx, q, ""); !known || !ok {
		t.Fatalf("queued: %v %v", known, ok)
	}
	testkit.Eventually(t, "slot freed", func() bool { s.eng.jobsMu.Lock(); defer s.eng.jobsMu.Unlock(); return s.eng.inFlight == 0 })

	// Running: cancelled at once, the slot held until the interrupt lands.
	r := submitFake(t, s, "/api/upscale-image")
	f.waitSubmitted()
	testkit.Eventually(t, "queued", func() bool { return jobState(s, r) == stQueued })
	f.event(r, inst, "execution_start", map[string]any{})
	next := submitFake(t, s, "/api/upscale-image")
	if known, ok := s.CancelJob(ctx, r, ""); !known || !ok || jobState(s, r) != stCancelled {
		t.Fatalf("running: %v %v", known, ok)
	}
	s.eng.jobsMu.Lock()
	held := s.eng.jobs[r].holdsSlot
	s.eng.jobsMu.Unlock()
	if !held || jobState(s, next) != stWaiting {
		t.Fatal("the interrupted job's slot went to the next job before the instance stopped it")
	}
	f.event(r, inst, "execution_interrupted", map[string]any{"node_id": "3"})
	if got := f.waitSubmitted(); got != next {
		t.Fatalf("next submitted %s", got)
	}
	if st := jobState(s, r); st != stCancelled {
		t.Fatalf("state %d after the interrupt", st)
	}

	// Pool says nothing was cancelled (it finished first): not cancelled.
	f.mu.Lock()
	f.cancelFn = func(string) (bool, error) { return false, nil }
	f.mu.Unlock()
	testkit.Eventually(t, "queued", func() bool { return jobState(s, next) == stQueued })
	if known, ok := s.CancelJob(ctx, next, ""); !known || ok || jobState(s, next) != stQueued {
		t.Fatalf("not cancellable: %v %v", known, ok)
	}
	// Unknown id.
	if known, _ := s.CancelJob(ctx, "nope", ""); known {
		t.Fatal("unknown id known")
	}
}

func TestExpiryWithClock(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	s := newFakeService(t, f, func(c *config.Config) { c.Jobs.Timeout = time.Minute })
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	s.eng.now = c.now
	id := submitFake(t, s, "/api/upscale-image")
	s.CancelJob(context.Background(), id, "") // finished (cancelled) now
	c.add(59 * time.Second)
	s.wd.sweep()
	if _, code, _, _ := serve(t, s, "GET", "/api/jobs/"+id+"/status", "", nil); code != 200 {
		t.Fatalf("before JOB_TIMEOUT: %d", code)
	}
	c.add(time.Second)
	if _, code, _, _ := serve(t, s, "GET", "/api/jobs/"+id+"/status", "", nil); code != 404 {
		t.Fatalf("at JOB_TIMEOUT: %d", code)
	}
	s.wd.sweep()
	s.eng.jobsMu.Lock()
	n := len(s.eng.jobs)
	s.eng.jobsMu.Unlock()
	if n != 0 {
		t.Fatalf("%d jobs after the sweep", n)
	}
}

func TestQuietJobs(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	s := newFakeService(t, f, nil)
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	s.eng.now = c.now
	// Submit answered ambiguously (sent, no answer) and the pool then forgot it.
	f.mu.Lock()
	f.submitFn = func(req prompts.SubmitRequest) (prompts.SubmitResult, error) {
		return prompts.SubmitResult{Instance: f.insts[0]}, errors.New("timeout")
	}
	f.mu.Unlock()
	id := submitFake(t, s, "/api/upscale-image")
	s.eng.dispatch()
	f.waitSubmitted()
	testkit.Eventually(t, "queued", func() bool { return jobState(s, id) == stQueued })
	c.add(s.wd.staleAfter)
	s.wd.sweep()
	if st := jobState(s, id); st != stWaiting {
		t.Fatalf("state %d, want back in the line", st)
	}
	// Next time it is accepted, and the pool later reports it done while
	// the job heard nothing: the instance's history settles it.
	f.mu.Lock()
	f.submitFn = nil
	f.mu.Unlock()
	c.add(time.Second)
	s.eng.dispatch()
	f.waitSubmitted()
	testkit.Eventually(t, "queued", func() bool { return jobState(s, id) == stQueued })
	c.add(s.wd.staleAfter)
	s.wd.sweep() // prompt not done at the pool: nothing happens
	if st := jobState(s, id); st != stQueued {
		t.Fatalf("state %d", st)
	}
}

func TestRoutes(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	s := newFakeService(t, f, nil)
	id := submitFake(t, s, "/api/workflows/remove-background")
	for _, tc := range []struct {
		method, uri string
		handled     bool
		code        int
	}{
		{"GET", "/api/jobs", false, 0},
		{"GET", "/api/jobs?status=pending", false, 0},
		{"POST", "/api/jobs?source=comfygate", false, 0},
		{"GET", "/api/jobs?source=comfygate", true, 200},
		{"GET", "/api/jobs/" + id, false, 0},
		{"POST", "/api/jobs/" + id + "/cancel", false, 0},
		{"POST", "/api/jobs/cancel", false, 0},
		{"GET", "/api/jobs/" + id + "/status", true, 200},
		{"POST", "/api/jobs/" + id + "/status", true, 405},
		{"GET", "/api/jobs/" + id + "/result", true, 409},
		{"GET", "/api/jobs/nope/status", true, 404},
		{"GET", "/api/jobs/nope/result", true, 404},
		{"GET", "/api/workflows/a/b", false, 0},
		{"GET", "/api/workflows/upscale-image", true, 405},
		{"POST", "/api/workflows/nope", true, 400},
		{"GET", "/prompt", false, 0},
		{"DELETE", "/api/jobs/" + id, true, 200},
	} {
		handled, code, _, resp := serve(t, s, tc.method, tc.uri, "", nil)
		if handled != tc.handled || (handled && code != tc.code) {
			t.Errorf("%s %s: handled %v code %d (%s), want %v %d", tc.method, tc.uri, handled, code, resp, tc.handled, tc.code)
		}
	}
}

func TestWaitingJobShape(t *testing.T) {
	t.Parallel()
	f := newFake(t, 1)
	s := newFakeService(t, f, nil)
	id := submitFake(t, s, "/api/upscale-image")
	b, ok := s.WaitingJob(id, "")
	if !ok {
		t.Fatal("not waiting")
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	wf, _ := v["workflow"].(map[string]any)
	prompt, _ := wf["prompt"].(map[string]any)
	if v["id"] != id || v["status"] != "pending" || v["create_time"] == nil || v["outputs_count"] != float64(0) || prompt["1"] == nil {
		t.Fatalf("shape: %s", b)
	}
	if _, ok := s.WaitingJob("nope", ""); ok {
		t.Fatal("unknown id waiting")
	}
}

func TestJobIDs(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 100 {
		id := newJobID()
		if len(id) != 36 || id[14] != '4' || !strings.Contains("89ab", string(id[19])) || strings.ToLower(id) != id || seen[id] {
			t.Fatalf("bad id %q", id)
		}
		seen[id] = true
	}
}

// TestScopeHidesOtherOwnersJobs: with a scope, another owner's job is
// unknown to every entry point (status, DELETE, the waiting-job view, the
// list and its counts) and cannot be cancelled; without one, it is seen.
func TestScopeHidesOtherOwnersJobs(t *testing.T) {
	t.Parallel()
	s := newFakeService(t, newFake(t, 1), nil) // not started: jobs stay in line
	body, _ := json.Marshal(map[string]any{"image_base64": testPNG(t, 4, 4)})
	submit := func(owner string) string {
		_, code, _, resp := serveAs(t, s, Request{Owner: owner, Scope: owner}, "POST", "/api/upscale-image", "application/json", body)
		var a acceptedView
		if code != 202 || json.Unmarshal(resp, &a) != nil {
			t.Fatalf("submit as %s: %d %s", owner, code, resp)
		}
		return a.JobID
	}
	ja, jb := submit("a"), submit("b")
	asA := Request{Owner: "a", Scope: "a"}
	if _, code, _, _ := serveAs(t, s, asA, "GET", "/api/jobs/"+jb+"/status", "", nil); code != 404 {
		t.Errorf("a's status of b's job: %d, want 404", code)
	}
	if _, code, _, _ := serveAs(t, s, asA, "DELETE", "/api/jobs/"+jb, "", nil); code != 404 || jobState(s, jb) != stWaiting {
		t.Errorf("a's DELETE of b's job: %d, state %v, want 404 and still waiting", code, jobState(s, jb))
	}
	if _, ok := s.WaitingJob(jb, "a"); ok {
		t.Error("WaitingJob of b's job in a's scope")
	}
	if _, ok := s.WaitingJob(jb, ""); !ok {
		t.Error("WaitingJob of b's job without scope: not found")
	}
	if known, cancelled := s.CancelJob(t.Context(), jb, "a"); !known || cancelled || jobState(s, jb) != stWaiting {
		t.Errorf("CancelJob of b's job in a's scope: known %v cancelled %v state %v, want known, not cancelled", known, cancelled, jobState(s, jb))
	}
	_, code, _, resp := serveAs(t, s, asA, "GET", "/api/jobs?source=comfygate", "", nil)
	var list listView
	if code != 200 || json.Unmarshal(resp, &list) != nil || list.Total != 1 || list.Waiting != 1 || len(list.Jobs) != 1 || list.Jobs[0].JobID != ja {
		t.Errorf("a's list: %d %s, want only %s (total 1, waiting 1)", code, resp, ja)
	}
	_, _, _, resp = serveAs(t, s, Request{}, "GET", "/api/jobs?source=comfygate", "", nil)
	if json.Unmarshal(resp, &list) != nil || list.Total != 2 || list.Waiting != 2 {
		t.Errorf("the unscoped list: %s, want both jobs", resp)
	}
	if known, cancelled := s.CancelJob(t.Context(), jb, "b"); !known || !cancelled {
		t.Errorf("CancelJob of b's job in b's scope: %v %v", known, cancelled)
	}
}
