// Package stack wires the whole gateway for tests: simulated ComfyUI
// instances (optionally each behind a testkit.FaultProxy), the upstream
// pool, the job service and the proxy server on a free loopback port, all
// stopped when the test ends. Only tests import it. The internal tests of
// upstream, jobs and proxy cannot (it imports them); they build what they
// need from internal/testkit.
package stack

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
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/jobs"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/proxy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
)

// Options says what to start. The zero value is two simulators with the
// default options, no fault proxies, no job service, testkit.Config's
// settings.
type Options struct {
	// Instances is the number of simulators (default 2).
	Instances int
	// Sim is every simulator's options; SimFor, if not nil, adjusts the
	// options of simulator i.
	Sim    comfysim.Options
	SimFor func(i int, o *comfysim.Options)
	// Addrs, if not empty, are instances already running (another stack's
	// Sims, for replicas of one fleet): the gateway fronts them and Start
	// starts no simulator (Instances, Sim, SimFor and Faults are unused).
	Addrs []string
	// Faults puts a testkit.FaultProxy in front of every simulator: the
	// gateway is configured with the proxies' addresses.
	Faults bool
	// Config adjusts testkit.Config's configuration (instances named sim0,
	// sim1, ...).
	Config func(*config.Config)
	// Jobs wires the async job API.
	Jobs bool
	// Logger receives the gateway's logs (nil discards them).
	Logger *slog.Logger
	// State is the shared state store (state.Open of testkit.Redis's URL,
	// for stacks that stand for replicas of one fleet); nil: memory.
	State *state.Store
}

// Stack is a running gateway and its instances.
type Stack struct {
	tb     testing.TB
	opts   Options
	Sims   []*comfysim.Server
	Faults []*testkit.FaultProxy // nil unless Options.Faults
	Config *config.Config
	Addr   string // the gateway's host:port
	URL    string // "http://" + Addr

	mu      sync.Mutex // guards the gateway fields below (Restart replaces them)
	metrics *metrics.Metrics
	pool    *upstream.Pool
	prompts *prompts.Table
	jobs    *jobs.Service
	server  *proxy.Server
	stop    func()

	restarted bool // set by Restart (used by the test's goroutine only)
}

// Start starts the simulators, their fault proxies and the gateway, and
// returns once every healthy instance's event socket is up.
func Start(tb testing.TB, opts Options) *Stack {
	tb.Helper()
	n := opts.Instances
	if n <= 0 {
		n = 2
	}
	s := &Stack{tb: tb, opts: opts}
	addrs := make([]string, n)
	if len(opts.Addrs) > 0 {
		addrs, n = opts.Addrs, 0
	}
	for i := range n {
		o := opts.Sim
		if opts.SimFor != nil {
			opts.SimFor(i, &o)
		}
		sim := testkit.Sim(tb, o)
		s.Sims = append(s.Sims, sim)
		addrs[i] = sim.Addr()
		if opts.Faults {
			fp := testkit.NewFaultProxy(tb, sim.Addr())
			s.Faults = append(s.Faults, fp)
			addrs[i] = fp.Addr()
		}
	}
	s.Config = testkit.Config(tb, "sim", addrs, opts.Config)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("stack: listen: %v", err)
	}
	s.Addr = ln.Addr().String()
	s.URL = "http://" + s.Addr
	s.startGateway(ln)
	tb.Cleanup(s.Stop)
	return s
}

// WSURL is the gateway's /ws URL for clientID.
func (s *Stack) WSURL(clientID string) string {
	return "ws://" + s.Addr + "/ws?clientId=" + clientID
}

// Pool is the running gateway's instance pool.
func (s *Stack) Pool() *upstream.Pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool
}

// Prompts is the running gateway's prompt table.
func (s *Stack) Prompts() *prompts.Table {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.prompts
}

// Server is the running gateway's proxy server.
func (s *Stack) Server() *proxy.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.server
}

// Jobs is the running gateway's job service (nil without Options.Jobs).
func (s *Stack) Jobs() *jobs.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.jobs
}

// Metrics is the running gateway's metrics.
func (s *Stack) Metrics() *metrics.Metrics {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.metrics
}

// Instance returns the pool's instance named name (sim0, sim1, ...).
func (s *Stack) Instance(name string) *upstream.Instance {
	for _, inst := range s.Pool().Instances() {
		if inst.Name == name {
			return inst
		}
	}
	s.tb.Fatalf("stack: no instance %q", name)
	return nil
}

// Stop shuts the gateway down as main does on SIGTERM: the server drains
// (bounded), then the job service and the pool stop. The simulators keep
// running. Idempotent.
func (s *Stack) Stop() {
	s.mu.Lock()
	stop := s.stop
	s.stop = nil
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// Restart stops the gateway and starts a new one on the same address with
// nothing carried over (no pin table, no sockets, no jobs), as a restarted
// comfygate process would.
func (s *Stack) Restart() {
	s.tb.Helper()
	s.Stop()
	s.restarted = true
	var ln net.Listener
	ok := testkit.Poll(testkit.WaitBound, func() bool {
		var err error
		ln, err = net.Listen("tcp", s.Addr)
		return err == nil
	})
	if !ok {
		s.tb.Fatalf("stack: listen again on %s", s.Addr)
	}
	s.startGateway(ln)
}

func (s *Stack) startGateway(ln net.Listener) {
	tb := s.tb
	tb.Helper()
	cfg := s.Config
	m := metrics.New("test")
	pool, err := upstream.New(cfg, m, s.opts.Logger)
	if err != nil {
		_ = ln.Close()
		tb.Fatalf("stack: upstream.New: %v", err)
	}
	table := prompts.New(pool, cfg, m, s.opts.Logger)
	ctx, cancel := context.WithCancel(context.Background())
	if err := pool.Start(ctx); err != nil {
		cancel()
		_ = ln.Close()
		tb.Fatalf("stack: pool.Start: %v", err)
	}
	table.Start(ctx)
	var svc *jobs.Service
	po := proxy.Options{Config: cfg, Pool: pool, Prompts: table, Metrics: m, Logger: s.opts.Logger, Version: "test", State: s.opts.State}
	if s.opts.Jobs {
		if svc, err = jobs.New(cfg, pool, table, s.opts.State, m, s.opts.Logger); err != nil {
			cancel()
			pool.Close()
			table.Close()
			_ = ln.Close()
			tb.Fatalf("stack: jobs.New: %v", err)
		}
		svc.Start(ctx)
		po.Jobs = svc
		po.BodyBudget = svc.BodyBudget()
	}
	srv, err := proxy.New(po)
	if err != nil {
		cancel()
		if svc != nil {
			svc.Close()
		}
		pool.Close()
		table.Close()
		_ = ln.Close()
		tb.Fatalf("stack: proxy.New: %v", err)
	}
	served := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(served) }()
	var once sync.Once
	s.mu.Lock()
	s.metrics, s.pool, s.prompts, s.jobs, s.server = m, pool, table, svc, srv
	s.stop = func() {
		once.Do(func() {
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = srv.Shutdown(sctx)
			scancel()
			<-served
			if svc != nil {
				svc.Close()
			}
			pool.Close()
			table.Close()
			cancel()
		})
	}
	s.mu.Unlock()
	// Start from the whole fleet, available with its event sockets up: a
	// first health check that timed out on a loaded machine would leave an
	// instance out for a while, and a prompt that runs on an instance before
	// comfygate's socket registered there would lose its events. (Every
	// simulator runs when the stack starts; Restart finds them as a test
	// left them.)
	for _, inst := range pool.Instances() {
		if s.restarted && !inst.Healthy() {
			continue
		}
		testkit.Eventually(tb, inst.Name+" available with its event socket up", func() bool {
			return inst.Available() && inst.Status().SocketUp
		})
	}
}

// Names returns the instance names in configuration order.
func (s *Stack) Names() []string {
	out := make([]string, len(s.Config.Instances))
	for i, in := range s.Config.Instances {
		out[i] = in.Name
	}
	return out
}

// String names the stack in failure messages.
func (s *Stack) String() string {
	return fmt.Sprintf("gateway %s in front of %s", s.Addr, strings.Join(s.Names(), ", "))
}
