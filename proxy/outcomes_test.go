package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// breakersClosed fails the test unless every instance's breaker is closed.
func breakersClosed(t *testing.T, g *gate, after string) {
	t.Helper()
	for _, inst := range g.pool.Instances() {
		if st := inst.Status().Breaker; st != "closed" {
			t.Errorf("%s: breaker of %s is %s", after, inst.Name, st)
		}
	}
}

// ComfyUI answers a plain-text 500 to bodies it cannot handle; that is the
// client's request failing, not the instance: no breaker opens, and good
// requests keep working.
func TestClientCaused500DoesNotOpenBreakers(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), func(c *config.Config) { c.Breaker.OpenTimeout = time.Minute })

	for k := 0; k < 6; k++ {
		status, body := postJSON(t, g.base+"/prompt", nil, map[string]any{"prompt": "x"}, nil)
		if status != 500 {
			t.Fatalf(`POST /prompt {"prompt":"x"} #%d = %d %s, want ComfyUI's 500`, k, status, body)
		}
	}
	breakersClosed(t, g, `after six {"prompt":"x"}`)
	for k := 0; k < 6; k++ {
		status, body := postJSON(t, g.base+"/prompt", nil, map[string]any{"prompt": emptyImagePrompt(0, "n"), "number": "abc"}, nil)
		if status != 500 {
			t.Fatalf(`POST /prompt {"number":"abc"} #%d = %d %s, want ComfyUI's 500`, k, status, body)
		}
	}
	breakersClosed(t, g, `after six {"number":"abc"}`)
	for k := 0; k < 6; k++ {
		hdr := http.Header{"Content-Type": {"text/plain"}}
		status, _, body := gateDo(t, "POST", g.base+"/upload/image", hdr, strings.NewReader("not a form"))
		if status != 500 {
			t.Fatalf("POST /upload/image text/plain #%d = %d %s, want ComfyUI's 500", k, status, body)
		}
	}
	breakersClosed(t, g, "after six text/plain uploads")

	id := submit(t, g, map[string]any{"prompt": emptyImagePrompt(0x336699, "ok")})
	if e := waitHistory(t, g, "", id); e.Status.StatusStr != "success" {
		t.Fatalf("good prompt after the bad ones: %s", e.Status.StatusStr)
	}
	upload(t, g, "/upload/image", "fine.png", pngOf(t, 2, 2, color.NRGBA{200, 0, 0, 255}), nil)
}

// rawRequest writes req on a new connection to addr and returns the status
// line of the answer (or the read error), waiting at most wait.
func rawRequest(t *testing.T, addr, req string, wait time.Duration) (string, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// A chunked body that is not valid chunked encoding is the client's
// mistake: 400, and no breaker counts it.
func TestMalformedChunkedBodyGets400(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), func(c *config.Config) { c.Breaker.ConsecutiveFailures = 1 })
	req := "POST /upload/image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n" +
		"Transfer-Encoding: chunked\r\n\r\n5\r\n--b\r\n\r\nzz-not-a-size\r\n"
	line, err := rawRequest(t, g.addr, req, 10*time.Second)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	if !strings.HasPrefix(line, "HTTP/1.1 400") {
		t.Fatalf("malformed chunked body: %q, want 400", line)
	}
	breakersClosed(t, g, "after a malformed chunked body")
}

// A client that stops sending its upload, or goes away in the middle of
// it, is not the instance failing: no breaker counts it and the access
// log does not say 502/504.
func TestStalledOrVanishedUploadIsNotAnInstanceFailure(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	rec := &accessRec{}
	g := startGateWith(t, addrsOf(ss), func(c *config.Config) {
		c.Breaker.ConsecutiveFailures = 1
		c.Timeout = 500 * time.Millisecond
	}, func(o *Options) { o.Logger = rec.logger() })
	head := "POST /upload/image HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n" +
		"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"

	// More than the 8 KiB fasthttp reads before the handler runs, so the
	// body is being streamed to the instance when it stops.
	part := head + strings.Repeat("x", 20<<10)

	// Stalled: the client keeps the connection open and sends nothing more.
	line, err := rawRequest(t, g.addr, part, 10*time.Second)
	if err != nil {
		t.Fatalf("stalled upload: no answer: %v", err)
	}
	if strings.HasPrefix(line, "HTTP/1.1 502") || strings.HasPrefix(line, "HTTP/1.1 504") {
		t.Fatalf("stalled upload answered %q: blamed on the instance", line)
	}
	breakersClosed(t, g, "after a stalled upload")

	// Vanished: the client closes in the middle of the body.
	c, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(c, part)
	_ = c.Close()
	testkit.Eventually(t, "two upload lines in the access log", func() bool { return len(rec.statuses("/upload/image")) == 2 })
	for _, st := range rec.statuses("/upload/image") {
		if st == 502 || st == 504 {
			t.Errorf("access log: a client's broken upload logged as %d", st)
		}
	}
	breakersClosed(t, g, "after a vanished upload")
}

// accessRec keeps the access log lines' path and status.
type accessRec struct {
	mu    sync.Mutex // guards lines
	lines []string   // "path status"
}

func (r *accessRec) logger() *slog.Logger { return slog.New(r) }

func (r *accessRec) Enabled(context.Context, slog.Level) bool { return true }
func (r *accessRec) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message != "request" {
		return nil
	}
	var path string
	var status int64
	rec.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "path":
			path = a.Value.String()
		case "status":
			status = a.Value.Int64()
		}
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, fmt.Sprintf("%s %d", path, status))
	r.mu.Unlock()
	return nil
}
func (r *accessRec) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *accessRec) WithGroup(string) slog.Handler      { return r }

func (r *accessRec) statuses(path string) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int
	for _, l := range r.lines {
		var p string
		var st int
		if _, err := fmt.Sscanf(l, "%s %d", &p, &st); err == nil && p == path {
			out = append(out, st)
		}
	}
	return out
}

// hungFleet is two instances through comfygate, the first one hung after
// start, with a call timeout far longer than the client waits: only a
// short per-try timeout and a retry elsewhere can answer in time.
func hungFleet(t *testing.T) (*gate, *http.Client) {
	t.Helper()
	ss := sims(t, 2, comfysim.Options{})
	hp := testkit.NewFaultProxy(t, ss[0].Addr())
	g := startGate(t, []string{hp.Addr(), ss[1].Addr()}, func(c *config.Config) {
		c.Timeout = time.Minute
		c.HealthCheck.Interval = time.Hour // only the start-up check: the hang stays unnoticed
		c.HealthCheck.Timeout = time.Second
		c.WebSocket.PingInterval = time.Hour
	})
	hp.Hang() // accepts, never answers
	return g, &http.Client{Timeout: 20 * time.Second}
}

func getOK(t *testing.T, c *http.Client, url string) []byte {
	t.Helper()
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v (after %v)", url, err, time.Since(start))
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s = %d %s (after %v)", url, resp.StatusCode, b, time.Since(start))
	}
	t.Logf("GET %s: 200 in %v", url, time.Since(start))
	return b
}

// A catalogue read that a hung instance does not answer is answered by
// another instance.
func TestObjectInfoWithOneInstanceHung(t *testing.T) {
	t.Parallel()
	g, c := hungFleet(t)
	for k := 0; k < 4; k++ { // round-robin sends at least one to the hung instance
		b := getOK(t, c, g.base+"/object_info")
		var m map[string]json.RawMessage
		if json.Unmarshal(b, &m) != nil || len(m) == 0 {
			t.Fatalf("/object_info: not an object: %.100s", b)
		}
		getOK(t, c, g.base+"/system_stats")
	}
}

// The merged views leave out an instance that does not answer in time.
func TestQueueAndHistoryWithOneInstanceHung(t *testing.T) {
	t.Parallel()
	g, c := hungFleet(t)
	var q struct {
		Running []json.RawMessage `json:"queue_running"`
		Pending []json.RawMessage `json:"queue_pending"`
	}
	if err := json.Unmarshal(getOK(t, c, g.base+"/queue"), &q); err != nil || q.Running == nil || q.Pending == nil {
		t.Fatalf("/queue: %v %+v", err, q)
	}
	var h map[string]json.RawMessage
	if err := json.Unmarshal(getOK(t, c, g.base+"/history?max_items=5"), &h); err != nil {
		t.Fatalf("/history: %v", err)
	}
}

// max_connections_per_instance bounds every HTTP connection comfygate
// opens to an instance: forwarded requests, its own calls and health
// checks together.
func TestMaxConnectionsBoundsRealConnections(t *testing.T) {
	t.Parallel()
	slow := func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(30 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/queue":
			_, _ = io.WriteString(w, `{"queue_running": [], "queue_pending": []}`)
		case "/history":
			_, _ = io.WriteString(w, `{}`)
		default:
			_, _ = io.WriteString(w, `{"x": {}}`)
		}
	}
	f := testkit.Mini(t, "0.3.65").Fallback(slow)
	cc := startConnCounter(t, f.Addr())
	const maxConns = 4
	g := startGate(t, []string{cc.addr}, func(c *config.Config) {
		c.MaxConnectionsPerInstance = maxConns
		c.HealthCheck.Interval = 20 * time.Millisecond
	})
	var wg sync.WaitGroup
	var bad atomic.Int64
	for k := 0; k < 48; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := []string{"/object_info", "/queue", "/history", "/embeddings"}[k%4]
			resp, err := gateClient.Get(g.base + path)
			if err != nil {
				bad.Add(1)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != 200 {
				bad.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := bad.Load(); n > 0 {
		t.Errorf("%d of 48 requests failed", n)
	}
	if got := cc.hm.Load(); got > maxConns {
		t.Fatalf("%d HTTP connections open at once to one instance, max_connections_per_instance is %d", got, maxConns)
	}
	t.Logf("at most %d HTTP connections at once (cap %d)", cc.hm.Load(), maxConns)
}
