package jobs

import (
	"context"
	"log/slog"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
	sharedstate "github.com/comfygate/comfygate/state"
)

// store keeps what outlives a request: the jobs' records in the state
// directory (written behind by writer, read back at start), the
// Idempotency-Keys and the result cache. The Idempotency-Keys are in the
// shared state store (state.url): this process's memory, or Redis where
// every replica sees them.
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

	state *stateDir               // nil: jobs are not persisted
	cache *resultCache            // nil: no result cache (jobs.cache_max_bytes 0)
	idem  sharedstate.Idempotency // Idempotency-Key -> the job it created
	// restoredIdem are the keys of restored jobs, remembered again once
	// restore has let the engine's lock go (the store may be remote).
	restoredIdem []restoredIdem
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
