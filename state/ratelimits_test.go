package state_test

import (
	"context"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/state"
)

// TestRateLimitsAreTheFleets: two replicas take from one bucket per kind
// and name: its burst is spent over both, the next take says how long
// until a token is back, and another name or kind has a bucket of its
// own. In memory there are none to share.
func TestRateLimitsAreTheFleets(t *testing.T) {
	t.Parallel()
	if state.Memory().RateLimits() != nil {
		t.Fatal("rate limits in memory: each replica's own buckets decide")
	}
	url := testkit.Redis(t)
	open := func() state.RateLimits {
		s, err := state.Open(context.Background(), config.State{URL: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s.RateLimits()
	}
	a, b := open(), open()
	ctx := context.Background()
	const rate, burst = 0.5, 2 // a token every 2 s
	take := func(r state.RateLimits, kind, name string) (bool, time.Duration) {
		t.Helper()
		ok, wait, err := r.Take(ctx, kind, name, rate, burst)
		if err != nil {
			t.Fatal(err)
		}
		return ok, wait
	}
	if ok, _ := take(a, "prompt", "alice"); !ok {
		t.Fatal("alice's first token refused")
	}
	if ok, _ := take(b, "prompt", "alice"); !ok {
		t.Fatal("alice's second token, on the other replica, refused")
	}
	ok, wait := take(a, "prompt", "alice")
	if ok || wait <= 0 || wait > 2*time.Second {
		t.Fatalf("alice's third token: ok %v, wait %v; want refused with a wait of at most 2 s", ok, wait)
	}
	if ok, _ := take(b, "prompt", "bob"); !ok {
		t.Fatal("bob's first token refused")
	}
	if ok, _ := take(b, "job", "alice"); !ok {
		t.Fatal("alice's first job token refused")
	}
	// A fast rate refills between takes.
	for i := range 5 {
		ok, wait, err := a.Take(ctx, "prompt", "carol", 1000, 1)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			time.Sleep(wait)
			if ok, _, _ = a.Take(ctx, "prompt", "carol", 1000, 1); !ok {
				t.Fatalf("take %d: refused after waiting the %v it said", i, wait)
			}
		}
	}
}
