package upstream

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
	"github.com/valyala/fasthttp"
)

// A half-open probe whose caller gave up says nothing about the instance:
// it must not close the breaker.
func TestCancelledHalfOpenProbeKeepsBreakerOpen(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.Breaker.ConsecutiveFailures = 1
	cfg.Breaker.OpenTimeout = 50 * time.Millisecond
	p, _ := newCorePool(t, cfg, false)
	inst := p.Instances()[0]

	f.Fail500.Store(true)
	if status, _, err := inst.transport.Call(context.Background(), "GET", "/queue", nil, nil); err != nil || status != 500 {
		t.Fatalf("call = %d %v", status, err)
	}
	if st := inst.transport.breaker.State(); st != breaker.Open {
		t.Fatalf("breaker %v after a 500 on comfygate's own GET /queue", st)
	}
	f.Fail500.Store(false)
	f.Hang.Store(true)
	testkit.Eventually(t, "the breaker to turn half-open", func() bool { return inst.transport.breaker.State() == breaker.HalfOpen })

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := inst.transport.Call(ctx, "GET", "/queue", nil, nil)
		errc <- err
	}()
	testkit.Eventually(t, "the probe to reach the instance", func() bool { return f.Hanging.Load() > 0 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled probe = %v, want context.Canceled", err)
	}
	if st := inst.transport.breaker.State(); st == breaker.Closed {
		t.Fatal("a half-open probe cancelled by its caller closed the breaker")
	}
}

// Every request's judgement shows in comfygate_upstream_requests_total.
func TestOutcomesCounted(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	m := metrics.New("test")
	p, err := New(coreConfig(f.Addr()), m, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	inst := p.Instances()[0]
	ctx := context.Background()
	if st, _, err := inst.transport.Call(ctx, "GET", "/nope", nil, nil); err != nil || st != 404 {
		t.Fatalf("call = %d %v", st, err)
	}
	f.Fail500.Store(true)
	if st, _, err := inst.transport.Call(ctx, "GET", "/queue", nil, nil); err != nil || st != 500 {
		t.Fatalf("call = %d %v", st, err)
	}
	if st, _, err := inst.transport.Call(ctx, "POST", "/prompt", nil, []byte(`{"prompt": "x"}`)); err != nil || st != 500 {
		t.Fatalf("call = %d %v", st, err)
	}
	want := map[string]float64{"success": 1, "failure": 1, "excluded": 1}
	got := map[string]float64{}
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "comfygate_upstream_requests_total" {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "outcome" {
					got[l.GetValue()] += s.GetCounter().GetValue()
				}
			}
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("outcome %s counted %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}

// A pinned read (only this instance can answer it) runs while the breaker
// refuses traffic if the instance passes its health checks; an unhealthy
// instance's breaker still turns it away.
func TestPinnedReadPassesOpenBreakerOfHealthyInstance(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.Breaker.ConsecutiveFailures = 1
	cfg.Breaker.OpenTimeout = time.Hour
	p, _ := newCorePool(t, cfg, false)
	inst := p.Instances()[0]

	f.Fail500.Store(true)
	if status, _, err := inst.transport.Call(context.Background(), "GET", "/queue", nil, nil); err != nil || status != 500 {
		t.Fatalf("call = %d %v", status, err)
	}
	f.Fail500.Store(false)
	if st := inst.transport.breaker.State(); st != breaker.Open {
		t.Fatalf("breaker %v, want open", st)
	}
	read := func(pinned bool) error {
		req := fasthttp.AcquireRequest()
		req.SetRequestURI("/history/x")
		a, err := inst.transport.Do(context.Background(), req, DoOpts{Source: ByClient, Pinned: pinned})
		if err == nil {
			a.Close()
		}
		return err
	}
	if err := read(false); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("a client's read with the breaker open: %v, want ErrOpen", err)
	}
	inst.state.healthy.Store(true)
	if err := read(true); err != nil {
		t.Fatalf("a pinned read of a healthy instance with the breaker open: %v", err)
	}
	inst.state.healthy.Store(false)
	if err := read(true); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("a pinned read of an unhealthy instance with the breaker open: %v, want ErrOpen", err)
	}
}
