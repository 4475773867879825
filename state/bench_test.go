package state_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/state"
)

// BenchmarkSharedReads measures, against a real redis-server on loopback,
// what the shared views cost a request: a rate-limit token (one script
// on POST /prompt and job submissions while a rate limit is on), the job
// list of 1,000 jobs (GET /api/jobs?source=comfygate) and the job line's
// head of 50 with 1,000 waiting (the dashboard's jobLine).
//
//	go test -run '^$' -bench BenchmarkSharedReads -benchtime 2000x ./state/
func BenchmarkSharedReads(b *testing.B) {
	s, err := state.Open(context.Background(), config.State{URL: testkit.Redis(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()
	b.Run("rate-limit-take", func(b *testing.B) {
		rl := s.RateLimits()
		for b.Loop() {
			if _, _, err := rl.Take(ctx, "prompt", "bench", 1e9, 1000); err != nil {
				b.Fatal(err)
			}
		}
	})
	jobs := s.Jobs()
	t0 := time.Now()
	for i := range 1000 {
		sum := state.JobSummary{Key: fmt.Sprintf("key-%d", i%4), Workflow: "upscale-image", Created: t0.Add(time.Duration(i) * time.Millisecond)}
		err := jobs.Add(ctx, state.JobAdd{ID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i), JobSummary: sum,
			Static: []byte(`{}`), Live: []byte(`{"progress":0}`), MaxWaiting: 10000})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Run("list-1000", func(b *testing.B) {
		for b.Loop() {
			if l, err := jobs.List(ctx, "", 10000); err != nil || len(l) != 1000 {
				b.Fatalf("%d jobs listed, %v", len(l), err)
			}
		}
	})
	b.Run("line-head-50", func(b *testing.B) {
		for b.Loop() {
			if l, err := jobs.Line(ctx, 50); err != nil || len(l.Waiting) != 50 {
				b.Fatalf("%d jobs in the head, %v", len(l.Waiting), err)
			}
		}
	})
}
