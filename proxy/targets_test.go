package proxy

import (
	"context"
	"net/http"
	"testing"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/state"
)

// Client suites run against a target: one gateway, or two replicas
// sharing a real redis-server (state.url) behind a load balancer, so that
// what a client sees of one comfygate it also sees of a fleet's replicas.

// targetKind is how the clients reach the gateway(s).
type targetKind int

const (
	// oneGateway: the clients talk to one gateway.
	oneGateway targetKind = iota
	// roundRobin: two replicas behind a balancer that takes them in turns
	// per connection; the clients' HTTP requests have no keep-alive, so
	// consecutive requests (and sockets) alternate between the replicas.
	roundRobin
	// split: two replicas, every WebSocket on the second (B) and every
	// other request on the first (A): each client's POST /prompt on A and
	// its /ws on B.
	split
)

var targetKinds = []targetKind{oneGateway, roundRobin, split}

func (k targetKind) String() string {
	return [...]string{"one gateway", "two replicas round robin", "two replicas split"}[k]
}

// target is what a suite's clients are given.
type target struct {
	kind targetKind
	// front is what the clients use: the gateway itself, or a gate that
	// names the balancer (its base, addr and HTTP client; no parts).
	front *gate
	// replicas are the gateways behind front: one, or A and B.
	replicas []*gate
	lb       *testkit.Balancer // nil for one gateway
}

// a and b are the first and the last replica (the same gateway for one).
func (tg *target) a() *gate { return tg.replicas[0] }
func (tg *target) b() *gate { return tg.replicas[len(tg.replicas)-1] }

// startTarget starts kind's gateway(s) with start, which starts one
// gateway with opts applied to its server's Options (the shared state
// store of a replica).
func startTarget(t *testing.T, kind targetKind, start func(opts func(*Options)) *gate) *target {
	t.Helper()
	if kind == oneGateway {
		g := start(nil)
		return &target{kind: kind, front: g, replicas: []*gate{g}}
	}
	url := testkit.Redis(t)
	replica := func() *gate {
		st, err := state.Open(context.Background(), config.State{URL: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return start(func(o *Options) { o.State = st })
	}
	a, b := replica(), replica()
	var lb *testkit.Balancer
	if kind == roundRobin {
		lb = testkit.RoundRobin(t, a.addr, b.addr)
	} else {
		lb = testkit.Split(t, a.addr, b.addr)
	}
	front := &gate{base: lb.URL, addr: lb.Addr, hc: lb.HTTPClient()}
	return &target{kind: kind, front: front, replicas: []*gate{a, b}, lb: lb}
}

// checkSpread fails the test unless the balancer sent connections to both
// replicas and, for split, every socket to B and nothing else there.
func (tg *target) checkSpread(t *testing.T) {
	t.Helper()
	if tg.lb == nil {
		return
	}
	all, ws := tg.lb.Conns()
	switch {
	case all[0] == 0 || all[1] == 0:
		t.Errorf("%s: connections per replica %v: not spread", tg.kind, all)
	case tg.kind == split && (ws[0] != 0 || all[1] != ws[1] || ws[1] == 0):
		t.Errorf("%s: sockets per replica %v of %v connections: not split", tg.kind, ws, all)
	}
}

// forEachTarget runs suite against each target kind, in parallel
// subtests.
func forEachTarget(t *testing.T, suite func(t *testing.T, kind targetKind)) {
	for _, kind := range targetKinds {
		t.Run(kind.String(), func(t *testing.T) {
			t.Parallel()
			suite(t, kind)
		})
	}
}

// client is the HTTP client a test's requests to g go through.
func (g *gate) client() *http.Client {
	if g.hc != nil {
		return g.hc
	}
	return http.DefaultClient
}
