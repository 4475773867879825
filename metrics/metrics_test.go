package metrics

import (
	"bytes"
	"encoding/json"
	"math"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"
)

// serve runs h on a fresh request for path and returns the response.
func serve(t *testing.T, h fasthttp.RequestHandler, path string) *fasthttp.Response {
	t.Helper()
	var req fasthttp.Request
	req.SetRequestURI("http://comfygate" + path)
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, nil)
	h(&ctx)
	var resp fasthttp.Response
	ctx.Response.CopyTo(&resp)
	return &resp
}

// traffic drives a small, known picture through m.
func traffic(m *Metrics) {
	m.SetInstanceHost("a", "comfyui-0:8188")
	m.SetInstanceHost("b", "comfyui-1:8188")
	m.SetInstanceUp("a", true)
	m.SetInstanceUp("b", false)
	m.SetBreakerState("a", BreakerClosed)
	m.SetBreakerState("b", BreakerClosed)
	m.SetBreakerState("b", BreakerOpen)
	m.SetInflight("a", 2)
	m.SetQueueDepth("a", 3)
	m.SetQueueDepth("b", 1)
	m.SetUpstreamSocket("a", true)
	m.SetUpstreamSocket("b", false)
	m.IncUpstreamReconnect("b")
	m.ObserveHealthCheck("a", 20*time.Millisecond, true)
	m.ObserveHealthCheck("b", 40*time.Millisecond, false)
	for range 5 {
		m.PromptSubmitted("a")
		m.ObserveRequest("/prompt", "POST", 200, "a", 5*time.Millisecond)
	}
	m.PromptSubmitted("b")
	m.ObserveRequest("/health", "GET", 200, "", time.Millisecond)
	m.PromptFinished("a", OutcomeSuccess, 2*time.Second)
	m.PromptFinished("a", OutcomeSuccess, 4*time.Second)
	m.PromptFinished("a", OutcomeError, 1*time.Second)
	m.PromptFinished("b", OutcomeLost, 3*time.Second)
	m.IncResubmission("b", "a", true)
	m.AddWSClients(3)
	m.AddWSClients(-1)
	m.IncEventsRouted("text")
	m.IncEventsRouted("binary")
	m.IncEventsRouted("broadcast")
	m.IncSlowClientDropped()
	m.IncBacklogReplayed(7)
	m.JobSubmitted("remove-background")
	m.JobFinished("remove-background", "completed", 2*time.Second, 500*time.Millisecond)
	m.SetWaitLine(4)
	m.SetJobsInFlight(1)
}

func TestValuesMove(t *testing.T) {
	t.Parallel()
	m := New("test")
	traffic(m)

	for _, tc := range []struct {
		desc string
		got  float64
		want float64
	}{
		{"5 prompts on a", testutil.ToFloat64(m.promptsSubmitted.WithLabelValues("a")), 5},
		{"1 prompt on b", testutil.ToFloat64(m.promptsSubmitted.WithLabelValues("b")), 1},
		{"a up", testutil.ToFloat64(m.upstreamUp.WithLabelValues("a")), 1},
		{"b down", testutil.ToFloat64(m.upstreamUp.WithLabelValues("b")), 0},
		{"a in flight", testutil.ToFloat64(m.inflight.WithLabelValues("a")), 2},
		{"a queue", testutil.ToFloat64(m.queueDepth.WithLabelValues("a")), 3},
		{"b socket", testutil.ToFloat64(m.socketConnected.WithLabelValues("b")), 0},
		{"b reconnects", testutil.ToFloat64(m.reconnects.WithLabelValues("b")), 1},
		{"requests POST /prompt 200 a", testutil.ToFloat64(m.requests.WithLabelValues("/prompt", "POST", "200", "a")), 5},
		{"request answered by comfygate", testutil.ToFloat64(m.requests.WithLabelValues("/health", "GET", "200", NoInstance)), 1},
		{"a successes", testutil.ToFloat64(m.promptsFinished.WithLabelValues("a", OutcomeSuccess)), 2},
		{"resubmission b->a", testutil.ToFloat64(m.resubmissions.WithLabelValues("b", "a", "ok")), 1},
		{"ws clients", testutil.ToFloat64(m.wsClients), 2},
		{"events text", testutil.ToFloat64(m.eventsRouted.WithLabelValues("text")), 1},
		{"slow dropped", testutil.ToFloat64(m.slowDropped), 1},
		{"backlog", testutil.ToFloat64(m.backlogReplayed), 7},
		{"jobs finished", testutil.ToFloat64(m.jobsFinished.WithLabelValues("remove-background", "completed")), 1},
		{"wait line", testutil.ToFloat64(m.waitLine), 4},
		{"jobs in flight", testutil.ToFloat64(m.jobsInFlight), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.desc, tc.got, tc.want)
		}
	}
}

func TestBreakerOneHotAndTransitions(t *testing.T) {
	t.Parallel()
	m := New("test")
	m.SetBreakerState("a", BreakerClosed)
	m.SetBreakerState("a", BreakerClosed) // no change, no transition
	m.SetBreakerState("a", BreakerOpen)
	m.SetBreakerState("a", BreakerHalfOpen)
	m.SetBreakerState("a", BreakerClosed)
	m.SetBreakerState("a", BreakerOpen)

	want := `
# HELP comfygate_breaker_state Circuit breaker state per instance, one-hot over closed, half-open and open.
# TYPE comfygate_breaker_state gauge
comfygate_breaker_state{state="closed",upstream="a"} 0
comfygate_breaker_state{state="half-open",upstream="a"} 0
comfygate_breaker_state{state="open",upstream="a"} 1
# HELP comfygate_breaker_transitions_total Circuit breaker state changes per instance, by the state entered.
# TYPE comfygate_breaker_transitions_total counter
comfygate_breaker_transitions_total{state="closed",upstream="a"} 1
comfygate_breaker_transitions_total{state="half-open",upstream="a"} 1
comfygate_breaker_transitions_total{state="open",upstream="a"} 2
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want),
		"comfygate_breaker_state", "comfygate_breaker_transitions_total"); err != nil {
		t.Error(err)
	}
}

func TestRemoveInstance(t *testing.T) {
	t.Parallel()
	m := New("test")
	traffic(m)
	m.RemoveInstance("b")

	for _, tc := range []struct {
		desc string
		n    int
		want int
	}{
		{"up", testutil.CollectAndCount(m.upstreamUp), 1},
		{"info", testutil.CollectAndCount(m.upstreamInfo), 1},
		{"breaker", testutil.CollectAndCount(m.breakerState), 3},
		{"submitted", testutil.CollectAndCount(m.promptsSubmitted), 1},
		{"resubmissions", testutil.CollectAndCount(m.resubmissions), 0},
		{"requests", testutil.CollectAndCount(m.requests), 2},
	} {
		if tc.n != tc.want {
			t.Errorf("%s: %d series after RemoveInstance, want %d", tc.desc, tc.n, tc.want)
		}
	}
	if _, ok := m.Stats().InstanceStats["b"]; ok {
		t.Error("Stats still lists removed instance b")
	}
}

func TestLabelsBounded(t *testing.T) {
	t.Parallel()
	m := New("test")
	m.ObserveRequest("/view", "get", 200, "a", 0)
	m.ObserveRequest("/view", "BREW", 999, "a", 0)
	for i := range maxRoutes + 10 {
		m.ObserveRequest("/r"+string(rune('A'+i)), "GET", 200, "a", 0)
	}
	m.PromptFinished("a", "exploded", 0)
	m.IncEventsRouted("carrier-pigeon")
	m.JobFinished("wf", "weird", 0, 0)

	for _, tc := range []struct {
		desc string
		got  float64
		want float64
	}{
		{"method upper-cased", testutil.ToFloat64(m.requests.WithLabelValues("/view", "GET", "200", "a")), 1},
		{"unknown method and code", testutil.ToFloat64(m.requests.WithLabelValues("/view", Other, "0", "a")), 1},
		{"routes past the cap (/view + 74 new, cap 64)", testutil.ToFloat64(m.requests.WithLabelValues(Other, "GET", "200", "a")), 11},
		{"outcome", testutil.ToFloat64(m.promptsFinished.WithLabelValues("a", Other)), 1},
		{"kind", testutil.ToFloat64(m.eventsRouted.WithLabelValues(Other)), 1},
		{"status", testutil.ToFloat64(m.jobsFinished.WithLabelValues("wf", Other)), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.desc, tc.got, tc.want)
		}
	}
}

func TestStatsAgreesWithMetrics(t *testing.T) {
	t.Parallel()
	m := New("v1.2.3")
	traffic(m)
	st := m.Stats()

	// Read the same numbers back from the gathered families.
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := func(name string, match func(map[string]string) bool) (v, hsum, hcount float64) {
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, mt := range mf.GetMetric() {
				l := map[string]string{}
				for _, lp := range mt.GetLabel() {
					l[lp.GetName()] = lp.GetValue()
				}
				if match != nil && !match(l) {
					continue
				}
				v += mt.GetCounter().GetValue() + mt.GetGauge().GetValue()
				hsum += mt.GetHistogram().GetSampleSum()
				hcount += float64(mt.GetHistogram().GetSampleCount())
			}
		}
		return v, hsum, hcount
	}
	finished, _, _ := sum("comfygate_prompts_finished_total", nil)
	failed, _, _ := sum("comfygate_prompts_finished_total", func(l map[string]string) bool { return l["outcome"] != OutcomeSuccess })
	_, dsum, dcount := sum("comfygate_prompt_duration_seconds", nil)
	aFinished, _, _ := sum("comfygate_prompts_finished_total", func(l map[string]string) bool { return l["upstream"] == "a" })
	queue, _, _ := sum("comfygate_upstream_queue_depth", nil)
	ws, _, _ := sum("comfygate_ws_clients", nil)

	approx := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	for _, tc := range []struct {
		desc      string
		got, want float64
	}{
		{"jobsProcessed", float64(st.JobsProcessed), finished},
		{"jobsProcessed value", float64(st.JobsProcessed), 4},
		{"errorRate", st.ErrorRate, failed / finished},
		{"errorRate value", st.ErrorRate, 0.5},
		{"avgProcessingTime", st.AvgProcessingTime, dsum / dcount * 1000},
		{"avgProcessingTime value", st.AvgProcessingTime, 2500},
		{"a jobsProcessed", float64(st.InstanceStats["a"].JobsProcessed), aFinished},
		{"a errorRate", st.InstanceStats["a"].ErrorRate, 1.0 / 3},
		{"queueDepth", float64(st.QueueDepth), queue},
		{"wsClients", float64(st.WSClients), ws},
	} {
		if !approx(tc.got, tc.want) {
			t.Errorf("%s: stats say %v, metrics say %v", tc.desc, tc.got, tc.want)
		}
	}

	a, b := st.InstanceStats["a"], st.InstanceStats["b"]
	if a.Host != "comfyui-0:8188" || !a.Up || a.Breaker != BreakerClosed || !a.SocketConnected || a.InFlight != 2 || a.PromptsSubmitted != 5 || a.Requests != 5 {
		t.Errorf("instance a: %+v", a)
	}
	if b.Up || b.Breaker != BreakerOpen || b.Reconnects != 1 || b.HealthChecksFail != 1 {
		t.Errorf("instance b: %+v", b)
	}
	if st.InstancesTotal != 2 || st.InstancesUp != 1 || st.Requests != 6 || st.Resubmissions != 1 || st.WaitLine != 4 || st.JobsInFlight != 1 || st.Jobs.Submitted != 1 || st.Jobs.Finished["completed"] != 1 || st.Version != "v1.2.3" {
		t.Errorf("stats: %+v", st)
	}
	if _, ok := st.InstanceStats[NoInstance]; ok {
		t.Errorf("requests comfygate answered itself made an instance %q", NoInstance)
	}
}

func TestStatsHandler(t *testing.T) {
	t.Parallel()
	m := New("test")
	base := time.Now()
	m.start = base
	m.now = func() time.Time { return base.Add(90 * time.Second) }
	traffic(m)

	resp := serve(t, m.StatsHandler(), "/stats")
	if ct := string(resp.Header.ContentType()); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	var got map[string]any
	if err := json.Unmarshal(resp.Body(), &got); err != nil {
		t.Fatalf("stats body is not JSON: %v\n%s", err, resp.Body())
	}
	for _, key := range []string{"uptime", "jobsProcessed", "avgProcessingTime", "errorRate", "instanceStats", "wsClients", "waitLine", "queueDepth", "inFlight"} {
		if _, ok := got[key]; !ok {
			t.Errorf("stats JSON lacks %q", key)
		}
	}
	if got["uptime"] != 90.0 {
		t.Errorf("uptime %v, want 90", got["uptime"])
	}
	a := got["instanceStats"].(map[string]any)["a"].(map[string]any)
	if a["breaker"] != "closed" || a["host"] != "comfyui-0:8188" {
		t.Errorf("instance a JSON: %v", a)
	}
}

func TestNilSafe(t *testing.T) {
	t.Parallel()
	var m *Metrics
	traffic(m) // must not panic
	m.RemoveInstance("a")
	if m.Registry() != nil {
		t.Error("nil Metrics has a registry")
	}
	if st := m.Stats(); st.JobsProcessed != 0 || st.InstanceStats == nil {
		t.Errorf("nil stats: %+v", st)
	}
	if resp := serve(t, m.Handler(), "/metrics"); resp.StatusCode() != fasthttp.StatusNotFound {
		t.Errorf("nil Handler answered %d", resp.StatusCode())
	}
	if resp := serve(t, m.StatsHandler(), "/stats"); resp.StatusCode() != fasthttp.StatusOK {
		t.Errorf("nil StatsHandler answered %d", resp.StatusCode())
	}
}

func TestExposition(t *testing.T) {
	t.Parallel()
	m := New("test")
	traffic(m)
	resp := serve(t, m.Handler(), "/metrics")
	if resp.StatusCode() != fasthttp.StatusOK {
		t.Fatalf("status %d", resp.StatusCode())
	}
	body := resp.Body()
	for _, want := range []string{
		`comfygate_build_info{goversion="go`,
		`comfygate_prompts_submitted_total{upstream="a"} 5`,
		`comfygate_prompt_duration_seconds_bucket{outcome="success",upstream="a",le="600"} 2`,
		`comfygate_http_request_duration_seconds_bucket{method="POST",route="/prompt",upstream="a",le="0.001"} 0`,
		"go_goroutines ",
		"process_start_time_seconds ",
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("exposition lacks %q", want)
		}
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH (apt-get install -y prometheus)")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

func BenchmarkObserveRequest(b *testing.B) {
	m := New("bench")
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveRequest("/view", "GET", 200, "a", time.Millisecond)
	}
}
