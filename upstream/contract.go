package upstream

// Instance and Pool, the types other packages use.

import (
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/internal/clock"
	"github.com/valyala/fasthttp"
)

// Instance is one ComfyUI upstream. Hot-path state is in atomics.
type Instance struct {
	// Name labels it in logs and metrics (config name, or the address).
	Name string
	// Addr is host:port.
	Addr string
	// TLS reports an https upstream.
	TLS bool
	// id is ID(), computed once (identity.go).
	id string

	// client is the instance's one HTTP client (Do): MaxConns =
	// max_connections_per_instance, answers streamed, idle deadlines.
	client *fasthttp.HostClient
	// slots holds a token per connection traffic uses; its capacity
	// leaves connections free for probes (connShares).
	slots   chan struct{}
	breaker *breaker.Breaker

	healthy    atomic.Bool
	suspect    atomic.Bool // socket lost, not yet confirmed by health check
	draining   atomic.Bool // removed by discovery; no new work
	failures   atomic.Int32
	lastCheck  atomic.Int64 // unix nanos
	inflight   atomic.Int64 // prompts sent and not finished
	queueDepth atomic.Int64 // queue_remaining the instance last reported
	socketUp   atomic.Bool
	lostAt     atomic.Int64 // unix nanos its socket was lost; 0 while up
	version    atomic.Pointer[string]
	socketID   string // the client_id comfygate uses for this instance's prompts and socket

	reg        *registry    // the registry it belongs to: metrics, clock, drain removal
	successes  atomic.Int32 // consecutive passed health checks
	confirming atomic.Bool  // a SocketLost check is running

	fleet fleetState // operator drain, labels, weight, warm-up (fleet.go)
}

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
	return i.healthy.Load() && !i.draining.Load() && !i.fleet.held.Load() && !i.fleet.cold.Load() &&
		(i.breaker == nil || i.breaker.Ready())
}

// Healthy reports the health-check verdict.
func (i *Instance) Healthy() bool { return i.healthy.Load() }

// Suspect reports that its event socket dropped and no health check has
// confirmed it dead or alive yet.
func (i *Instance) Suspect() bool { return i.suspect.Load() }

// SocketUp reports whether comfygate's event socket to it is connected.
func (i *Instance) SocketUp() bool { return i.socketUp.Load() }

// SetSocketUp records the event socket's state (and its metric), and when
// it was lost (LostAt).
func (i *Instance) SetSocketUp(up bool) {
	if up {
		i.socketUp.Store(true)
		i.lostAt.Store(0)
	} else {
		i.lostAt.Store(i.clock().Now().UnixNano())
		i.socketUp.Store(false)
	}
	if i.reg != nil {
		i.reg.m.SetUpstreamSocket(i.Name, up)
	}
}

// LostAt is when its event socket was lost; zero while it is up or
// before it was ever lost.
func (i *Instance) LostAt() time.Time {
	if n := i.lostAt.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// clock is its pool's clock, or the wall clock for an instance without one.
func (i *Instance) clock() clock.Clock {
	if i.reg == nil || i.reg.clk == nil {
		return clock.Real
	}
	return i.reg.clk
}

// SocketClientID is the client_id comfygate's socket on this instance uses.
func (i *Instance) SocketClientID() string { return i.socketID }

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

// ForceHealthy sets the health verdict without a check, as a test that
// needs an instance in a given state does; the next health check of a
// running pool judges it again.
func (i *Instance) ForceHealthy(up bool) { i.healthy.Store(up) }
