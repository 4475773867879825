// Package breaker owns the circuit breaker kept for each upstream instance:
// a sony/gobreaker two-step breaker fed by the outcome of real traffic, its
// settings, and its state changes.
package breaker

import (
	"errors"
	"sync/atomic"
	"time"

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
	// Interval clears the counts while closed; 0 never clears.
	Interval time.Duration
}

// Breaker guards one upstream.
type Breaker struct {
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]

	// open and openUntil mirror gobreaker's state for Ready, which
	// selection asks for every instance on every request: gobreaker's own
	// State takes its mutex and reads the clock. Both are set in the state
	// change callback, which gobreaker calls under its mutex, in order.
	open      atomic.Bool
	openUntil atomic.Int64 // Unix nanoseconds when the open state ends
	timeout   time.Duration
}

// New returns a breaker named after its upstream. onChange, if not nil, is
// called once per transition.
func New(name string, s Settings, onChange func(name string, from, to State)) *Breaker {
	threshold := s.ConsecutiveFailures
	st := gobreaker.Settings{
		Name:        name,
		MaxRequests: 1, // half-open lets exactly one probe through
		Interval:    s.Interval,
		Timeout:     s.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= threshold },
		IsExcluded:  func(err error) bool { return errors.Is(err, errExcluded) },
	}
	b := &Breaker{timeout: s.OpenTimeout}
	if b.timeout <= 0 {
		b.timeout = 60 * time.Second // gobreaker's default for a zero Timeout
	}
	st.OnStateChange = func(name string, from, to State) {
		if to == Open {
			b.openUntil.Store(time.Now().Add(b.timeout).UnixNano())
		}
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
	report, err := b.cb.Allow()
	if err != nil {
		return Ticket{}, ErrOpen
	}
	return Ticket{report: report}, nil
}

// Ticket is one request Allow let through. It is a value, not a closure
// around gobreaker's, so that asking the breaker costs the request no more
// than gobreaker's own allocation.
type Ticket struct {
	report func(error)
}

// Done reports the request's outcome. The zero Ticket reports nothing.
func (t Ticket) Done(o Outcome) {
	if t.report == nil {
		return
	}
	switch o {
	case Success:
		t.report(nil)
	case Failure:
		t.report(errFailure)
	default:
		t.report(errExcluded)
	}
}

// State returns the current state; an open breaker whose timeout passed
// reports half-open.
func (b *Breaker) State() State { return b.cb.State() }

// Ready reports whether Allow could let a request through now (closed or
// half-open). While closed it takes no lock; an open breaker whose
// timeout passed is asked, which turns it half-open.
func (b *Breaker) Ready() bool {
	if !b.open.Load() {
		return true
	}
	if time.Now().UnixNano() < b.openUntil.Load() {
		return false
	}
	return b.cb.State() != Open
}
