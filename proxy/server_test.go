package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
)

// TestShutdownDrains: Shutdown stops accepting, lets the request in flight
// finish, and returns once it did.
func TestShutdownDrains(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	release := make(chan struct{})
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		_, _ = io.WriteString(w, "finished")
	})
	g := startGate(t, []string{fake.Addr()}, nil)
	type result struct {
		status int
		body   string
		err    error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := gateClient.Get(g.base + "/slow")
		if err != nil {
			got <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- result{resp.StatusCode, string(b), err}
	}()
	<-arrived
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- g.srv.Shutdown(ctx)
	}()
	// New connections are refused once the listener is closed.
	testkit.Eventually(t, "listener closed", func() bool {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
		resp, err := c.Get(g.base + "/health")
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	})
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a request was in flight", err)
	default:
	}
	close(release)
	r := <-got
	if r.err != nil || r.status != 200 || r.body != "finished" {
		t.Fatalf("in-flight request: %d %q %v; want it to finish", r.status, r.body, r.err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
}

// logSink collects JSON log lines.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logSink) lines() []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(l.buf.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// TestAccessLogAndMetrics: one log line per request with its fields, and
// the request metric by route template.
func TestAccessLogAndMetrics(t *testing.T) {
	t.Parallel()
	sim := testkit.Sim(t, comfysim.Options{})
	sink := &logSink{}
	m := metrics.New("test")
	g := startGateWith(t, []string{sim.Addr()}, nil, func(o *Options) {
		o.Logger = slog.New(slog.NewJSONHandler(sink, nil))
		o.Metrics = m
	})
	hdr := http.Header{"User-Agent": {"gate-test/1"}}
	if status, _, _ := gateDo(t, "GET", g.base+"/api/system_stats?secret=1", hdr, nil); status != 200 {
		t.Fatal(status)
	}
	var line map[string]any
	testkit.Eventually(t, "access log line", func() bool {
		for _, l := range sink.lines() {
			if l["msg"] == "request" && l["path"] == "/api/system_stats" {
				line = l
				return true
			}
		}
		return false
	})
	if line["method"] != "GET" || line["status"] != float64(200) || line["instance"] != "i0" ||
		line["user_agent"] != "gate-test/1" || line["route"] != routeSystemStats {
		t.Errorf("log line %v", line)
	}
	if _, ok := line["duration_ms"].(float64); !ok {
		t.Errorf("log line without duration_ms: %v", line)
	}
	_, _, body := gateDo(t, "GET", g.base+"/metrics", nil, nil)
	want := `comfygate_http_requests_total{code="200",method="GET",route="/system_stats",upstream="i0"} 1`
	if !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %s", want)
	}
	if status, _, _ := gateDo(t, "GET", g.base+"/stats", nil, nil); status != 200 {
		t.Errorf("/stats = %d", status)
	}
}
