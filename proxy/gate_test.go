package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"github.com/fasthttp/websocket"
)

// gate is comfygate's HTTP server in front of some instances, for tests.
// (Tests outside this package use internal/testkit/stack, which imports
// proxy and so cannot serve this package's own tests.)
type gate struct {
	base    string // http://127.0.0.1:port
	addr    string
	cfg     *config.Config
	pool    *upstream.Pool
	prompts *prompts.Table
	srv     *Server
	m       *metrics.Metrics // the server's (nil unless given)
}

// wsURL is the gate's /ws URL for clientID.
func (g *gate) wsURL(clientID string) string {
	return "ws://" + g.addr + "/ws?clientId=" + url.QueryEscape(clientID)
}

// gateTimeout bounds every wait of these tests.
const gateTimeout = 15 * time.Second

// startGate starts comfygate in front of addrs (host:port), instances
// named i0, i1, ..., with testkit.Config's settings; mod adjusts the
// configuration before the pool is built.
func startGate(t testing.TB, addrs []string, mod func(*config.Config)) *gate {
	t.Helper()
	return startGateWith(t, addrs, mod, nil)
}

// startGateWith is startGate with a hook on the server's Options (logger,
// metrics, jobs, catalogue; Pool is set when it runs).
func startGateWith(t testing.TB, addrs []string, mod func(*config.Config), opts func(*Options)) *gate {
	t.Helper()
	return startGateMetrics(t, addrs, mod, nil, opts)
}

// startGateMetrics is startGateWith with the pool and server reporting to m.
func startGateMetrics(t testing.TB, addrs []string, mod func(*config.Config), m *metrics.Metrics, opts func(*Options)) *gate {
	t.Helper()
	cfg := testkit.Config(t, "i", addrs, mod)
	pool, err := upstream.New(cfg, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	table := prompts.New(pool, cfg, m, nil)
	ctx, cancel := context.WithCancel(context.Background())
	if err := pool.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	table.Start(ctx)
	o := Options{Config: cfg, Pool: pool, Prompts: table, Metrics: m, Version: "test"}
	if opts != nil {
		opts(&o)
	}
	srv, err := New(o)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = srv.Shutdown(sctx)
		scancel()
		<-done
		pool.Close()
		table.Close()
		cancel()
	})
	g := &gate{base: "http://" + ln.Addr().String(), addr: ln.Addr().String(), cfg: cfg, pool: pool, prompts: table, srv: srv, m: o.Metrics}
	// Start from a fleet whose event sockets are up: table.Start waits for
	// them at most health_check.timeout, and a prompt that runs on an
	// instance before comfygate's socket registered there misses its
	// progress events (TestSameNamesOwnImage waits for executed events).
	// Instances the first health check found down are the test's business.
	for _, inst := range pool.Instances() {
		if inst.Healthy() {
			testkit.Eventually(t, "event socket to "+inst.Name, func() bool { return inst.Status().SocketUp })
		}
	}
	return g
}

// gateClient is the tests' client: no keep-alive surprises across tests,
// bounded so that a hang fails the test instead of blocking it.
var gateClient = &http.Client{Timeout: 30 * time.Second}

// do sends one request and returns status, headers and body.
func gateDo(t testing.TB, method, url string, header http.Header, body io.Reader) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if h := header.Get("Host"); h != "" {
		req.Host = h
	}
	resp, err := gateClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp.StatusCode, resp.Header, b
}

// fakeComfy is a minimal ComfyUI for unit tests: /system_stats (so the pool
// finds it healthy), a /ws that sends the first status message and stays
// open, and whatever handler the test gives for the rest. It records every
// request's raw request-target and headers.
type fakeComfy struct {
	*httptest.Server
	handler http.HandlerFunc

	mu   sync.Mutex // guards seen
	seen []seenRequest
}

type seenRequest struct {
	Method, RequestURI, Host string
	Header                   http.Header
}

func newFakeComfy(t testing.TB, h http.HandlerFunc) *fakeComfy {
	t.Helper()
	f := &fakeComfy{handler: h}
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/system_stats":
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			_, _ = io.WriteString(w, `{"system": {"comfyui_version": "0.3.65"}, "devices": []}`)
			return
		case "/ws":
			c, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close()
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "x"}}`))
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		case "/queue":
			if r.Method == http.MethodGet && h == nil {
				_, _ = io.WriteString(w, `{"queue_running": [], "queue_pending": []}`)
				return
			}
		}
		f.mu.Lock()
		f.seen = append(f.seen, seenRequest{Method: r.Method, RequestURI: r.RequestURI, Host: r.Host, Header: r.Header.Clone()})
		f.mu.Unlock()
		if h == nil {
			http.NotFound(w, r)
			return
		}
		h(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

// addr is the fake's host:port.
func (f *fakeComfy) addr() string { return strings.TrimPrefix(f.URL, "http://") }

// requests returns what the fake saw (except health checks and /ws).
func (f *fakeComfy) requests() []seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seenRequest(nil), f.seen...)
}
