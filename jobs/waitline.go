package jobs

import (
	"fmt"
	"time"

	"github.com/valyala/fasthttp"
)

// waitLine is the wait line (first come first served), the jobs taken
// from it and not finished, and the run-time estimates made of both. It
// is guarded by the engine's lock.
type waitLine struct {
	maxWaiting      int   // jobs.max_waiting
	maxWaitingBytes int64 // jobs.max_waiting_bytes
	waiting         []*job
	active          map[*job]struct{} // taken from the line, not finished
	est             map[string]*ewma  // run time per workflow
}

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
// jobs ahead of it (those at the instances and those before it in the
// line) spread over the instances that run in parallel, plus its own.
func (s *waitLine) estimate(j *job, parallel int) time.Duration {
	var ahead time.Duration
	if j.state == stWaiting {
		for x := range s.active {
			ahead += s.remaining(x)
		}
		for _, x := range s.waiting {
			if x == j {
				break
			}
			ahead += s.remaining(x)
		}
	}
	return completionEstimate(ahead, s.remaining(j), parallel)
}

// position is the 1-based place of a waiting job in the line,
// 0 when it is no longer waiting.
func (s *waitLine) position(j *job) int {
	if j.remote && j.state == stWaiting {
		return j.remotePos
	}
	if j.state != stWaiting {
		return 0
	}
	for i, x := range s.waiting {
		if x == j {
			return i + 1
		}
	}
	return 0
}

func (s *waitLine) check(wf *workflow, size int64, parallel, healthy int) *apiError {
	if healthy == 0 {
		return &apiError{status: fasthttp.StatusServiceUnavailable, typ: errNoUpstream,
			msg: "no ComfyUI instance is available", retryAfter: retryAfterSeconds(noUpstreamBackoff)}
	}
	if held, max := s.bytes()+size, s.maxWaitingBytes; max > 0 && held > max && len(s.waiting) > 0 {
		// The waiting jobs' images are kept until the jobs end: bounded by
		// bytes as well as by count (a lone job over the cap may still wait).
		wait := s.runEstimate(wf.name) / time.Duration(parallel)
		return &apiError{status: fasthttp.StatusTooManyRequests, typ: errQueueFull,
			msg:        fmt.Sprintf("the wait line holds %d bytes of images (jobs.max_waiting_bytes %d); retry later", held-size, max),
			retryAfter: retryAfterSeconds(wait)}
	}
	if len(s.waiting) >= s.maxWaiting {
		// One place frees up when one job at the instances finishes.
		wait := s.runEstimate(wf.name) / time.Duration(parallel)
		return &apiError{status: fasthttp.StatusTooManyRequests, typ: errQueueFull,
			msg:        fmt.Sprintf("the wait line is full (%d jobs); retry later", len(s.waiting)),
			retryAfter: retryAfterSeconds(wait)}
	}
	return nil
}

// bytes is the size of the images the waiting jobs hold.
func (s *waitLine) bytes() int64 {
	var n int64
	for _, w := range s.waiting {
		n += w.imageBytes()
	}
	return n
}

// remove takes j out of the line; false when it was not in it.
func (s *waitLine) remove(j *job) bool {
	for i, x := range s.waiting {
		if x == j {
			copy(s.waiting[i:], s.waiting[i+1:])
			s.waiting[len(s.waiting)-1] = nil
			s.waiting = s.waiting[:len(s.waiting)-1]
			return true
		}
	}
	return false
}

// push puts j at the end of the line.
func (s *waitLine) push(j *job) { s.waiting = append(s.waiting, j) }

// pushFront puts j, taken from the line, back at its head.
func (s *waitLine) pushFront(j *job) {
	delete(s.active, j)
	s.waiting = append([]*job{j}, s.waiting...)
}

// pop takes the head of the line, which becomes active.
func (s *waitLine) pop() *job {
	j := s.waiting[0]
	s.waiting[0] = nil
	s.waiting = s.waiting[1:]
	s.active[j] = struct{}{}
	return j
}

// activate counts j, restored at an instance, as active.
func (s *waitLine) activate(j *job) { s.active[j] = struct{}{} }

// done forgets j, finished, from the active jobs.
func (s *waitLine) done(j *job) { delete(s.active, j) }

// len is the number of waiting jobs.
func (s *waitLine) len() int { return len(s.waiting) }

// head is the first n waiting jobs (fewer when the line is shorter).
func (s *waitLine) head(n int) []*job { return s.waiting[:min(len(s.waiting), n)] }

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
	for _, w := range s.waiting {
		if inScope(w, scope) {
			waiting++
		}
	}
	for a := range s.active {
		if a.holdsSlot && inScope(a, scope) {
			inFlight++
		}
	}
	return waiting, inFlight
}
