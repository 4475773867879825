package upstream

// How much an instance has to do: the prompts comfygate sent it and did
// not see finish, and the queue it last reported. Selection reads them on
// every pick.

import "sync/atomic"

// Workload is an instance's work accounting (Instance.Workload).
type Workload struct {
	inst *Instance // its instance, for metrics and drain removal; nil for an Instance a pool did not build

	inflight   atomic.Int64 // prompts sent and not finished
	queueDepth atomic.Int64 // queue_remaining the instance last reported
}

// CountInflight changes the count of prompts sent and not finished, and
// nothing else: the prompt owner counts under its own lock, in transition
// order, and calls InflightChanged once it released it.
func (w *Workload) CountInflight(delta int64) { w.inflight.Add(delta) }

// InflightChanged publishes the in-flight count (its metric) after
// CountInflight, and removes a draining instance that reached 0.
func (w *Workload) InflightChanged() { w.add(0) }

// addInflight changes the count of prompts sent and not finished and
// updates its metric. A draining instance leaves the pool when it reaches 0.
func (w *Workload) add(delta int64) {
	n := w.inflight.Add(delta)
	if n < 0 {
		// A double finish must not make selection favour this instance forever.
		w.inflight.CompareAndSwap(n, 0)
		n = 0
	}
	if w.inst == nil || w.inst.reg == nil {
		return
	}
	w.inst.reg.m.SetInflight(w.inst.Name, int(n))
	if n == 0 && w.inst.state.draining.Load() {
		w.inst.reg.removeIfDrained(w.inst)
	}
}

// QueueDepth is the queue_remaining the instance last reported.
func (w *Workload) QueueDepth() int64 { return w.queueDepth.Load() }

// SetQueueDepth records the queue_remaining the instance reported.
func (w *Workload) SetQueueDepth(n int64) {
	w.queueDepth.Store(n)
	if w.inst != nil && w.inst.reg != nil {
		w.inst.reg.m.SetQueueDepth(w.inst.Name, int(n))
	}
}

// Total is the instance's outstanding work: the larger of the prompts
// comfygate picked it for and did not see finish (in flight) and the queue
// it last reported (queue_remaining: pending plus running).
//
// Not their sum: the two cover the same prompts. Every prompt comfygate
// sent is in both once the instance reported it, and the report comes
// late (it is sent when the queue changes and read after the prompt's
// answer, or later under load), so a sum counts a burst's prompts twice at
// the instances that answered first and sends the rest elsewhere. In
// flight counts a prompt from the pick on, so it leads during a burst; the
// report also covers prompts from elsewhere (a client talking to the
// instance directly, another replica), so it leads when there are such.
func (w *Workload) Total() int64 {
	return max(w.inflight.Load(), w.queueDepth.Load(), 0)
}
