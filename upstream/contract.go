package upstream

// This file is the contract the proxy and jobs packages code against. The
// bodies marked TODO are filled in by the upstream engineers; the
// signatures do not change without telling the lead.

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/config"
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

	client  *fasthttp.HostClient // MaxConns = max_connections_per_instance, StreamResponseBody
	breaker *breaker.Breaker

	healthy    atomic.Bool
	suspect    atomic.Bool // socket lost, not yet confirmed by health check
	draining   atomic.Bool // removed by discovery; no new work
	failures   atomic.Int32
	lastCheck  atomic.Int64 // unix nanos
	inflight   atomic.Int64 // prompts sent and not finished
	queueDepth atomic.Int64 // queue_remaining the instance last reported
	socketUp   atomic.Bool
	version    atomic.Pointer[string]
	socketID   string // the client_id comfygate uses for this instance's prompts and socket
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
	Draining   bool
}

// Available reports whether selection may choose it: healthy, not
// draining, breaker not open.
func (i *Instance) Available() bool {
	return i.healthy.Load() && !i.draining.Load() && (i.breaker == nil || i.breaker.Ready())
}

// Healthy reports the health-check verdict.
func (i *Instance) Healthy() bool { return i.healthy.Load() }

// SocketClientID is the client_id comfygate's socket on this instance uses.
func (i *Instance) SocketClientID() string { return i.socketID }

// Version is the comfyui_version from /system_stats ("" until known).
func (i *Instance) Version() string {
	if v := i.version.Load(); v != nil {
		return *v
	}
	return ""
}

// HostClient is the client for streaming forwards. Callers that use it
// directly must bracket the call with Allow and report the outcome.
func (i *Instance) HostClient() *fasthttp.HostClient { return i.client }

// Allow asks the instance's breaker to let one request through; done(failed)
// reports its outcome (failed = connection error, timeout or 5xx).
func (i *Instance) Allow() (done func(failed bool), err error) {
	if i.breaker == nil {
		return func(bool) {}, nil
	}
	return i.breaker.Allow()
}

// Status returns a snapshot.
func (i *Instance) Status() InstanceStatus {
	panic("TODO upstream-core")
}

// SupportsClientPromptID reports v0.3.45+ (accepts a client-supplied prompt_id).
func (i *Instance) SupportsClientPromptID() bool { panic("TODO upstream-core") }

// Call does one non-streaming request (bounded by config timeout and ctx),
// through the breaker. path includes the query. Headers are set as given.
func (i *Instance) Call(ctx context.Context, method, path string, header map[string]string, body []byte) (status int, respBody []byte, err error) {
	panic("TODO upstream-core")
}

// Pool is the set of instances.
type Pool struct {
	cfg *config.Config
	m   *metrics.Metrics
	log *slog.Logger

	mu        sync.RWMutex // guards instances, listener
	instances []*Instance
	listener  Listener
	rr        atomic.Uint64
	// prompt table, pins, monitors: added by the upstream engineers.
}

// New builds the pool from the configuration; nothing runs until Start.
func New(cfg *config.Config, m *metrics.Metrics, log *slog.Logger) (*Pool, error) {
	panic("TODO upstream-core")
}

// Start runs health checks, the instance sockets and discovery until ctx
// ends or Close. It does one health check of every instance before returning.
func (p *Pool) Start(ctx context.Context) error { panic("TODO upstream-core") }

// Close stops everything Start started and waits for it.
func (p *Pool) Close() { panic("TODO upstream-core") }

// SetListener sets who receives broadcasts and fleet queue changes.
func (p *Pool) SetListener(l Listener) {
	p.mu.Lock()
	p.listener = l
	p.mu.Unlock()
}

// Instances returns the current instances (a copy of the slice).
func (p *Pool) Instances() []*Instance {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return append([]*Instance(nil), p.instances...)
}

// Healthy returns the instances that are Available, in config order.
func (p *Pool) Healthy() []*Instance { panic("TODO upstream-core") }

// Select picks the instance for new work: Available, least outstanding
// work (in-flight + reported queue), round-robin among ties, skipping
// exclude. ErrNoUpstream when none.
func (p *Pool) Select(exclude ...*Instance) (*Instance, error) { panic("TODO upstream-core") }

// QueueRemaining is the fleet-wide queue_remaining a client should see.
func (p *Pool) QueueRemaining() int { panic("TODO upstream-core") }

// PinFile records that inst holds ref (learned from outputs and uploads).
func (p *Pool) PinFile(ref FileRef, inst *Instance) { panic("TODO upstream-core") }

// FileOwner returns the instance that holds ref; on a miss it asks the
// instances (HEAD/GET /view) and pins the answer. ok=false when none has it.
func (p *Pool) FileOwner(ctx context.Context, ref FileRef) (inst *Instance, ok bool) {
	panic("TODO upstream-core")
}

// EnsureInputs makes every input file the prompt loads that was uploaded
// through comfygate (pinned with type input on another instance) present
// on inst, copying it over when needed.
func (p *Pool) EnsureInputs(ctx context.Context, inst *Instance, prompt json.RawMessage) error {
	panic("TODO upstream-core")
}

// Submit forwards one prompt: selects an instance, ensures its inputs,
// pins the prompt before dispatch, injects comfygate's client_id for that
// instance, and retries on another instance if the connection is refused.
// A 400 from the instance is returned as-is (nothing pinned).
func (p *Pool) Submit(ctx context.Context, req SubmitRequest) (SubmitResult, error) {
	panic("TODO upstream-prompts")
}

// Prompt looks a prompt up by its client-facing id.
func (p *Pool) Prompt(id string) (*Prompt, bool) { panic("TODO upstream-prompts") }

// PromptByUpstreamID looks a prompt up by the id it has at inst.
func (p *Pool) PromptByUpstreamID(inst *Instance, upstreamID string) (*Prompt, bool) {
	panic("TODO upstream-prompts")
}

// LocatePrompt returns the instance that has the prompt: the pin, or on a
// miss the instance whose /history or /queue knows it. ErrUnknownPrompt if none.
func (p *Pool) LocatePrompt(ctx context.Context, id string) (*Instance, error) {
	panic("TODO upstream-prompts")
}

// Cancel cancels one prompt wherever it is: deleted from its instance's
// queue when pending there, interrupted when running. It reports whether
// anything was cancelled.
func (p *Pool) Cancel(ctx context.Context, id string) (bool, error) { panic("TODO upstream-prompts") }

// Outstanding returns the prompts not yet done (for shutdown and stats).
func (p *Pool) Outstanding() int { panic("TODO upstream-prompts") }
