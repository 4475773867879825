package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/valyala/fasthttp"
)

// minClientPromptID is the first ComfyUI release that accepts a
// client-supplied prompt_id (PR #8189, v0.3.45).
var minClientPromptID = [3]int{0, 3, 45}

// connWaitTimeout is how long a request waits for a free connection once
// MaxConnectionsPerInstance are busy, before it fails with ErrNoFreeConns.
// Per-call deadlines cut it shorter.
const connWaitTimeout = 30 * time.Second

// newHostClient returns the client for one instance. ReadTimeout is not set:
// streamed /view downloads and uploads may take long, so every caller sets
// its own deadline (Call does).
func newHostClient(addr string, tls bool, maxConns int) *fasthttp.HostClient {
	return &fasthttp.HostClient{
		Addr:                      addr,
		Name:                      "comfygate",
		IsTLS:                     tls,
		MaxConns:                  maxConns,
		MaxConnWaitTimeout:        connWaitTimeout,
		StreamResponseBody:        true,
		MaxIdemponentCallAttempts: 1, // comfygate decides itself what to retry
		DisablePathNormalizing:    true,
		NoDefaultUserAgentHeader:  true,
		MaxIdleConnDuration:       30 * time.Second,
	}
}

// newInstance builds an instance; the pool wires its breaker callback.
func newInstance(p *Pool, name, addr string, tls bool) *Instance {
	inst := &Instance{
		Name:     name,
		Addr:     addr,
		TLS:      tls,
		pool:     p,
		socketID: newSocketID(),
	}
	inst.client = newHostClient(addr, tls, p.cfg.MaxConnectionsPerInstance)
	// A separate small client for health checks and file probes, so a
	// saturated traffic pool does not make a busy instance look dead.
	inst.probe = newHostClient(addr, tls, probeConns)
	inst.breaker = breaker.New(name, breaker.Settings{
		ConsecutiveFailures: uint32(max(p.cfg.Breaker.ConsecutiveFailures, 0)),
		OpenTimeout:         p.cfg.Breaker.OpenTimeout,
		Interval:            p.cfg.Breaker.Interval,
	}, func(_ string, from, to breaker.State) { p.breakerChanged(inst, from, to) })
	return inst
}

// probeConns caps the connections of an instance's probe client (health
// checks, file look-ups) on top of MaxConnectionsPerInstance.
const probeConns = 2

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
		Draining:   i.draining.Load(),
	}
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
	v, ok := parseVersion(i.Version())
	if !ok {
		return true
	}
	for k := range v {
		if v[k] != minClientPromptID[k] {
			return v[k] > minClientPromptID[k]
		}
	}
	return true
}

// parseVersion reads the leading major.minor.patch of a comfyui_version:
// "0.3.64", "v0.2.2-50-gabc1234" (2024's git describe), "0.38.0+local".
// Missing parts are 0; ok is false when there is no leading number.
func parseVersion(s string) (v [3]int, ok bool) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(strings.TrimPrefix(s, "v"), "V")
	for k := 0; k < 3; k++ {
		n := 0
		for n < len(s) && s[n] >= '0' && s[n] <= '9' {
			n++
		}
		if n == 0 {
			return v, k > 0
		}
		x, err := strconv.Atoi(s[:n])
		if err != nil {
			return v, false
		}
		v[k] = x
		s = s[n:]
		if !strings.HasPrefix(s, ".") {
			return v, true
		}
		s = s[1:]
	}
	return v, true
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

// confirmedDown reports what the pool fails prompts over on (signalDown,
// confirmSuspect): the instance's socket is down and its health check
// failed or its breaker is open. A hung instance whose socket still
// answers is not down.
func (i *Instance) confirmedDown() bool {
	return !i.socketUp.Load() && (!i.healthy.Load() || (i.breaker != nil && !i.breaker.Ready()))
}

// addInflight changes the count of prompts sent and not finished and
// updates its metric. A draining instance leaves the pool when it reaches 0.
func (i *Instance) addInflight(delta int64) {
	n := i.inflight.Add(delta)
	if n < 0 {
		// A double finish must not make selection favour this instance forever.
		i.inflight.CompareAndSwap(n, 0)
		n = 0
	}
	if i.pool == nil {
		return
	}
	i.pool.m.SetInflight(i.Name, int(n))
	if n == 0 && i.draining.Load() {
		i.pool.removeIfDrained(i)
	}
}

// setQueueDepth records the queue_remaining the instance reported.
func (i *Instance) setQueueDepth(n int64) {
	i.queueDepth.Store(n)
	if i.pool != nil {
		i.pool.m.SetQueueDepth(i.Name, int(n))
	}
}

// Call does one non-streaming request (bounded by config timeout and ctx),
// through the breaker. path includes the query. Headers are set as given.
func (i *Instance) Call(ctx context.Context, method, path string, header map[string]string, body []byte) (status int, respBody []byte, err error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	done, err := i.Allow()
	if err != nil {
		return 0, nil, fmt.Errorf("upstream %s: %w", i.Name, err)
	}
	timeout := 30 * time.Second
	if i.pool != nil && i.pool.cfg.Timeout > 0 {
		timeout = i.pool.cfg.Timeout
	}
	deadline := time.Now().Add(timeout)
	ownDeadline := true // the configured timeout, not the caller's, bounds this call
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline, ownDeadline = d, false
	}

	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(method)
	req.SetRequestURI(path)
	req.Header.SetHost(i.Addr)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if body != nil {
		req.SetBody(body)
	}
	resp := fasthttp.AcquireResponse()

	type result struct {
		status int
		body   []byte
		err    error
	}
	ch := make(chan result, 1)
	run := func() {
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		err := i.client.DoDeadline(req, resp, deadline)
		if err != nil {
			ch <- result{err: err}
			return
		}
		var buf bytes.Buffer
		if s := resp.BodyStream(); s != nil {
			_, err = io.Copy(&buf, s)
			if cerr := resp.CloseBodyStream(); err == nil {
				err = cerr
			}
		} else {
			buf.Write(resp.Body())
		}
		ch <- result{status: resp.StatusCode(), body: buf.Bytes(), err: err}
	}

	var res result
	if ctx.Done() == nil {
		run()
		res = <-ch
	} else {
		go run()
		select {
		case res = <-ch:
		case <-ctx.Done():
			// The request goroutine ends by its deadline and releases what it holds.
			done(false)
			return 0, nil, ctx.Err()
		}
	}
	if res.err != nil {
		if errors.Is(res.err, fasthttp.ErrNoFreeConns) {
			// comfygate's own connection cap (max_connections_per_instance)
			// is full: nothing reached the instance, which is not failing.
			done(false)
			return 0, nil, fmt.Errorf("call %s %s: %w", i.Name, method, res.err)
		}
		timedOut := errors.Is(res.err, fasthttp.ErrTimeout) || isTimeout(res.err)
		// A deadline the caller chose is the caller's business, not a sign
		// the instance is failing.
		done(!timedOut || ownDeadline)
		if timedOut {
			return 0, nil, fmt.Errorf("call %s %s: %w", i.Name, method, context.DeadlineExceeded)
		}
		return 0, nil, fmt.Errorf("call %s %s: %w", i.Name, method, res.err)
	}
	done(res.status >= 500)
	return res.status, res.body, nil
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}
