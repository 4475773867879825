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
		done(true)
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
	probe(false)
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
	for _, failed := range []bool{true, false, true, false, true} {
		done, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		done(failed)
	}
	if b.State() != Closed {
		t.Fatalf("alternating failures opened the breaker: %v", b.State())
	}
}
