package upstream

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/valyala/fasthttp"
)

// maxStatsBody caps what is read of a /system_stats answer.
const maxStatsBody = 1 << 20

// maxParallelChecks bounds the health checks in flight at once: a fleet
// of 200 instances is checked in waves of this many, not by 200 requests
// and goroutines at the same instant. Refused and quick checks take
// milliseconds; a hung instance holds its place for health_check.timeout.
const maxParallelChecks = 32

// checkAll checks every instance, at most maxParallelChecks at once, and
// waits for all.
func (p *Pool) checkAll(ctx context.Context) {
	sem := make(chan struct{}, maxParallelChecks)
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, inst := range p.Instances() {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p.safely("health check", func() { p.checkOnce(ctx, inst) })
		}()
	}
}

// healthLoop runs checkAll every health_check.interval, each wait drawn
// from 90-110% of it: comfygate replicas started together (a deploy)
// drift apart instead of checking every instance at the same moment.
func (p *Pool) healthLoop(ctx context.Context) {
	every := p.cfg.HealthCheck.Interval
	t := p.clk.NewTimer(jitterAround(every))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			p.safely("health check", func() { p.checkAll(ctx) })
			t.Reset(jitterAround(every))
		}
	}
}

// jitterAround returns d ± 10%, at random.
func jitterAround(d time.Duration) time.Duration {
	if d < 10 {
		return d
	}
	return d - d/10 + rand.N(d/5+1)
}

// checkOnce runs one active health check of inst (GET /system_stats within
// health_check.timeout), applies the thresholds and reports whether it passed.
func (p *Pool) checkOnce(ctx context.Context, inst *Instance) bool {
	ok, _ := p.check(ctx, inst, p.cfg.HealthCheck.Timeout, false)
	return ok
}

// check probes inst and records the outcome. forceUp makes a pass count at
// once, without waiting for healthy_threshold (the socket reconnected). It
// returns whether the check passed and whether it ran to an answer (false
// when ctx ended first: no verdict is recorded then).
func (p *Pool) check(ctx context.Context, inst *Instance, timeout time.Duration, forceUp bool) (ok, ran bool) {
	start := time.Now()
	version, err := p.probeHealth(ctx, inst, timeout)
	if ctx.Err() != nil {
		return false, false
	}
	d := time.Since(start)
	ok = err == nil
	first := inst.lastCheck.Swap(p.clk.Now().UnixNano()) == 0
	p.m.ObserveHealthCheck(inst.Name, d, ok)
	if ok && version != "" && version != inst.Version() {
		inst.version.Store(&version)
	}
	if ok {
		inst.failures.Store(0)
		if g := p.comebackGate(); g != nil && (forceUp || !inst.healthy.Load()) && !g(ctx, inst) {
			// Back, but its gate refused it (it still holds prompts that
			// moved elsewhere): no new work yet; the next check asks again.
			return false, true
		}
		n := int(inst.successes.Add(1))
		// The first check after start counts as enough: the pool must be
		// usable at once; the threshold guards a comeback.
		if first || forceUp || n >= p.cfg.HealthCheck.HealthyThreshold {
			p.setHealth(inst, true, "health check passed", nil)
		}
		p.maybeWarm(inst)
		return true, true
	}
	inst.successes.Store(0)
	n := int(inst.failures.Add(1))
	switch {
	case n >= p.cfg.HealthCheck.UnhealthyThreshold:
		if p.setHealth(inst, false, "health check failed", err) && !inst.socketUp.Load() {
			p.signalDown(inst)
		}
	case first:
		p.log.Warn("upstream: instance not healthy at start", "instance", inst.Name, "addr", inst.Addr, "error", err)
	}
	return false, true
}

// setHealth flips the verdict with a CAS; only a real change logs a line and
// sets the metric. It reports whether the verdict changed.
func (p *Pool) setHealth(inst *Instance, up bool, why string, err error) bool {
	if !inst.healthy.CompareAndSwap(!up, up) {
		return false
	}
	p.availabilityChanged()
	p.m.SetInstanceUp(inst.Name, up)
	if up {
		comeback := inst.fleet.upSince.Add(1) > 1
		if comeback {
			p.coldAgain(inst) // it may have restarted: warm it again
		}
		p.log.Info("upstream: instance healthy", "instance", inst.Name, "addr", inst.Addr,
			"reason", why, "version", inst.Version())
		p.publish(EventUp, inst)
		if comeback {
			p.publish(EventChanged, inst)
		}
		return true
	}
	p.log.Warn("upstream: instance unhealthy", "instance", inst.Name, "addr", inst.Addr,
		"reason", why, "consecutive_failures", inst.failures.Load(), "error", err)
	p.publish(EventUnhealthy, inst)
	return true
}

// probeHealth does GET /system_stats (a probe: Do runs it even while the
// breaker refuses traffic) and returns the comfyui_version it reports (""
// if none). Any answer but 200 is a failure.
func (p *Pool) probeHealth(ctx context.Context, inst *Instance, timeout time.Duration) (version string, err error) {
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(fasthttp.MethodGet)
	req.SetRequestURI("/system_stats")
	req.Header.Set("Accept", "application/json")
	a, err := inst.Do(ctx, req, DoOpts{Probe: true, Timeout: timeout})
	if err != nil {
		return "", fmt.Errorf("health check %s: %w", inst.Name, err)
	}
	code := a.StatusCode()
	body, err := a.ReadAll(maxStatsBody)
	if code != fasthttp.StatusOK {
		return "", fmt.Errorf("health check %s: status %d", inst.Name, code)
	}
	if err != nil {
		return "", fmt.Errorf("health check %s: read body: %w", inst.Name, err)
	}
	// A body that is not the expected JSON still proves the instance answers;
	// the version just stays unknown.
	return comfyapi.SystemStatsVersion(body), nil
}

// SocketLost is called (by the owner of the event sockets) when an
// instance's socket dropped: it publishes EventSuspect and one health
// check runs now, bounded by failover.suspect_grace. If it fails the
// instance is marked unhealthy at once (socket lost and a failed check
// confirm it, no need to wait for the threshold) and EventDown is
// published; if it passes, suspect is cleared (EventBack).
func (p *Pool) SocketLost(inst *Instance) {
	if !inst.suspect.Swap(true) {
		p.publish(EventSuspect, inst)
	}
	if !inst.confirming.CompareAndSwap(false, true) {
		return // a confirmation is already running
	}
	timeout := p.cfg.HealthCheck.Timeout
	if g := p.cfg.Failover.SuspectGrace; g < timeout {
		timeout = g
	}
	started := p.goAsync(func(ctx context.Context) {
		defer inst.confirming.Store(false)
		ok, ran := p.check(ctx, inst, timeout, false)
		if !ran {
			return
		}
		if ok {
			p.clearSuspect(inst)
			return
		}
		inst.failures.Store(int32(max(p.cfg.HealthCheck.UnhealthyThreshold, 1)))
		p.setHealth(inst, false, "socket lost and health check failed", nil)
		p.signalDown(inst)
	})
	if !started {
		inst.confirming.Store(false)
	}
}

// clearSuspect ends inst's suspicion after a passed check (EventBack).
func (p *Pool) clearSuspect(inst *Instance) {
	inst.suspect.Store(false)
	p.availabilityChanged()
	p.publish(EventBack, inst)
}

// Probe does one health probe of inst (GET /system_stats within timeout,
// even while its breaker refuses traffic) without recording a verdict:
// nil when it answered 200.
func (p *Pool) Probe(ctx context.Context, inst *Instance, timeout time.Duration) error {
	_, err := p.probeHealth(ctx, inst, timeout)
	return err
}

// SocketRestored is called (by the owner of the event sockets) after the
// instance's socket reconnected: a health check runs now, and on success
// the instance is healthy again at once (EventBack).
func (p *Pool) SocketRestored(inst *Instance) {
	// A lost socket may be a restart that passed no failed health check:
	// what the instance can run may have changed (catalogue).
	inst.fleet.reconnects.Add(1)
	p.publish(EventChanged, inst)
	p.goAsync(func(ctx context.Context) {
		if ok, _ := p.check(ctx, inst, p.cfg.HealthCheck.Timeout, true); ok {
			p.clearSuspect(inst)
		}
	})
}
