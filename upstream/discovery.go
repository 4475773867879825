package upstream

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"sync"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
)

// Resolver looks a host name up; *net.Resolver is one. Tests inject fakes.
type Resolver interface {
	LookupHost(ctx context.Context, host string) (addrs []string, err error)
}

// discovery keeps the instances of the entries with discover: true in
// step with what their names resolve to: each address is an instance.
type discovery struct {
	cfg    *config.Config // discovery.interval; health_check.timeout bounds a lookup
	m      *metrics.Metrics
	log    *slog.Logger
	reg    *registry
	bus    *bus
	warm   *warmups
	health *health // checks a new instance at once
	run    *runner

	once sync.Once // starts the loop

	resolverMu sync.Mutex // guards resolver
	resolver   Resolver
}

// setResolver replaces the resolver (default net.DefaultResolver). Call
// it before Start.
func (d *discovery) setResolver(r Resolver) {
	d.resolverMu.Lock()
	defer d.resolverMu.Unlock()
	if r == nil {
		r = net.DefaultResolver
	}
	d.resolver = r
}

// configured reports whether any entry is to be discovered.
func (d *discovery) configured() bool {
	d.reg.mu.RLock()
	defer d.reg.mu.RUnlock()
	return slices.ContainsFunc(d.reg.entries, func(e *entry) bool { return e.cfg.Discover })
}

// start starts the discovery loop once, when the pool runs.
func (d *discovery) start() {
	d.once.Do(func() {
		if ctx := d.run.runCtx(); ctx != nil {
			d.run.goLoop(ctx, "discovery", d.cfg.Discovery.Interval, d.discoverOnce)
		}
	})
}

// discoverOnce re-resolves every discover entry, announces new instances
// (EventAdded; and checks them at once so they take work without
// waiting for the next health round), and drains vanished ones.
func (d *discovery) discoverOnce(ctx context.Context) {
	added, removed := d.resolveAll(ctx)
	var wg sync.WaitGroup
	for _, inst := range added {
		d.log.Info("upstream: instance discovered", "instance", inst.Name, "addr", inst.Addr)
		d.bus.publish(EventAdded, inst)
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.run.safely("health check", func() { d.health.checkOnce(ctx, inst) })
		}()
	}
	for _, inst := range removed {
		d.m.SetDraining(inst.Name, true)
		d.log.Info("upstream: instance draining", "instance", inst.Name, "addr", inst.Addr,
			"reason", "address no longer resolves", "inflight", inst.workload.inflight.Load())
		d.bus.publish(EventRemoved, inst)
		d.reg.removeIfDrained(inst)
	}
	wg.Wait()
	// A drained instance whose last prompt finished before it was marked
	// draining would otherwise stay listed.
	for _, inst := range d.reg.list() {
		if inst.state.draining.Load() {
			d.reg.removeIfDrained(inst)
		}
	}
}

// resolveAll resolves every discover entry and updates the instance list:
// each address is an instance named "<entry name>/<ip>". New addresses are
// returned as added; addresses that vanished are marked draining and
// returned as removed (they leave the list once their prompts finish). An
// address that comes back while its old instance is still draining gets a
// fresh instance only after the old one left (next round): the old one's
// socket is closing and its metrics series go with it. A failed lookup keeps the current set:
// a DNS hiccup must not drain a healthy fleet; health checks judge them.
func (d *discovery) resolveAll(ctx context.Context) (added, removed []*Instance) {
	d.resolverMu.Lock()
	resolver := d.resolver
	d.resolverMu.Unlock()
	timeout := d.cfg.HealthCheck.Timeout
	d.reg.mu.RLock()
	entries := slices.Clone(d.reg.entries)
	d.reg.mu.RUnlock()
	for _, e := range entries {
		d.reg.mu.RLock()
		skip, name := !e.cfg.Discover || e.leaving, e.cfg.Name
		d.reg.mu.RUnlock()
		if skip {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, timeout)
		addrs, err := resolver.LookupHost(lctx, e.host)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return added, removed
			}
			if msg := err.Error(); msg != e.lastErr {
				e.lastErr = msg
				d.log.Warn("upstream: discovery lookup failed; keeping current instances",
					"instance", name, "host", e.host, "error", err)
			}
			continue
		}
		if e.lastErr != "" {
			e.lastErr = ""
			d.log.Info("upstream: discovery lookup works again", "instance", name, "host", e.host)
		}
		a, r := d.applyAddrs(e, addrs)
		added = append(added, a...)
		removed = append(removed, r...)
	}
	return added, removed
}

// applyAddrs makes e's instances match addrs.
func (d *discovery) applyAddrs(e *entry, addrs []string) (added, removed []*Instance) {
	want := make([]string, 0, len(addrs))
	for _, a := range addrs {
		if ip := net.ParseIP(a); ip != nil {
			a = ip.String()
		}
		if a != "" && !slices.Contains(want, a) {
			want = append(want, a)
		}
	}
	slices.Sort(want)
	d.reg.mu.Lock()
	defer d.reg.mu.Unlock()
	have := map[string]*Instance{}
	for _, inst := range e.insts {
		have[inst.Addr] = inst
	}
	for _, ip := range want {
		addr := net.JoinHostPort(ip, e.port)
		if _, ok := have[addr]; !ok {
			inst := d.reg.add(e.cfg.Name+"/"+ip, addr, e.cfg.TLS())
			inst.applyConfig(e.cfg)
			d.warm.prepare(inst, e.cfg)
			e.insts = append(e.insts, inst)
			added = append(added, inst)
		}
	}
	for _, inst := range e.insts {
		ip, _, _ := net.SplitHostPort(inst.Addr)
		if !slices.Contains(want, ip) && inst.state.draining.CompareAndSwap(false, true) {
			removed = append(removed, inst)
		}
	}
	slices.SortFunc(e.insts, func(a, b *Instance) int { return compareAddr(a.Addr, b.Addr) })
	if len(added) > 0 || len(removed) > 0 {
		d.reg.rebuildLocked()
	}
	return added, removed
}

// compareAddr orders host:port strings by IP (numerically), then text.
func compareAddr(a, b string) int {
	ha, _, _ := net.SplitHostPort(a)
	hb, _, _ := net.SplitHostPort(b)
	ia, ib := net.ParseIP(ha), net.ParseIP(hb)
	if ia != nil && ib != nil {
		if ia4, ib4 := ia.To4(), ib.To4(); ia4 != nil && ib4 != nil {
			ia, ib = ia4, ib4
		}
		if c := slices.Compare(ia, ib); c != 0 {
			return c
		}
	}
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
