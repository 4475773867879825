package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/clock"
	"github.com/comfygate/comfygate/internal/ids"
	"github.com/comfygate/comfygate/metrics"
)

// New builds the pool from the configuration; nothing runs until Start.
// Instances with Discover are resolved by Start.
func New(cfg *config.Config, m *metrics.Metrics, log *slog.Logger) (*Pool, error) {
	return NewWithClock(cfg, m, log, clock.Real)
}

// NewWithClock is New with the clock that times the health check loop,
// failover's grace and the breakers' open periods and closed-state intervals
// (nil: the wall clock).
func NewWithClock(cfg *config.Config, m *metrics.Metrics, log *slog.Logger, clk clock.Clock) (*Pool, error) {
	if cfg == nil {
		return nil, errors.New("upstream: nil config")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if clk == nil {
		clk = clock.Real
	}
	run := &runner{log: log}
	bus := &bus{}
	avail := &availability{}
	reg := &registry{cfg: cfg, clk: clk, m: m, log: log, bus: bus}
	warm := &warmups{cfg: cfg, log: log, bus: bus, avail: avail}
	health := &health{cfg: cfg, clk: clk, m: m, log: log, reg: reg, bus: bus, avail: avail, warm: warm, run: run}
	reg.breakerChanged = health.breakerChanged
	disc := &discovery{cfg: cfg, m: m, log: log, reg: reg, bus: bus, warm: warm, health: health, run: run,
		resolver: net.DefaultResolver}
	p := &Pool{
		clk:    clk,
		run:    run,
		bus:    bus,
		avail:  avail,
		reg:    reg,
		warm:   warm,
		health: health,
		sel:    &Selector{reg: reg},
		disc:   disc,
		fleet: &Fleet{m: m, log: log, reg: reg, bus: bus, avail: avail, warm: warm,
			health: health, disc: disc, run: run},
	}
	for k, ci := range cfg.Instances {
		e := &entry{cfg: ci}
		if ci.Name == "" {
			e.cfg.Name = ci.HostPort()
		}
		if ci.Discover {
			host, port, err := net.SplitHostPort(ci.HostPort())
			if err != nil || host == "" {
				return nil, fmt.Errorf("upstream: instances[%d] %q: want host:port to resolve", k, ci.Address)
			}
			e.host, e.port = host, port
		} else {
			inst := reg.add(e.cfg.Name, e.cfg.HostPort(), ci.TLS())
			inst.applyConfig(e.cfg)
			warm.prepare(inst, e.cfg)
			e.insts = []*Instance{inst}
		}
		reg.entries = append(reg.entries, e)
	}
	reg.mu.Lock()
	reg.rebuildLocked()
	reg.mu.Unlock()
	return p, nil
}

// Start runs health checks, the instance sockets and discovery until ctx
// ends or Close. It does one health check of every instance before returning
// (all in parallel, each bounded by health_check.timeout), so the pool can
// serve at once.
//
// Order: resolve Discover names, check every instance, then publish
// EventAdded for every instance (subscribe before Start to hear them).
func (p *Pool) Start(ctx context.Context) error {
	ctx, err := p.run.start(ctx)
	if err != nil {
		return err
	}
	hasDiscovery := p.disc.configured()
	if hasDiscovery {
		p.disc.resolveAll(ctx) // initial set: announced below with the fixed ones
	}
	p.health.checkAll(ctx)
	for _, inst := range p.reg.list() {
		p.bus.publish(EventAdded, inst)
	}
	p.run.goAsync(p.health.loop)
	if hasDiscovery {
		p.disc.start()
	}
	return nil
}

// Close stops everything Start started, waits for it, and closes every
// subscription.
func (p *Pool) Close() {
	if !p.run.stop() {
		return
	}
	p.bus.close()
	for _, inst := range p.reg.list() {
		inst.transport.client.CloseIdleConnections()
	}
}

// Clock is the clock the pool times its checks with; failover's grace
// uses it too.
func (p *Pool) Clock() clock.Clock { return p.clk }

// Selector is the part that picks the instance for new work.
func (p *Pool) Selector() *Selector { return p.sel }

// Fleet is the part an operator changes the instances through: drains
// and reloads.
func (p *Pool) Fleet() *Fleet { return p.fleet }

// The methods below hand the call to the part that does it. They are
// what the prompt owner (package prompts) and the proxy call on the pool.

// Instances returns the current instances (a copy of the slice).
func (p *Pool) Instances() []*Instance { return p.reg.list() }

// Len is the number of instances, len(Instances()) without the copy.
func (p *Pool) Len() int { return p.reg.size() }

// Instance returns the current instance of that name (one leaving the
// pool only when no other has the name), or nil.
func (p *Pool) Instance(name string) *Instance { return p.reg.byName(name) }

// Subscribe returns a new subscription to the pool's instance events.
// Close it when done; the pool's Close closes every subscription.
func (p *Pool) Subscribe() *Subscription { return p.bus.subscribe() }

// SetComebackGate sets the gate every comeback must pass (nil: none). The
// owner of what runs on the instances uses it to remove what moved off an
// instance before it gets work again. Call it before Start.
func (p *Pool) SetComebackGate(g ComebackGate) { p.bus.setGate(g) }

// Healthy returns the instances that are Available, in config order
// (Selector.Healthy).
func (p *Pool) Healthy() []*Instance { return p.sel.Healthy() }

// SelectFor picks the instance for new work among those ok accepts
// (Selector.SelectFor).
func (p *Pool) SelectFor(ok func(*Instance) bool, exclude ...*Instance) (*Instance, error) {
	return p.sel.SelectFor(ok, exclude...)
}

// Reserve picks the instance for a prompt and counts it in its in-flight
// work at once (Selector.Reserve).
func (p *Pool) Reserve(prefer *Instance, ok func(*Instance) bool, exclude ...*Instance) (*Instance, error) {
	return p.sel.Reserve(prefer, ok, exclude...)
}

// QueueRemaining is the fleet-wide queue_remaining a client should see
// (Selector.QueueRemaining).
func (p *Pool) QueueRemaining() int { return p.sel.QueueRemaining() }

// AvailWatch returns a channel closed at the next availability change.
// Take it before looking at the instances, then wait on it with
// AwaitAvailable: a change in between is not missed.
func (p *Pool) AvailWatch() <-chan struct{} { return p.avail.watch() }

// Probe does one health probe of inst (GET /system_stats within timeout,
// even while its breaker refuses traffic) without recording a verdict:
// nil when it answered 200.
func (p *Pool) Probe(ctx context.Context, inst *Instance, timeout time.Duration) error {
	_, err := p.health.probeHealth(ctx, inst, timeout)
	return err
}

// SocketLost is called (by the owner of the event sockets) when an
// instance's socket dropped: it publishes EventSuspect and one health
// check runs now, bounded by failover.suspect_grace. If it fails the
// instance is marked unhealthy at once (socket lost and a failed check
// confirm it, no need to wait for the threshold) and EventDown is
// published; if it passes, suspect is cleared (EventBack).
func (p *Pool) SocketLost(inst *Instance) { p.health.socketLost(inst) }

// SocketRestored is called (by the owner of the event sockets) after the
// instance's socket reconnected: a health check runs now, and on success
// the instance is healthy again at once (EventBack).
func (p *Pool) SocketRestored(inst *Instance) { p.health.socketRestored(inst) }

// WarmupWorkflow is inst's warm-up workflow (API format), nil when it has
// none. A workflow file that could not be read is JSON null.
func (p *Pool) WarmupWorkflow(inst *Instance) json.RawMessage { return p.warm.workflow(inst) }

// WarmupDone ends the warm-up EventWarmup asked for: nil lets inst take
// work; an error keeps it out and its status says why (the next passed
// health check asks again), except a context error (the runner stopped:
// nothing is recorded).
func (p *Pool) WarmupDone(inst *Instance, took time.Duration, err error) {
	p.warm.done(inst, took, err)
}

// newSocketID returns "comfygate-" and 16 random lowercase hex digits.
func newSocketID() string { return "comfygate-" + ids.Random(8) }
