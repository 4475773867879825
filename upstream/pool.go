package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"time"

	"github.com/comfygate/comfygate/internal/ids"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/clock"
	"github.com/comfygate/comfygate/metrics"
)

// entry is one instance of the configuration: a fixed address (one
// Instance), or with Discover a DNS name whose addresses are each an Instance.
type entry struct {
	cfg        config.Instance
	host, port string // Discover only: the name to resolve and the port to use

	// insts are its instances; for Discover sorted by address. Guarded by Pool.mu.
	insts []*Instance
	// lastErr is the last resolution error logged ("" after a success), so a
	// failing name is logged once per change, not once per interval.
	// Touched only by the discovery goroutine.
	lastErr string
	// leaving: Reconfigure removed the entry; its instances drain and it
	// goes once they are gone. Guarded by Pool.mu.
	leaving bool
}

// New builds the pool from the configuration; nothing runs until Start.
// Instances with Discover are resolved by Start.
func New(cfg *config.Config, m *metrics.Metrics, log *slog.Logger) (*Pool, error) {
	return NewWithClock(cfg, m, log, clock.Real)
}

// NewWithClock is New with the clock that times the health check loop,
// failover's grace and the breakers' open periods (nil: the wall clock).
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
	p := &Pool{
		cfg:      cfg,
		m:        m,
		log:      log,
		clk:      clk,
		resolver: net.DefaultResolver,
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
			inst := p.addInstance(e.cfg.Name, e.cfg.HostPort(), ci.TLS())
			inst.applyConfig(e.cfg)
			p.prepareWarmup(inst, e.cfg)
			e.insts = []*Instance{inst}
		}
		p.entries = append(p.entries, e)
	}
	p.mu.Lock()
	p.rebuildLocked()
	p.mu.Unlock()
	return p, nil
}

// addInstance creates an instance and sets its initial metrics.
func (p *Pool) addInstance(name, addr string, tls bool) *Instance {
	inst := newInstance(p, name, addr, tls)
	p.m.SetInstanceHost(name, addr)
	p.m.SetInstanceUp(name, false)
	p.m.SetBreakerState(name, metrics.BreakerClosed)
	p.m.SetInflight(name, 0)
	p.m.SetQueueDepth(name, 0)
	p.m.SetUpstreamSocket(name, false)
	p.m.SetDraining(name, false)
	return inst
}

// rebuildLocked recomputes p.instances from the entries, in config order.
// p.mu must be held for writing.
func (p *Pool) rebuildLocked() {
	list := make([]*Instance, 0, len(p.instances)+1)
	for _, e := range p.entries {
		list = append(list, e.insts...)
	}
	p.instances = list
}

// Start runs health checks, the instance sockets and discovery until ctx
// ends or Close. It does one health check of every instance before returning
// (all in parallel, each bounded by health_check.timeout), so the pool can
// serve at once.
//
// Order: resolve Discover names, check every instance, then publish
// EventAdded for every instance (subscribe before Start to hear them).
func (p *Pool) Start(ctx context.Context) error {
	p.runMu.Lock()
	if p.started || p.closed {
		p.runMu.Unlock()
		return errors.New("upstream: pool already started or closed")
	}
	p.started = true
	ctx, cancel := context.WithCancel(ctx)
	p.ctx, p.cancel = ctx, cancel
	p.runMu.Unlock()

	hasDiscovery := false
	for _, e := range p.entries {
		hasDiscovery = hasDiscovery || e.cfg.Discover
	}
	if hasDiscovery {
		p.resolveAll(ctx) // initial set: announced below with the fixed ones
	}
	p.checkAll(ctx)
	for _, inst := range p.Instances() {
		p.publish(EventAdded, inst)
	}
	p.goAsync(p.healthLoop)
	if hasDiscovery {
		p.startDiscovery()
	}
	return nil
}

// Close stops everything Start started, waits for it, and closes every
// subscription.
func (p *Pool) Close() {
	p.runMu.Lock()
	if p.closed {
		p.runMu.Unlock()
		return
	}
	p.closed = true
	cancel := p.cancel
	p.runMu.Unlock()
	if cancel != nil {
		cancel()
	}
	p.wg.Wait()
	p.closeSubscriptions()
	for _, inst := range p.Instances() {
		inst.client.CloseIdleConnections()
	}
}

// goLoop runs f every interval until ctx ends, recovering from panics.
func (p *Pool) goLoop(ctx context.Context, name string, every time.Duration, f func(context.Context)) {
	p.goAsync(func(ctx context.Context) {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.safely(name, func() { f(ctx) })
			}
		}
	})
}

// goAsync runs f in a goroutine that Close waits for; f gets the pool's
// run context. After Close (or before Start) it does nothing and reports false.
func (p *Pool) goAsync(f func(ctx context.Context)) bool {
	p.runMu.Lock()
	defer p.runMu.Unlock()
	if p.closed || !p.started {
		return false
	}
	ctx := p.ctx
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.safely("background task", func() { f(ctx) })
	}()
	return true
}

// safely runs f and logs a panic instead of crashing the process.
func (p *Pool) safely(what string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("upstream: panic recovered", "in", what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	f()
}

// instanceByName returns the current instance with that name, or nil. An
// instance whose address a reload changed shares its name with the one
// leaving: the new one is returned.
func (p *Pool) instanceByName(name string) *Instance {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var leaving *Instance
	for _, inst := range p.instances {
		if inst.Name == name {
			if !inst.draining.Load() {
				return inst
			}
			leaving = inst
		}
	}
	return leaving
}

// removeIfDrained drops a draining instance with no prompts left from the pool.
func (p *Pool) removeIfDrained(inst *Instance) {
	if !inst.draining.Load() || inst.inflight.Load() > 0 {
		return
	}
	removed, shared := false, false
	p.mu.Lock()
	for _, e := range p.entries {
		for k, x := range e.insts {
			if x == inst && inst.draining.Load() && inst.inflight.Load() <= 0 {
				e.insts = append(e.insts[:k:k], e.insts[k+1:]...)
				removed = true
				break
			}
		}
	}
	if removed {
		// A removed entry goes with its last instance.
		p.entries = slices.DeleteFunc(p.entries, func(e *entry) bool { return e.leaving && len(e.insts) == 0 })
		p.rebuildLocked()
		for _, x := range p.instances {
			shared = shared || x.Name == inst.Name
		}
	}
	p.mu.Unlock()
	if removed {
		if !shared { // its name's series now belong to its successor
			p.m.RemoveInstance(inst.Name)
		}
		p.log.Info("upstream: instance removed", "instance", inst.Name, "addr", inst.Addr)
		inst.client.CloseIdleConnections()
		p.publish(EventDrained, inst)
	}
}

// breakerChanged is the breaker's OnStateChange. It may run while the
// breaker holds its lock, so it must not call into the breaker.
func (p *Pool) breakerChanged(inst *Instance, from, to breaker.State) {
	level := slog.LevelInfo
	if to == breaker.Open {
		level = slog.LevelWarn
	}
	p.log.Log(context.Background(), level, "upstream: breaker state changed",
		"instance", inst.Name, "from", from.String(), "to", to.String())
	p.m.SetBreakerState(inst.Name, to.String())
	p.availabilityChanged()
	if to == breaker.Open && !inst.socketUp.Load() {
		// Real traffic fails and the socket is gone: the instance is dead.
		p.signalDown(inst)
	}
}

// signalDown publishes that inst looks dead (EventDown). It may be
// called more than once per death. Publishing never waits, so callers may
// hold locks (the breaker's).
func (p *Pool) signalDown(inst *Instance) {
	p.publish(EventDown, inst)
}

// availabilityChanged wakes every AwaitAvailable: an instance's health,
// breaker or suspicion changed, so one may be selectable now.
func (p *Pool) availabilityChanged() {
	p.availMu.Lock()
	if p.availCh != nil {
		close(p.availCh)
		p.availCh = nil
	}
	p.availMu.Unlock()
}

// AvailWatch returns a channel closed at the next availability change.
// Take it before looking at the instances, then wait on it with
// AwaitAvailable: a change in between is not missed.
func (p *Pool) AvailWatch() <-chan struct{} {
	p.availMu.Lock()
	defer p.availMu.Unlock()
	if p.availCh == nil {
		p.availCh = make(chan struct{})
	}
	return p.availCh
}

// AwaitAvailable waits until watch (from AvailWatch) is closed, deadline
// passes or ctx ends.
func AwaitAvailable(ctx context.Context, watch <-chan struct{}, deadline time.Time) {
	tm := time.NewTimer(time.Until(deadline))
	defer tm.Stop()
	select {
	case <-watch:
	case <-tm.C:
	case <-ctx.Done():
	}
}

// newSocketID returns "comfygate-" and 16 random lowercase hex digits.
func newSocketID() string { return "comfygate-" + ids.Random(8) }
