package metrics

import (
	"sync"
	"time"
)

// RecentStep and RecentSteps shape Recent: finished prompts counted in
// 30 s steps over the last 10 minutes.
const (
	RecentStep  = 30 * time.Second
	RecentSteps = 20
)

// Recent is the prompts that finished in each of the last RecentSteps
// steps of RecentStep, oldest first; the last step is the current one,
// still running. It lets a reader see the last minutes' rates and errors
// without keeping a history of its own (the dashboard opened now).
type Recent struct {
	StepSeconds float64 `json:"stepSeconds"`
	// Finished counts every outcome, Failed those that are not success.
	Finished []int64 `json:"finished"`
	Failed   []int64 `json:"failed"`
}

// recent is the ring behind Recent.
type recent struct {
	mu       sync.Mutex // guards the fields below
	head     int64      // step number (unix time / RecentStep) of the newest slot
	finished [RecentSteps]int64
	failed   [RecentSteps]int64
}

// advanceLocked moves the ring to step, emptying the slots it passes.
func (r *recent) advanceLocked(step int64) {
	if step <= r.head {
		return
	}
	for s := max(r.head+1, step-RecentSteps+1); s <= step; s++ {
		r.finished[s%RecentSteps], r.failed[s%RecentSteps] = 0, 0
	}
	r.head = step
}

func stepOf(t time.Time) int64 { return t.UnixNano() / int64(RecentStep) }

// add counts one finished prompt at now.
func (r *recent) add(now time.Time, failed bool) {
	step := stepOf(now)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.advanceLocked(step)
	if step <= r.head-RecentSteps {
		return // older than the ring (a clock step back)
	}
	r.finished[step%RecentSteps]++
	if failed {
		r.failed[step%RecentSteps]++
	}
}

// read returns the ring at now, oldest step first.
func (r *recent) read(now time.Time) Recent {
	out := Recent{StepSeconds: RecentStep.Seconds(), Finished: make([]int64, RecentSteps), Failed: make([]int64, RecentSteps)}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.advanceLocked(stepOf(now))
	for i := range RecentSteps {
		s := r.head - RecentSteps + 1 + int64(i)
		out.Finished[i], out.Failed[i] = r.finished[s%RecentSteps], r.failed[s%RecentSteps]
	}
	return out
}
