package upstream

// Instance events: the pool publishes what happens to its instances on
// subscriptions (Subscribe); whoever runs work on the instances (package
// prompts) subscribes and reacts. The pool never waits for a subscriber.

import (
	"context"
	"sync"
)

// EventKind says what happened to an instance.
type EventKind int

const (
	// EventAdded: the instance joined the pool (at Start, by discovery or
	// a reload). Start publishes every instance it begins with, after its
	// first health checks.
	EventAdded EventKind = iota + 1
	// EventRemoved: discovery or a reload removed the instance; it gets no
	// new work and leaves the pool once nothing of it is left to finish.
	EventRemoved
	// EventDrained: a removed instance left the pool (EventRemoved came
	// before); nothing is sent to it any more.
	EventDrained
	// EventUp: the health verdict turned healthy.
	EventUp
	// EventUnhealthy: the health verdict turned unhealthy.
	EventUnhealthy
	// EventSuspect: its event socket was lost (SocketLost) and a health
	// check is confirming it dead or alive.
	EventSuspect
	// EventBack: a suspect instance answered a health check again
	// (SocketLost's check passed, or SocketRestored's).
	EventBack
	// EventDown: the instance looks dead: its event socket is down and a
	// health check failed, or its breaker opened. Whether and when what
	// runs there moves is the subscriber's decision (the socket may come
	// back within failover.suspect_grace). It may come more than once per
	// death.
	EventDown
	// EventChanged: what the instance can run may have changed (it turned
	// healthy again or its socket reconnected: Comebacks counts them), so
	// a cache of its state (the catalogue) should read it again.
	EventChanged
	// EventWarmup: the instance is cold (warm-up configured, not yet run
	// since it joined or came back) and healthy: run its warm-up workflow
	// (Pool.WarmupWorkflow) and report with Pool.WarmupDone. It gets no
	// work until then; no new EventWarmup comes for it meanwhile.
	EventWarmup
)

var kindNames = [...]string{"", "added", "removed", "drained", "up", "unhealthy", "suspect", "back", "down", "changed", "warmup"}

func (k EventKind) String() string {
	if k > 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// InstanceEvent is one thing that happened to Inst.
type InstanceEvent struct {
	Kind EventKind
	Inst *Instance
}

// Subscription receives the pool's instance events in the order the pool
// published them (so in order per instance). Its queue has no bound: the
// pool appends and never waits, and nothing is dropped; a slow subscriber
// only lets its own queue grow (events are rare: a few per instance per
// state change). Events published before Subscribe are not replayed:
// subscribe before Start to hear of every instance.
type Subscription struct {
	bus *bus

	mu     sync.Mutex // guards queue, closed
	queue  []InstanceEvent
	closed bool
	wake   chan struct{} // holds a token while queue is not empty or closed
}

// bus delivers the pool's instance events to its subscriptions and holds
// the gate an instance's comeback must pass.
type bus struct {
	mu     sync.Mutex // guards subs, closed
	subs   []*Subscription
	closed bool

	gateMu sync.Mutex // guards gate
	gate   ComebackGate
}

// subscribe returns a new subscription to the instance events.
func (b *bus) subscribe() *Subscription {
	s := &Subscription{bus: b, wake: make(chan struct{}, 1)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		s.closed = true
		s.signal()
		return s
	}
	b.subs = append(b.subs, s)
	return s
}

// Next returns the next event, waiting for one; false when the
// subscription or the pool is closed (and its queue is empty) or ctx ends.
func (s *Subscription) Next(ctx context.Context) (InstanceEvent, bool) {
	for {
		if ev, ok, closed := s.TryNext(); ok || closed {
			return ev, ok
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return InstanceEvent{}, false
		}
	}
}

// TryNext returns the next event without waiting. ok: there was one;
// closed: none and none will come.
func (s *Subscription) TryNext() (ev InstanceEvent, ok, closed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return InstanceEvent{}, false, s.closed
	}
	ev = s.queue[0]
	s.queue[0] = InstanceEvent{}
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil // let the backing array go
	} else {
		s.signal()
	}
	return ev, true, false
}

// Close ends the subscription and drops what is queued: Next returns false.
func (s *Subscription) Close() {
	b := s.bus
	b.mu.Lock()
	for k, x := range b.subs {
		if x == s {
			b.subs = append(b.subs[:k:k], b.subs[k+1:]...)
			break
		}
	}
	b.mu.Unlock()
	s.mu.Lock()
	s.queue = nil
	s.mu.Unlock()
	s.close()
}

func (s *Subscription) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.signal()
}

// signal leaves a token in wake (one is enough: Next loops until empty).
func (s *Subscription) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Subscription) push(ev InstanceEvent) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.queue = append(s.queue, ev)
	s.mu.Unlock()
	s.signal()
}

// publish appends ev to every subscription; it never waits for one.
func (b *bus) publish(kind EventKind, inst *Instance) {
	ev := InstanceEvent{Kind: kind, Inst: inst}
	b.mu.Lock()
	defer b.mu.Unlock() // held while pushing: every subscriber sees one order
	for _, s := range b.subs {
		s.push(ev)
	}
}

// close ends every subscription (Pool.Close); what is queued is still
// delivered. Later subscriptions start closed.
func (b *bus) close() {
	b.mu.Lock()
	subs := b.subs
	b.subs, b.closed = nil, true
	b.mu.Unlock()
	for _, s := range subs {
		s.close()
	}
}

// ComebackGate decides whether an instance that was not healthy may be
// declared healthy: false keeps it out (the health check counts as
// failed) and the next check asks again. It runs in the health check,
// with no lock of the pool held.
type ComebackGate func(ctx context.Context, inst *Instance) bool

// setGate sets the gate every comeback must pass (nil: none).
func (b *bus) setGate(g ComebackGate) {
	b.gateMu.Lock()
	defer b.gateMu.Unlock()
	b.gate = g
}

// comebackGate is the gate setGate set.
func (b *bus) comebackGate() ComebackGate {
	b.gateMu.Lock()
	defer b.gateMu.Unlock()
	return b.gate
}
