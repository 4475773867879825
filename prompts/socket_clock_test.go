package prompts

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/upstream"
)

// The socket's wait between failed dials is a timer of the pool's clock:
// on a fake clock, no second dial comes until the test advances it past
// the backoff.
func TestSocketReconnectWaitsOnThePoolsClock(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var dials atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dials.Add(1)
			_ = c.Close() // the handshake fails at once
		}
	}()
	cfg := coreConfig(ln.Addr().String())
	cfg.WebSocket.ReconnectMin = time.Second
	cfg.WebSocket.ReconnectMax = time.Second
	clk := testkit.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	pool, err := upstream.NewWithClock(cfg, nil, slog.New(slog.DiscardHandler), clk)
	if err != nil {
		t.Fatal(err)
	}
	tb := New(pool, cfg, nil, slog.New(slog.DiscardHandler))
	defer tb.Close()
	defer pool.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tb.Start(ctx)
	tb.InstanceAdded(pool.Instances()[0])
	testkit.EventuallyWithin(t, 10*time.Second, "the first dial", func() bool { return dials.Load() >= 1 })
	// Only the fake clock's timer ends the wait: on the real clock it
	// would be armed nowhere the test can see.
	testkit.EventuallyWithin(t, 10*time.Second, "the backoff's timer armed on the pool's clock", func() bool { return clk.Pending() > 0 })
	got := dials.Load()
	for k := range 3 {
		want := got + int64(k) + 1
		clk.Advance(time.Second)
		testkit.EventuallyWithin(t, 10*time.Second, "a dial after the clock passed the backoff", func() bool {
			if dials.Load() < want {
				clk.Advance(time.Second) // a timer armed after the last advance
			}
			return dials.Load() >= want
		})
	}
}
