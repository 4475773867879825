package jobs

import (
	"math"
	"time"
)

// ewmaAlpha weighs the newest measured run against the history: 0.3 makes
// a step change in run time felt within a handful of jobs while smoothing
// single outliers.
const ewmaAlpha = 0.3

// defaultRunEstimate is the run time assumed for a workflow until one of
// its jobs has been measured.
const defaultRunEstimate = 10 * time.Second

// ewma is an exponentially weighted moving average of a workflow's
// measured run times (execution_start to execution_success on the
// instance). The first measurement replaces the seed.
type ewma struct {
	mean time.Duration
	n    int
}

func (e *ewma) add(d time.Duration) {
	if d < 0 {
		return
	}
	if e.n == 0 {
		e.mean = d
	} else {
		e.mean = time.Duration(ewmaAlpha*float64(d) + (1-ewmaAlpha)*float64(e.mean))
	}
	e.n++
}

// value returns the average, or seed while nothing was measured.
func (e *ewma) value(seed time.Duration) time.Duration {
	if e == nil || e.n == 0 {
		return seed
	}
	return e.mean
}

// completionEstimate is the time until a job finishes: the remaining work
// of the jobs ahead of it spread over the instances that can run them in
// parallel, plus its own remaining run time.
func completionEstimate(ahead, own time.Duration, parallel int) time.Duration {
	if parallel < 1 {
		parallel = 1
	}
	return ahead/time.Duration(parallel) + own
}

// estimateSeconds renders an estimate for clients: seconds, rounded up to
// a tenth, at least 0.1.
func estimateSeconds(d time.Duration) float64 {
	return math.Max(0.1, math.Ceil(d.Seconds()*10)/10)
}

// retryAfterSeconds renders a wait for a Retry-After header: whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
