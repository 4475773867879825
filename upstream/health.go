package upstream

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/clock"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/metrics"
	"github.com/valyala/fasthttp"
)

// health judges whether each instance is alive: the active health checks
// and their thresholds, the confirmation of a lost event socket, and the
// breakers' state changes. It publishes what it decides (EventUp,
// EventUnhealthy, EventSuspect, EventBack, EventDown, EventChanged).
type health struct {
	cfg   *config.Config // health_check, failover.suspect_grace
	clk   clock.Clock
	m     *metrics.Metrics
	log   *slog.Logger
	reg   *registry // the instances checkAll checks
	bus   *bus
	avail *availability
	warm  *warmups // a comeback makes an instance cold; a pass may warm it
	run   *runner  // the checks that run in the background
}

// maxStatsBody caps what is read of a /system_stats answer.
const maxStatsBody = 1 << 20

// maxParallelChecks bounds the health checks in flight at once: a fleet
// of 200 instances is checked in waves of this many, not by 200 requests
// and goroutines at the same instant. Refused and quick checks take
// milliseconds; a hung instance holds its place for health_check.timeout.
const maxParallelChecks = 32

// checkAll checks every instance, at most maxParallelChecks at once, and
// waits for all.
func (h *health) checkAll(ctx context.Context) {
	sem := make(chan struct{}, maxParallelChecks)
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, inst := range h.reg.list() {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			h.run.safely("health check", func() { h.checkOnce(ctx, inst) })
		}()
	}
}

// loop runs checkAll every health_check.interval, each wait drawn
// from 90-110% of it: comfygate replicas started together (a deploy)
// drift apart instead of checking every instance at the same moment.
func (h *health) loop(ctx context.Context) {
	every := h.cfg.HealthCheck.Interval
	t := h.clk.NewTimer(jitterAround(every))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			h.run.safely("health check", func() { h.checkAll(ctx) })
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
func (h *health) checkOnce(ctx context.Context, inst *Instance) bool {
	ok, _ := h.check(ctx, inst, h.cfg.HealthCheck.Timeout, false)
	return ok
}

// check probes inst and records the outcome. forceUp makes a pass count at
// once, without waiting for healthy_threshold (the socket reconnected). It
// returns whether the check passed and whether it ran to an answer (false
// when ctx ended first: no verdict is recorded then).
func (h *health) check(ctx context.Context, inst *Instance, timeout time.Duration, forceUp bool) (ok, ran bool) {
	start := time.Now()
	version, err := h.probeHealth(ctx, inst, timeout)
	if ctx.Err() != nil {
		return false, false
	}
	d := time.Since(start)
	ok = err == nil
	first := inst.state.lastCheck.Swap(h.clk.Now().UnixNano()) == 0
	h.m.ObserveHealthCheck(inst.Name, d, ok)
	if ok && version != "" && version != inst.Version() {
		inst.version.Store(&version)
	}
	if ok {
		inst.state.failures.Store(0)
		if g := h.bus.comebackGate(); g != nil && (forceUp || !inst.state.healthy.Load()) && !g(ctx, inst) {
			// Back, but its gate refused it (it still holds prompts that
			// moved elsewhere): no new work yet; the next check asks again.
			return false, true
		}
		n := int(inst.state.successes.Add(1))
		// The first check after start counts as enough: the pool must be
		// usable at once; the threshold guards a comeback.
		if first || forceUp || n >= h.cfg.HealthCheck.HealthyThreshold {
			h.setHealth(inst, true, "health check passed", nil)
		}
		h.warm.maybeWarm(inst)
		return true, true
	}
	inst.state.successes.Store(0)
	n := int(inst.state.failures.Add(1))
	switch {
	case n >= h.cfg.HealthCheck.UnhealthyThreshold:
		if h.setHealth(inst, false, "health check failed", err) && !inst.state.socketUp.Load() {
			h.signalDown(inst)
		}
	case first:
		h.log.Warn("upstream: instance not healthy at start", "instance", inst.Name, "addr", inst.Addr, "error", err)
	}
	return false, true
}

// setHealth flips the verdict with a CAS; only a real change logs a line and
// sets the metric. It reports whether the verdict changed.
func (h *health) setHealth(inst *Instance, up bool, why string, err error) bool {
	if !inst.state.healthy.CompareAndSwap(!up, up) {
		return false
	}
	h.avail.changed()
	h.m.SetInstanceUp(inst.Name, up)
	if up {
		comeback := inst.state.upSince.Add(1) > 1
		if comeback {
			h.warm.coldAgain(inst) // it may have restarted: warm it again
		}
		h.log.Info("upstream: instance healthy", "instance", inst.Name, "addr", inst.Addr,
			"reason", why, "version", inst.Version())
		h.bus.publish(EventUp, inst)
		if comeback {
			h.bus.publish(EventChanged, inst)
		}
		return true
	}
	h.log.Warn("upstream: instance unhealthy", "instance", inst.Name, "addr", inst.Addr,
		"reason", why, "consecutive_failures", inst.state.failures.Load(), "error", err)
	h.bus.publish(EventUnhealthy, inst)
	return true
}

// probeHealth does GET /system_stats (a probe: Do runs it even while the
// breaker refuses traffic) and returns the comfyui_version it reports (""
// if none). Any answer but 200 is a failure.
func (h *health) probeHealth(ctx context.Context, inst *Instance, timeout time.Duration) (version string, err error) {
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(fasthttp.MethodGet)
	req.SetRequestURI("/system_stats")
	req.Header.Set("Accept", "application/json")
	a, err := inst.transport.Do(ctx, req, DoOpts{Probe: true, Timeout: timeout})
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

// socketLost confirms a lost event socket (Pool.SocketLost).
func (h *health) socketLost(inst *Instance) {
	if !inst.state.suspect.Swap(true) {
		h.bus.publish(EventSuspect, inst)
	}
	if !inst.state.confirming.CompareAndSwap(false, true) {
		return // a confirmation is already running
	}
	timeout := h.cfg.HealthCheck.Timeout
	if g := h.cfg.Failover.SuspectGrace; g < timeout {
		timeout = g
	}
	started := h.run.goAsync(func(ctx context.Context) {
		defer inst.state.confirming.Store(false)
		ok, ran := h.check(ctx, inst, timeout, false)
		if !ran {
			return
		}
		if ok {
			h.clearSuspect(inst)
			return
		}
		inst.state.failures.Store(int32(max(h.cfg.HealthCheck.UnhealthyThreshold, 1)))
		h.setHealth(inst, false, "socket lost and health check failed", nil)
		h.signalDown(inst)
	})
	if !started {
		inst.state.confirming.Store(false)
	}
}

// clearSuspect ends inst's suspicion after a passed check (EventBack).
func (h *health) clearSuspect(inst *Instance) {
	inst.state.suspect.Store(false)
	h.avail.changed()
	h.bus.publish(EventBack, inst)
}

// socketRestored checks a reconnected instance (Pool.SocketRestored).
func (h *health) socketRestored(inst *Instance) {
	// A lost socket may be a restart that passed no failed health check:
	// what the instance can run may have changed (catalogue).
	inst.state.reconnects.Add(1)
	h.bus.publish(EventChanged, inst)
	h.run.goAsync(func(ctx context.Context) {
		if ok, _ := h.check(ctx, inst, h.cfg.HealthCheck.Timeout, true); ok {
			h.clearSuspect(inst)
		}
	})
}

// breakerChanged is every breaker's OnStateChange. It may run while the
// breaker holds its lock, so it must not call into the breaker.
func (h *health) breakerChanged(inst *Instance, from, to breaker.State) {
	level := slog.LevelInfo
	if to == breaker.Open {
		level = slog.LevelWarn
	}
	h.log.Log(context.Background(), level, "upstream: breaker state changed",
		"instance", inst.Name, "from", from.String(), "to", to.String())
	h.m.SetBreakerState(inst.Name, to.String())
	h.avail.changed()
	if to == breaker.Open && !inst.state.socketUp.Load() {
		// Real traffic fails and the socket is gone: the instance is dead.
		h.signalDown(inst)
	}
}

// signalDown publishes that inst looks dead (EventDown). It may be
// called more than once per death. Publishing never waits, so callers may
// hold locks (the breaker's).
func (h *health) signalDown(inst *Instance) {
	h.bus.publish(EventDown, inst)
}
