package jobs

import (
	"context"
	"log/slog"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
)

// store keeps what outlives a request: the jobs' records in the state
// directory (written behind by writer, read back at start), the
// Idempotency-Keys and the result cache. The idempotency map is its own,
// guarded by the engine's lock (a key is reserved and taken in the same
// step as the engine's jobs change).
type store struct {
	eng *engine
	run *runner   // runs the writer's flushes safely
	del *delivery // makes a cached result's output files, reads history
	wd  *watchdog // ends a restored job as its history says
	cat *catalog  // the workflows restored jobs name
	be  backend
	ctx context.Context
	cfg config.Jobs
	log *slog.Logger
	m   *metrics.Metrics

	state *stateDir              // nil: jobs are not persisted
	cache *resultCache           // nil: no result cache (jobs.cache_max_bytes 0)
	idem  map[idemKey]*idemEntry // Idempotency-Key -> the job it created; engine's lock
	// inputs is where restored jobs' images must be.
	inputs *inputStore
	// restored are the jobs restore took back at an instance, by id:
	// reconcile settles them once the service starts.
	restored []*job
}

// close writes the records still queued and closes the result cache.
func (s *store) close() {
	if s.state != nil {
		s.state.flush()
	}
	s.cache.close()
}
