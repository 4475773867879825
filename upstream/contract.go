package upstream

// Instance and Pool, the types other packages use.

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/clock"
	"github.com/comfygate/comfygate/metrics"
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

	pool       *Pool        // back-pointer for metrics and drain removal
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
	if i.pool != nil {
		i.pool.m.SetUpstreamSocket(i.Name, up)
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

// Clock is the clock the pool times its checks with; failover's grace
// uses it too.
func (p *Pool) Clock() clock.Clock { return p.clk }

// clock is its pool's clock, or the wall clock for an instance without one.
func (i *Instance) clock() clock.Clock {
	if i.pool == nil || i.pool.clk == nil {
		return clock.Real
	}
	return i.pool.clk
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

// Pool is the set of instances.
type Pool struct {
	cfg *config.Config
	m   *metrics.Metrics
	log *slog.Logger
	// clk times the health checks' loop, failover's grace and the
	// breakers' open periods.
	clk clock.Clock

	mu        sync.RWMutex // guards instances
	instances []*Instance
	rr        atomic.Uint64
	pickMu    sync.Mutex // serializes Reserve: each pick sees the ones before it counted

	// gate is what a comeback must pass (SetComebackGate); guarded by runMu.
	gate ComebackGate

	// subs receive the instance events (Subscribe, events.go).
	subsMu     sync.Mutex // guards subs, subsClosed
	subs       []*Subscription
	subsClosed bool

	entries  []*entry // config instances and their discovered addresses; insts guarded by mu
	resolver Resolver // guarded by mu; for discover entries

	availMu sync.Mutex    // guards availCh
	availCh chan struct{} // closed (and dropped) when availability changes; nil when nobody waits

	reconfState // Reconfigure (fleet.go)
	warmups     warmups

	runMu   sync.Mutex // guards started, closed, ctx, cancel, and wg.Add
	started bool
	closed  bool
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup // background goroutines Close waits for
}

// Instances returns the current instances (a copy of the slice).
func (p *Pool) Instances() []*Instance {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return append([]*Instance(nil), p.instances...)
}

// ForceHealthy sets the health verdict without a check, as a test that
// needs an instance in a given state does; the next health check of a
// running pool judges it again.
func (i *Instance) ForceHealthy(up bool) { i.healthy.Store(up) }
