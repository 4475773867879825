// Package stack wires the whole gateway for tests: simulated ComfyUI
// instances (or testkit's scripted fake, optionally each behind a
// testkit.FaultProxy), the upstream pool, the prompt table, the job service
// and the proxy server on a free loopback port, all stopped when the test
// ends. Only tests import it.
//
// The builder itself is testkit.Start, which imports none of comfygate's
// gateway packages: it takes their constructors (a testkit.Wiring). This
// package gives it all of them. The internal tests of upstream, prompts,
// jobs and proxy cannot import this package (it imports theirs, an import
// cycle), so they call testkit.Start with the constructors their package
// can import (NoPart for the rest): one builder, whatever the package.
package stack

import (
	"log/slog"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/ready"
	"github.com/comfygate/comfygate/jobs"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/proxy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
)

// Options says what to start. The zero value is two simulators with the
// default options, no fault proxies, no job service, testkit.Config's
// settings, metrics on.
type Options struct {
	// Instances is the number of simulators (default 2).
	Instances int
	// Sim is every simulator's options; SimFor, if not nil, adjusts the
	// options of simulator i.
	Sim    comfysim.Options
	SimFor func(i int, o *comfysim.Options)
	// Fakes starts testkit.MiniComfy fakes instead of simulators.
	Fakes bool
	// Addrs, if not empty, are instances already running (another stack's
	// Sims, for replicas of one fleet): the gateway fronts them and Start
	// starts none.
	Addrs []string
	// Faults puts a testkit.FaultProxy in front of every instance: the
	// gateway is configured with the proxies' addresses.
	Faults bool
	// Config adjusts testkit.Config's configuration (instances named sim0,
	// sim1, ...).
	Config func(*config.Config)
	// Jobs wires the async job API.
	Jobs bool
	// Proxy adjusts the proxy server's options before it is built.
	Proxy func(*proxy.Options)
	// Logger receives the gateway's logs (nil discards them).
	Logger *slog.Logger
	// State is the shared state store (state.Open of testkit.Redis's URL,
	// for stacks that stand for replicas of one fleet); nil: memory.
	State *state.Store
}

// Gateway is the whole gateway as testkit.Start runs it.
type Gateway = testkit.Gateway[*upstream.Pool, *prompts.Table, *jobs.Service, *proxy.Server]

// Stack is a running gateway and its instances.
type Stack struct {
	*Gateway
}

// Wiring is the whole gateway's: pool, prompt table, job service and proxy
// server, sharing opts.State, with opts.Proxy (if not nil) adjusting the
// server's options.
func Wiring(opts Options) testkit.Wiring[*upstream.Pool, *prompts.Table, *jobs.Service, *proxy.Server] {
	return testkit.Wiring[*upstream.Pool, *prompts.Table, *jobs.Service, *proxy.Server]{
		Pool:    upstream.New,
		Prompts: prompts.New,
		Jobs: func(cfg *config.Config, pool *upstream.Pool, table *prompts.Table, m *metrics.Metrics, log *slog.Logger) (*jobs.Service, error) {
			return jobs.New(cfg, pool, table, opts.State, m, log)
		},
		Server: func(g *Gateway) (*proxy.Server, error) {
			o := proxy.Options{Config: g.Config, Pool: g.Pool(), Prompts: g.Prompts(), Metrics: g.Metrics(),
				Logger: g.Logger(), Version: "test", State: opts.State}
			if svc := g.Jobs(); svc != nil {
				o.Jobs = svc
				o.BodyBudget = svc.BodyBudget()
			}
			if opts.Proxy != nil {
				opts.Proxy(&o)
			}
			return proxy.New(o)
		},
		Instances: ready.States,
	}
}

// Start starts the instances, their fault proxies and the gateway, and
// returns once every instance is available with its event socket up.
func Start(tb testing.TB, opts Options) *Stack {
	tb.Helper()
	return &Stack{testkit.Start(tb, testkit.GatewayOptions{
		Instances: opts.Instances,
		Fakes:     opts.Fakes,
		Addrs:     opts.Addrs,
		Sim:       opts.Sim,
		SimFor:    opts.SimFor,
		Faults:    opts.Faults,
		Config:    opts.Config,
		Metrics:   func() *metrics.Metrics { return metrics.New("test") },
		Logger:    opts.Logger,
		NoJobs:    !opts.Jobs,
	}, Wiring(opts))}
}

// Instance returns the pool's instance named name (sim0, sim1, ...).
func (s *Stack) Instance(name string) *upstream.Instance {
	for _, inst := range s.Pool().Instances() {
		if inst.Name == name {
			return inst
		}
	}
	s.TB().Fatalf("stack: no instance %q", name)
	return nil
}
