package jobs

import (
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// BenchmarkThroughput runs the same batch of upscale jobs through the job
// API in front of one simulated instance and in front of two, and reports
// jobs per second for each and their ratio (the target: >= 1.9).
// The simulator's Delay makes GPU time dominate, as it does in production;
// MaxConcurrent leaves every instance a queued job so none idles between
// prompts. Run: go test -run '^$' -bench Throughput -benchtime 3x ./jobs/
func BenchmarkThroughput(b *testing.B) {
	const batch = 24
	opts := comfysim.Options{Delay: 50 * time.Millisecond, Steps: 2}
	mod := func(c *config.Config) {
		c.Jobs.MaxConcurrent = 8
		c.Log.Level = "error"
	}
	one := newHarness(b, 1, opts, mod)
	two := newHarness(b, 2, opts, mod)
	src := testPNG(b, 32, 32)
	var d1, d2 time.Duration
	b.ResetTimer()
	for range b.N {
		t1 := runBatch(b, one, batch, src)
		t2 := runBatch(b, two, batch, src)
		b.Logf("one %v two %v", t1, t2)
		d1 += t1
		d2 += t2
	}
	b.StopTimer()
	jobs := float64(batch * b.N)
	r1, r2 := jobs/d1.Seconds(), jobs/d2.Seconds()
	b.ReportMetric(r1, "jobs/s-1-instance")
	b.ReportMetric(r2, "jobs/s-2-instances")
	b.ReportMetric(r2/r1, "speedup")
	for i, s := range two.sims {
		if s.PromptsExecuted() == 0 {
			b.Errorf("instance %d of 2 ran nothing", i+1)
		}
	}
}

// runBatch submits n jobs at once and returns the time until the last one completed.
func runBatch(b *testing.B, h *harness, n int, src []byte) time.Duration {
	b.Helper()
	start := time.Now()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = h.submit("/api/upscale-image", src, nil)
	}
	done, failed := 0, ""
	if !testkit.Poll(2*time.Minute, func() bool {
		done = 0
		h.svc.eng.jobsMu.Lock()
		defer h.svc.eng.jobsMu.Unlock()
		for _, id := range ids {
			switch h.svc.eng.jobs[id].state {
			case stCompleted:
				done++
			case stFailed, stCancelled:
				failed = "job " + id + ": " + h.svc.eng.jobs[id].errMsg
				return true
			}
		}
		return done == n
	}) {
		b.Fatalf("%d of %d jobs done after 2 minutes", done, n)
	}
	if failed != "" {
		b.Fatal(failed)
	}
	return time.Since(start)
}
