package breaker

import (
	"testing"
	"time"
)

func TestBreakerOpensAfterConsecutiveFailuresAndProbes(t *testing.T) {
	t.Parallel()
	var transitions []string
	b := New("a", Settings{ConsecutiveFailures: 3, OpenTimeout: 20 * time.Millisecond}, func(_ string, from, to State) {
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
	deadline := time.Now().Add(2 * time.Second)
	for b.State() != HalfOpen && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
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
	b := New("c", Settings{ConsecutiveFailures: 2, OpenTimeout: 20 * time.Millisecond}, nil)
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
	deadline := time.Now().Add(2 * time.Second)
	for b.State() != HalfOpen && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
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
	b := New("a", Settings{ConsecutiveFailures: 1, OpenTimeout: 30 * time.Millisecond}, nil)
	waitReady := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !b.Ready() {
			if time.Now().After(deadline) {
				t.Fatalf("never ready %s (state %v)", what, b.State())
			}
			time.Sleep(2 * time.Millisecond)
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
