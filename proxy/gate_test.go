package proxy

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/ready"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"net/url"
)

// gate is comfygate's HTTP server in front of some instances, for tests:
// testkit.Start's gateway with this package's parts, under the names these
// tests use.
type gate struct {
	base    string // http://127.0.0.1:port
	addr    string
	cfg     *config.Config
	pool    *upstream.Pool
	prompts *prompts.Table
	srv     *Server
	m       *metrics.Metrics // the server's (nil unless given)
	hc      *http.Client     // the clients' HTTP client (nil: http.DefaultClient)
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
	return startGateMetrics(t, addrs, mod, nil, nil)
}

// startGateWith is startGate with a hook on the server's Options (logger,
// metrics, jobs, catalogue; Pool is set when it runs).
func startGateWith(t testing.TB, addrs []string, mod func(*config.Config), opts func(*Options)) *gate {
	t.Helper()
	return startGateMetrics(t, addrs, mod, nil, opts)
}

// startGateMetrics is startGateWith with the pool and server reporting to
// m. Instances the first health check found down are the test's business:
// testkit.Start waits for the event sockets of the others only.
func startGateMetrics(t testing.TB, addrs []string, mod func(*config.Config), m *metrics.Metrics, opts func(*Options)) *gate {
	t.Helper()
	var used *metrics.Metrics
	gw := testkit.Start(t, testkit.GatewayOptions{Addrs: addrs, Prefix: "i", Config: mod, Metrics: func() *metrics.Metrics { return m }},
		testkit.Wiring[*upstream.Pool, *prompts.Table, testkit.NoPart, *Server]{
			Pool:    upstream.New,
			Prompts: prompts.New,
			Server: func(g *testkit.Gateway[*upstream.Pool, *prompts.Table, testkit.NoPart, *Server]) (*Server, error) {
				o := Options{Config: g.Config, Pool: g.Pool(), Prompts: g.Prompts(), Metrics: g.Metrics(), Version: "test"}
				if opts != nil {
					opts(&o)
				}
				used = o.Metrics
				return New(o)
			},
			Instances: ready.States,
		})
	return &gate{base: gw.URL, addr: gw.Addr, cfg: gw.Config, pool: gw.Pool(), prompts: gw.Prompts(), srv: gw.Server(), m: used}
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
