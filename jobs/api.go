package jobs

import (
	"context"
	"log/slog"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/limits"
)

// api is the job API over HTTP: ServeJobs' routing, the route handlers,
// the parsing of submissions (bodies, spooled images, image URLs) and the
// rendering of a job's status, result and outputs. It holds no job state:
// it asks the engine under the engine's lock.
type api struct {
	eng       *engine
	cat       *catalog        // the workflows
	line      *waitLine       // places and estimates, read under the engine's lock
	del       *delivery       // event streams and waits, output views
	st        *store          // Idempotency-Keys, the result cache
	ctx       context.Context // ends when the service closes
	cfg       config.Jobs
	log       *slog.Logger
	be        backend
	inputs    *inputStore        // where a spooled image goes
	bodies    *limits.BodyBudget // request bodies held in memory
	imageURLs *outboundClient    // downloads image parameters given as URLs
	hooks     *outboundClient    // checks a submission's webhook URL
}

// parallelism is how many jobs run at once: healthy instances, capped by
// MaxConcurrent. Never call with the engine locked (it asks the pool).
func (s *api) parallelism() int {
	return max(1, min(len(s.be.Healthy()), s.cfg.MaxConcurrent))
}
