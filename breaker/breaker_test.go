package breaker

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit"
)

// fakeClock is a fake clock at a fixed date.
func fakeClock() *testkit.FakeClock {
	return testkit.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}

func TestBreakerOpensAfterConsecutiveFailuresAndProbes(t *testing.T) {
	t.Parallel()
	var transitions []string
	clk := fakeClock()
	b := New("a", Settings{ConsecutiveFailures: 3, OpenTimeout: 20 * time.Second, Clock: clk}, func(_ string, from, to State) {
		transitions = append(transitions, from.String()+">"+to.String())
	})
	for i := 0; i < 3; i++ {
		done, err := b.Allow()
		if err != nil {
			t.Fatalf("request %d refused while closed: %v", i, err)
		}
		done.Done(Failure)
	}
	if b.State() != Open || b.Ready() {
		t.Fatalf("state = %v after 3 failures, want open", b.State())
	}
	if _, err := b.Allow(); err != ErrOpen {
		t.Fatalf("Allow while open = %v, want ErrOpen", err)
	}
	clk.Advance(20*time.Second - time.Millisecond)
	if _, err := b.Allow(); err != ErrOpen || b.State() != Open || b.Ready() {
		t.Fatalf("just before the open timeout: Allow = %v, state %v, ready %v; want ErrOpen, open, not ready", err, b.State(), b.Ready())
	}
	clk.Advance(time.Millisecond)
	if b.State() != HalfOpen {
		t.Fatalf("state = %v once the open timeout passed, want half-open", b.State())
	}
	probe, err := b.Allow()
	if err != nil {
		t.Fatalf("half-open refused its probe: %v", err)
	}
	if _, err := b.Allow(); err != ErrOpen {
		t.Fatalf("second request while the probe is out = %v, want ErrOpen", err)
	}
	probe.Done(Success)
	if b.State() != Closed {
		t.Fatalf("state after a good probe = %v, want closed", b.State())
	}
	want := []string{"closed>open", "open>half-open", "half-open>closed"}
	if len(transitions) != len(want) {
		t.Fatalf("transitions = %v, want %v", transitions, want)
	}
	for i := range want {
		if transitions[i] != want[i] {
			t.Fatalf("transitions = %v, want %v", transitions, want)
		}
	}
}

func TestBreakerSuccessResetsConsecutiveCount(t *testing.T) {
	t.Parallel()
	b := New("b", Settings{ConsecutiveFailures: 2, OpenTimeout: time.Minute}, nil)
	for _, o := range []Outcome{Failure, Success, Failure, Success, Failure} {
		done, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		done.Done(o)
	}
	if b.State() != Closed {
		t.Fatalf("alternating failures opened the breaker: %v", b.State())
	}
}

func TestExcludedNeitherCountsNorClosesHalfOpen(t *testing.T) {
	t.Parallel()
	clk := fakeClock()
	b := New("c", Settings{ConsecutiveFailures: 2, OpenTimeout: 20 * time.Second, Clock: clk}, nil)
	for _, o := range []Outcome{Failure, Excluded, Excluded, Excluded} {
		done, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		done.Done(o)
	}
	if b.State() != Closed {
		t.Fatalf("state = %v: excluded outcomes counted", b.State())
	}
	done, _ := b.Allow()
	done.Done(Failure) // the second consecutive failure: excluded ones in between did not reset it
	if b.State() != Open {
		t.Fatalf("state = %v after failure, excluded x3, failure; want open", b.State())
	}
	clk.Advance(20 * time.Second)
	if b.State() != HalfOpen {
		t.Fatalf("state = %v once the open timeout passed, want half-open", b.State())
	}
	probe, err := b.Allow()
	if err != nil {
		t.Fatalf("half-open refused its probe: %v", err)
	}
	probe.Done(Excluded)
	if b.State() != HalfOpen {
		t.Fatalf("state after an excluded probe = %v, want still half-open", b.State())
	}
	// The slot is free again for the next probe.
	probe, err = b.Allow()
	if err != nil {
		t.Fatalf("probe slot not given back after an excluded probe: %v", err)
	}
	probe.Done(Success)
	if b.State() != Closed {
		t.Fatalf("state after a good probe = %v", b.State())
	}
}

// TestReadyFollowsState: Ready, which reads no lock while closed, agrees
// with State through open, half-open (once the timeout passed, without an
// Allow first), a failed probe (open again) and a good one (closed).
func TestReadyFollowsState(t *testing.T) {
	t.Parallel()
	clk := fakeClock()
	b := New("a", Settings{ConsecutiveFailures: 1, OpenTimeout: 30 * time.Second, Clock: clk}, nil)
	waitReady := func(what string) {
		t.Helper()
		clk.Advance(30*time.Second - time.Millisecond)
		if b.Ready() {
			t.Fatalf("ready %s a millisecond early (state %v)", what, b.State())
		}
		clk.Advance(time.Millisecond)
		if !b.Ready() {
			t.Fatalf("not ready %s (state %v)", what, b.State())
		}
		if b.State() != HalfOpen {
			t.Fatalf("ready %s in state %v, want half-open", what, b.State())
		}
	}
	if !b.Ready() {
		t.Fatal("a new breaker is not ready")
	}
	fail := func() {
		t.Helper()
		done, err := b.Allow()
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		done.Done(Failure)
	}
	fail()
	if b.Ready() || b.State() != Open {
		t.Fatalf("after a failure: ready %v, state %v; want not ready, open", b.Ready(), b.State())
	}
	waitReady("after the open timeout")
	fail() // the probe fails: open again, for a new timeout
	if b.Ready() || b.State() != Open {
		t.Fatalf("after a failed probe: ready %v, state %v; want not ready, open", b.Ready(), b.State())
	}
	waitReady("after the second open timeout")
	probe, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	probe.Done(Success)
	if !b.Ready() || b.State() != Closed {
		t.Fatalf("after a good probe: ready %v, state %v; want ready, closed", b.Ready(), b.State())
	}
}

// TestStaleOutcomeWhileOpenDoesNotEndIt: a request let through before the
// breaker opened and reporting while it is open changes nothing, and does
// not cut the open period short.
func TestStaleOutcomeWhileOpenDoesNotEndIt(t *testing.T) {
	t.Parallel()
	clk := fakeClock()
	var transitions []string
	b := New("d", Settings{ConsecutiveFailures: 1, OpenTimeout: time.Minute, Clock: clk}, func(_ string, from, to State) {
		transitions = append(transitions, from.String()+">"+to.String())
	})
	early, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	tripping, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	tripping.Done(Failure)
	for _, o := range []Outcome{Success, Failure, Excluded} {
		early.Done(o)
		if b.State() != Open || b.Ready() {
			t.Fatalf("state %v, ready %v after a stale %v while open; want open, not ready", b.State(), b.Ready(), o)
		}
		if _, err := b.Allow(); err != ErrOpen {
			t.Fatalf("Allow after a stale %v while open = %v, want ErrOpen", o, err)
		}
	}
	clk.Advance(time.Minute)
	probe, err := b.Allow()
	if err != nil {
		t.Fatalf("half-open refused its probe: %v", err)
	}
	early.Done(Success) // stale still: it must not close the breaker
	if b.State() != HalfOpen {
		t.Fatalf("state %v after a stale success while half-open, want half-open", b.State())
	}
	probe.Done(Success)
	want := "closed>open open>half-open half-open>closed"
	if got := strings.Join(transitions, " "); got != want {
		t.Fatalf("transitions = %q, want %q", got, want)
	}
}

// TestRealClockByDefault: without a Clock the open period runs on the
// wall clock.
func TestRealClockByDefault(t *testing.T) {
	t.Parallel()
	b := New("e", Settings{ConsecutiveFailures: 1, OpenTimeout: time.Millisecond}, nil)
	done, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	done.Done(Failure)
	testkit.Eventually(t, "half-open on the wall clock", func() bool { return b.State() == HalfOpen })
	if !b.Ready() {
		t.Fatal("half-open but not ready")
	}
}

// TestConcurrentTrafficDoesNotShortenTheOpenPeriod: requests racing the
// failure that opens the breaker never reach gobreaker while it is open on
// the breaker's clock (there its own open timeout is all but zero): with
// the fake clock standing still it stays open, having changed state once.
func TestConcurrentTrafficDoesNotShortenTheOpenPeriod(t *testing.T) {
	t.Parallel()
	clk := fakeClock()
	var mu sync.Mutex
	var transitions []string
	b := New("f", Settings{ConsecutiveFailures: 1, OpenTimeout: time.Minute, Clock: clk}, func(_ string, from, to State) {
		mu.Lock()
		transitions = append(transitions, from.String()+">"+to.String())
		mu.Unlock()
	})
	const workers = 8
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				if done, err := b.Allow(); err == nil {
					allowed.Add(1)
					done.Done(Failure)
				}
			}
		}()
	}
	wg.Wait()
	if b.State() != Open || b.Ready() {
		t.Fatalf("state %v, ready %v with the clock standing still; want open, not ready", b.State(), b.Ready())
	}
	// Each worker has at most one request out when the first failure opens it.
	if n := allowed.Load(); n < 1 || n > workers {
		t.Fatalf("%d requests let through, want between 1 and %d", n, workers)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(transitions) != 1 || transitions[0] != "closed>open" {
		t.Fatalf("transitions = %v, want [closed>open]", transitions)
	}
}

// The closed state's Interval runs on Settings.Clock: failures spread over
// more than one window do not add up, and a ticket taken in a window that
// has passed reports nothing.
func TestBreakerIntervalFollowsClock(t *testing.T) {
	t.Parallel()
	fail := func(t *testing.T, b *Breaker, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			tk, err := b.Allow()
			if err != nil {
				t.Fatalf("failure %d refused: %v", i, err)
			}
			tk.Done(Failure)
		}
	}
	for _, tc := range []struct {
		desc     string
		interval time.Duration
		wantOpen bool
	}{
		{desc: "window passed: counts cleared", interval: 10 * time.Second, wantOpen: false},
		{desc: "no interval: counts never clear", interval: 0, wantOpen: true},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			clk := fakeClock()
			b := New("i", Settings{ConsecutiveFailures: 3, OpenTimeout: time.Minute, Interval: tc.interval, Clock: clk}, nil)
			fail(t, b, 2)
			clk.Advance(11 * time.Second)
			fail(t, b, 1)
			if got := b.State() == Open; got != tc.wantOpen {
				t.Fatalf("open after 2 failures, 11s, 1 failure = %v, want %v (state %v)", got, tc.wantOpen, b.State())
			}
		})
	}

	t.Run("failures within one window open it", func(t *testing.T) {
		t.Parallel()
		clk := fakeClock()
		b := New("i", Settings{ConsecutiveFailures: 3, OpenTimeout: time.Minute, Interval: 10 * time.Second, Clock: clk}, nil)
		fail(t, b, 2)
		clk.Advance(9 * time.Second)
		fail(t, b, 1)
		if b.State() != Open {
			t.Fatalf("state = %v after 3 failures within the interval, want open", b.State())
		}
	})

	t.Run("a ticket from a passed window is not counted", func(t *testing.T) {
		t.Parallel()
		clk := fakeClock()
		b := New("i", Settings{ConsecutiveFailures: 2, OpenTimeout: time.Minute, Interval: 10 * time.Second, Clock: clk}, nil)
		old, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		fail(t, b, 1)
		clk.Advance(11 * time.Second)
		fail(t, b, 1)
		old.Done(Failure) // taken in the first window
		if b.State() != Closed {
			t.Fatalf("state = %v: a failure from a passed window counted, want closed", b.State())
		}
		fail(t, b, 1)
		if b.State() != Open {
			t.Fatalf("state = %v after 2 failures in the new window, want open", b.State())
		}
	})
}
