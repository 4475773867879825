// Package clock is a time source that tests can control: Real is the wall
// clock and internal/testkit.FakeClock a fake one, so that code taking a
// Clock lets a test cross a timeout or a grace period by advancing time
// instead of sleeping. The breakers (breaker.Settings.Clock) and the
// upstream pool's health checks and failover grace (upstream.NewWithClock)
// take one; the binary passes Real.
package clock

import "time"

// Clock tells the time and makes timers. Real is the wall clock.
type Clock interface {
	// Now is time.Now.
	Now() time.Time
	// After is time.After.
	After(d time.Duration) <-chan time.Time
	// NewTimer is time.NewTimer.
	NewTimer(d time.Duration) Timer
	// AfterFunc is time.AfterFunc: f runs in its own goroutine.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is the part of *time.Timer that code uses; C is a method so that a
// fake can hand out its own channel.
type Timer interface {
	// C delivers the time when the timer fires (nil for AfterFunc timers).
	C() <-chan time.Time
	// Stop is (*time.Timer).Stop.
	Stop() bool
	// Reset is (*time.Timer).Reset.
	Reset(d time.Duration) bool
}

// Real is the wall clock.
var Real Clock = realClock{}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (realClock) NewTimer(d time.Duration) Timer         { return realTimer{time.NewTimer(d)} }
func (realClock) AfterFunc(d time.Duration, f func()) Timer {
	return realTimer{time.AfterFunc(d, f)}
}

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time        { return r.t.C }
func (r realTimer) Stop() bool                 { return r.t.Stop() }
func (r realTimer) Reset(d time.Duration) bool { return r.t.Reset(d) }
