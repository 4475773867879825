package upstream

import "slices"

// Healthy returns the instances that are Available, in config order.
func (p *Pool) Healthy() []*Instance {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]*Instance, 0, len(p.instances))
	for _, inst := range p.instances {
		if inst.Available() {
			out = append(out, inst)
		}
	}
	return out
}

// Select picks the instance for new work: Available, least outstanding
// work (in-flight + reported queue), round-robin among ties, skipping
// exclude. ErrNoUpstream when none.
//
// An instance whose socket just dropped (suspect, not yet confirmed dead)
// is chosen only when no other instance is available. A half-open breaker
// counts as available: the caller's Allow lets its one probe through, and
// when Allow refuses the caller selects again excluding it.
func (p *Pool) Select(exclude ...*Instance) (*Instance, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if inst := p.pickLocked(exclude, false); inst != nil {
		return inst, nil
	}
	if inst := p.pickLocked(exclude, true); inst != nil {
		return inst, nil
	}
	return nil, ErrNoUpstream
}

// pickLocked returns the least-loaded candidate, rotating among equals, or
// nil. It does not allocate. p.mu must be held.
func (p *Pool) pickLocked(exclude []*Instance, suspects bool) *Instance {
	candidate := func(inst *Instance) bool {
		return inst.Available() && inst.suspect.Load() == suspects && !slices.Contains(exclude, inst)
	}
	best, ties := int64(-1), 0
	for _, inst := range p.instances {
		if !candidate(inst) {
			continue
		}
		switch w := inst.work(); {
		case best < 0 || w < best:
			best, ties = w, 1
		case w == best:
			ties++
		}
	}
	if ties == 0 {
		return nil
	}
	// Rotate by position: the first least-loaded candidate at or
	// after the cursor, in config order; the cursor moves past it.
	n := len(p.instances)
	start := int(p.rr.Load() % uint64(n))
	for k := range n {
		i := (start + k) % n
		inst := p.instances[i]
		if candidate(inst) && inst.work() == best {
			p.rr.Store(uint64(i + 1))
			return inst
		}
	}
	// The work changed between the two passes; any candidate will do.
	for _, inst := range p.instances {
		if candidate(inst) {
			return inst
		}
	}
	return nil
}

// work is the instance's outstanding work: prompts comfygate sent and did
// not see finish, plus the queue the instance last reported.
func (i *Instance) work() int64 {
	return max(i.inflight.Load(), 0) + max(i.queueDepth.Load(), 0)
}

// QueueRemaining is the fleet-wide queue_remaining a client should see:
// the sum over healthy instances of the queue_remaining each last reported,
// which is what one ComfyUI running all of the fleet's work would report
// (its pending plus running prompts). Unhealthy instances are left out:
// their last report is stale and their prompts are being moved.
func (p *Pool) QueueRemaining() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	n := int64(0)
	for _, inst := range p.instances {
		if inst.healthy.Load() {
			n += max(inst.queueDepth.Load(), 0)
		}
	}
	return int(n)
}
