package upstream

// Instance and Pool, the types other packages use.

import (
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/clock"
)

// Instance is one ComfyUI upstream: which machine it is and how it is
// configured. What it is going through (State), how much it has to do
// (Workload) and how it is called (Transport) are parts of it, each with
// its own job. Hot-path state is in atomics.
type Instance struct {
	// Name labels it in logs and metrics (config name, or the address).
	Name string
	// Addr is host:port.
	Addr string
	// TLS reports an https upstream.
	TLS bool
	// id is ID(), computed once (identity.go).
	id       string
	version  atomic.Pointer[string]
	socketID atomic.Pointer[string] // the client_id comfygate uses for this instance's prompts and socket

	reg   *registry  // the registry it belongs to: metrics, clock, drain removal
	fleet fleetState // labels and weight (fleet.go)

	state     State     // health and lifecycle flags (state.go)
	workload  Workload  // in flight and reported queue (workload.go)
	transport Transport // client, connection slots, breaker (transport.go)
}

// State is what the instance is going through: health, event socket,
// leaving, held, warm-up.
func (i *Instance) State() *State { return &i.state }

// Workload is what the instance has to do: prompts in flight and its
// reported queue.
func (i *Instance) Workload() *Workload { return &i.workload }

// Transport is how the instance is called: every request to it goes
// through its Do.
func (i *Instance) Transport() *Transport { return &i.transport }

// InstanceStatus is a snapshot for /health and /stats.
type InstanceStatus struct {
	Name, Addr string
	Healthy    bool
	Breaker    string // closed, half-open, open
	SocketUp   bool
	Inflight   int64
	QueueDepth int64
	Version    string
	LastCheck  time.Time
	// Draining: it gets no new work, because an operator drained it or
	// because it is leaving the pool (Removing).
	Draining bool
	// Removing: discovery or a reload removed it; it leaves the pool once
	// its prompts are done.
	Removing bool
	// Drained: draining and nothing of it left to finish (no prompt
	// comfygate sent, empty queue): it can be stopped.
	Drained bool
	Labels  map[string]string
	Weight  int
	// Warmup is "" (none configured), "running", "ok" or "failed: <why>".
	Warmup string
}

// Available reports whether selection may choose it: healthy, not
// draining (removed, or drained by an operator), warm, breaker not open.
func (i *Instance) Available() bool {
	return i.state.healthy.Load() && !i.state.draining.Load() && !i.state.held.Load() && !i.state.cold.Load() &&
		(i.transport.breaker == nil || i.transport.breaker.Ready())
}

// clock is its pool's clock, or the wall clock for an instance without one.
func (i *Instance) clock() clock.Clock {
	if i == nil || i.reg == nil || i.reg.clk == nil {
		return clock.Real
	}
	return i.reg.clk
}

// SocketClientID is the client_id comfygate's socket on this instance
// uses, and that the prompts it sends there carry.
func (i *Instance) SocketClientID() string {
	if id := i.socketID.Load(); id != nil {
		return *id
	}
	return ""
}

// RenewSocketClientID draws a new SocketClientID and returns it. A replica
// that lost its liveness lease renews it, so that the prompts it sends
// from then on do not carry the id another replica may listen under for
// the prompts it adopted (the socket reconnects under the new id).
func (i *Instance) RenewSocketClientID() string {
	id := newSocketID()
	i.socketID.Store(&id)
	return id
}

// Version is the comfyui_version from /system_stats ("" until known).
func (i *Instance) Version() string {
	if v := i.version.Load(); v != nil {
		return *v
	}
	return ""
}

// Pool is the set of instances. It wires its parts, each with one job
// and only what that job uses, and offers what other packages call on it;
// most of its methods hand the call to the part that does it.
type Pool struct {
	// clk is Clock: the health checks' loop, failover's grace and the
	// breakers run on it.
	clk clock.Clock

	run    *runner       // the background goroutines Start starts and Close stops (run.go)
	bus    *bus          // instance events and the comeback gate (events.go)
	avail  *availability // wakes AwaitAvailable (select.go)
	reg    *registry     // the instances, by config entry (registry.go)
	warm   *warmups      // the warm-up gate (warmup.go)
	health *health       // health checks and breaker state changes (health.go)
	sel    *Selector     // which instance takes new work (select.go)
	disc   *discovery    // instances found by DNS (discovery.go)
	fleet  *Fleet        // what an operator changes while it runs (fleet.go)
}
