package testkit

import (
	"sort"
	"sync"
	"time"

	"github.com/comfygate/comfygate/internal/clock"
)

// FakeClock is a clock.Clock that moves only when Advance or Set is called.
// Timers fire in deadline order as time passes them: a channel timer gets
// the fake time on its buffered channel, an AfterFunc timer runs its func in
// a new goroutine (as time.AfterFunc does). Safe for concurrent use.
type FakeClock struct {
	mu     sync.Mutex // guards now and timers
	now    time.Time
	timers []*fakeTimer
}

var _ clock.Clock = (*FakeClock)(nil)

// NewFakeClock starts at start (the zero time if start is zero is fine, but
// a fixed date reads better in failures).
func NewFakeClock(start time.Time) *FakeClock { return &FakeClock{now: start} }

// Now returns the fake time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After is NewTimer(d).C().
func (c *FakeClock) After(d time.Duration) <-chan time.Time { return c.NewTimer(d).C() }

// NewTimer returns a timer that fires once Advance passes now+d.
func (c *FakeClock) NewTimer(d time.Duration) clock.Timer {
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1)}
	c.arm(t, d)
	return t
}

// AfterFunc returns a timer that runs f once Advance passes now+d.
func (c *FakeClock) AfterFunc(d time.Duration, f func()) clock.Timer {
	t := &fakeTimer{c: c, f: f}
	c.arm(t, d)
	return t
}

// Pending is the number of armed timers: a test waits for the code under
// test to arm its timer (Eventually(t, ..., func() bool { return c.Pending() > 0 }))
// before advancing past it.
func (c *FakeClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Advance moves time forward by d, firing every timer whose deadline is
// reached, earliest first, each at its own deadline.
func (c *FakeClock) Advance(d time.Duration) { c.Set(c.Now().Add(d)) }

// Set moves time to to (never backwards), firing timers as Advance does.
func (c *FakeClock) Set(to time.Time) {
	for {
		c.mu.Lock()
		sort.SliceStable(c.timers, func(i, j int) bool { return c.timers[i].when.Before(c.timers[j].when) })
		if len(c.timers) == 0 || c.timers[0].when.After(to) {
			if to.After(c.now) {
				c.now = to
			}
			c.mu.Unlock()
			return
		}
		t := c.timers[0]
		c.timers = c.timers[1:]
		if t.when.After(c.now) {
			c.now = t.when
		}
		now := c.now
		c.mu.Unlock()
		t.fire(now)
	}
}

func (c *FakeClock) arm(t *fakeTimer, d time.Duration) {
	c.mu.Lock()
	t.when = c.now.Add(d)
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	if d <= 0 {
		c.Advance(0)
	}
}

// disarm removes t; it reports whether t was pending.
func (c *FakeClock) disarm(t *fakeTimer) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.timers {
		if x == t {
			c.timers = append(c.timers[:i:i], c.timers[i+1:]...)
			return true
		}
	}
	return false
}

type fakeTimer struct {
	c    *FakeClock
	ch   chan time.Time
	f    func()
	when time.Time // guarded by c.mu
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool { return t.c.disarm(t) }

func (t *fakeTimer) Reset(d time.Duration) bool {
	was := t.c.disarm(t)
	t.c.arm(t, d)
	return was
}

func (t *fakeTimer) fire(now time.Time) {
	if t.f != nil {
		go t.f()
		return
	}
	select {
	case t.ch <- now:
	default: // like time.Timer: an undrained channel keeps the first value
	}
}
