package proxy

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/limits"
	"github.com/comfygate/comfygate/state"
)

// Shared rate limits are asked on the request's path: a Redis that does
// not answer within rateTimeout is not asked again for ratePause, and the
// replica's own buckets decide meanwhile.
const (
	rateTimeout = 200 * time.Millisecond
	ratePause   = time.Second
)

// rateLimit is one kind of token bucket per key (rate_limit): with
// state.url set the fleet's buckets in Redis, so that a key's rate holds
// however the balancer spreads its requests over the replicas; else, and
// while Redis does not answer, this replica's own.
type rateLimit struct {
	kind   string // "prompt" or "job": names the buckets and the metric
	rate   float64
	burst  int
	local  *limits.Buckets
	shared state.RateLimits // nil in memory
	log    *slog.Logger
	// offUntil (unix ns): after Redis failed to answer, the local
	// buckets decide until then.
	offUntil atomic.Int64
}

func newRateLimit(kind string, rate float64, burst int, shared state.RateLimits, log *slog.Logger) *rateLimit {
	return &rateLimit{kind: kind, rate: rate, burst: burst, local: limits.NewBuckets(rate, burst), shared: shared, log: log}
}

// take takes a token from name's bucket; when none is left it reports
// false and how long until one is.
func (r *rateLimit) take(name string) (bool, time.Duration) {
	if r.rate <= 0 {
		return true, 0
	}
	if r.shared != nil && time.Now().UnixNano() >= r.offUntil.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), rateTimeout)
		ok, wait, err := r.shared.Take(ctx, r.kind, name, r.rate, r.burst)
		cancel()
		if err == nil {
			return ok, wait
		}
		r.offUntil.Store(time.Now().Add(ratePause).UnixNano())
		r.log.Warn("the fleet's rate limit not read; this replica's decides for a second", "kind", r.kind, "error", err)
	}
	return r.local.Take(name)
}
