// Package breaker owns the circuit breaker kept for each upstream instance:
// a sony/gobreaker two-step breaker fed by the outcome of real traffic, its
// settings, and its state changes.
//
// gobreaker reads the wall clock itself and takes no clock, so both of
// its timers are kept here, on Settings.Clock. The open period: gobreaker
// is given the shortest open timeout it accepts and is not asked anything
// while this package's clock says the breaker is still open. The
// closed-state Interval: gobreaker is given none (its counts never clear)
// and decides to open on this package's count of consecutive failures,
// which clears when the interval passes on Settings.Clock. A test can then
// cross either by advancing a fake clock.
package breaker

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/clock"
	"github.com/sony/gobreaker/v2"
)

// ErrOpen is returned by Allow while the breaker refuses traffic.
var ErrOpen = errors.New("circuit breaker open")

// Outcome is what one request says about the instance it went to.
type Outcome uint8

// The outcomes a request reports.
const (
	// Success: the instance answered. Closes a half-open breaker.
	Success Outcome = iota
	// Failure: the instance is to blame (refused or reset connection,
	// timeout, 502/503/504, a 5xx to comfygate's own request). Counts
	// towards opening; reopens a half-open breaker.
	Failure
	// Excluded: the request says nothing about the instance (the client
	// went away, comfygate's own limits, the client's own bad request).
	// Neither counts nor closes a half-open breaker: its probe slot is
	// given back for the next request.
	Excluded
)

// String gives the metric and log value.
func (o Outcome) String() string {
	switch o {
	case Success:
		return "success"
	case Failure:
		return "failure"
	default:
		return "excluded"
	}
}

var (
	errFailure  = errors.New("upstream failed")
	errExcluded = errors.New("outcome excluded")
)

// State is a breaker state; String gives the metric and log value.
type State = gobreaker.State

// The breaker states.
const (
	Closed   = gobreaker.StateClosed
	HalfOpen = gobreaker.StateHalfOpen
	Open     = gobreaker.StateOpen
)

// Settings configure one breaker.
type Settings struct {
	// ConsecutiveFailures opens the breaker (breaker.consecutive_failures,
	// which config sets and validates).
	ConsecutiveFailures uint32
	// OpenTimeout is how long it stays open before it lets one probe through.
	OpenTimeout time.Duration
	// Interval clears the counts while closed; 0 never clears. A window
	// starts when the breaker closes (or is made) and the next starts at
	// the first request after it passed, as with gobreaker's own Interval.
	Interval time.Duration
	// Clock times the open period and Interval; nil is clock.Real.
	Clock clock.Clock
}

// gobreakerOpen is the open timeout gobreaker is given: the shortest it
// accepts (it takes 0 for its 60s default). The real open period is
// Breaker.timeout on Breaker.clk, enforced before gobreaker is asked.
const gobreakerOpen = time.Nanosecond

// Breaker guards one upstream.
type Breaker struct {
	cb  *gobreaker.TwoStepCircuitBreaker[struct{}]
	clk clock.Clock

	// mu is held around every call into cb, so that nothing reaches
	// gobreaker between the check of the open period and the call: with
	// its own open timeout all but zero, any call while open would turn it
	// half-open at once. The state change callback runs inside those
	// calls, so it is under mu too.
	mu sync.Mutex
	// until is when the open state ends, on clk; meaningful while open.
	// Guarded by mu.
	until time.Time

	// The closed state's counts, in place of gobreaker's, whose Interval
	// would run on the wall clock. Guarded by mu.
	//
	// failures counts consecutive failures in the current window; the
	// breaker opens when it reaches the threshold.
	failures uint32
	// gen changes with every state change and every new window: a ticket
	// from an older one reports nothing (gobreaker drops it the same way).
	gen uint64
	// expiry is when the current closed-state window ends; zero while not
	// closed or with no Interval.
	expiry time.Time

	// open and openUntil mirror the state for Ready, which selection asks
	// for every instance on every request without taking mu. Both are set
	// in the state change callback, in order.
	open      atomic.Bool
	openUntil atomic.Int64 // Unix nanoseconds on clk when the open state ends
	timeout   time.Duration
	interval  time.Duration // Settings.Interval; 0: the counts never clear
}

// New returns a breaker named after its upstream. onChange, if not nil, is
// called once per transition.
func New(name string, s Settings, onChange func(name string, from, to State)) *Breaker {
	threshold := s.ConsecutiveFailures
	st := gobreaker.Settings{
		Name:        name,
		MaxRequests: 1, // half-open lets exactly one probe through
		Interval:    0, // the window is timed here (b.expiry)
		Timeout:     gobreakerOpen,
		IsExcluded:  func(err error) bool { return errors.Is(err, errExcluded) },
	}
	b := &Breaker{timeout: s.OpenTimeout, clk: s.Clock, interval: max(s.Interval, 0)}
	// gobreaker asks only from inside Done, under b.mu, right after the
	// failure was counted in b.failures.
	st.ReadyToTrip = func(gobreaker.Counts) bool { return b.failures >= threshold }
	if b.timeout <= 0 {
		b.timeout = 60 * time.Second // gobreaker's default for a zero Timeout
	}
	if b.clk == nil {
		b.clk = clock.Real
	}
	b.newWindowLocked(Closed, b.clk.Now())
	st.OnStateChange = func(name string, from, to State) {
		now := b.clk.Now()
		if to == Open {
			b.until = now.Add(b.timeout)
			b.openUntil.Store(b.until.UnixNano())
		}
		b.newWindowLocked(to, now)
		b.open.Store(to == Open)
		if onChange != nil {
			onChange(name, from, to)
		}
	}
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](st)
	return b
}

// Allow asks to send one request. On success the caller must call the
// ticket's Done exactly once with the request's outcome. While open, or
// half-open with its probe out, it returns ErrOpen.
func (b *Breaker) Allow() (Ticket, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openLocked() {
		return Ticket{}, ErrOpen
	}
	b.rollLocked()
	report, err := b.cb.Allow()
	if err != nil {
		return Ticket{}, ErrOpen
	}
	return Ticket{b: b, report: report, gen: b.gen}, nil
}

// newWindowLocked starts a new generation in state st at now: the counts
// clear, older tickets go stale, and a closed state with an Interval gets
// a window ending at now+Interval. b.mu must be held (or b not yet shared).
func (b *Breaker) newWindowLocked(st State, now time.Time) {
	b.gen++
	b.failures = 0
	b.expiry = time.Time{}
	if st == Closed && b.interval > 0 {
		b.expiry = now.Add(b.interval)
	}
}

// rollLocked starts a new window when the closed state's current one has
// passed on clk. b.mu must be held.
func (b *Breaker) rollLocked() {
	if !b.expiry.IsZero() && b.expiry.Before(b.clk.Now()) {
		b.newWindowLocked(Closed, b.clk.Now())
	}
}

// openLocked reports whether the open period is still running on clk;
// gobreaker must not be asked then. b.mu must be held.
func (b *Breaker) openLocked() bool {
	return b.open.Load() && b.clk.Now().Before(b.until)
}

// Ticket is one request Allow let through. It is a value, not a closure
// around gobreaker's, so that asking the breaker costs the request no more
// than gobreaker's own allocation.
type Ticket struct {
	b      *Breaker
	report func(error)
	gen    uint64 // b.gen when Allow let it through
}

// Done reports the request's outcome. The zero Ticket reports nothing.
func (t Ticket) Done(o Outcome) {
	if t.report == nil {
		return
	}
	t.b.mu.Lock()
	defer t.b.mu.Unlock()
	if t.b.openLocked() {
		// The ticket is from before the breaker opened: gobreaker would
		// drop its outcome (an older generation), but asking it would end
		// its own, all but zero, open timeout.
		return
	}
	t.b.rollLocked()
	if t.gen != t.b.gen {
		// From an earlier window or state: it says nothing about this one.
		return
	}
	switch o {
	case Success:
		t.b.failures = 0
		t.report(nil)
	case Failure:
		t.b.failures++
		t.report(errFailure)
	default:
		t.report(errExcluded)
	}
}

// State returns the current state; an open breaker whose timeout passed
// reports half-open.
func (b *Breaker) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openLocked() {
		return Open
	}
	b.rollLocked()
	return b.cb.State()
}

// Ready reports whether Allow could let a request through now (closed or
// half-open). While closed it takes no lock; an open breaker whose
// timeout passed is asked, which turns it half-open.
func (b *Breaker) Ready() bool {
	if !b.open.Load() {
		return true
	}
	if b.clk.Now().UnixNano() < b.openUntil.Load() {
		return false
	}
	return b.State() != Open
}
