package upstream

// What an operator changes on the fleet while it runs: draining an
// instance and bringing it back, its labels and weight, warm-up state, and
// a new configuration's instance list (Reconfigure).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
)

// ErrUnknownInstance: no instance has that name.
var ErrUnknownInstance = errors.New("no instance of that name")

// fleetState is the part of an Instance's configuration that operators
// and reloads change while it runs.
type fleetState struct {
	weight atomic.Int32
	labels atomic.Pointer[map[string]string]
}

// Labels returns the instance's labels (a copy; nil for none).
func (i *Instance) Labels() map[string]string {
	if l := i.fleet.labels.Load(); l != nil {
		return maps.Clone(*l)
	}
	return nil
}

// HasLabels reports whether the instance carries every label of want.
func (i *Instance) HasLabels(want map[string]string) bool {
	if len(want) == 0 {
		return true
	}
	l := i.fleet.labels.Load()
	if l == nil {
		return false
	}
	for k, v := range want {
		if (*l)[k] != v {
			return false
		}
	}
	return true
}

// Weight is the instance's configured share of work (at least 1).
func (i *Instance) Weight() int {
	if w := i.fleet.weight.Load(); w > 0 {
		return int(w)
	}
	return 1
}

// applyConfig sets what the configuration says about the instance.
func (i *Instance) applyConfig(ci config.Instance) {
	i.fleet.weight.Store(int32(ci.Weight))
	var l map[string]string
	if len(ci.Labels) > 0 {
		l = maps.Clone(ci.Labels)
	}
	i.fleet.labels.Store(&l)
}

// Fleet is what an operator changes on the instances while the pool
// runs (Pool.Fleet): drains, and the instance list of a new configuration.
type Fleet struct {
	m      *metrics.Metrics
	log    *slog.Logger
	reg    *registry
	bus    *bus
	avail  *availability
	warm   *warmups
	health *health    // checks an added instance at once
	disc   *discovery // a new discover entry starts it
	run    *runner    // whether the pool runs; background checks

	reconfMu sync.Mutex // one Reconfigure at a time
}

// Drain stops new work to the named instance: it finishes what it has
// (prompts already sent, its queue) and gets nothing new until Undrain.
// Prompts pinned to it keep every route. Draining twice is not an error.
func (f *Fleet) Drain(name string) (*Instance, error) {
	inst := f.reg.byName(name)
	if inst == nil {
		return nil, fmt.Errorf("drain %q: %w", name, ErrUnknownInstance)
	}
	if inst.state.held.CompareAndSwap(false, true) {
		f.m.SetDraining(inst.Name, true)
		f.log.Info("upstream: instance drained by operator; it gets no new work",
			"instance", inst.Name, "inflight", inst.workload.inflight.Load(), "queue_depth", inst.workload.queueDepth.Load())
	}
	return inst, nil
}

// Undrain gives the named instance work again after Drain.
func (f *Fleet) Undrain(name string) (*Instance, error) {
	inst := f.reg.byName(name)
	if inst == nil {
		return nil, fmt.Errorf("undrain %q: %w", name, ErrUnknownInstance)
	}
	if inst.state.held.CompareAndSwap(true, false) {
		f.avail.changed()
		f.m.SetDraining(inst.Name, inst.state.draining.Load())
		f.log.Info("upstream: instance undrained; it takes work again", "instance", inst.Name)
	}
	return inst, nil
}

// ReconfigureResult says what Reconfigure changed, by instance name.
type ReconfigureResult struct {
	Added, Removed, Changed []string
}

// Reconfigure makes the instance set match cfg.Instances while everything
// runs: new entries are added and checked at once; entries no longer
// listed are removed the way discovery removes a vanished address
// (draining: no new work, their prompts finish and keep every route, they
// leave once empty); an entry whose address, discover flag or scheme
// changed is removed and added again under its name (a new Instance, at a
// new Endpoint: pins of the old one do not carry over); labels, weight and
// warm-up change in place. cfg must be valid (config.Load validated it).
// Everything else in cfg is not applied here.
func (f *Fleet) Reconfigure(cfg *config.Config) (ReconfigureResult, error) {
	var res ReconfigureResult
	if cfg == nil {
		return res, errors.New("upstream: nil config")
	}
	f.reconfMu.Lock()
	defer f.reconfMu.Unlock()

	type plan struct {
		e   *entry
		new bool
	}
	var (
		next    []plan
		added   []*Instance
		removed []*Instance
		rewarm  []*Instance
	)
	f.reg.mu.Lock()
	old := map[string]*entry{}
	for _, e := range f.reg.entries {
		if !e.leaving {
			old[e.cfg.Name] = e
		}
	}
	for k, ci := range cfg.Instances {
		if ci.Name == "" {
			ci.Name = ci.HostPort()
		}
		if e, ok := old[ci.Name]; ok && sameEndpoint(e.cfg, ci) {
			delete(old, ci.Name)
			if !sameSettings(e.cfg, ci) {
				res.Changed = append(res.Changed, ci.Name)
			}
			warmupChanged := e.cfg.Warmup != ci.Warmup
			e.cfg = ci
			for _, inst := range e.insts {
				inst.applyConfig(ci)
				if warmupChanged {
					// A new warm-up runs before the instance takes more work.
					f.warm.prepare(inst, ci)
					rewarm = append(rewarm, inst)
				}
			}
			next = append(next, plan{e: e})
			continue
		}
		e := &entry{cfg: ci}
		if ci.Discover {
			host, port, err := net.SplitHostPort(ci.HostPort())
			if err != nil || host == "" {
				f.reg.mu.Unlock()
				return ReconfigureResult{}, fmt.Errorf("upstream: instances[%d] %q: want host:port to resolve", k, ci.Address)
			}
			e.host, e.port = host, port
		}
		next = append(next, plan{e: e, new: true})
	}
	// Nothing failed: apply.
	var entries []*entry
	for _, pl := range next {
		entries = append(entries, pl.e)
		if pl.new {
			if _, had := old[pl.e.cfg.Name]; had {
				res.Changed = append(res.Changed, pl.e.cfg.Name)
			} else {
				res.Added = append(res.Added, pl.e.cfg.Name)
			}
			if !pl.e.cfg.Discover {
				inst := f.reg.add(pl.e.cfg.Name, pl.e.cfg.HostPort(), pl.e.cfg.TLS())
				inst.applyConfig(pl.e.cfg)
				f.warm.prepare(inst, pl.e.cfg)
				pl.e.insts = []*Instance{inst}
				added = append(added, inst)
			}
		}
	}
	for _, e := range f.reg.entries {
		keep := e.leaving
		if o, ok := old[e.cfg.Name]; ok && o == e {
			keep = true
			e.leaving = true
			if !slices.Contains(res.Changed, e.cfg.Name) {
				res.Removed = append(res.Removed, e.cfg.Name)
			}
			for _, inst := range e.insts {
				if inst.state.draining.CompareAndSwap(false, true) {
					removed = append(removed, inst)
				}
			}
		}
		if keep && len(e.insts) > 0 {
			entries = append(entries, e) // leaving: listed until empty
		}
	}
	f.reg.entries = entries
	f.reg.rebuildLocked()
	f.reg.mu.Unlock()

	for _, inst := range removed {
		f.m.SetDraining(inst.Name, true)
		f.log.Info("upstream: instance draining", "instance", inst.Name, "addr", inst.Addr,
			"reason", "removed from the configuration", "inflight", inst.workload.inflight.Load())
		f.bus.publish(EventRemoved, inst)
		f.reg.removeIfDrained(inst)
	}
	f.announce(added)
	for _, inst := range rewarm {
		f.warm.maybeWarm(inst)
		if !inst.state.cold.Load() {
			f.avail.changed() // its warm-up was taken away
		}
	}
	if slices.ContainsFunc(next, func(pl plan) bool { return pl.new && pl.e.cfg.Discover }) {
		f.disc.start()
		f.run.goAsync(f.disc.discoverOnce)
	}
	return res, nil
}

// announce publishes the new instances (EventAdded: their sockets open)
// and checks them at once, so they take work without waiting for the next
// health round.
func (f *Fleet) announce(added []*Instance) {
	if !f.run.running() {
		return
	}
	for _, inst := range added {
		f.log.Info("upstream: instance added", "instance", inst.Name, "addr", inst.Addr)
		f.bus.publish(EventAdded, inst)
		f.run.goAsync(func(ctx context.Context) { f.health.checkOnce(ctx, inst) })
	}
}

// sameEndpoint: the same upstream (address, scheme, discover), so its
// instances, sockets and pinned prompts carry over.
func sameEndpoint(a, b config.Instance) bool {
	return a.Endpoint() == b.Endpoint() && a.TLS() == b.TLS() && a.Discover == b.Discover
}

// sameSettings: nothing an operator sets on the instance changed.
func sameSettings(a, b config.Instance) bool {
	return a.Weight == b.Weight && a.Warmup == b.Warmup && maps.Equal(a.Labels, b.Labels)
}

// ParseLabels reads a label requirement as a header carries it:
// "gpu=a100,pool=flux", or a bare value meaning pool=<value>.
func ParseLabels(s string) (map[string]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			k, v = "pool", part
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if k == "" || v == "" {
			return nil, fmt.Errorf("label %q: want name=value", part)
		}
		out[k] = v
	}
	return out, nil
}
