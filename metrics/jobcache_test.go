package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestJobCacheMetrics(t *testing.T) {
	t.Parallel()
	m := New("test")
	m.JobCacheLookup("upscale-image", false)
	m.JobCacheLookup("upscale-image", true)
	m.JobCacheLookup("upscale-image", true)
	m.JobCacheLookup("remove-background", false)
	m.SetJobCacheBytes(4096)
	want := `
# HELP comfygate_job_cache_bytes Bytes of job outputs the result cache holds (bounded by jobs.cache_max_bytes).
# TYPE comfygate_job_cache_bytes gauge
comfygate_job_cache_bytes 4096
# HELP comfygate_job_cache_hits_total Job submissions completed at once from the result cache, by workflow.
# TYPE comfygate_job_cache_hits_total counter
comfygate_job_cache_hits_total{workflow="upscale-image"} 2
# HELP comfygate_job_cache_misses_total Job submissions of a cached workflow that the result cache could not answer (they run), by workflow.
# TYPE comfygate_job_cache_misses_total counter
comfygate_job_cache_misses_total{workflow="remove-background"} 1
comfygate_job_cache_misses_total{workflow="upscale-image"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want),
		"comfygate_job_cache_hits_total", "comfygate_job_cache_misses_total", "comfygate_job_cache_bytes"); err != nil {
		t.Error(err)
	}
	var nilM *Metrics
	nilM.JobCacheLookup("x", true) // must not panic
	nilM.SetJobCacheBytes(1)
}
