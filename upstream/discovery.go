package upstream

import (
	"context"
	"net"
	"slices"
	"sync"
)

// Resolver looks a host name up; *net.Resolver is one. Tests inject fakes.
type Resolver interface {
	LookupHost(ctx context.Context, host string) (addrs []string, err error)
}

// SetResolver replaces the resolver used for instances with discover: true
// (default net.DefaultResolver). Call it before Start.
func (p *Pool) SetResolver(r Resolver) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r == nil {
		r = net.DefaultResolver
	}
	p.resolver = r
}

// discoverOnce re-resolves every discover entry, announces new instances
// (EventAdded; and checks them at once so they take work without
// waiting for the next health round), and drains vanished ones.
func (p *Pool) discoverOnce(ctx context.Context) {
	added, removed := p.resolveAll(ctx)
	var wg sync.WaitGroup
	for _, inst := range added {
		p.log.Info("upstream: instance discovered", "instance", inst.Name, "addr", inst.Addr)
		p.publish(EventAdded, inst)
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.safely("health check", func() { p.checkOnce(ctx, inst) })
		}()
	}
	for _, inst := range removed {
		p.m.SetDraining(inst.Name, true)
		p.log.Info("upstream: instance draining", "instance", inst.Name, "addr", inst.Addr,
			"reason", "address no longer resolves", "inflight", inst.inflight.Load())
		p.publish(EventRemoved, inst)
		p.removeIfDrained(inst)
	}
	wg.Wait()
	// A drained instance whose last prompt finished before it was marked
	// draining would otherwise stay listed.
	for _, inst := range p.Instances() {
		if inst.draining.Load() {
			p.removeIfDrained(inst)
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
func (p *Pool) resolveAll(ctx context.Context) (added, removed []*Instance) {
	p.mu.RLock()
	resolver := p.resolver
	p.mu.RUnlock()
	timeout := p.cfg.HealthCheck.Timeout
	p.mu.RLock()
	entries := slices.Clone(p.entries)
	p.mu.RUnlock()
	for _, e := range entries {
		p.mu.RLock()
		skip, name := !e.cfg.Discover || e.leaving, e.cfg.Name
		p.mu.RUnlock()
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
				p.log.Warn("upstream: discovery lookup failed; keeping current instances",
					"instance", name, "host", e.host, "error", err)
			}
			continue
		}
		if e.lastErr != "" {
			e.lastErr = ""
			p.log.Info("upstream: discovery lookup works again", "instance", name, "host", e.host)
		}
		a, r := p.applyAddrs(e, addrs)
		added = append(added, a...)
		removed = append(removed, r...)
	}
	return added, removed
}

// applyAddrs makes e's instances match addrs.
func (p *Pool) applyAddrs(e *entry, addrs []string) (added, removed []*Instance) {
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
	p.mu.Lock()
	defer p.mu.Unlock()
	have := map[string]*Instance{}
	for _, inst := range e.insts {
		have[inst.Addr] = inst
	}
	for _, ip := range want {
		addr := net.JoinHostPort(ip, e.port)
		if _, ok := have[addr]; !ok {
			inst := p.addInstance(e.cfg.Name+"/"+ip, addr, e.cfg.TLS())
			inst.applyConfig(e.cfg)
			p.prepareWarmup(inst, e.cfg)
			e.insts = append(e.insts, inst)
			added = append(added, inst)
		}
	}
	for _, inst := range e.insts {
		ip, _, _ := net.SplitHostPort(inst.Addr)
		if !slices.Contains(want, ip) && inst.draining.CompareAndSwap(false, true) {
			removed = append(removed, inst)
		}
	}
	slices.SortFunc(e.insts, func(a, b *Instance) int { return compareAddr(a.Addr, b.Addr) })
	if len(added) > 0 || len(removed) > 0 {
		p.rebuildLocked()
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
