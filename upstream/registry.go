package upstream

import (
	"log/slog"
	"slices"
	"sync"

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

	// insts are its instances; for Discover sorted by address. Guarded by registry.mu.
	insts []*Instance
	// lastErr is the last resolution error logged ("" after a success), so a
	// failing name is logged once per change, not once per interval.
	// Touched only by the discovery goroutine.
	lastErr string
	// leaving: Reconfigure removed the entry; its instances drain and it
	// goes once they are gone. Guarded by registry.mu.
	leaving bool
}

// registry holds the instances: the configuration's entries, the
// instances each has, and the list in config order that everything else
// reads. It makes instances and drops a leaving one once it is empty.
type registry struct {
	cfg *config.Config // what a new instance is built with
	clk clock.Clock
	m   *metrics.Metrics
	log *slog.Logger
	bus *bus // EventDrained
	// breakerChanged receives every instance's breaker state changes (the
	// health part's); set before the first instance is made.
	breakerChanged func(inst *Instance, from, to breaker.State)

	mu        sync.RWMutex // guards instances, entries (and each entry's insts and leaving)
	instances []*Instance
	entries   []*entry // config instances and their discovered addresses
}

// add creates an instance and sets its initial metrics.
func (r *registry) add(name, addr string, tls bool) *Instance {
	inst := newInstance(r, name, addr, tls)
	r.m.SetInstanceHost(name, addr)
	r.m.SetInstanceUp(name, false)
	r.m.SetBreakerState(name, metrics.BreakerClosed)
	r.m.SetInflight(name, 0)
	r.m.SetQueueDepth(name, 0)
	r.m.SetUpstreamSocket(name, false)
	r.m.SetDraining(name, false)
	return inst
}

// rebuildLocked recomputes r.instances from the entries, in config order.
// r.mu must be held for writing.
func (r *registry) rebuildLocked() {
	list := make([]*Instance, 0, len(r.instances)+1)
	for _, e := range r.entries {
		list = append(list, e.insts...)
	}
	r.instances = list
}

// list returns the current instances (a copy of the slice).
func (r *registry) list() []*Instance {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return append([]*Instance(nil), r.instances...)
}

// size is the number of instances, len(list()) without the copy.
func (r *registry) size() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.instances)
}

// byName returns the current instance with that name, or nil. An
// instance whose address a reload changed shares its name with the one
// leaving: the new one is returned.
func (r *registry) byName(name string) *Instance {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var leaving *Instance
	for _, inst := range r.instances {
		if inst.Name == name {
			if !inst.state.draining.Load() {
				return inst
			}
			leaving = inst
		}
	}
	return leaving
}

// removeIfDrained drops a draining instance with no prompts left from the pool.
func (r *registry) removeIfDrained(inst *Instance) {
	if !inst.state.draining.Load() || inst.workload.inflight.Load() > 0 {
		return
	}
	removed, shared := false, false
	r.mu.Lock()
	for _, e := range r.entries {
		for k, x := range e.insts {
			if x == inst && inst.state.draining.Load() && inst.workload.inflight.Load() <= 0 {
				e.insts = append(e.insts[:k:k], e.insts[k+1:]...)
				removed = true
				break
			}
		}
	}
	if removed {
		// A removed entry goes with its last instance.
		r.entries = slices.DeleteFunc(r.entries, func(e *entry) bool { return e.leaving && len(e.insts) == 0 })
		r.rebuildLocked()
		for _, x := range r.instances {
			shared = shared || x.Name == inst.Name
		}
	}
	r.mu.Unlock()
	if removed {
		if !shared { // its name's series now belong to its successor
			r.m.RemoveInstance(inst.Name)
		}
		r.log.Info("upstream: instance removed", "instance", inst.Name, "addr", inst.Addr)
		inst.transport.client.CloseIdleConnections()
		r.bus.publish(EventDrained, inst)
	}
}
