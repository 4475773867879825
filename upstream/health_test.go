package upstream

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/internal/testkit"
	"io"
	"net/http"
)

func TestHealthThresholdsAndOneLogPerTransition(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.HealthCheck.UnhealthyThreshold = 3
	cfg.HealthCheck.HealthyThreshold = 2
	// Failed checks count in the breaker too; once its open timeout passed
	// on the fake clock, a passing check closes it as its half-open probe.
	cfg.Breaker.OpenTimeout = time.Minute
	clk := fakeClock()
	p, rec := newClockedPool(t, cfg, true, clk)
	inst := p.Instances()[0]
	ctx := context.Background()

	if !inst.state.Healthy() {
		t.Fatal("instance not healthy after Start's first check")
	}
	if got := inst.Version(); got != "0.3.65" {
		t.Fatalf("version = %q", got)
	}
	f.Fail500.Store(true)
	for k := 1; k <= 2; k++ {
		if p.health.checkOnce(ctx, inst) {
			t.Fatalf("check %d passed against a failing upstream", k)
		}
		if !inst.state.Healthy() {
			t.Fatalf("unhealthy after %d failures, threshold 3", k)
		}
	}
	for k := 3; k <= 5; k++ {
		p.health.checkOnce(ctx, inst)
		if inst.state.Healthy() {
			t.Fatalf("still healthy after %d failures", k)
		}
	}
	if n := rec.count("instance unhealthy", "instance=i1"); n != 1 {
		t.Fatalf("unhealthy logged %d times, want 1", n)
	}
	f.Fail500.Store(false)
	if !p.health.checkOnce(ctx, inst) || inst.state.Healthy() {
		t.Fatalf("healthy after 1 success with healthy_threshold 2 (%v)", inst.state.Healthy())
	}
	// A failure in between resets the success count.
	f.Fail500.Store(true)
	p.health.checkOnce(ctx, inst)
	f.Fail500.Store(false)
	p.health.checkOnce(ctx, inst)
	if inst.state.Healthy() {
		t.Fatal("healthy although the successes were not consecutive")
	}
	p.health.checkOnce(ctx, inst)
	p.health.checkOnce(ctx, inst)
	if !inst.state.Healthy() {
		t.Fatal("not healthy after 2 consecutive successes")
	}
	if n := rec.count("instance healthy", "instance=i1"); n != 2 {
		t.Fatalf("healthy logged %d times, want 2 (start, comeback)", n)
	}
	// The checks that passed while the breaker was open reported nothing;
	// the first one after its open timeout is its half-open probe.
	if st := inst.transport.breaker.State(); st != breaker.Open {
		t.Fatalf("breaker %v after the failed checks and within its open timeout, want open", st)
	}
	clk.Advance(time.Minute)
	if !p.health.checkOnce(ctx, inst) || inst.transport.breaker.State() != breaker.Closed {
		t.Fatalf("breaker %v after a passing check past its open timeout, want closed", inst.transport.breaker.State())
	}
	if st := inst.Status(); !st.Healthy || st.LastCheck.IsZero() || st.Version != "0.3.65" || st.Breaker != "closed" {
		t.Fatalf("status = %+v", st)
	}
}

func TestStartChecksAllInstancesBeforeReturning(t *testing.T) {
	t.Parallel()
	a, b := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.40")
	p, rec := newCorePool(t, coreConfig(a.Addr(), testkit.ClosedAddr(t), b.Addr()), true)
	got := p.Healthy()
	if len(got) != 2 || got[0].Name != "i1" || got[1].Name != "i3" {
		t.Fatalf("Healthy after Start = %v", got)
	}
	if rec.count("not healthy at start", "instance=i2") != 1 {
		t.Fatal("dead instance at start not logged")
	}
	if p.Instances()[2].SupportsClientPromptID() {
		t.Fatal("0.3.40 reported to support client prompt ids")
	}
}

// TestHealthLoopRuns: the loop checks every instance once per
// health_check.interval (within its ±10% jitter), on the pool's clock.
func TestHealthLoopRuns(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.HealthCheck.Interval = 10 * time.Second
	cfg.HealthCheck.UnhealthyThreshold = 2
	clk := fakeClock()
	p, _ := newClockedPool(t, cfg, true, clk)
	inst := p.Instances()[0]
	// The loop's timer is the only one on the fake clock.
	armed := func(what string) {
		t.Helper()
		testkit.Eventually(t, what, func() bool { return clk.Pending() == 1 })
	}
	armed("the loop to arm its timer")
	// A check records its time on the pool's clock.
	start := clk.Now()
	if last := inst.Status().LastCheck; !last.Equal(start) {
		t.Fatalf("Start's check at %v, want %v", last, start)
	}
	f.Fail500.Store(true)
	clk.Advance(8 * time.Second) // short of the jitter's 9s floor
	if last := inst.Status().LastCheck; clk.Pending() != 1 || !last.Equal(start) {
		t.Fatalf("the loop checked (at %v) 8s into a 10s interval", last)
	}
	prev := start
	round := func(k int, advance time.Duration, healthy bool) {
		t.Helper()
		clk.Advance(advance)
		armed("the loop to check and arm its next timer")
		// The check ran once its timer fired: 9-11s after the one before,
		// at the latest where Advance left the clock.
		last := inst.Status().LastCheck
		if last.Sub(prev) < 9*time.Second || last.After(clk.Now()) {
			t.Fatalf("round %d: last check at %v, want 9s or more after %v and not after %v", k, last, prev, clk.Now())
		}
		prev = last
		if inst.state.Healthy() != healthy {
			t.Fatalf("healthy = %v after round %d, want %v", inst.state.Healthy(), k, healthy)
		}
	}
	round(1, 3*time.Second, true) // 11s: past the jitter's ceiling
	round(2, 11*time.Second, false)
	f.Fail500.Store(false)
	round(3, 11*time.Second, true)
}

func TestHungInstanceFailsByTimeout(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.HealthCheck.Timeout = 50 * time.Millisecond
	p, _ := newCorePool(t, cfg, true)
	f.Hang.Store(true)
	start := time.Now()
	if p.health.checkOnce(context.Background(), p.Instances()[0]) {
		t.Fatal("check passed against a hung instance")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("check took %v with a 50ms timeout", d)
	}
}

func TestConfirmSuspect(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, rec := newCorePool(t, coreConfig(f.Addr()), true)
	inst := p.Instances()[0]

	// Socket blip, instance fine: suspect cleared, still healthy.
	p.SocketLost(inst)
	testkit.Eventually(t, "suspect cleared", func() bool { return !inst.state.suspect.Load() && !inst.state.confirming.Load() })
	if !inst.state.Healthy() {
		t.Fatal("healthy instance marked down")
	}
	// Socket lost and the check fails: down at once, not after 3 failures.
	f.Fail500.Store(true)
	p.SocketLost(inst)
	testkit.Eventually(t, "confirmed dead", func() bool { return !inst.state.Healthy() })
	if rec.count("socket lost and health check failed") != 1 {
		t.Fatal("confirmation not logged once")
	}
	// The socket comes back and the instance answers: healthy at once.
	f.Fail500.Store(false)
	p.SocketRestored(inst)
	testkit.Eventually(t, "restored", func() bool { return inst.state.Healthy() && !inst.state.suspect.Load() })
}

func TestParseVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in       string
		want     [3]int
		ok       bool
		supports bool
	}{
		{"0.3.64", [3]int{0, 3, 64}, true, true},
		{"0.3.45", [3]int{0, 3, 45}, true, true},
		{"0.3.44", [3]int{0, 3, 44}, true, false},
		{"0.38.0", [3]int{0, 38, 0}, true, true},
		{"v0.2.2-50-gabc1234", [3]int{0, 2, 2}, true, false},
		{"v0.3.10-3-g0123456-dirty", [3]int{0, 3, 10}, true, false},
		{"1.0", [3]int{1, 0, 0}, true, true},
		{"0.3.65+local", [3]int{0, 3, 65}, true, true},
		{"", [3]int{}, false, true},
		{"unknown", [3]int{}, false, true},
		{"gabc1234", [3]int{}, false, true},
	}
	for _, tc := range tests {
		got, ok := parseVersion(tc.in)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("parseVersion(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
		inst := &Instance{}
		v := tc.in
		inst.version.Store(&v)
		if s := inst.SupportsClientPromptID(); s != tc.supports {
			t.Errorf("SupportsClientPromptID(%q) = %v, want %v", tc.in, s, tc.supports)
		}
	}
}

// TestCheckAllBoundsParallelChecks: a round of health checks over more
// instances than maxParallelChecks never has more than that many in
// flight, and still checks every instance.
func TestCheckAllBoundsParallelChecks(t *testing.T) {
	t.Parallel()
	const n = maxParallelChecks + 8
	var inflight, most, served atomic.Int64
	release := make(chan struct{})
	held := func(w http.ResponseWriter, r *http.Request) {
		now := inflight.Add(1)
		for m := most.Load(); now > m && !most.CompareAndSwap(m, now); m = most.Load() {
		}
		<-release
		inflight.Add(-1)
		served.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"system": {"comfyui_version": "0.3.65"}, "devices": []}`)
	}
	addrs := make([]string, n)
	for k := range addrs {
		addrs[k] = testkit.Mini(t, "0.3.65").Handle("/system_stats", held).Addr()
	}
	cfg := coreConfig(addrs...)
	cfg.HealthCheck.Timeout = 30 * time.Second
	p, _ := newCorePool(t, cfg, false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.health.checkAll(t.Context())
	}()
	testkit.Eventually(t, "a full wave of checks in flight", func() bool { return inflight.Load() >= maxParallelChecks })
	close(release)
	<-done
	if got := most.Load(); got > maxParallelChecks {
		t.Fatalf("%d checks in flight at once, want at most %d", got, maxParallelChecks)
	}
	if got := served.Load(); got != n {
		t.Fatalf("%d instances checked, want %d", got, n)
	}
}
