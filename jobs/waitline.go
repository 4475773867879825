package jobs

import (
	"fmt"
	"slices"
	"time"

	"github.com/valyala/fasthttp"
)

// waitLine is the wait line, the jobs taken from it and not finished,
// and the run-time estimates made of both. It is guarded by the engine's
// lock.
//
// The line is fair across API keys: each key's jobs wait in their order
// of arrival, and the keys with waiting jobs take turns (round robin):
// the key at the head of the ring gives its first job and goes to the
// back of the ring while it has more. A key whose first job joins goes
// to the back of the ring. With keys off every job is the one key "",
// and the line is first come first served.
type waitLine struct {
	maxWaiting      int               // jobs.max_waiting
	maxWaitingBytes int64             // jobs.max_waiting_bytes
	byKey           map[string][]*job // each key's waiting jobs, first to go first
	ring            []string          // the keys with waiting jobs, in turn: ring[0] gives the next job
	waiting         int               // all keys' waiting jobs
	active          map[*job]struct{} // taken from the line, not finished
	est             map[string]*ewma  // run time per workflow
}

func newWaitLine(maxWaiting int, maxWaitingBytes int64) *waitLine {
	return &waitLine{maxWaiting: maxWaiting, maxWaitingBytes: maxWaitingBytes, byKey: map[string][]*job{},
		active: map[*job]struct{}{}, est: map[string]*ewma{}}
}

// lineKey is the key j waits under: its API key's name ("" with keys off).
func lineKey(j *job) string { return j.meta.owner }

// runEstimate is the expected run time of one job of the workflow.
func (s *waitLine) runEstimate(wf string) time.Duration {
	return s.est[wf].value(defaultRunEstimate)
}

// remaining is the expected run time left for j.
func (s *waitLine) remaining(j *job) time.Duration {
	d := s.runEstimate(j.wf.name)
	return d * time.Duration(100-j.prog.reported) / 100
}

// estimate is the expected time until j completes: the work of the
// jobs ahead of it (those at the instances and those dispatched before it
// from the line) spread over the instances that run in parallel, plus
// its own.
func (s *waitLine) estimate(j *job, parallel int) time.Duration {
	var ahead time.Duration
	if j.state == stWaiting {
		for x := range s.active {
			ahead += s.remaining(x)
		}
		for x := range s.inOrder {
			if x == j {
				break
			}
			ahead += s.remaining(x)
		}
	}
	return completionEstimate(ahead, s.remaining(j), parallel)
}

// position is the 1-based place of a waiting job in the line (one more
// than the jobs the rotation dispatches before it), 0 when it is no
// longer waiting.
func (s *waitLine) position(j *job) int {
	if j.remote && j.state == stWaiting {
		return j.remotePos
	}
	if j.state != stWaiting {
		return 0
	}
	key := lineKey(j)
	rank := slices.Index(s.byKey[key], j)
	if rank < 0 {
		return 0
	}
	// Round r of the rotation dispatches the r-th job of every key that
	// has one, in ring order: before j go the first rank jobs of every
	// key, then the rank-th job of the keys ahead of j's in the ring.
	pos, behind := 1, false
	for _, k := range s.ring {
		n := len(s.byKey[k])
		pos += min(n, rank)
		if k == key {
			behind = true
		} else if !behind && n > rank {
			pos++
		}
	}
	return pos
}

// inOrder yields the waiting jobs in the order the rotation dispatches
// them.
func (s *waitLine) inOrder(yield func(*job) bool) {
	keys := slices.Clone(s.ring)
	for round := 0; len(keys) > 0; round++ {
		more := keys[:0]
		for _, k := range keys {
			q := s.byKey[k]
			if !yield(q[round]) {
				return
			}
			if round+1 < len(q) {
				more = append(more, k)
			}
		}
		keys = more
	}
}

func (s *waitLine) check(wf *workflow, size int64, parallel, healthy int) *apiError {
	if healthy == 0 {
		return &apiError{status: fasthttp.StatusServiceUnavailable, typ: errNoUpstream,
			msg: "no ComfyUI instance is available", retryAfter: retryAfterSeconds(noUpstreamBackoff)}
	}
	if held, max := s.bytes()+size, s.maxWaitingBytes; max > 0 && held > max && s.waiting > 0 {
		// The waiting jobs' images are kept until the jobs end: bounded by
		// bytes as well as by count (a lone job over the cap may still wait).
		wait := s.runEstimate(wf.name) / time.Duration(parallel)
		return &apiError{status: fasthttp.StatusTooManyRequests, typ: errQueueFull,
			msg:        fmt.Sprintf("the wait line holds %d bytes of images (jobs.max_waiting_bytes %d); retry later", held-size, max),
			retryAfter: retryAfterSeconds(wait)}
	}
	if s.waiting >= s.maxWaiting {
		// One place frees up when one job at the instances finishes.
		wait := s.runEstimate(wf.name) / time.Duration(parallel)
		return &apiError{status: fasthttp.StatusTooManyRequests, typ: errQueueFull,
			msg:        fmt.Sprintf("the wait line is full (%d jobs); retry later", s.waiting),
			retryAfter: retryAfterSeconds(wait)}
	}
	return nil
}

// bytes is the size of the images the waiting jobs hold.
func (s *waitLine) bytes() int64 {
	var n int64
	for _, q := range s.byKey {
		for _, w := range q {
			n += w.imageBytes()
		}
	}
	return n
}

// remove takes j out of the line; false when it was not in it.
func (s *waitLine) remove(j *job) bool {
	key := lineKey(j)
	q := s.byKey[key]
	i := slices.Index(q, j)
	if i < 0 {
		return false
	}
	q = slices.Delete(q, i, i+1)
	s.waiting--
	if len(q) == 0 {
		delete(s.byKey, key)
		s.ring = slices.DeleteFunc(s.ring, func(k string) bool { return k == key })
		return true
	}
	s.byKey[key] = q
	return true
}

// push puts j at the end of its key's jobs; a key that had none joins
// the ring at its back.
func (s *waitLine) push(j *job) {
	key := lineKey(j)
	if len(s.byKey[key]) == 0 {
		s.ring = append(s.ring, key)
	}
	s.byKey[key] = append(s.byKey[key], j)
	s.waiting++
}

// pushFront puts j, taken from the line, back at its head: first of its
// key's jobs, and its key first in the ring (undoing pop).
func (s *waitLine) pushFront(j *job) {
	delete(s.active, j)
	key := lineKey(j)
	s.byKey[key] = append([]*job{j}, s.byKey[key]...)
	s.ring = slices.DeleteFunc(s.ring, func(k string) bool { return k == key })
	s.ring = slices.Insert(s.ring, 0, key)
	s.waiting++
}

// pop takes the next job of the rotation, which becomes active: the
// first of the key at the head of the ring, which goes to the back of
// the ring while it has jobs left.
func (s *waitLine) pop() *job {
	key := s.ring[0]
	q := s.byKey[key]
	j := q[0]
	q[0] = nil
	q = q[1:]
	s.ring = slices.Delete(s.ring, 0, 1)
	if len(q) == 0 {
		delete(s.byKey, key)
	} else {
		s.byKey[key] = q
		s.ring = append(s.ring, key)
	}
	s.waiting--
	s.active[j] = struct{}{}
	return j
}

// activate counts j, restored at an instance, as active.
func (s *waitLine) activate(j *job) { s.active[j] = struct{}{} }

// done forgets j, finished, from the active jobs.
func (s *waitLine) done(j *job) { delete(s.active, j) }

// len is the number of waiting jobs.
func (s *waitLine) len() int { return s.waiting }

// head is the first n jobs the rotation dispatches (fewer when the line
// is shorter).
func (s *waitLine) head(n int) []*job {
	out := make([]*job, 0, min(n, s.waiting))
	for j := range s.inOrder {
		if len(out) >= n {
			break
		}
		out = append(out, j)
	}
	return out
}

// measured feeds a run of the workflow that took d into its estimate.
func (s *waitLine) measured(wf string, d time.Duration) {
	e := s.est[wf]
	if e == nil {
		e = &ewma{}
		s.est[wf] = e
	}
	e.add(d)
}

// count is how many of scope's jobs wait and how many active ones hold
// a slot.
func (s *waitLine) count(scope string) (waiting, inFlight int) {
	for _, q := range s.byKey {
		for _, w := range q {
			if inScope(w, scope) {
				waiting++
			}
		}
	}
	for a := range s.active {
		if a.holdsSlot && inScope(a, scope) {
			inFlight++
		}
	}
	return waiting, inFlight
}
