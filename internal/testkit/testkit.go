// Package testkit is what comfygate's tests share, and only tests import
// it: simulated instances on free loopback ports (Sims), the one scripted
// ComfyUI for what a simulator cannot be made to do (Mini: the test decides
// every answer and event, when it comes, and whether the instance fails,
// hangs or refuses), the gateway builder (Start), the test configuration
// (Config), one bounded wait (Eventually), a fake clock, a fault-injecting
// TCP proxy to put in front of an instance (FaultProxy), a load balancer
// to put in front of several gateways (RoundRobin, Split), a real
// redis-server on a loopback port (Redis), the real programs tests run
// (Tool: skipped without them, failed in CI), and a client that speaks
// ComfyUI's protocol like ComfyUI's own websocket example (Client).
//
// It imports comfysim, config, metrics, internal packages and fasthttp
// only, so the internal tests of upstream, prompts, jobs and proxy can use
// it. Start builds a gateway from the constructors it is given (a Wiring):
// internal/testkit/stack gives it every part, for tests outside those
// packages; their own internal tests give the parts they can import.
package testkit

import (
	"testing"
	"time"
)

// WaitBound bounds every wait of Eventually: long enough for a loaded
// 2-core machine, short enough that a stuck test fails instead of hanging.
const WaitBound = 20 * time.Second

// Eventually polls cond until it holds, failing the test (naming what it
// waited for) when WaitBound passes first. cond runs in the test's
// goroutine; it must not call t.Fatal.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	EventuallyWithin(t, WaitBound, what, cond)
}

// EventuallyWithin is Eventually with its own bound.
func EventuallyWithin(t testing.TB, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(bound, cond) {
		t.Fatalf("timed out after %v waiting for %s", bound, what)
	}
}

// Poll polls cond until it holds (true) or bound passes (false). The poll
// interval grows from 2 ms to 50 ms, so long waits cost little CPU.
func Poll(bound time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(bound)
	wait := 2 * time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait)
		wait = min(wait*2, 50*time.Millisecond)
	}
	return true
}

// PollEvery is Poll at a fixed interval, for a condition that holds only
// for a moment (a prompt that runs for one node time) or a wait whose end
// is measured, which Poll's growing interval would miss or blur.
func PollEvery(bound, every time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(every)
	}
	return true
}
