package upstream

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Selector decides which instance takes new work: among the Available
// instances of the registry, the least loaded for its weight, round-robin
// among ties. Which instances a prompt may go to (its labels, what it
// needs installed) is the caller's filter (package placement). It reads
// the registry's list under the registry's lock.
type Selector struct {
	reg    *registry
	rr     atomic.Uint64
	pickMu sync.Mutex // serializes Reserve: each pick sees the ones before it counted
}

// Healthy returns the instances that are Available, in config order.
func (s *Selector) Healthy() []*Instance {
	return s.AppendHealthy(nil)
}

// AppendHealthy appends the instances that are Available, in config order,
// to dst and returns the result: Healthy into a buffer the caller owns, so
// that the request path asks without allocating.
func (s *Selector) AppendHealthy(dst []*Instance) []*Instance {
	s.reg.mu.RLock()
	defer s.reg.mu.RUnlock()
	for _, inst := range s.reg.instances {
		if inst.Available() {
			dst = append(dst, inst)
		}
	}
	return dst
}

// Select picks the instance for new work: Available, least outstanding
// work per unit of weight, round-robin among ties, skipping exclude.
// ErrNoUpstream when none.
//
// An instance whose socket just dropped (suspect, not yet confirmed dead)
// is chosen only when no other instance is available. A half-open breaker
// counts as available: the caller's Allow lets its one probe through, and
// when Allow refuses the caller selects again excluding it.
func (s *Selector) Select(exclude ...*Instance) (*Instance, error) {
	return s.SelectFor(nil, exclude...)
}

// SelectFor is Select among the instances ok accepts (nil: all): the
// instances that can run a prompt (catalogue) or carry the labels it
// asks for.
func (s *Selector) SelectFor(ok func(*Instance) bool, exclude ...*Instance) (*Instance, error) {
	s.reg.mu.RLock()
	defer s.reg.mu.RUnlock()
	if inst := s.pickLocked(ok, exclude, false); inst != nil {
		return inst, nil
	}
	if inst := s.pickLocked(ok, exclude, true); inst != nil {
		return inst, nil
	}
	return nil, ErrNoUpstream
}

// Reserve picks the instance for a prompt and counts the prompt in its
// in-flight work at once: prefer when it is Available, not suspect, not
// excluded and ok accepts it, else SelectFor's choice. The caller's send
// takes the count over (CountInflight is not called again for it), or the
// caller gives it back with CountInflight(-1) and InflightChanged when no
// send follows. Reserves run one at a time, so the prompts of a burst each
// see the ones picked before them even before any of them is sent. It does
// not allocate.
func (s *Selector) Reserve(prefer *Instance, ok func(*Instance) bool, exclude ...*Instance) (*Instance, error) {
	s.pickMu.Lock()
	defer s.pickMu.Unlock()
	inst := prefer
	if inst == nil || !inst.Available() || inst.state.suspect.Load() || slices.Contains(exclude, inst) || (ok != nil && !ok(inst)) {
		var err error
		if inst, err = s.SelectFor(ok, exclude...); err != nil {
			return nil, err
		}
	}
	inst.workload.inflight.Add(1)
	return inst, nil
}

// pickLocked returns the least-loaded candidate, rotating among equals, or
// nil. It does not allocate. s.reg.mu must be held.
//
// Load is (work+1)/weight, the instance's outstanding work with the new
// prompt counted, per unit of weight: with equal weights the least work
// wins, and an idle instance of weight 2 is preferred over an idle one of
// weight 1, which gets its turn once the first holds 1 prompt. Compared by
// cross-multiplying, so no division and no float.
func (s *Selector) pickLocked(ok func(*Instance) bool, exclude []*Instance, suspects bool) *Instance {
	candidate := func(inst *Instance) bool {
		return inst.Available() && inst.state.suspect.Load() == suspects && !slices.Contains(exclude, inst) &&
			(ok == nil || ok(inst))
	}
	var best *Instance
	ties := 0
	for _, inst := range s.reg.instances {
		if !candidate(inst) {
			continue
		}
		switch c := compareLoad(inst, best); {
		case best == nil || c < 0:
			best, ties = inst, 1
		case c == 0:
			ties++
		}
	}
	if ties == 0 {
		return nil
	}
	if ties == 1 {
		return best
	}
	// Rotate by position: the first least-loaded candidate at or
	// after the cursor, in config order; the cursor moves past it.
	n := len(s.reg.instances)
	start := int(s.rr.Load() % uint64(n))
	for k := range n {
		i := (start + k) % n
		inst := s.reg.instances[i]
		if candidate(inst) && compareLoad(inst, best) == 0 {
			s.rr.Store(uint64(i + 1))
			return inst
		}
	}
	// The work changed between the two passes; any candidate will do.
	return best
}

// compareLoad orders a and b by (work+1)/weight; b == nil sorts last.
func compareLoad(a, b *Instance) int {
	if b == nil {
		return -1
	}
	la := (a.workload.Total() + 1) * int64(b.Weight())
	lb := (b.workload.Total() + 1) * int64(a.Weight())
	switch {
	case la < lb:
		return -1
	case la > lb:
		return 1
	}
	return 0
}

// QueueRemaining is the fleet-wide queue_remaining a client should see:
// the sum over healthy instances of the queue_remaining each last reported,
// which is what one ComfyUI running all of the fleet's work would report
// (its pending plus running prompts). Unhealthy instances are left out:
// their last report is stale and their prompts are being moved.
func (s *Selector) QueueRemaining() int {
	s.reg.mu.RLock()
	defer s.reg.mu.RUnlock()
	n := int64(0)
	for _, inst := range s.reg.instances {
		if inst.state.healthy.Load() {
			n += max(inst.workload.queueDepth.Load(), 0)
		}
	}
	return int(n)
}

// availability wakes whoever waits for an instance to become selectable
// (AvailWatch, AwaitAvailable) when an instance's health, breaker,
// suspicion, drain or warm-up changes.
type availability struct {
	mu sync.Mutex    // guards ch
	ch chan struct{} // closed (and dropped) when availability changes; nil when nobody waits
}

// changed wakes every AwaitAvailable: an instance's health, breaker or
// suspicion changed, so one may be selectable now.
func (a *availability) changed() {
	a.mu.Lock()
	if a.ch != nil {
		close(a.ch)
		a.ch = nil
	}
	a.mu.Unlock()
}

// watch returns a channel closed at the next change (Pool.AvailWatch).
func (a *availability) watch() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ch == nil {
		a.ch = make(chan struct{})
	}
	return a.ch
}

// AwaitAvailable waits until watch (from AvailWatch) is closed, deadline
// passes or ctx ends.
func AwaitAvailable(ctx context.Context, watch <-chan struct{}, deadline time.Time) {
	tm := time.NewTimer(time.Until(deadline))
	defer tm.Stop()
	select {
	case <-watch:
	case <-tm.C:
	case <-ctx.Done():
	}
}
