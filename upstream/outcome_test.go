package upstream

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
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
	f := startMini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.Breaker.ConsecutiveFailures = 1
	cfg.Breaker.OpenTimeout = 50 * time.Millisecond
	p, _ := newCorePool(t, cfg, false)
	inst := p.Instances()[0]

	f.fail500.Store(true)
	if status, _, err := inst.Call(context.Background(), "GET", "/queue", nil, nil); err != nil || status != 500 {
		t.Fatalf("call = %d %v", status, err)
	}
	if st := inst.breaker.State(); st != breaker.Open {
		t.Fatalf("breaker %v after a 500 on comfygate's own GET /queue", st)
	}
	f.fail500.Store(false)
	f.hang.Store(true)
	testkit.Eventually(t, "the breaker to turn half-open", func() bool { return inst.breaker.State() == breaker.HalfOpen })

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := inst.Call(ctx, "GET", "/queue", nil, nil)
		errc <- err
	}()
	testkit.Eventually(t, "the probe to reach the instance", func() bool { return f.hanging.Load() > 0 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled probe = %v, want context.Canceled", err)
	}
	if st := inst.breaker.State(); st == breaker.Closed {
		t.Fatal("a half-open probe cancelled by its caller closed the breaker")
	}
}

// slowView serves GET /view with a body of n pieces, one every gap: a copy
// that takes longer than the call timeout but never goes silent for it.
func slowView(t *testing.T, pieces int, gap time.Duration) (addr string, body []byte) {
	t.Helper()
	piece := bytes.Repeat([]byte("0123456789abcdef"), 64)
	body = bytes.Repeat(piece, pieces)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/view" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		fl := w.(http.Flusher)
		for k := 0; k < pieces; k++ {
			if k > 0 {
				select {
				case <-time.After(gap):
				case <-r.Context().Done():
					return
				}
			}
			_, _ = w.Write(piece)
			fl.Flush()
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), body
}

// COMFYUI_TIMEOUT bounds an instance's silence, not a whole copy.
func TestCopyFileSlowButMovingBody(t *testing.T) {
	t.Parallel()
	// Gaps a tenth of the timeout (room for a loaded machine), the whole
	// copy half again as long as the timeout.
	srcAddr, body := slowView(t, 16, 100*time.Millisecond)
	dst := startMini(t, "0.3.65")
	cfg := coreConfig(srcAddr, dst.Addr())
	cfg.Timeout = time.Second // the copy takes ~1.5s
	p, _ := newCorePool(t, cfg, false)
	src, to := p.Instances()[0], p.Instances()[1]
	ref := FileRef{Filename: "big.png", Type: "input"}
	n, err := p.copyFile(context.Background(), src, to, ref, ref)
	if err != nil {
		t.Fatalf("copy of a slow but moving body: %v", err)
	}
	got, ok := dst.get("input", "", "big.png")
	if n != int64(len(body)) || !ok || !bytes.Equal(got, body) {
		t.Fatalf("copied %d bytes, stored %d (%v), want %d", n, len(got), ok, len(body))
	}
}

// Every request's judgement shows in comfygate_upstream_requests_total.
func TestOutcomesCounted(t *testing.T) {
	t.Parallel()
	f := startMini(t, "0.3.65")
	m := metrics.New("test")
	p, err := New(coreConfig(f.Addr()), m, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	inst := p.Instances()[0]
	ctx := context.Background()
	if st, _, err := inst.Call(ctx, "GET", "/nope", nil, nil); err != nil || st != 404 {
		t.Fatalf("call = %d %v", st, err)
	}
	f.fail500.Store(true)
	if st, _, err := inst.Call(ctx, "GET", "/queue", nil, nil); err != nil || st != 500 {
		t.Fatalf("call = %d %v", st, err)
	}
	if st, _, err := inst.Call(ctx, "POST", "/prompt", nil, []byte(`{"prompt": "x"}`)); err != nil || st != 500 {
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
	f := startMini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.Breaker.ConsecutiveFailures = 1
	cfg.Breaker.OpenTimeout = time.Hour
	p, _ := newCorePool(t, cfg, false)
	inst := p.Instances()[0]

	f.fail500.Store(true)
	if status, _, err := inst.Call(context.Background(), "GET", "/queue", nil, nil); err != nil || status != 500 {
		t.Fatalf("call = %d %v", status, err)
	}
	f.fail500.Store(false)
	if st := inst.breaker.State(); st != breaker.Open {
		t.Fatalf("breaker %v, want open", st)
	}
	read := func(pinned bool) error {
		req := fasthttp.AcquireRequest()
		req.SetRequestURI("/history/x")
		a, err := inst.Do(context.Background(), req, DoOpts{Source: ByClient, Pinned: pinned})
		if err == nil {
			a.Close()
		}
		return err
	}
	if err := read(false); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("a client's read with the breaker open: %v, want ErrOpen", err)
	}
	inst.healthy.Store(true)
	if err := read(true); err != nil {
		t.Fatalf("a pinned read of a healthy instance with the breaker open: %v", err)
	}
	inst.healthy.Store(false)
	if err := read(true); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("a pinned read of an unhealthy instance with the breaker open: %v, want ErrOpen", err)
	}
}
