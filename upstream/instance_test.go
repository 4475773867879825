package upstream

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/valyala/fasthttp"
)

func TestCallRoundTrip(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, _ := newCorePool(t, coreConfig(f.Addr()), true)
	inst := p.Instances()[0]
	status, body, err := inst.transport.Call(context.Background(), "POST", "/echo?x=1", map[string]string{"X-Test": "v"}, []byte("hello"))
	if err != nil || status != 200 || string(body) != "HELLO" {
		t.Fatalf("Call = %d %q %v", status, body, err)
	}
	status, _, err = inst.transport.Call(context.Background(), "GET", "/nope", nil, nil)
	if err != nil || status != 404 {
		t.Fatalf("Call 404 = %d %v", status, err)
	}
	if got := inst.URL("/view?filename=a.png"); got != "http://"+f.Addr()+"/view?filename=a.png" {
		t.Fatalf("URL = %q", got)
	}
	if id := inst.SocketClientID(); !strings.HasPrefix(id, "comfygate-") || len(id) != len("comfygate-")+16 || strings.ToLower(id) != id {
		t.Fatalf("socket id = %q", id)
	}
}

func TestBreakerOpensOn5xxAndInstanceIsSkipped(t *testing.T) {
	t.Parallel()
	a, b := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p, rec := newCorePool(t, coreConfig(a.Addr(), b.Addr()), true)
	ia, ib := p.Instances()[0], p.Instances()[1]
	a.Fail500.Store(true)
	start := time.Now()
	for k := 0; k < 3; k++ {
		status, _, err := ia.transport.Call(context.Background(), "GET", "/object_info", nil, nil)
		if err != nil || status != 500 {
			t.Fatalf("call %d = %d %v", k, status, err)
		}
	}
	if ia.Available() {
		t.Fatal("instance still available after 3 consecutive 5xx")
	}
	for k := 0; k < 4; k++ {
		if got, err := p.Selector().Select(); err != nil || got != ib {
			t.Fatalf("Select = %v %v, want the other instance", got, err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v to cut the instance out", d)
	}
	if _, _, err := ia.transport.Fetch(context.Background(), Request{Method: "GET", Path: "/object_info", Source: ByClient}); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("a client's request with open breaker = %v, want ErrOpen", err)
	}
	// comfygate's own requests still look at the instance.
	if status, _, err := ia.transport.Call(context.Background(), "GET", "/queue", nil, nil); err != nil || status != 500 {
		t.Fatalf("comfygate's own call with open breaker = %d %v, want the instance's 500", status, err)
	}
	if rec.count("breaker state changed", "to=open") != 1 {
		t.Fatal("breaker opening not logged once")
	}
	if st := ia.Status(); st.Breaker != "open" {
		t.Fatalf("status breaker = %q", st.Breaker)
	}
}

func TestBreakerOpensOnConnectionErrors(t *testing.T) {
	t.Parallel()
	p, _ := newCorePool(t, coreConfig(testkit.ClosedAddr(t)), false)
	inst := p.Instances()[0]
	inst.state.healthy.Store(true)
	for k := 0; k < 3; k++ {
		if _, _, err := inst.transport.Call(context.Background(), "GET", "/queue", nil, nil); err == nil {
			t.Fatal("call to a closed port succeeded")
		}
	}
	if inst.Available() {
		t.Fatal("available after 3 connection errors")
	}
}

func TestCallTimeoutCountsAsFailure(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.Timeout = 50 * time.Millisecond
	cfg.Breaker.ConsecutiveFailures = 2
	p, _ := newCorePool(t, cfg, true)
	inst := p.Instances()[0]
	f.Hang.Store(true)
	for k := 0; k < 2; k++ {
		start := time.Now()
		_, _, err := inst.transport.Call(context.Background(), "GET", "/queue", nil, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("hung call = %v, want deadline exceeded", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("hung call took %v with a 50ms timeout", d)
		}
	}
	if inst.transport.breaker.State() != breaker.Open {
		t.Fatalf("breaker %v after 2 timeouts", inst.transport.breaker.State())
	}
}

func TestCallerDeadlineDoesNotTripBreaker(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.Breaker.ConsecutiveFailures = 1
	p, _ := newCorePool(t, cfg, true)
	inst := p.Instances()[0]
	f.Hang.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, _, err := inst.transport.Call(ctx, "GET", "/queue", nil, nil); err == nil {
		t.Fatal("hung call succeeded")
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() {
		// Cancel once the call is waiting on the hung instance.
		testkit.Poll(testkit.WaitBound, func() bool { return f.Hanging.Load() >= 2 })
		cancel2()
	}()
	if _, _, err := inst.transport.Call(ctx2, "GET", "/queue", nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call = %v", err)
	}
	if inst.transport.breaker.State() != breaker.Closed {
		t.Fatalf("breaker %v after the caller's own deadline", inst.transport.breaker.State())
	}
}

func TestNoFreeConnsDoesNotTripBreaker(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.Timeout = 300 * time.Millisecond
	cfg.MaxConnectionsPerInstance = 1
	cfg.Breaker.ConsecutiveFailures = 2
	p, _ := newCorePool(t, cfg, false)
	inst := p.Instances()[0]
	f.Hang.Store(true)
	first := make(chan error, 1)
	go func() {
		_, _, err := inst.transport.Call(context.Background(), "GET", "/queue", nil, nil)
		first <- err
	}()
	testkit.Eventually(t, "the hung call to hold the connection", func() bool { return inst.transport.client.ConnsCount() == 1 })
	if _, _, err := inst.transport.Call(context.Background(), "GET", "/queue", nil, nil); !errors.Is(err, fasthttp.ErrNoFreeConns) {
		t.Fatalf("call over the connection cap = %v, want ErrNoFreeConns", err)
	}
	if err := <-first; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung call = %v", err)
	}
	// One failure (the timeout) of the two that open it.
	if st := inst.transport.breaker.State(); st != breaker.Closed {
		t.Fatalf("breaker %v: the full connection cap counted as a failure", st)
	}
}
