package prompts

import (
	"sync"
	"sync/atomic"

	"github.com/comfygate/comfygate/upstream"
)

// index finds prompts across the instances' owners without a lock that
// they share: by client-facing id, by (instance, upstream id), and the
// prompts comfygate submitted that are not done. Its maps are concurrent
// maps (sync.Map: readers never block, and writers of different keys do
// not wait for each other). Who writes which key is the step rule
// (steps.step): a prompt's keys change only in its own steps, which run
// one at a time on the owner of its instance, and, before its first send,
// by its submitter (claim, and forget when no instance takes it), so two
// writers never race on one prompt's keys; the done queue evicts with
// compare-and-delete, so it never removes a key that another prompt took
// meanwhile.
type index struct {
	byID  sync.Map     // string (client-facing id) -> *Prompt
	byUp  sync.Map     // upKey -> *Prompt
	live  sync.Map     // *Prompt -> struct{}: submitted by comfygate and not done
	nlive atomic.Int64 // len(live)
	done  doneQueue
}

// get returns the prompt with client-facing id.
func (x *index) get(id string) (*Prompt, bool) {
	v, ok := x.byID.Load(id)
	if !ok {
		return nil, false
	}
	return v.(*Prompt), true
}

// getUpstream returns the prompt that has id at inst (nil if none).
func (x *index) getUpstream(inst *upstream.Instance, id string) *Prompt {
	if v, ok := x.byUp.Load(upKey{inst, id}); ok {
		return v.(*Prompt)
	}
	return nil
}

// claim gives pr.ID to pr unless a prompt that is not done holds it; then
// pr gets fresh UUIDs until one is free. One compare-and-swap decides, so
// two submissions of one id at once cannot both take it. When the holder
// is the same submission as pr (a client's request sent again while the
// first was on its way: the same Prompt.submission and owner), pr takes
// nothing and same is that holder.
func (x *index) claim(pr *Prompt, fresh func() string) (renamed bool, same *Prompt) {
	for {
		v, loaded := x.byID.LoadOrStore(pr.ID, pr)
		if !loaded || v == pr {
			return renamed, nil
		}
		old := v.(*Prompt)
		switch {
		case old.State() == PromptDone && x.byID.CompareAndSwap(pr.ID, old, pr):
			return renamed, nil
		case old.State() == PromptDone:
			continue // replaced meanwhile: look again
		case !renamed && pr.submission != "" && old.submission == pr.submission && old.owner == pr.owner:
			return false, old
		}
		renamed = true
		pr.ID = fresh()
	}
}

// dropID removes pr's id unless another prompt holds it now.
func (x *index) dropID(pr *Prompt) { x.byID.CompareAndDelete(pr.ID, pr) }

// repin moves pr's (instance, upstream id) key. In pr's step.
func (x *index) repin(pr *Prompt, oldInst *upstream.Instance, oldID string, inst *upstream.Instance, id string) {
	if oldInst == inst && oldID == id {
		return
	}
	if oldInst != nil && oldID != "" {
		x.byUp.CompareAndDelete(upKey{oldInst, oldID}, pr)
	}
	if inst != nil && id != "" {
		x.byUp.Store(upKey{inst, id}, pr)
	}
}

// setLive records whether pr is live (submitted by comfygate, not done).
// In pr's step.
func (x *index) setLive(pr *Prompt, live bool) {
	if live {
		if _, had := x.live.LoadOrStore(pr, struct{}{}); !had {
			x.nlive.Add(1)
		}
		return
	}
	if _, had := x.live.LoadAndDelete(pr); had {
		x.nlive.Add(-1)
	}
}

// eachLive calls f for the live prompts until it returns false. A prompt
// that becomes live or done meanwhile may or may not be seen.
func (x *index) eachLive(f func(pr *Prompt) bool) {
	x.live.Range(func(k, _ any) bool { return f(k.(*Prompt)) })
}

// livePinnedTo returns the live prompts pinned to inst.
func (x *index) livePinnedTo(inst *upstream.Instance) []*Prompt {
	var out []*Prompt
	x.eachLive(func(pr *Prompt) bool {
		if pr.Instance() == inst {
			out = append(out, pr)
		}
		return true
	})
	return out
}

// forget removes pr from the index entirely (a submission nobody took).
// In pr's step, or by its submitter.
func (x *index) forget(pr *Prompt) {
	v := pr.snap()
	x.repin(pr, v.instance, v.life.UpstreamID, nil, "")
	x.dropID(pr)
	x.setLive(pr, false)
}

// record appends a finished (or adopted) prompt to the done queue and
// evicts the oldest beyond maxDonePrompts from the other maps.
func (x *index) record(pr *Prompt) {
	for _, old := range x.done.push(pr, maxDonePrompts) {
		x.dropID(old)
		v := old.snap()
		x.byUp.CompareAndDelete(upKey{v.instance, v.life.UpstreamID}, old)
	}
}

// doneQueue is the finished prompts, oldest first, bounded: its own lock
// guards only the queue, for the moment of a push.
type doneQueue struct {
	mu   sync.Mutex // guards q, head
	q    []*Prompt
	head int
}

// push appends pr and returns the prompts dropped to keep at most max.
func (d *doneQueue) push(pr *Prompt, max int) (evicted []*Prompt) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.q = append(d.q, pr)
	for len(d.q)-d.head > max {
		evicted = append(evicted, d.q[d.head])
		d.q[d.head] = nil
		d.head++
	}
	// Compact once the dead head is as long as the live part.
	if d.head > 1024 && d.head*2 > len(d.q) {
		n := copy(d.q, d.q[d.head:])
		clear(d.q[n:])
		d.q = d.q[:n]
		d.head = 0
	}
	return evicted
}
