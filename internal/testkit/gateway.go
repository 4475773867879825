package testkit

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
)

// PoolPart is what Start needs of an instance pool (upstream.Pool).
type PoolPart interface {
	Start(context.Context) error
	Close()
}

// Part is what Start needs of a part that runs beside the pool
// (prompts.Table, jobs.Service).
type Part interface {
	Start(context.Context)
	Close()
}

// ServerPart is what Start needs of the HTTP server (proxy.Server).
type ServerPart interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
}

// NoPart stands for a part a package's tests do not wire (an upstream
// test has no prompt table, a jobs test no proxy server).
type NoPart struct{}

// Start does nothing.
func (NoPart) Start(context.Context) {}

// Close does nothing.
func (NoPart) Close() {}

// Serve does nothing.
func (NoPart) Serve(net.Listener) error { return nil }

// Shutdown does nothing.
func (NoPart) Shutdown(context.Context) error { return nil }

// InstanceState is one instance as Start's wait for a ready fleet sees it.
type InstanceState struct {
	Name      string
	Healthy   bool // its health checks pass
	Available bool // it takes work
	SocketUp  bool // comfygate's event socket to it is up
}

// Wiring is how a package's tests build the gateway's parts: the
// constructors they can import. Start calls them in main's order: Pool,
// Prompts, then the pool and table start, Jobs (then it starts), Server
// (then it serves on a free loopback port). A nil constructor leaves its
// part out (Pool is required). The full gateway's Wiring is
// internal/testkit/stack's; a package's internal tests give the parts
// below them and NoPart for the rest.
type Wiring[P PoolPart, T, J Part, S ServerPart] struct {
	Pool    func(cfg *config.Config, m *metrics.Metrics, log *slog.Logger) (P, error)
	Prompts func(pool P, cfg *config.Config, m *metrics.Metrics, log *slog.Logger) T
	Jobs    func(cfg *config.Config, pool P, table T, m *metrics.Metrics, log *slog.Logger) (J, error)
	Server  func(g *Gateway[P, T, J, S]) (S, error)
	// Instances reports the pool's instances for the wait for a ready
	// fleet (nil: Start does not wait).
	Instances func(pool P) []InstanceState
}

// GatewayOptions says what Start starts. The zero value is two comfysim
// simulators named sim0, sim1 with testkit.Config's settings, no metrics,
// and every part the Wiring has.
type GatewayOptions struct {
	// Instances is the number of instances Start starts (default 2 when
	// neither Addrs nor Base gives them).
	Instances int
	// Fakes makes them MiniComfy fakes reporting FakeVersion (default
	// "0.3.65") instead of simulators.
	Fakes       bool
	FakeVersion string
	// Sim is every simulator's options; SimFor, if not nil, adjusts the
	// options of simulator i.
	Sim    comfysim.Options
	SimFor func(i int, o *comfysim.Options)
	// Addrs are instances the test started itself (or closed addresses):
	// the gateway is configured with them and Start starts none.
	Addrs []string
	// Faults puts a FaultProxy in front of every instance Start starts:
	// the gateway is configured with the proxies' addresses.
	Faults bool
	// Prefix names the instances (Prefix0, Prefix1, ...; default "sim").
	Prefix string
	// Config adjusts Config's configuration.
	Config func(*config.Config)
	// Base, if not nil, is the configuration, used as it is (no instances
	// started, Prefix and Config unused).
	Base *config.Config
	// Metrics returns the metrics for each start of the gateway (nil: none).
	Metrics func() *metrics.Metrics
	// Logger receives the gateway's logs (nil: each part's default).
	Logger *slog.Logger
	// NoJobs leaves the Wiring's job service out.
	NoJobs bool
	// Idle builds the parts but starts nothing: no pool, table, job
	// service or server runs.
	Idle bool
}

// Gateway is a running gateway and its instances, stopped when the test
// ends.
type Gateway[P PoolPart, T, J Part, S ServerPart] struct {
	tb     testing.TB
	opts   GatewayOptions
	wiring Wiring[P, T, J, S]

	Sims   []*comfysim.Server // the simulators Start started
	Fakes  []*MiniComfy       // the fakes Start started (Options.Fakes)
	Faults []*FaultProxy      // nil unless Options.Faults
	Config *config.Config
	Addr   string // the server's host:port ("" without a Server)
	URL    string // "http://" + Addr

	mu      sync.Mutex // guards the parts below (Restart replaces them)
	metrics *metrics.Metrics
	pool    P
	table   T
	jobs    J
	server  S
	stop    func()

	restarted bool // set by Restart (used by the test's goroutine only)
}

// Start starts the instances (or takes Options.Addrs or Base), their
// fault proxies and the gateway w wires, and returns once the fleet is
// ready (see waitReady), all stopped when the test ends.
func Start[P PoolPart, T, J Part, S ServerPart](tb testing.TB, opts GatewayOptions, w Wiring[P, T, J, S]) *Gateway[P, T, J, S] {
	tb.Helper()
	g := &Gateway[P, T, J, S]{tb: tb, opts: opts, wiring: w}
	if opts.Base != nil {
		g.Config = opts.Base
	} else {
		addrs := opts.Addrs
		if addrs == nil {
			addrs = g.startInstances()
		}
		prefix := opts.Prefix
		if prefix == "" {
			prefix = "sim"
		}
		g.Config = Config(tb, prefix, addrs, opts.Config)
	}
	var ln net.Listener
	if w.Server != nil && !opts.Idle {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			tb.Fatalf("gateway: listen: %v", err)
		}
		g.Addr = ln.Addr().String()
		g.URL = "http://" + g.Addr
	}
	g.startParts(ln)
	tb.Cleanup(g.Stop)
	return g
}

func (g *Gateway[P, T, J, S]) startInstances() []string {
	n := g.opts.Instances
	if n <= 0 {
		n = 2
	}
	addrs := make([]string, n)
	for i := range n {
		if g.opts.Fakes {
			v := g.opts.FakeVersion
			if v == "" {
				v = "0.3.65"
			}
			f := Mini(g.tb, v)
			g.Fakes = append(g.Fakes, f)
			addrs[i] = f.Addr()
		} else {
			o := g.opts.Sim
			if g.opts.SimFor != nil {
				g.opts.SimFor(i, &o)
			}
			sim := Sim(g.tb, o)
			g.Sims = append(g.Sims, sim)
			addrs[i] = sim.Addr()
		}
		if g.opts.Faults {
			fp := NewFaultProxy(g.tb, addrs[i])
			g.Faults = append(g.Faults, fp)
			addrs[i] = fp.Addr()
		}
	}
	return addrs
}

// TB is the test the gateway belongs to.
func (g *Gateway[P, T, J, S]) TB() testing.TB { return g.tb }

// Logger is Options.Logger, for the constructors.
func (g *Gateway[P, T, J, S]) Logger() *slog.Logger { return g.opts.Logger }

// WSURL is the gateway's /ws URL for clientID.
func (g *Gateway[P, T, J, S]) WSURL(clientID string) string {
	return "ws://" + g.Addr + "/ws?clientId=" + clientID
}

// Pool is the running gateway's instance pool.
func (g *Gateway[P, T, J, S]) Pool() P {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pool
}

// Prompts is the running gateway's prompt table.
func (g *Gateway[P, T, J, S]) Prompts() T {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.table
}

// Jobs is the running gateway's job service (the zero J without one).
func (g *Gateway[P, T, J, S]) Jobs() J {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.jobs
}

// Server is the running gateway's server (the zero S without one).
func (g *Gateway[P, T, J, S]) Server() S {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.server
}

// Metrics is the running gateway's metrics (nil without Options.Metrics).
func (g *Gateway[P, T, J, S]) Metrics() *metrics.Metrics {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.metrics
}

// Stop shuts the gateway down as main does on SIGTERM: the server drains
// (bounded), then the job service, the pool and the table stop. The
// instances keep running. Idempotent.
func (g *Gateway[P, T, J, S]) Stop() {
	g.mu.Lock()
	stop := g.stop
	g.stop = nil
	g.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// Restart stops the gateway and starts a new one on the same address with
// nothing carried over (no pin table, no sockets, no jobs), as a restarted
// comfygate process would.
func (g *Gateway[P, T, J, S]) Restart() {
	g.tb.Helper()
	g.Stop()
	g.restarted = true
	var ln net.Listener
	if g.Addr != "" {
		ok := Poll(WaitBound, func() bool {
			var err error
			ln, err = net.Listen("tcp", g.Addr)
			return err == nil
		})
		if !ok {
			g.tb.Fatalf("gateway: listen again on %s", g.Addr)
		}
	}
	g.startParts(ln)
}

// startParts builds the parts, starts them unless Idle, and serves on ln
// (if not nil).
func (g *Gateway[P, T, J, S]) startParts(ln net.Listener) {
	tb, w, cfg, log := g.tb, g.wiring, g.Config, g.opts.Logger
	tb.Helper()
	fail := func(format string, args ...any) {
		if ln != nil {
			_ = ln.Close()
		}
		tb.Fatalf("gateway: "+format, args...)
	}
	var m *metrics.Metrics
	if g.opts.Metrics != nil {
		m = g.opts.Metrics()
	}
	pool, err := w.Pool(cfg, m, log)
	if err != nil {
		fail("pool: %v", err)
	}
	var table T
	var closers []func() // in the order of closing
	if w.Prompts != nil {
		table = w.Prompts(pool, cfg, m, log)
	}
	// The pool closes before the table, as in main.
	closers = append(closers, pool.Close)
	if w.Prompts != nil {
		closers = append(closers, table.Close)
	}
	g.mu.Lock()
	g.metrics, g.pool, g.table = m, pool, table
	g.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	closeAll := func() {
		for _, c := range closers {
			c()
		}
		cancel()
	}
	if g.opts.Idle {
		var once sync.Once
		g.mu.Lock()
		g.stop = func() { once.Do(closeAll) }
		g.mu.Unlock()
		return
	}
	if err := pool.Start(ctx); err != nil {
		closeAll()
		fail("pool start: %v", err)
	}
	if w.Prompts != nil {
		table.Start(ctx)
	}
	var svc J
	if w.Jobs != nil && !g.opts.NoJobs {
		if svc, err = w.Jobs(cfg, pool, table, m, log); err != nil {
			closeAll()
			fail("jobs: %v", err)
		}
		svc.Start(ctx)
		closers = append([]func(){svc.Close}, closers...)
	}
	g.mu.Lock()
	g.jobs = svc
	g.mu.Unlock()
	served := make(chan struct{})
	close(served)
	var srv S
	if w.Server != nil && ln != nil {
		if srv, err = w.Server(g); err != nil {
			closeAll()
			fail("server: %v", err)
		}
		served = make(chan struct{})
		go func() { _ = srv.Serve(ln); close(served) }()
	}
	var once sync.Once
	g.mu.Lock()
	g.server = srv
	g.stop = func() {
		once.Do(func() {
			if w.Server != nil && ln != nil {
				sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = srv.Shutdown(sctx)
				scancel()
			}
			<-served
			closeAll()
		})
	}
	g.mu.Unlock()
	g.waitReady()
}

// waitReady waits until the fleet is ready: a prompt that runs on an
// instance before comfygate's socket registered there would lose its
// events, and a first health check that timed out on a loaded machine
// would leave an instance out for a while. When Start started every
// instance, each must be available with its event socket up; otherwise
// (Options.Addrs, Base) those that passed their first health check must
// have their socket up: those found down, or kept out by a failed warm-up,
// are the test's business. After Restart, the healthy ones must be
// available with their socket up.
func (g *Gateway[P, T, J, S]) waitReady() {
	if g.wiring.Instances == nil {
		return
	}
	own := g.opts.Addrs == nil && g.opts.Base == nil
	pool := g.Pool()
	for _, st := range g.wiring.Instances(pool) {
		if !st.Healthy && (g.restarted || !own) {
			continue
		}
		name, avail := st.Name, own
		Eventually(g.tb, name+" ready with its event socket up", func() bool {
			for _, s := range g.wiring.Instances(pool) {
				if s.Name == name {
					return s.SocketUp && (s.Available || !avail)
				}
			}
			return false
		})
	}
}

// Names returns the instance names in configuration order.
func (g *Gateway[P, T, J, S]) Names() []string {
	out := make([]string, len(g.Config.Instances))
	for i, in := range g.Config.Instances {
		out[i] = in.Name
	}
	return out
}

// String names the gateway in failure messages.
func (g *Gateway[P, T, J, S]) String() string {
	return fmt.Sprintf("gateway %s in front of %s", g.Addr, strings.Join(g.Names(), ", "))
}
