package upstream

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/valyala/fasthttp"
)

// newInstance builds an instance of r; its breaker's state changes go to
// r.breakerChanged.
func newInstance(r *registry, name, addr string, tls bool) *Instance {
	inst := &Instance{
		Name:     name,
		Addr:     addr,
		TLS:      tls,
		reg:      r,
		socketID: newSocketID(),
	}
	inst.id = endpointID(inst.Endpoint())
	traffic, probes := connShares(r.cfg.MaxConnectionsPerInstance)
	inst.client = newHostClient(addr, tls, traffic+probes, inst.timeout())
	inst.slots = make(chan struct{}, traffic)
	inst.breaker = breaker.New(name, breaker.Settings{
		ConsecutiveFailures: uint32(max(r.cfg.Breaker.ConsecutiveFailures, 0)),
		OpenTimeout:         r.cfg.Breaker.OpenTimeout,
		Interval:            r.cfg.Breaker.Interval,
		Clock:               r.clk,
	}, func(_ string, from, to breaker.State) { r.breakerChanged(inst, from, to) })
	return inst
}

// Status returns a snapshot.
func (i *Instance) Status() InstanceStatus {
	st := InstanceStatus{
		Name:       i.Name,
		Addr:       i.Addr,
		Healthy:    i.healthy.Load(),
		Breaker:    "closed",
		SocketUp:   i.socketUp.Load(),
		Inflight:   i.inflight.Load(),
		QueueDepth: i.queueDepth.Load(),
		Version:    i.Version(),
		Draining:   i.draining.Load() || i.fleet.held.Load(),
		Removing:   i.draining.Load(),
		Labels:     i.Labels(),
		Weight:     i.Weight(),
		Warmup:     i.WarmupState(),
	}
	st.Drained = st.Draining && st.Inflight <= 0 && st.QueueDepth <= 0
	if i.breaker != nil {
		st.Breaker = i.breaker.State().String()
	}
	if ns := i.lastCheck.Load(); ns != 0 {
		st.LastCheck = time.Unix(0, ns)
	}
	return st
}

// SupportsClientPromptID reports v0.3.45+ (accepts a client-supplied prompt_id).
// An unknown or unparsable version is assumed recent.
func (i *Instance) SupportsClientPromptID() bool {
	return comfyapi.SupportsClientPromptID(i.Version())
}

// parseVersion is comfyapi.ParseVersion as [major, minor, patch].
func parseVersion(s string) (v [3]int, ok bool) {
	cv, ok := comfyapi.ParseVersion(s)
	return [3]int{cv.Major, cv.Minor, cv.Patch}, ok
}

// URL returns the instance's absolute URL for path (which may carry a query).
func (i *Instance) URL(path string) string {
	scheme := "http://"
	if i.TLS {
		scheme = "https://"
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return scheme + i.Addr + path
}

// ConfirmedDown reports what the pool fails prompts over on (signalDown,
// SocketLost): the instance's socket is down and its health check
// failed or its breaker is open. A hung instance whose socket still
// answers is not down.
func (i *Instance) ConfirmedDown() bool {
	return !i.socketUp.Load() && (!i.healthy.Load() || (i.breaker != nil && !i.breaker.Ready()))
}

// CountInflight changes the count of prompts sent and not finished, and
// nothing else: the prompt owner counts under its own lock, in transition
// order, and calls InflightChanged once it released it.
func (i *Instance) CountInflight(delta int64) { i.inflight.Add(delta) }

// InflightChanged publishes the in-flight count (its metric) after
// CountInflight, and removes a draining instance that reached 0.
func (i *Instance) InflightChanged() { i.addInflight(0) }

// addInflight changes the count of prompts sent and not finished and
// updates its metric. A draining instance leaves the pool when it reaches 0.
func (i *Instance) addInflight(delta int64) {
	n := i.inflight.Add(delta)
	if n < 0 {
		// A double finish must not make selection favour this instance forever.
		i.inflight.CompareAndSwap(n, 0)
		n = 0
	}
	if i.reg == nil {
		return
	}
	i.reg.m.SetInflight(i.Name, int(n))
	if n == 0 && i.draining.Load() {
		i.reg.removeIfDrained(i)
	}
}

// QueueDepth is the queue_remaining the instance last reported.
func (i *Instance) QueueDepth() int64 { return i.queueDepth.Load() }

// SetQueueDepth records the queue_remaining the instance reported.
func (i *Instance) SetQueueDepth(n int64) {
	i.queueDepth.Store(n)
	if i.reg != nil {
		i.reg.m.SetQueueDepth(i.Name, int(n))
	}
}

// maxCallAnswer caps an answer Call reads whole.
const maxCallAnswer = 256 << 20

// Call does one non-streaming request through Do, bounded by the
// configured timeout and ctx. path includes the query. Headers are set as
// given. POST /prompt and uploads carry what a client wrote (ByClient: an
// error answer is the client's request failing); every other Call is
// comfygate's own request (ByGate). Fetch says it explicitly.
func (i *Instance) Call(ctx context.Context, method, path string, header map[string]string, body []byte) (status int, respBody []byte, err error) {
	return i.Fetch(ctx, Request{Method: method, Path: path, Header: header, Body: body, Source: callSource(method, path)})
}

// Request is one non-streaming request for Fetch.
type Request struct {
	Method string
	// Path includes the query.
	Path   string
	Header map[string]string
	Body   []byte
	// Source is who wrote it (DoOpts.Source).
	Source Source
	// Timeout, if shorter than the configured one, bounds the instance's
	// silence for this request; its passing is then not held against the
	// instance (DoOpts.Timeout).
	Timeout time.Duration
}

// Fetch does r through Do and reads the answer whole. comfygate's own
// requests (ByGate) run even while the breaker refuses traffic
// (DoOpts.Always); a client's request gets ErrOpen then.
func (i *Instance) Fetch(ctx context.Context, r Request) (status int, body []byte, err error) {
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(r.Method)
	req.SetRequestURI(r.Path)
	for k, v := range r.Header {
		req.Header.Set(k, v)
	}
	if r.Body != nil {
		req.SetBody(r.Body)
	}
	a, err := i.Do(ctx, req, DoOpts{Source: r.Source, Timeout: r.Timeout, Always: r.Source == ByGate})
	if err != nil {
		return 0, nil, err
	}
	status = a.StatusCode()
	body, err = a.ReadAll(maxCallAnswer)
	if err != nil {
		return 0, nil, fmt.Errorf("call %s %s: read answer: %w", i.Name, r.Method, err)
	}
	return status, body, nil
}

// callSource is who wrote a Call: the client for POST /prompt (its graph)
// and uploads (its file), comfygate otherwise.
func callSource(method, path string) Source {
	if method != fasthttp.MethodPost {
		return ByGate
	}
	p, _, _ := strings.Cut(path, "?")
	p = strings.TrimPrefix(p, "/api")
	if p == "/prompt" || strings.HasPrefix(p, "/upload/") {
		return ByClient
	}
	return ByGate
}
