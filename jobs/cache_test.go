package jobs

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
	"github.com/valyala/fasthttp"
)

// cacheOn turns the result cache on (newHarness turns it off).
func cacheOn(c *config.Config) { c.Jobs.CacheMaxBytes = 1 << 30 }

// runs is how many prompts the harness's instances executed.
func (h *harness) runs() int {
	n := 0
	for _, s := range h.sims {
		for _, c := range s.Runs() {
			n += c
		}
	}
	return n
}

// waitRuns waits until the instances recorded want executions: a run is
// recorded just after the instance sends its end, so the job may complete
// (and its answer arrive) a moment before.
func (h *harness) waitRuns(want int) {
	h.tb.Helper()
	testkit.Eventually(h.tb, fmt.Sprintf("%d runs recorded", want), func() bool { return h.runs() == want })
}

// waitSubmit posts img (and inputs) to route with Prefer: wait and
// returns the finished job's answer.
func (h *harness) waitSubmit(route string, img []byte, inputs map[string]any, hdr ...string) waitedView {
	h.tb.Helper()
	body := map[string]any{"image_base64": base64.StdEncoding.EncodeToString(img)}
	if inputs != nil {
		body["inputs"] = inputs
	}
	b, _ := json.Marshal(body)
	code, _, resp := h.do("POST", route, "application/json", b, append([]string{"Prefer", "wait=20"}, hdr...)...)
	var v waitedView
	if code != http.StatusOK || json.Unmarshal(resp, &v) != nil || v.Status != statusCompleted {
		h.tb.Fatalf("POST %s with Prefer: wait: %d %.300s", route, code, resp)
	}
	return v
}

// TestCacheHit: the same job again completes at once from the first
// one's outputs, marked cached, without running on an instance; its
// status, result, outputs and events are those of any completed job.
func TestCacheHit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{Delay: 10 * time.Millisecond, RecordRuns: true}, cacheOn)
	img := testPNG(t, 24, 16)
	first := h.waitSubmit("/api/upscale-image", img, nil)
	if first.Cached {
		t.Fatalf("the first job is cached: %+v", first.statusView)
	}
	h.waitRuns(1)
	if !h.svc.st.cache.has(mustKey(t, h.svc, "", "upscale-image", img, nil)) {
		t.Fatal("the completed job's result is not in the cache")
	}

	second := h.waitSubmit("/api/upscale-image", img, nil)
	if !second.Cached || second.JobID == first.JobID || second.Progress != 100 {
		t.Fatalf("second answer: %+v", second.statusView)
	}
	if second.ImageBase64 == "" || second.ImageBase64 != first.ImageBase64 {
		t.Fatal("the cached answer's image differs from the first job's")
	}
	if got := h.runs(); got != 1 {
		t.Fatalf("%d runs after the repeated job, want 1 (none for the cached one)", got)
	}

	// Status and result say cached; the bytes are the first job's.
	_, st := h.status(second.JobID)
	if st.Status != statusCompleted || !st.Cached || len(st.Outputs) != 1 {
		t.Fatalf("status of the cached job: %+v", st)
	}
	code, _, b := h.do("GET", "/api/jobs/"+second.JobID+"/result", "", nil)
	var r resultView
	if code != 200 || json.Unmarshal(b, &r) != nil || !r.Cached {
		t.Fatalf("result of the cached job: %d %.200s", code, b)
	}
	if !bytes.Equal(h.result(second.JobID), h.result(first.JobID)) {
		t.Fatal("the cached job's result bytes differ from the first job's")
	}
	code, _, raw := h.do("GET", "/api/jobs/"+second.JobID+"/outputs/0", "", nil)
	if code != 200 || !bytes.Equal(raw, h.result(first.JobID)) {
		t.Fatalf("output 0 of the cached job: %d (%d bytes)", code, len(raw))
	}
	// The event stream ends with the completed event at once.
	code, _, ev := h.do("GET", "/api/jobs/"+second.JobID+"/events", "", nil)
	if code != 200 || !strings.Contains(string(ev), "event: completed") {
		t.Fatalf("events of the cached job: %d %s", code, ev)
	}
	// The first job's status never says cached.
	if _, st := h.status(first.JobID); st.Cached {
		t.Fatalf("the first job's status says cached: %+v", st)
	}

	// Without a wait, the 202 already says completed.
	body, _ := json.Marshal(map[string]any{"image_base64": img})
	code, _, b = h.do("POST", "/api/upscale-image", "application/json", body)
	var a acceptedView
	if code != http.StatusAccepted || json.Unmarshal(b, &a) != nil || a.Status != statusCompleted || !a.Cached {
		t.Fatalf("202 of a cached job: %d %s", code, b)
	}
	if got := h.runs(); got != 1 {
		t.Fatalf("%d runs, want 1", got)
	}
}

// TestCacheMisses: another image, another override or another
// parameter value is another job: it runs.
func TestCacheMisses(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{Delay: 10 * time.Millisecond, RecordRuns: true}, cacheOn)
	img := testPNG(t, 20, 20)
	h.waitSubmit("/api/upscale-image", img, nil)
	other := testPNG(t, 20, 21)
	for _, tc := range []struct {
		desc   string
		img    []byte
		inputs map[string]any
	}{
		{"another image", other, nil},
		{"another override", img, map[string]any{"2.model_name": "RealESRGAN_x2plus.pth"}},
	} {
		before := h.runs()
		if v := h.waitSubmit("/api/upscale-image", tc.img, tc.inputs); v.Cached {
			t.Fatalf("%s: answered from the cache", tc.desc)
		}
		h.waitRuns(before + 1)
	}
	// Each of them is cached in turn.
	before := h.runs()
	if v := h.waitSubmit("/api/upscale-image", img, map[string]any{"2.model_name": "RealESRGAN_x2plus.pth"}); !v.Cached {
		t.Fatal("the repeated override job was not answered from the cache")
	}
	if h.runs() != before {
		t.Fatal("the repeated override job ran")
	}
}

// mustKey is the cache key of a JSON submission of img with params.
func mustKey(t *testing.T, s *Service, scope, wfName string, img []byte, params map[string]json.RawMessage) string {
	t.Helper()
	wf := s.cat.workflows()[wfName]
	key, graph := s.st.cacheKey(scope, wf, &submission{image: img}, params, nil)
	if key == "" || len(graph) == 0 {
		t.Fatalf("no cache key for %s", wfName)
	}
	return key
}

// TestCacheKey: the key changes with every parameter value, the image's
// bytes and the owner's scope, and only with them.
func TestCacheKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	wfFile := filepath.Join(dir, "up.json")
	src, err := os.ReadFile("../workflows/upscale-image.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wfFile, src, 0o600); err != nil {
		t.Fatal(err)
	}
	f := newFake(t, 1)
	s := newFakeService(t, f, func(c *config.Config) {
		c.Workflows = map[string]config.Workflow{
			"up": {File: wfFile, ImageNode: "1", ImageInput: "image", OutputNode: "4", Cache: &config.WorkflowCache{TTL: time.Hour},
				Parameters: []config.Parameter{{Name: "model", Node: "2", Input: "model_name", Type: "string"}}},
			"up-nocache": {File: wfFile, ImageNode: "1", ImageInput: "image", OutputNode: "4"},
		}
	})
	img, other := testPNG(t, 8, 8), testPNG(t, 8, 9)
	x2 := map[string]json.RawMessage{"model": json.RawMessage(`"RealESRGAN_x2plus.pth"`)}
	x4 := map[string]json.RawMessage{"model": json.RawMessage(`"RealESRGAN_x4plus.pth"`)}
	base := mustKey(t, s, "", "up", img, x2)
	if again := mustKey(t, s, "", "up", bytes.Clone(img), maps.Clone(x2)); again != base {
		t.Fatal("the same submission has two keys")
	}
	for _, tc := range []struct {
		desc   string
		scope  string
		img    []byte
		params map[string]json.RawMessage
	}{
		{"another parameter value", "", img, x4},
		{"no parameter", "", img, nil},
		{"another image", "", other, x2},
		{"another key's scope", "key:b", img, x2},
	} {
		if k := mustKey(t, s, tc.scope, "up", tc.img, tc.params); k == base {
			t.Errorf("%s: same key", tc.desc)
		}
	}
	if k, _ := s.st.cacheKey("", s.cat.workflows()["up-nocache"], &submission{image: img}, nil, nil); k != "" {
		t.Error("a workflow without cache has a cache key")
	}

	// A spooled image hashed as it was written, or read back, is keyed as
	// the same bytes in memory.
	p := filepath.Join(dir, "spooled")
	if err := os.WriteFile(p, img, 0o600); err != nil {
		t.Fatal(err)
	}
	wf := s.cat.workflows()["up"]
	mem, _ := s.st.cacheKey("", wf, &submission{image: img}, x2, nil)
	file, _ := s.st.cacheKey("", wf, &submission{spool: &spooledImage{path: p, size: int64(len(img))}}, x2, nil)
	if mem != file {
		t.Error("a spooled image and the same bytes in memory have different keys")
	}
}

// TestCacheScope: the owner scope is the submitting key's name; with
// keys off, one shared scope.
func TestCacheScope(t *testing.T) {
	t.Parallel()
	a, b := cacheScope("a"), cacheScope("b")
	if a == b || a == "" || b == "" {
		t.Fatalf("scopes of two keys: %q and %q", a, b)
	}
	if a != cacheScope("a") {
		t.Error("the same key name has two scopes")
	}
	if got := cacheScope(""); got != "" {
		t.Errorf("keys off: scope %q, want the shared one", got)
	}
}

// TestCacheOtherKeyMisses: a job another key submitted does not answer
// this key's same job; this key's own repeat does.
func TestCacheOtherKeyMisses(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{Delay: 10 * time.Millisecond, RecordRuns: true}, cacheOn)
	img := testPNG(t, 12, 12)
	body, _ := json.Marshal(map[string]any{"image_base64": img})
	submitAs := func(name string) acceptedView {
		t.Helper()
		var req fasthttp.Request
		req.Header.SetMethod("POST")
		req.SetRequestURI("/api/upscale-image")
		req.Header.SetContentType("application/json")
		req.SetBody(body)
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, nil, nil)
		if !h.svc.ServeJobs(&ctx, Request{Path: "/api/upscale-image", Owner: name, Scope: name}) || ctx.Response.StatusCode() != http.StatusAccepted {
			t.Fatalf("POST as %s: %d %s", name, ctx.Response.StatusCode(), ctx.Response.Body())
		}
		var a acceptedView
		if err := json.Unmarshal(ctx.Response.Body(), &a); err != nil {
			t.Fatal(err)
		}
		h.waitStatus(a.JobID, 20*time.Second, statusCompleted)
		return a
	}
	if a := submitAs("alice"); a.Cached {
		t.Fatal("alice's first job is cached")
	}
	if a := submitAs("bob"); a.Cached {
		t.Fatal("bob's job was answered from alice's result")
	}
	h.waitRuns(2) // one per key
	if a := submitAs("alice"); !a.Cached {
		t.Fatal("alice's repeat was not answered from her result")
	}
	// Keys off: a scope of its own, not any key's.
	if v := h.waitSubmit("/api/upscale-image", img, nil); v.Cached {
		t.Fatal("a submission without a key was answered from a key's result")
	}
	h.waitRuns(3)
}

// TestCacheEvictsLeastRecentlyUsed: past cache_max_bytes the entry used
// longest ago goes, files and all; the rest survive a reopen (a restart)
// in their order of use.
func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	t.Parallel()
	cfg := config.Default().Jobs
	cfg.StateDir = t.TempDir()
	cfg.CacheMaxBytes = 250
	c, err := openResultCache(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	out := func(n byte) []*outputFile {
		return []*outputFile{{outRef: outRef{node: "4", kind: "images"}, contentType: "image/png", size: 100, data: bytes.Repeat([]byte{n}, 100)}}
	}
	for _, k := range []string{"a", "b"} {
		if err := c.put(k, "wf", time.Hour, out(k[0])); err != nil {
			t.Fatal(err)
		}
	}
	if c.lookup("a") == nil { // a is now used more recently than b
		t.Fatal("a missing")
	}
	if err := c.put("c", "wf", time.Hour, out('c')); err != nil {
		t.Fatal(err)
	}
	if c.has("b") || !c.has("a") || !c.has("c") {
		t.Fatalf("after c: a %v, b %v, c %v; want b evicted", c.has("a"), c.has("b"), c.has("c"))
	}
	if got := c.bytes(); got != 200 {
		t.Fatalf("cache holds %d bytes, want 200", got)
	}
	if _, err := os.Stat(filepath.Join(c.dir, "b")); !os.IsNotExist(err) {
		t.Fatalf("b's directory is still there (%v)", err)
	}
	// An entry larger than the bound is not kept at all.
	if err := c.put("big", "wf", time.Hour, append(out('x'), out('y')[0], out('z')[0])); err != nil || c.has("big") {
		t.Fatalf("an entry over the bound: err %v, kept %v", err, c.has("big"))
	}

	// Reopened (a restart): a and c are found, in their order of use (the
	// entries' times, set here to make a the older one).
	old, recent := time.Now().Add(-time.Hour), time.Now()
	for k, at := range map[string]time.Time{"a": old, "c": recent} {
		if err := os.Chtimes(filepath.Join(c.dir, k, cacheEntryFile), at, at); err != nil {
			t.Fatal(err)
		}
	}
	c2, err := openResultCache(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if !c2.has("a") || !c2.has("c") || c2.bytes() != 200 {
		t.Fatalf("reopened: a %v, c %v, %d bytes", c2.has("a"), c2.has("c"), c2.bytes())
	}
	if err := c2.put("d", "wf", time.Hour, out('d')); err != nil {
		t.Fatal(err)
	}
	if c2.has("a") || !c2.has("c") || !c2.has("d") {
		t.Fatalf("reopened, after d: a %v, c %v, d %v; want a (least recently used) evicted", c2.has("a"), c2.has("c"), c2.has("d"))
	}
}

// TestCacheExpires: an entry past its ttl answers nothing and goes.
func TestCacheExpires(t *testing.T) {
	t.Parallel()
	cfg := config.Default().Jobs
	cfg.StateDir = t.TempDir()
	c, err := openResultCache(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c.now = func() time.Time { return now }
	if err := c.put("k", "wf", time.Minute, []*outputFile{{size: 3, data: []byte("abc")}}); err != nil {
		t.Fatal(err)
	}
	if c.lookup("k") == nil {
		t.Fatal("fresh entry missing")
	}
	now = now.Add(time.Minute)
	if c.lookup("k") != nil || c.bytes() != 0 {
		t.Fatal("an expired entry answered")
	}
	// An expired entry nobody looks up goes at the next put.
	if err := c.put("old", "wf", time.Minute, []*outputFile{{size: 3, data: []byte("abc")}}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	if err := c.put("new", "wf", time.Minute, []*outputFile{{size: 2, data: []byte("de")}}); err != nil {
		t.Fatal(err)
	}
	if got := c.bytes(); got != 2 {
		t.Fatalf("cache holds %d bytes, want 2 (the expired entry gone)", got)
	}
	if _, err := os.Stat(filepath.Join(c.dir, "old")); !os.IsNotExist(err) {
		t.Fatalf("the expired entry's directory is still there (%v)", err)
	}
}

// TestCacheSurvivesRestart: a new service over the same state directory
// answers the repeated job from the result the first one cached, with no
// run, and a job completed from the cache before the restart is still
// completed, with its outputs, after it.
func TestCacheSurvivesRestart(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{Delay: 10 * time.Millisecond, RecordRuns: true}, cacheOn)
	img := testPNG(t, 16, 16)
	first := h.waitSubmit("/api/upscale-image", img, nil)
	h.waitRuns(1)
	hit := h.waitSubmit("/api/upscale-image", img, nil)
	if !hit.Cached {
		t.Fatal("the repeat before the restart was not cached")
	}
	want := h.result(first.JobID)
	h.svc.Close()

	s2, err := New(h.cfg, h.pool, h.prompts, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2.Start(t.Context())
	t.Cleanup(s2.Close)

	// The job completed from the cache before the restart.
	testkit.Eventually(t, "the restored cached job completed", func() bool {
		_, code, _, _ := serve(t, s2, "GET", "/api/jobs/"+hit.JobID+"/status", "", nil)
		return code == 200 && jobState(s2, hit.JobID) == stCompleted
	})
	_, code, _, b := serve(t, s2, "GET", "/api/jobs/"+hit.JobID+"/result?format=raw", "", nil)
	if code != 200 || !bytes.Equal(b, want) {
		t.Fatalf("restored cached job's result: %d (%d bytes)", code, len(b))
	}

	body, _ := json.Marshal(map[string]any{"image_base64": img})
	_, code, _, b = serve(t, s2, "POST", "/api/upscale-image", "application/json", body)
	var a acceptedView
	if code != http.StatusAccepted || json.Unmarshal(b, &a) != nil || !a.Cached || a.Status != statusCompleted {
		t.Fatalf("after the restart: %d %s", code, b)
	}
	_, code, _, b = serve(t, s2, "GET", "/api/jobs/"+a.JobID+"/result?format=raw", "", nil)
	if code != 200 || !bytes.Equal(b, want) {
		t.Fatalf("result after the restart: %d (%d bytes)", code, len(b))
	}
	if got := h.runs(); got != 1 {
		t.Fatalf("%d runs, want 1", got)
	}
}

// TestCacheTTLFromConfig: the built-in workflows keep results for
// config.DefaultCacheTTL unless their entry says otherwise; a workflow of
// one's own keeps none unless it says so.
func TestCacheTTLFromConfig(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.Workflows = map[string]config.Workflow{
		"upscale-image": {Cache: &config.WorkflowCache{TTL: 0}},
	}
	wfs, err := loadWorkflows(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := wfs["remove-background"].cacheTTL(); got != config.DefaultCacheTTL {
		t.Errorf("remove-background: ttl %v, want %v", got, config.DefaultCacheTTL)
	}
	if got := wfs["upscale-image"].cacheTTL(); got != 0 {
		t.Errorf("upscale-image with cache.ttl 0s: ttl %v, want 0", got)
	}
	dir := t.TempDir()
	src, err := os.ReadFile("../workflows/upscale-image.json")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "mine.json")
	if err := os.WriteFile(file, src, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Workflows = map[string]config.Workflow{
		"upscale-image": {File: file, ImageNode: "1", OutputNode: "4"},
		"mine":          {File: file, ImageNode: "1", OutputNode: "4", Cache: &config.WorkflowCache{TTL: time.Hour}},
	}
	if wfs, err = loadWorkflows(cfg); err != nil {
		t.Fatal(err)
	}
	if got := wfs["upscale-image"].cacheTTL(); got != 0 {
		t.Errorf("a built-in name pointed at one's own file: ttl %v, want 0", got)
	}
	if got := wfs["mine"].cacheTTL(); got != time.Hour {
		t.Errorf("mine: ttl %v, want 1h", got)
	}
}

// TestCacheHitWebhookAndMetrics: a job completed from the cache delivers
// its completed webhook like any job, and the cache's lookups and bytes
// are counted.
func TestCacheHitWebhookAndMetrics(t *testing.T) {
	t.Parallel()
	rcv := &webhookReceiver{got: make(chan struct{}, 1)}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	m := metrics.New("test")
	h := newHarnessWith(t, 1, comfysim.Options{}, func(c *config.Config) {
		cacheOn(c)
		c.Webhooks.AllowedHosts = []string{"127.0.0.1"}
		c.Webhooks.Secret = "cache-test-secret"
	}, func(s *Service) {
		s.eng.m, s.del.m, s.st.m = m, m, m
		s.st.cache.m = m
	})
	img := testPNG(t, 10, 10)
	h.waitSubmit("/api/upscale-image", img, nil)
	b64 := base64.StdEncoding.EncodeToString(img)
	code, _, b := postJSON(h, "/api/upscale-image", map[string]any{"image_base64": b64, "webhook_url": srv.URL + "/hook"})
	var a acceptedView
	if code != 202 || json.Unmarshal(b, &a) != nil || !a.Cached {
		t.Fatalf("cached submission: %d %s", code, b)
	}
	select {
	case <-rcv.got:
	case <-time.After(20 * time.Second):
		t.Fatal("no webhook delivery for the cached job")
	}
	rcv.mu.Lock()
	body := rcv.body[0]
	rcv.mu.Unlock()
	var payload struct {
		Type string    `json:"type"`
		Data eventView `json:"data"`
	}
	if err := json.Unmarshal(body, &payload); err != nil || payload.Type != "job.completed" || payload.Data.JobID != a.JobID || len(payload.Data.Outputs) != 1 {
		t.Fatalf("payload %s (%v)", body, err)
	}
	hits := metricValue(t, m, "comfygate_job_cache_hits_total")
	misses := metricValue(t, m, "comfygate_job_cache_misses_total")
	size := metricValue(t, m, "comfygate_job_cache_bytes")
	if hits != 1 || misses != 1 || size <= 0 || int64(size) != h.svc.st.cache.bytes() {
		t.Fatalf("hits %v, misses %v, bytes %v (cache holds %d)", hits, misses, size, h.svc.st.cache.bytes())
	}
}

// metricValue is the value of the one series of metric name in m.
func metricValue(t *testing.T, m *metrics.Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			met := mf.GetMetric()[0]
			return met.GetGauge().GetValue() + met.GetCounter().GetValue()
		}
	}
	t.Fatalf("no single series of %s", name)
	return 0
}
