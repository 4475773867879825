package jobs

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
)

// delivery gets a job's results and news out: its event log and the
// waits on it (long polls, Server-Sent Events), webhooks, the download of
// its outputs from the instance into comfygate's output store (memory,
// then files) and their upload to S3. Jobs' fields are read and written
// under the engine's lock; the output store's byte counts are its own.
type delivery struct {
	eng  *engine
	st   *store          // caches a completed result
	line *waitLine       // a queued event's place in line
	ctx  context.Context // ends when the service closes
	cfg  config.Jobs
	log  *slog.Logger
	m    *metrics.Metrics
	be   backend

	// heartbeat is the period of comments on idle event streams.
	heartbeat time.Duration
	// webhookBackoff is the first retry delay of a webhook delivery.
	webhookBackoff time.Duration
	// retryDelay spaces download retries.
	retryDelay time.Duration
	hooks      *outboundClient
	s3         *s3Store // nil: outputs stay in comfygate only

	outMem  atomic.Int64 // bytes of outputs held in memory
	outDisk atomic.Int64 // bytes of outputs in files

	outDirOnce sync.Once
	outDirPath string
	outDirErr  error
}

// close removes the output directory, if one was made.
func (s *delivery) close() {
	if s.outDirPath != "" {
		_ = os.RemoveAll(s.outDirPath)
	}
}
