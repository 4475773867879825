package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// TestConnectionCapAnswers503: when all of comfygate's connections to an
// instance are in use (max_connections_per_instance), a further request
// gets 503 with Retry-After, and the instance's breaker does not count it:
// with consecutive_failures 1, the next request still goes through.
func TestConnectionCapAnswers503(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	streaming := make(chan struct{}, 1)
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/view" {
			_, _ = io.WriteString(w, "{}")
			return
		}
		if r.Header.Get("Range") != "" {
			return // comfygate's probe for the file's owner
		}
		streaming <- struct{}{}
		// A slow but moving answer: holds comfygate's only connection.
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			_, _ = w.Write([]byte("x"))
			w.(http.Flusher).Flush()
			select {
			case <-release:
				return
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
	})
	var once sync.Once
	stop := func() { once.Do(func() { close(release) }) }
	t.Cleanup(stop)
	g := startGate(t, []string{fake.Addr()}, func(c *config.Config) {
		c.Timeout = 600 * time.Millisecond
		c.MaxConnectionsPerInstance = 1
		c.Breaker.ConsecutiveFailures = 1
		c.Breaker.OpenTimeout = time.Minute
	})
	viewDone := make(chan error, 1)
	go func() {
		resp, err := gateClient.Get(g.base + "/view?filename=a.png")
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		viewDone <- err
	}()
	select {
	case <-streaming:
	case <-time.After(gateTimeout):
		t.Fatal("the /view request never reached the instance")
	}
	status, h, body := gateDo(t, "GET", g.base+"/settings", nil, nil)
	if status != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || !bytes.Contains(body, []byte(`"upstream_busy"`)) {
		t.Errorf("GET /settings with every connection busy = %d Retry-After=%q %s; want 503 upstream_busy with Retry-After",
			status, h.Get("Retry-After"), body)
	}
	stop()
	if err := <-viewDone; err != nil {
		t.Fatalf("/view: %v", err)
	}
	if status, _, body := gateDo(t, "GET", g.base+"/settings", nil, nil); status != http.StatusOK {
		t.Errorf("GET /settings after the cap was hit = %d %s, want 200 (the breaker must not count comfygate's own cap)", status, body)
	}
}

// TestStalledReaderReleasesInstanceConnection: a client that asks for a big
// /view and never reads is cut after COMFYUI_TIMEOUT of blocked writing, so
// the instance connection it held goes back: with one connection per
// instance, the next request still gets through.
func TestStalledReaderReleasesInstanceConnection(t *testing.T) {
	t.Parallel()
	const size = 256 << 20
	released := make(chan struct{}, 1)
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/view" {
			_, _ = io.WriteString(w, "{}")
			return
		}
		if r.Header.Get("Range") != "" {
			return // comfygate's probe for the file's owner
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		buf := make([]byte, 64<<10)
		for n := 0; n < size; n += len(buf) {
			if _, err := w.Write(buf); err != nil {
				break
			}
		}
		released <- struct{}{}
	})
	g := startGate(t, []string{fake.Addr()}, func(c *config.Config) {
		c.Timeout = 300 * time.Millisecond
		c.MaxConnectionsPerInstance = 1
	})
	c, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.(*net.TCPConn).SetReadBuffer(4 << 10)
	if _, err := io.WriteString(c, "GET /view?filename=big.bin HTTP/1.1\r\nHost: "+g.addr+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Never read.
	select {
	case <-released:
	case <-time.After(gateTimeout):
		t.Fatal("the instance connection of a client that stopped reading was never released")
	}
	if status, _, body := gateDo(t, "GET", g.base+"/settings", nil, nil); status != http.StatusOK {
		t.Errorf("GET /settings after the stalled client = %d %s, want 200", status, body)
	}
}

// unknownIDsFake is an instance that knows no prompt.
func unknownIDsFake(t *testing.T) *testkit.MiniComfy {
	return testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/queue":
			_, _ = io.WriteString(w, `{"queue_running": [], "queue_pending": []}`)
		case r.Method == http.MethodGet:
			_, _ = io.WriteString(w, `{}`)
		}
	})
}

// countRequests counts f's requests of method whose path starts with prefix.
func countRequests(f *testkit.MiniComfy, method, prefix string) int {
	n := 0
	for _, r := range f.Requests() {
		if r.Method == method && strings.HasPrefix(r.RequestURI, prefix) {
			n++
		}
	}
	return n
}

// TestDeleteUnknownIDsNoFanOut: a /queue or /history delete of ids
// comfygate does not know is not looked up id by id at the instances (a
// fan-out each), it goes to every instance in one request.
func TestDeleteUnknownIDsNoFanOut(t *testing.T) {
	t.Parallel()
	a, b := unknownIDsFake(t), unknownIDsFake(t)
	g := startGate(t, []string{a.Addr(), b.Addr()}, nil)
	ids := make([]string, 40)
	for i := range ids {
		ids[i] = fmt.Sprintf("unknown-%d", i)
	}
	body, _ := json.Marshal(map[string][]string{"delete": ids})
	for _, path := range []string{"/queue", "/history"} {
		if status, _, rb := gateDo(t, "POST", g.base+path, nil, bytes.NewReader(body)); status != http.StatusOK {
			t.Fatalf("POST %s = %d %s", path, status, rb)
		}
	}
	for _, f := range []*testkit.MiniComfy{a, b} {
		if n := countRequests(f, "GET", "/history/"); n != 0 {
			t.Errorf("%d GET /history/{id} lookups for a delete, want 0", n)
		}
		for _, path := range []string{"/queue", "/history"} {
			n := countRequests(f, "POST", path)
			if n != 1 {
				t.Errorf("%d POST %s at an instance, want 1 carrying every unknown id", n, path)
			}
		}
	}
}

// TestCancelJobsCapsLookups: POST /api/jobs/cancel looks up at most
// maxCancelLookups unknown ids at the instances.
func TestCancelJobsCapsLookups(t *testing.T) {
	t.Parallel()
	a := unknownIDsFake(t)
	g := startGate(t, []string{a.Addr()}, nil)
	ids := make([]string, 48)
	for i := range ids {
		ids[i] = fmt.Sprintf("unknown-%d", i)
	}
	body, _ := json.Marshal(map[string][]string{"job_ids": ids})
	status, _, rb := gateDo(t, "POST", g.base+"/api/jobs/cancel", nil, bytes.NewReader(body))
	if status != http.StatusOK || !bytes.Contains(rb, []byte(`"cancelled": false`)) {
		t.Fatalf("POST /api/jobs/cancel = %d %s, want 200 cancelled false", status, rb)
	}
	if n := countRequests(a, "GET", "/history/"); n == 0 || n > 16 {
		t.Errorf("%d GET /history/{id} lookups for %d unknown ids, want 1..16", n, len(ids))
	}
}
