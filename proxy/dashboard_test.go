package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
	"github.com/valyala/fasthttp"
)

// eventStream is one open /dashboard/events response.
type eventStream struct {
	t      *testing.T
	resp   *http.Response
	r      *bufio.Reader
	cancel context.CancelFunc
	viewer dashboardViewer // its first event
}

// openEvents opens url's event stream (with key, if any) and checks its
// status and content type.
func openEvents(t *testing.T, url, key string) *eventStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testkit.WaitBound)
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		cancel()
		resp.Body.Close()
		t.Fatalf("GET %s: %d %q, want 200 text/event-stream", url, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	es := &eventStream{t: t, resp: resp, r: bufio.NewReader(resp.Body), cancel: cancel}
	t.Cleanup(es.close)
	typ, data := es.event()
	if typ != "viewer" || json.Unmarshal([]byte(data), &es.viewer) != nil {
		t.Fatalf("first event %q %q, want the viewer", typ, data)
	}
	return es
}

// event reads the next event: its type ("" for a document) and data.
func (es *eventStream) event() (typ, data string) {
	es.t.Helper()
	for {
		line, err := es.r.ReadString('\n')
		if err != nil {
			es.t.Fatalf("event stream: %v", err)
		}
		line = strings.TrimSuffix(line, "\n")
		if t, ok := strings.CutPrefix(line, "event: "); ok {
			typ = t
		}
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			return typ, d
		}
	}
}

func (es *eventStream) close() { es.cancel(); es.resp.Body.Close() }

// next reads the next document.
func (es *eventStream) next() statsDocForTest {
	es.t.Helper()
	typ, data := es.event()
	var d statsDocForTest
	if err := json.Unmarshal([]byte(data), &d); typ != "" || err != nil {
		es.t.Fatalf("event %q is not the stats document: %v: %.200s", typ, err, data)
	}
	return d
}

// statsDocForTest reads back what the page uses of the document.
type statsDocForTest struct {
	Uptime        float64  `json:"uptime"`
	Instances     []string `json:"instances"`
	InstancesUp   int      `json:"instancesUp"`
	InstanceStats map[string]struct {
		Healthy  bool              `json:"healthy"`
		Up       bool              `json:"up"`
		Draining bool              `json:"draining"`
		Drained  bool              `json:"drained"`
		Labels   map[string]string `json:"labels"`
		Breaker  string            `json:"breaker"`
		Running  *struct {
			PromptID string  `json:"promptId"`
			Max      float64 `json:"max"`
		} `json:"running"`
	} `json:"instanceStats"`
	Viewer *dashboardViewer `json:"viewer"` // never: the viewer is an event of its own
}

// TestDashboardStream: the page and its event stream, keys off: a document
// per second naming every instance, a drain shows in the next document,
// and the stream ends (its slot freed) when the client goes.
func TestDashboardStream(t *testing.T) {
	t.Parallel()
	ss := testkit.Sims(t, 2, comfysim.Options{})
	g := startGateWith(t, testkit.Addrs(ss), func(c *config.Config) {
		c.Instances[1].Labels = map[string]string{"gpu": "a4000"}
	}, func(o *Options) { o.Metrics = metrics.New("test") })

	status, h, body := gateDo(t, "GET", g.base+"/dashboard", nil, nil)
	if status != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "text/html") ||
		!strings.Contains(string(body), `new EventSource(url)`) || !strings.Contains(string(body), "<style>") {
		t.Fatalf("GET /dashboard: %d %q, want the page with its style and script inlined", status, h.Get("Content-Type"))
	}
	if status, _, _ := gateDo(t, "POST", g.base+"/dashboard", nil, nil); status != http.StatusMethodNotAllowed {
		t.Errorf("POST /dashboard: %d, want 405", status)
	}
	if status, _, _ := gateDo(t, "GET", g.base+"/dashboard/nothing", nil, nil); status != http.StatusNotFound {
		t.Errorf("GET /dashboard/nothing: %d, want 404", status)
	}

	es := openEvents(t, g.base+"/dashboard/events", "")
	d := es.next()
	if len(d.Instances) != 2 || d.Instances[0] != "i0" || d.Instances[1] != "i1" || d.InstancesUp != 2 {
		t.Fatalf("first document: instances %v, %d up; want i0, i1 up", d.Instances, d.InstancesUp)
	}
	if !es.viewer.Admin || d.Viewer != nil {
		t.Errorf("keys off: viewer %+v (in the document: %+v), want admin, apart", es.viewer, d.Viewer)
	}
	if is := d.InstanceStats["i1"]; !is.Healthy || is.Labels["gpu"] != "a4000" || is.Breaker != "closed" {
		t.Errorf("i1 in the document: %+v", is)
	}
	if d2 := es.next(); d2.Uptime <= d.Uptime {
		t.Errorf("second document's uptime %v, not after the first's %v", d2.Uptime, d.Uptime)
	}
	if status, _, body := gateDo(t, "POST", g.base+"/admin/instances/i1/drain", nil, nil); status != http.StatusOK {
		t.Fatalf("drain: %d %s", status, body)
	}
	testkit.Eventually(t, "a document with i1 drained", func() bool {
		is := es.next().InstanceStats["i1"]
		return is.Draining && is.Drained
	})

	// /stats carries the same view.
	_, _, body = gateDo(t, "GET", g.base+"/stats", nil, nil)
	var st statsDocForTest
	if err := json.Unmarshal(body, &st); err != nil || len(st.Instances) != 2 || !st.InstanceStats["i1"].Drained || st.Viewer != nil {
		t.Errorf("/stats: %v %.300s", err, body)
	}

	if n := g.srv.dash.dashStreams.Load(); n != 1 {
		t.Errorf("%d streams counted while one is open", n)
	}
	es.close()
	testkit.Eventually(t, "the stream to end once its client went", func() bool { return g.srv.dash.dashStreams.Load() == 0 })
}

// TestDashboardStreamCap: beyond maxDashboardStreams, a stream is refused
// with 503 and Retry-After.
func TestDashboardStreamCap(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(nil)
	g := startGateWith(t, []string{fake.Addr()}, nil, func(o *Options) { o.Metrics = metrics.New("test") })
	for range maxDashboardStreams {
		openEvents(t, g.base+"/dashboard/events", "")
	}
	status, h, body := gateDo(t, "GET", g.base+"/dashboard/events", nil, nil)
	if status != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || !strings.Contains(string(body), "too_many_streams") {
		t.Errorf("stream %d: %d %q %s, want 503 with Retry-After", maxDashboardStreams+1, status, h.Get("Retry-After"), body)
	}
}

// TestDashboardKeys: with keys on, the dashboard is admitted like /stats
// (a metrics or an admin key), and the stream tells a metrics key that its
// drain buttons will not work, as the admin route itself answers.
func TestDashboardKeys(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(nil)
	g := startGateWith(t, []string{fake.Addr()}, withKeys, func(o *Options) { o.Metrics = metrics.New("test") })
	for _, tc := range []struct {
		key, path string
		want      int
	}{
		{"", "/dashboard", http.StatusUnauthorized},
		{"", "/dashboard/events", http.StatusUnauthorized},
		{keyA, "/dashboard", http.StatusForbidden},
		{keyA, "/dashboard/events", http.StatusForbidden},
		{keyStats, "/dashboard", http.StatusOK},
		{keyAdmin, "/dashboard", http.StatusOK},
	} {
		var hdr http.Header
		if tc.key != "" {
			hdr = bearer(tc.key)
		}
		if status, _, body := gateDo(t, "GET", g.base+tc.path, hdr, nil); status != tc.want {
			t.Errorf("%s with key %q: %d %.100s, want %d", tc.path, tc.key, status, body, tc.want)
		}
	}
	if v := openEvents(t, g.base+"/dashboard/events", keyStats).viewer; v.Admin || !strings.Contains(v.Note, "admin key") {
		t.Errorf("metrics key's viewer: %+v, want not admin, saying why", v)
	}
	if es := openEvents(t, g.base+"/dashboard/events?token="+keyAdmin, ""); !es.viewer.Admin || len(es.next().Instances) != 1 {
		t.Errorf("admin key (as ?token=) viewer: %+v, want admin, then the document", es.viewer)
	}
	if status, _, _ := gateDo(t, "POST", g.base+"/admin/instances/i0/drain", bearer(keyStats), nil); status != http.StatusForbidden {
		t.Errorf("drain with the metrics key: %d, want 403", status)
	}
}

// TestDashboardMetricsListen: with metrics_listen set, the dashboard is on
// the operator address only, without a key, and says the admin routes are
// not there.
func TestDashboardMetricsListen(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(nil)
	g := startGateWith(t, []string{fake.Addr()}, func(c *config.Config) {
		withKeys(c)
		c.MetricsListen = "127.0.0.1:0"
	}, func(o *Options) { o.Metrics = metrics.New("test") })
	for _, p := range []string{"/dashboard", "/dashboard/events"} {
		if status, _, body := gateDo(t, "GET", g.base+p, bearer(keyAdmin), nil); status != http.StatusNotFound {
			t.Errorf("%s on the client address: %d %s, want 404", p, status, body)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ops := &fasthttp.Server{Handler: g.srv.OperatorHandler()}
	go func() { _ = ops.Serve(ln) }()
	t.Cleanup(func() { _ = ops.Shutdown() })
	base := "http://" + ln.Addr().String()
	if status, _, body := gateDo(t, "GET", base+"/dashboard", nil, nil); status != http.StatusOK || !strings.Contains(string(body), "EventSource") {
		t.Errorf("operator /dashboard: %d %.100s", status, body)
	}
	es := openEvents(t, base+"/dashboard/events", "")
	if v := es.viewer; v.Admin || !strings.Contains(v.Note, "metrics_listen") {
		t.Errorf("operator viewer: %+v, want not admin, naming metrics_listen", v)
	}
	// Shutdown of the operator server ends the stream.
	done := make(chan struct{})
	go func() { _ = ops.Shutdown(); close(done) }()
	select {
	case <-done:
	case <-time.After(testkit.WaitBound):
		t.Fatal("the operator server did not shut down with a dashboard stream open")
	}
}
