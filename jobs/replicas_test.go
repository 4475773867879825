package jobs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/prompts"
	sharedstate "github.com/comfygate/comfygate/state"
	"github.com/valyala/fasthttp"
)

// replicaStore opens a store of the Redis at url, as one more replica of
// the fleet would.
func replicaStore(t *testing.T, url string) *sharedstate.Store {
	t.Helper()
	s, err := sharedstate.Open(context.Background(), config.State{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// replica is one started service over f sharing url's Redis. slots is its
// jobs.max_concurrent: 0 makes a replica that answers but claims nothing.
func replica(t *testing.T, f *fakeBackend, url string, slots int, mod func(*config.Config)) *Service {
	t.Helper()
	s := newSharedFakeService(t, f, replicaStore(t, url), func(c *config.Config) {
		c.Jobs.MaxConcurrent = slots
		c.Jobs.CacheMaxBytes = 0 // the same image again runs again
		if mod != nil {
			mod(c)
		}
	})
	s.eng.sh.every = 20 * time.Millisecond
	s.Start(t.Context())
	return s
}

// submitAs posts a small PNG to the upscale route as owner and returns the job id.
func submitAs(t *testing.T, s *Service, owner string, extra map[string]any) string {
	t.Helper()
	body := map[string]any{"image_base64": testPNG(t, 4, 4)}
	for k, v := range extra {
		body[k] = v
	}
	b, _ := json.Marshal(body)
	_, code, _, resp := serveAs(t, s, Request{Owner: owner, Scope: owner}, "POST", "/api/upscale-image", "application/json", b)
	if code != 202 {
		t.Fatalf("submit as %s: %d %s", owner, code, resp)
	}
	var a acceptedView
	if err := json.Unmarshal(resp, &a); err != nil || a.JobID == "" {
		t.Fatalf("submit as %s: %s", owner, resp)
	}
	return a.JobID
}

// runnerAndReader starts two replicas over one fake instance and one
// Redis: A, with one slot, runs the jobs; B, with none, only answers.
func runnerAndReader(t *testing.T) (f *fakeBackend, a, b *Service) {
	t.Helper()
	url := testkit.Redis(t)
	f = newFake(t, 1)
	return f, replica(t, f, url, 1, nil), replica(t, f, url, 0, nil)
}

// submitSent is submitAs on s, once the job's prompt reached f: the
// replica that claimed it sent it.
func submitSent(t *testing.T, f *fakeBackend, s *Service, owner string, extra map[string]any) string {
	t.Helper()
	id := submitAs(t, s, owner, extra)
	if got := f.waitSubmitted(); got != id {
		t.Fatalf("submitted %s, want %s", got, id)
	}
	return id
}

// statusAs is a job's status as owner sees it on s.
func statusAs(t *testing.T, s *Service, owner, id string) (int, statusView) {
	t.Helper()
	_, code, _, resp := serveAs(t, s, Request{Owner: owner, Scope: owner}, "GET", "/api/jobs/"+id+"/status", "", nil)
	var v statusView
	if code == 200 {
		if err := json.Unmarshal(resp, &v); err != nil {
			t.Fatalf("status: %s", resp)
		}
	}
	return code, v
}

// runToEnd plays a successful run of job id on the fake's first instance.
func runToEnd(f *fakeBackend, id string) {
	inst := f.insts[0]
	f.event(id, inst, "execution_start", map[string]any{"timestamp": 1})
	f.event(id, inst, "executing", map[string]any{"node": "3", "display_node": "3"})
	f.event(id, inst, "progress", map[string]any{"node": "3", "value": 2, "max": 4})
	f.event(id, inst, "executed", map[string]any{"node": "4", "display_node": "4", "output": map[string]any{
		"images": []map[string]string{{"filename": "comfygate-upscale_00001_.png", "subfolder": "", "type": "output"}}}})
	f.event(id, inst, "execution_success", map[string]any{"timestamp": 3})
}

// serveOn serves s's job API on a loopback port (for Server-Sent Events,
// which need a real connection) and returns its base URL.
func serveOn(t *testing.T, s *Service, owner string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if !s.ServeJobs(ctx, Request{Path: rawPath(ctx), Owner: owner, Scope: owner}) {
			ctx.Error("not a job route", fasthttp.StatusNotFound)
		}
	}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return "http://" + ln.Addr().String()
}

// TestJobsAcrossReplicas: a job submitted on replica A, which runs it, is
// followed on replica B, which holds no job: its status and progress, a
// long poll, its event stream to the end, its result, all on B; another
// key sees nothing of it on B; its webhook is delivered once.
func TestJobsAcrossReplicas(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	rcv := &webhookReceiver{got: make(chan struct{}, 4)}
	hooks := httptest.NewServer(rcv)
	defer hooks.Close()
	allowHooks := func(c *config.Config) { c.Webhooks.AllowedHosts = []string{"127.0.0.1"} }
	f := newFake(t, 1)
	a := replica(t, f, url, 4, allowHooks)
	b := replica(t, f, url, 0, allowHooks)

	id := submitSent(t, f, a, "alice", map[string]any{"webhook_url": hooks.URL + "/hook"})
	if held := a.eng.heldIDs(); !slices.Equal(held, []string{id}) {
		t.Fatalf("A holds %v, want [%s]", held, id)
	}
	if held := b.eng.heldIDs(); len(held) != 0 {
		t.Fatalf("B, with no slot, holds %v", held)
	}
	testkit.Eventually(t, "pending on B", func() bool {
		code, v := statusAs(t, b, "alice", id)
		return code == 200 && v.Status == statusPending
	})

	// The event stream on B, from its start, read while the job runs on A.
	base := serveOn(t, b, "alice")
	type sse struct {
		id, typ string
	}
	events := make(chan []sse, 1)
	go func() {
		var got []sse
		defer func() { events <- got }()
		resp, err := http.Get(base + "/api/jobs/" + id + "/events")
		if err != nil {
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var cur sse
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				cur.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				cur.typ = line[7:]
			case line == "" && cur.typ != "":
				got = append(got, cur)
				if cur.typ == evCompleted {
					return
				}
				cur = sse{}
			}
		}
	}()
	// A long poll on B that returns when the status moves on.
	polled := make(chan statusView, 1)
	go func() {
		_, _, _, resp := serveAs(t, b, Request{Owner: "alice", Scope: "alice"}, "GET", "/api/jobs/"+id+"/status?wait=20s&status=pending", "", nil)
		var v statusView
		_ = json.Unmarshal(resp, &v)
		polled <- v
	}()
	inst := f.insts[0]
	f.event(id, inst, "execution_start", map[string]any{"timestamp": 1})
	f.event(id, inst, "executing", map[string]any{"node": "3", "display_node": "3"})
	f.event(id, inst, "progress", map[string]any{"node": "3", "value": 2, "max": 4})
	select {
	case v := <-polled:
		if v.Status != statusProcessing {
			t.Fatalf("long poll on B: %+v", v)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the long poll on B did not return")
	}
	testkit.Eventually(t, "progress on B", func() bool {
		_, v := statusAs(t, b, "alice", id)
		return v.Status == statusProcessing && v.Progress > 0 && v.Instance != nil && *v.Instance == inst.Name
	})
	f.event(id, inst, "executed", map[string]any{"node": "4", "display_node": "4", "output": map[string]any{
		"images": []map[string]string{{"filename": "comfygate-upscale_00001_.png", "subfolder": "", "type": "output"}}}})
	f.event(id, inst, "execution_success", map[string]any{"timestamp": 3})

	testkit.Eventually(t, "completed on B", func() bool {
		_, v := statusAs(t, b, "alice", id)
		return v.Status == statusCompleted && v.Progress == 100 && len(v.Outputs) == 1
	})
	_, code, hdr, resp := serveAs(t, b, Request{Owner: "alice", Scope: "alice"}, "GET", "/api/jobs/"+id+"/result", "", nil, "Accept", "image/png")
	if code != 200 || string(hdr.ContentType()) != "image/png" || string(resp) != string(f.viewBody) {
		t.Fatalf("result on B: %d %s (%d bytes)", code, hdr.ContentType(), len(resp))
	}
	var got []sse
	select {
	case got = <-events:
	case <-time.After(20 * time.Second):
		t.Fatal("the event stream on B did not end")
	}
	var types []string
	for i, ev := range got {
		types = append(types, ev.typ)
		if ev.id != itoa(i+1) {
			t.Fatalf("event %d has id %s: %v", i+1, ev.id, got)
		}
	}
	if len(types) < 4 || types[0] != evQueued || !slices.Contains(types, evStarted) || !slices.Contains(types, evProgress) || types[len(types)-1] != evCompleted {
		t.Fatalf("events on B: %v", types)
	}

	// Another key sees nothing of it on B, nor may cancel it.
	if code, _ := statusAs(t, b, "bob", id); code != 404 {
		t.Fatalf("bob's status of alice's job on B: %d", code)
	}
	for _, route := range []string{"", "/result", "/outputs", "/outputs/0", "/events"} {
		method := "GET"
		if route == "" {
			method = "DELETE"
		}
		if _, code, _, _ := serveAs(t, b, Request{Owner: "bob", Scope: "bob"}, method, "/api/jobs/"+id+route, "", nil); code != 404 {
			t.Fatalf("bob's %s /api/jobs/{id}%s of alice's job on B: %d", method, route, code)
		}
	}
	var list listView
	if _, code, _, resp := serveAs(t, b, Request{Owner: "bob", Scope: "bob"}, "GET", "/api/jobs?source=comfygate", "", nil); code != 200 || json.Unmarshal(resp, &list) != nil || list.Total != 0 {
		t.Fatalf("bob's job list on B: %d %s", code, resp)
	}
	if owner, known := b.JobOwner(id); !known || owner != "alice" {
		t.Fatalf("JobOwner on B: %q %v", owner, known)
	}

	// The webhook went once, from A; B, which mirrors the job, sends none.
	select {
	case <-rcv.got:
	case <-time.After(20 * time.Second):
		t.Fatal("no webhook")
	}
	other := submitSent(t, f, a, "alice", nil)
	runToEnd(f, other)
	testkit.Eventually(t, "the next job completed on B", func() bool {
		_, v := statusAs(t, b, "alice", other)
		return v.Status == statusCompleted
	})
	rcv.mu.Lock()
	n := len(rcv.calls)
	rcv.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d webhook deliveries, want 1", n)
	}
}

// TestCancelOnAnotherReplica: DELETE on B of a job A runs is routed to A,
// which cancels it at its instance; DELETE on B of a job still in the
// shared wait line takes it from there, and no replica runs it.
func TestCancelOnAnotherReplica(t *testing.T) {
	t.Parallel()
	f, a, b := runnerAndReader(t)

	running := submitSent(t, f, a, "alice", nil)
	testkit.Eventually(t, "queued on A", func() bool { return jobState(a, running) == stQueued })
	waiting := submitAs(t, a, "alice", nil) // A's one slot is taken: it waits

	_, code, _, resp := serveAs(t, b, Request{Owner: "alice", Scope: "alice"}, "DELETE", "/api/jobs/"+running, "", nil)
	var d deleteView
	if code != 200 || json.Unmarshal(resp, &d) != nil || !d.Cancelled || d.Status != statusCancelled {
		t.Fatalf("DELETE on B of a job on A: %d %s", code, resp)
	}
	f.mu.Lock()
	cancels := slices.Clone(f.cancels)
	f.mu.Unlock()
	if !slices.Equal(cancels, []string{running}) {
		t.Fatalf("instance cancels %v, want [%s]", cancels, running)
	}
	if st := jobState(a, running); st != stCancelled {
		t.Fatalf("on A the job is %v", st)
	}

	// A's slot is free again: it claims the waiting job unless B's cancel
	// took it first. Either way it runs at most once and ends as the
	// cancel says.
	_, code, _, resp = serveAs(t, b, Request{Owner: "alice", Scope: "alice"}, "DELETE", "/api/jobs/"+waiting, "", nil)
	if code != 200 || json.Unmarshal(resp, &d) != nil || !d.Cancelled {
		t.Fatalf("DELETE on B of the waiting job: %d %s", code, resp)
	}
	for _, s := range []*Service{a, b} {
		testkit.Eventually(t, "cancelled everywhere", func() bool {
			_, v := statusAs(t, s, "alice", waiting)
			return v.Status == statusCancelled
		})
	}
	f.mu.Lock()
	n := 0
	for _, sub := range f.submits {
		if sub.PromptID == waiting {
			n++
		}
	}
	f.mu.Unlock()
	if n > 1 {
		t.Fatalf("the cancelled waiting job was submitted %d times", n)
	}
}

// TestReplicaDiesWhileJobsWait: replica A claims two jobs and dies (its
// Redis client and service closed without a drain) while one's prompt
// reached the instance and the other's did not, and two more wait in the
// shared line. Replica B, started after, takes all four over once A's
// claims run out: the one at the instance is followed there, never sent
// again; the others are sent once each; none is lost.
func TestReplicaDiesWhileJobsWait(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	fa := newFake(t, 1)
	hang := make(chan struct{})
	fa.submitFn = func(req prompts.SubmitRequest) (prompts.SubmitResult, error) {
		<-hang // A dies while its POST /prompt is under way
		return prompts.SubmitResult{}, context.Canceled
	}
	storeA := replicaStore(t, url)
	a := newSharedFakeService(t, fa, storeA, func(c *config.Config) { c.Jobs.MaxConcurrent = 2 })
	a.eng.sh.every, a.eng.sh.lease = 20*time.Millisecond, time.Second
	a.Start(t.Context())

	var ids []string
	for range 4 {
		ids = append(ids, submitAs(t, a, "alice", nil))
	}
	sent := map[string]bool{fa.waitSubmitted(): true, fa.waitSubmitted(): true}
	var arrived, lostOnTheWay string
	var waiting []string
	for _, id := range ids {
		switch {
		case !sent[id]:
			waiting = append(waiting, id)
		case arrived == "":
			arrived = id
		default:
			lostOnTheWay = id
		}
	}
	if len(waiting) != 2 {
		t.Fatalf("A sent %v of %v", sent, ids)
	}

	// A dies: its Redis client goes first, so nothing more of it arrives.
	_ = storeA.Close()
	close(hang)
	a.Close()

	fb := newFake(t, 1)
	fb.callFn = func(method, path string) (int, []byte, bool) {
		switch {
		case path == "/queue":
			// The instance has the prompt A sent before it died.
			return 200, []byte(`{"queue_running": [[0, "` + arrived + `", {}, {}, []]], "queue_pending": []}`), true
		case strings.HasPrefix(path, "/history/"):
			return 200, []byte(`{}`), true
		}
		return 0, nil, false
	}
	b := replica(t, fb, url, 4, nil)
	got := map[string]int{}
	for range 3 {
		got[fb.waitSubmitted()]++
	}
	want := map[string]int{lostOnTheWay: 1, waiting[0]: 1, waiting[1]: 1}
	if len(got) != 3 || got[lostOnTheWay] != 1 || got[waiting[0]] != 1 || got[waiting[1]] != 1 {
		t.Fatalf("B submitted %v, want %v", got, want)
	}
	testkit.Eventually(t, "the job at the instance followed on B", func() bool {
		_, v := statusAs(t, b, "alice", arrived)
		return v.Status == statusProcessing
	})
	testkit.Eventually(t, "B holds all four", func() bool { return len(b.eng.heldIDs()) == 4 })
	select {
	case extra := <-fb.submitted:
		t.Fatalf("B submitted %s again", extra)
	default:
	}
	for _, id := range ids {
		if code, v := statusAs(t, b, "alice", id); code != 200 || v.Status == statusFailed || v.Status == statusCancelled {
			t.Fatalf("job %s on B: %d %+v", id, code, v)
		}
	}
	runToEnd(fb, lostOnTheWay)
	testkit.Eventually(t, "a taken-over job completes", func() bool {
		_, v := statusAs(t, b, "alice", lostOnTheWay)
		return v.Status == statusCompleted
	})
}

// TestSubmitWithoutRedis: with state.url set and Redis not answering, a
// submission gets 503 state_unavailable with Retry-After, and no job.
func TestSubmitWithoutRedis(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	st := replicaStore(t, url)
	f := newFake(t, 1)
	s := newSharedFakeService(t, f, st, nil)
	s.Start(t.Context())
	_ = st.Close()
	b, _ := json.Marshal(map[string]any{"image_base64": testPNG(t, 4, 4)})
	_, code, hdr, resp := serve(t, s, "POST", "/api/upscale-image", "application/json", b)
	var e struct {
		Error struct{ Type string } `json:"error"`
	}
	_ = json.Unmarshal(resp, &e)
	if code != 503 || e.Error.Type != errStateUnavailable || string(hdr.Peek("Retry-After")) != "1" {
		t.Fatalf("submission without Redis: %d %s Retry-After %q", code, resp, hdr.Peek("Retry-After"))
	}
	s.eng.lock()
	n := len(s.eng.jobs)
	s.eng.unlock()
	if n != 0 {
		t.Fatalf("%d jobs made", n)
	}
}

// TestReplicasShareOneLine: jobs submitted on two replicas that both
// claim from the shared line are each run once, by one of them, and each
// one's webhook is delivered once; every job reads the same on both.
func TestReplicasShareOneLine(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	rcv := &webhookReceiver{got: make(chan struct{}, 16)}
	hooks := httptest.NewServer(rcv)
	defer hooks.Close()
	allowHooks := func(c *config.Config) { c.Webhooks.AllowedHosts = []string{"127.0.0.1"} }
	f := newFake(t, 1)
	a := replica(t, f, url, 2, allowHooks)
	b := replica(t, f, url, 2, allowHooks)

	const n = 6
	var ids []string
	for i := range n {
		s := a
		if i%2 == 1 {
			s = b
		}
		ids = append(ids, submitAs(t, s, "alice", map[string]any{"webhook_url": hooks.URL + "/hook"}))
	}
	// Two slots on each replica: four run at once; each end frees one.
	ran := map[string]int{}
	for range n {
		id := f.waitSubmitted()
		ran[id]++
		runToEnd(f, id)
	}
	for _, id := range ids {
		if ran[id] != 1 {
			t.Fatalf("job %s ran %d times (%v)", id, ran[id], ran)
		}
		for _, s := range []*Service{a, b} {
			testkit.Eventually(t, "completed on both replicas", func() bool {
				_, v := statusAs(t, s, "alice", id)
				return v.Status == statusCompleted
			})
		}
	}
	held := append(a.eng.heldIDs(), b.eng.heldIDs()...)
	slices.Sort(held)
	want := slices.Sorted(slices.Values(ids))
	if !slices.Equal(held, want) {
		t.Fatalf("held %v, want each job held by one replica: %v", held, want)
	}
	testkit.Eventually(t, "a webhook per job", func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return len(rcv.calls) >= n
	})
	rcv.mu.Lock()
	seen := map[string]int{}
	for _, c := range rcv.calls {
		seen[c.Header.Get("webhook-id")]++
	}
	calls := len(rcv.calls)
	rcv.mu.Unlock()
	if calls != n || len(seen) != n {
		t.Fatalf("%d webhook deliveries with %d ids, want %d once each", calls, len(seen), n)
	}
	f.mu.Lock()
	submits := len(f.submits)
	f.mu.Unlock()
	if submits != n {
		t.Fatalf("%d submissions for %d jobs", submits, n)
	}
}

// TestJobsAcrossReplicasEndToEnd: two replicas, each with its own pool and
// prompt table, in front of the same simulated ComfyUI and sharing one
// Redis. A job submitted to A, which alone has slots, is answered on B
// over HTTP: its status, its event stream to the end (the same as A's),
// and its result image, which B fetches from the simulator itself.
func TestJobsAcrossReplicasEndToEnd(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	faster := func(s *Service) { s.eng.sh.every = 20 * time.Millisecond }
	a := startHarness(t, 1, comfysim.Options{Delay: 50 * time.Millisecond}, nil, faster, nil, replicaStore(t, url))
	readOnly := func(s *Service) {
		faster(s)
		s.eng.cfg.MaxConcurrent = 0 // claims nothing: configuration refuses 0
	}
	b := startHarness(t, 1, comfysim.Options{}, nil, readOnly, []string{a.sims[0].Addr()}, replicaStore(t, url))

	img := testPNG(t, 16, 16)
	id := a.submit("/api/upscale-image", img, nil)
	v := b.waitStatus(id, 20*time.Second, statusCompleted, statusFailed)
	if v.Status != statusCompleted || v.Progress != 100 || v.Instance == nil || len(v.Outputs) == 0 {
		t.Fatalf("on B: %+v", v)
	}
	if held := b.svc.eng.heldIDs(); len(held) != 0 {
		t.Fatalf("B, with no slot, ran %v", held)
	}
	if got, want := b.result(id), a.result(id); !bytes.Equal(got, want) || len(got) == 0 {
		t.Fatalf("result on B (%d bytes) differs from A's (%d bytes)", len(got), len(want))
	}
	code, hdr, body := b.do("GET", "/api/jobs/"+id+"/events", "", nil)
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("events on B: %d %s", code, hdr.Get("Content-Type"))
	}
	events := string(body)
	for _, want := range []string{"id: 1\nevent: queued", "event: started", "event: completed"} {
		if !strings.Contains(events, want) {
			t.Fatalf("events on B lack %q:\n%s", want, events)
		}
	}
	if _, _, aBody := a.do("GET", "/api/jobs/"+id+"/events", "", nil); string(aBody) != events {
		t.Fatalf("the event stream differs between the replicas:\nA:\n%s\nB:\n%s", aBody, events)
	}

	// Submitted to B with Prefer: wait: A runs it, B answers once it ended.
	code, _, body = postJSON(b, "/api/upscale-image", map[string]any{"image_base64": base64.StdEncoding.EncodeToString(testPNG(t, 24, 24))}, "Prefer", "wait=20")
	var w waitedView
	if code != 200 || json.Unmarshal(body, &w) != nil || w.Status != statusCompleted || !strings.HasPrefix(w.ImageBase64, "data:image/png;base64,") {
		t.Fatalf("Prefer: wait on B: %d %.200s", code, body)
	}
	if held := a.svc.eng.heldIDs(); !slices.Contains(held, w.JobID) {
		t.Fatalf("A holds %v, not the job B waited for (%s)", held, w.JobID)
	}
}

// TestReplicaShutdownHandsJobsOver: a replica that shuts down ends its
// claims: another replica follows its job at the instance and runs the
// one still waiting at once, not when the claims' lease (an hour here)
// runs out.
func TestReplicaShutdownHandsJobsOver(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	fa := newFake(t, 1)
	a := newSharedFakeService(t, fa, replicaStore(t, url), func(c *config.Config) {
		c.Jobs.MaxConcurrent = 1
		c.Jobs.CacheMaxBytes = 0
	})
	a.eng.sh.every, a.eng.sh.lease = 20*time.Millisecond, time.Hour
	a.Start(t.Context())
	atInstance := submitSent(t, fa, a, "alice", nil)
	testkit.Eventually(t, "queued on A", func() bool { return jobState(a, atInstance) == stQueued })
	waiting := submitAs(t, a, "alice", nil)
	a.Close()

	fb := newFake(t, 1)
	fb.callFn = func(method, path string) (int, []byte, bool) {
		switch {
		case path == "/queue":
			return 200, []byte(`{"queue_running": [], "queue_pending": [[1, "` + atInstance + `", {}, {}, []]]}`), true
		case strings.HasPrefix(path, "/history/"):
			return 200, []byte(`{}`), true
		}
		return 0, nil, false
	}
	b := replica(t, fb, url, 2, nil)
	if got := fb.waitSubmitted(); got != waiting {
		t.Fatalf("B submitted %s, want the waiting job %s", got, waiting)
	}
	testkit.Eventually(t, "B follows the job at the instance", func() bool {
		return slices.Equal(b.eng.heldIDs(), slices.Sorted(slices.Values([]string{atInstance, waiting})))
	})
	select {
	case extra := <-fb.submitted:
		t.Fatalf("B submitted %s again", extra)
	default:
	}
	if code, v := statusAs(t, b, "alice", atInstance); code != 200 || v.Status != statusPending {
		t.Fatalf("the job at the instance on B: %d %+v", code, v)
	}
}

// TestTakenOverJobWhosePromptWasAdopted: when the prompt table of the
// replica that takes a dead replica's job over holds the job's prompt
// already (it adopted it), the job follows it and does not send it again,
// though no instance reports it yet.
func TestTakenOverJobWhosePromptWasAdopted(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	fa := newFake(t, 1)
	hang := make(chan struct{})
	fa.submitFn = func(req prompts.SubmitRequest) (prompts.SubmitResult, error) {
		<-hang
		return prompts.SubmitResult{}, context.Canceled
	}
	storeA := replicaStore(t, url)
	a := newSharedFakeService(t, fa, storeA, func(c *config.Config) { c.Jobs.MaxConcurrent = 1 })
	a.eng.sh.every, a.eng.sh.lease = 20*time.Millisecond, 200*time.Millisecond
	a.Start(t.Context())
	id := submitSent(t, fa, a, "alice", nil)
	_ = storeA.Close()
	close(hang)
	a.Close()

	fb := newFake(t, 1)
	fb.prompts[id] = &prompts.Prompt{ID: id} // adopted, being sent again
	asked := 0
	fb.callFn = func(method, path string) (int, []byte, bool) {
		switch {
		case path == "/queue":
			fb.mu.Lock()
			asked++
			fb.mu.Unlock()
			return 200, []byte(`{"queue_running": [], "queue_pending": []}`), true
		case strings.HasPrefix(path, "/history/"):
			return 200, []byte(`{}`), true
		}
		return 0, nil, false
	}
	b := replica(t, fb, url, 2, nil)
	testkit.Eventually(t, "B holds the job", func() bool { return slices.Equal(b.eng.heldIDs(), []string{id}) })
	// Its instances answer without it, again and again.
	testkit.Eventually(t, "B looks for the prompt more than once", func() bool {
		fb.mu.Lock()
		defer fb.mu.Unlock()
		return asked >= 3
	})
	select {
	case got := <-fb.submitted:
		t.Fatalf("B sent %s again while its prompt table had it", got)
	default:
	}
	if _, v := statusAs(t, b, "alice", id); v.Status != statusPending {
		t.Fatalf("the job on B: %+v", v)
	}
}

// TestJobListAcrossReplicas: the job list on any replica is the fleet's:
// a job another replica runs, one waiting in the shared line, each with
// its state and counted; a key lists only its own; a status filter
// applies to the fleet's jobs.
func TestJobListAcrossReplicas(t *testing.T) {
	t.Parallel()
	f, a, b := runnerAndReader(t)

	running := submitSent(t, f, a, "alice", nil)
	f.event(running, f.insts[0], "execution_start", map[string]any{"timestamp": 1})
	waiting := submitAs(t, b, "alice", nil)
	other := submitAs(t, a, "bob", nil)

	list := func(s *Service, scope, query string) listView {
		t.Helper()
		var v listView
		_, code, _, resp := serveAs(t, s, Request{Owner: scope, Scope: scope}, "GET", "/api/jobs?source=comfygate"+query, "", nil)
		if code != 200 || json.Unmarshal(resp, &v) != nil {
			t.Fatalf("list as %q: %d %s", scope, code, resp)
		}
		return v
	}
	ids := func(v listView) []string {
		var out []string
		for _, it := range v.Jobs {
			out = append(out, it.JobID+" "+it.Status)
		}
		return out
	}
	want := []string{running + " " + statusProcessing, waiting + " " + statusPending}
	for name, s := range map[string]*Service{"A": a, "B": b} {
		testkit.Eventually(t, "alice's jobs listed on "+name, func() bool {
			return slices.Equal(ids(list(s, "alice", "")), want)
		})
		v := list(s, "alice", "")
		if v.Total != 2 || v.Waiting != 1 || v.InFlight != 1 || v.Jobs[0].Workflow != "upscale-image" ||
			v.Jobs[0].Instance == nil || *v.Jobs[0].Instance != f.insts[0].Name || v.Jobs[1].Instance != nil {
			t.Fatalf("alice's list on %s: %+v", name, v)
		}
		if got := ids(list(s, "bob", "")); !slices.Equal(got, []string{other + " " + statusPending}) {
			t.Fatalf("bob's list on %s: %v", name, got)
		}
		if got := ids(list(s, "", "")); len(got) != 3 {
			t.Fatalf("the whole list on %s: %v", name, got)
		}
		if got := ids(list(s, "alice", "&status=pending")); !slices.Equal(got, want[1:]) {
			t.Fatalf("alice's pending jobs on %s: %v", name, got)
		}
	}
}

// TestJobLineAcrossReplicas: the operator's view of the job line on any
// replica is the fleet's: the shared wait line's head in the order jobs
// leave it and the jobs other replicas hold; the wait line gauge counts
// the shared line on every replica.
func TestJobLineAcrossReplicas(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	f := newFake(t, 1)
	a := replica(t, f, url, 1, nil)
	m := metrics.New("test")
	b := newSharedFakeService(t, f, replicaStore(t, url), func(c *config.Config) { c.Jobs.MaxConcurrent = 0 })
	b.eng.m, b.del.m, b.st.m = m, m, m
	b.eng.sh.every = 20 * time.Millisecond
	b.Start(t.Context())

	running := submitSent(t, f, a, "alice", nil)
	f.event(running, f.insts[0], "execution_start", map[string]any{"timestamp": 1})
	w1 := submitAs(t, b, "alice", nil)
	w2 := submitAs(t, b, "bob", nil)
	w3 := submitAs(t, a, "alice", nil)
	ids := func(js []LineJob) []string {
		var out []string
		for _, j := range js {
			out = append(out, j.ID+" "+j.State)
		}
		return out
	}
	// Keys in turn: alice, bob, then alice's second.
	wantWaiting := []string{w1 + " waiting", w2 + " waiting", w3 + " waiting"}
	for name, s := range map[string]*Service{"A": a, "B": b} {
		testkit.Eventually(t, "the fleet's line on "+name, func() bool {
			l := s.Line(10)
			return slices.Equal(ids(l.Waiting), wantWaiting) && slices.Equal(ids(l.Active), []string{running + " running"})
		})
		l := s.Line(2)
		if l.WaitingTotal != 3 || len(l.Waiting) != 2 || l.ActiveTotal != 1 || l.Active[0].Instance != f.insts[0].Name || l.Waiting[0].Workflow != "upscale-image" {
			t.Fatalf("the line's first two on %s: %+v", name, l)
		}
	}
	testkit.Eventually(t, "B's wait line gauge to count the shared line", func() bool { return m.Stats().WaitLine == 3 })
}

// TestResultCacheAcrossReplicas: a job's result cached on replica A
// completes the same job on replica B at once, its outputs fetched from
// the instance that holds them and no prompt sent; another key's same job
// runs; an entry whose file the instance no longer serves is dropped, and
// the job runs.
func TestResultCacheAcrossReplicas(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	f := newFake(t, 1)
	cacheOn := func(c *config.Config) { c.Jobs.CacheMaxBytes = 1 << 20 }
	a := replica(t, f, url, 1, cacheOn)
	b := replica(t, f, url, 0, cacheOn)
	submits := func() int {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.submits)
	}
	submit := func(s *Service, owner string) acceptedView {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"image_base64": testPNG(t, 4, 4)})
		_, code, _, resp := serveAs(t, s, Request{Owner: owner, Scope: owner}, "POST", "/api/upscale-image", "application/json", body)
		var v acceptedView
		if code != 202 || json.Unmarshal(resp, &v) != nil {
			t.Fatalf("submit as %s: %d %s", owner, code, resp)
		}
		return v
	}

	first := submitSent(t, f, a, "alice", nil)
	runToEnd(f, first)
	testkit.Eventually(t, "the first job completed on A", func() bool {
		_, v := statusAs(t, a, "alice", first)
		return v.Status == statusCompleted
	})
	key := mustKey(t, a, cacheScope("alice"), "upscale-image", testPNG(t, 4, 4), nil)
	if _, ok, err := replicaStore(t, url).Results().Get(context.Background(), key); !ok || err != nil {
		t.Fatalf("A's cached result is not in the fleet's index (%v)", err)
	}

	again := submit(b, "alice")
	if again.Status != statusCompleted || !again.Cached {
		t.Fatalf("the same job on B: %+v, want completed from the cache", again)
	}
	_, code, _, res := serveAs(t, b, Request{Owner: "alice", Scope: "alice"}, "GET", "/api/jobs/"+again.JobID+"/result", "", nil, "Accept", "image/png")
	if code != 200 || !bytes.Equal(res, f.viewBody) {
		t.Fatalf("its result on B: %d (%d bytes), want the instance's output", code, len(res))
	}
	if n := submits(); n != 1 {
		t.Fatalf("%d prompts sent, want 1: the cached job sent none", n)
	}

	// Another key's same job is its own: it waits and runs.
	if other := submit(b, "bob"); other.Status == statusCompleted || other.Cached {
		t.Fatalf("bob's same job on B: %+v, want it to run", other)
	}
	f.waitSubmitted()

	// The instance no longer serves the file: a replica without the
	// result (a third one) drops the entry, and the job runs.
	f.mu.Lock()
	f.callFn = func(method, path string) (int, []byte, bool) {
		return 404, nil, strings.HasPrefix(path, "/view?")
	}
	f.mu.Unlock()
	c := replica(t, f, url, 0, cacheOn)
	if gone := submit(c, "alice"); gone.Status == statusCompleted || gone.Cached {
		t.Fatalf("the same job on C once the file is gone: %+v, want it to run", gone)
	}
	if _, ok, err := replicaStore(t, url).Results().Get(context.Background(), key); ok || err != nil {
		t.Fatalf("the entry whose file is gone is still in the index (%v)", err)
	}
}
