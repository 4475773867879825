package proxy

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// TestConcurrentPromptCap: a key with rate_limit.max_concurrent_prompts
// prompts queued or running gets 429 with Retry-After for the next one;
// another key does not; a finished prompt frees its slot.
func TestConcurrentPromptCap(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{Delay: 300 * time.Millisecond})
	g := startGate(t, addrsOf(ss), func(c *config.Config) {
		withKeys(c)
		c.RateLimit.MaxConcurrentPrompts = 2
	})
	var ids []string
	for i := range 2 {
		var a promptAnswer
		if status, raw := postJSON(t, g.base+"/prompt", bearer(keyA), map[string]any{"prompt": slowPrompt(i, "cap")}, &a); status != 200 {
			t.Fatalf("A's prompt %d: %d %s", i, status, raw)
		}
		ids = append(ids, a.PromptID)
	}
	b, _ := json.Marshal(map[string]any{"prompt": slowPrompt(3, "cap")})
	status, h, raw := gateDo(t, "POST", g.base+"/prompt", bearer(keyA), bytes.NewReader(b))
	if status != http.StatusTooManyRequests || h.Get("Retry-After") == "" || !strings.Contains(string(raw), "too_many_prompts") {
		t.Errorf("A's third prompt: %d %q %s, want 429", status, h.Get("Retry-After"), raw)
	}
	if status, raw := postJSON(t, g.base+"/prompt", bearer(keyB), map[string]any{"prompt": slowPrompt(4, "cap")}, nil); status != 200 {
		t.Errorf("B's prompt: %d %s", status, raw)
	}
	testkit.Eventually(t, "A's first prompt to finish", func() bool {
		_, ok := historyOf(t, g, keyA, "/history/"+ids[0])[ids[0]]
		return ok
	})
	// The slot frees when comfygate has seen the prompt finish on its event
	// socket, which may come a moment after the instance's history has it.
	testkit.Eventually(t, "A's prompt accepted after one finished", func() bool {
		status, raw := postJSON(t, g.base+"/prompt", bearer(keyA), map[string]any{"prompt": slowPrompt(5, "cap")}, nil)
		if status != 200 && status != http.StatusTooManyRequests {
			t.Fatalf("A's prompt after one finished: %d %s", status, raw)
		}
		return status == 200
	})
}

var (
	fairFlood = flag.Int("fair.flood", 10000, "submissions of the flooding key in BenchmarkFairShare")
	fairDelay = flag.Duration("fair.delay", 20*time.Millisecond, "run time of a prompt's heavy node on the simulated instances in BenchmarkFairShare")
)

// BenchmarkFairShare measures the fair share between keys: key A submits
// -fair.flood prompts at full speed from 16 connections while key B
// submits one; the figure is how long B's prompt took from its POST to its
// completion, with the default per-key cap (rate_limit.max_concurrent_prompts
// 256, "cap") and without one ("nocap"). Two simulated instances whose
// prompts take -fair.delay each keep the fleet busy. Run with
//
//	go test -run '^$' -bench BenchmarkFairShare -benchtime 1x ./proxy/ -args -fair.flood=10000
func BenchmarkFairShare(b *testing.B) {
	for _, tc := range []struct {
		name string
		cap  int
	}{{"cap", 256}, {"nocap", 0}} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				wait, accepted, refused := fairShareOnce(b, tc.cap)
				b.ReportMetric(wait.Seconds(), "B-wait-s")
				b.ReportMetric(float64(accepted), "A-accepted")
				b.ReportMetric(float64(refused), "A-429")
			}
		})
	}
}

func fairShareOnce(b *testing.B, capN int) (time.Duration, int64, int64) {
	ss := testkit.Sims(b, 2, comfysim.Options{Delay: *fairDelay})
	g := startGate(b, addrsOf(ss), func(c *config.Config) {
		withKeys(c)
		c.RateLimit.MaxConcurrentPrompts = capN
		c.Limits.MaxConnsPerIP = 0
	})
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	post := func(key string, body []byte) (int, []byte) {
		req, _ := http.NewRequest("POST", g.base+"/prompt", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		return resp.StatusCode, buf.Bytes()
	}
	var accepted, refused, next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(*fairFlood); i = next.Add(1) {
				// A different color each: identical prompts would be cached.
				switch st, _ := post(keyA, mustJSON(map[string]any{"prompt": slowPrompt(int(i), "flood")})); st {
				case 200:
					accepted.Add(1)
				case 429:
					refused.Add(1)
				}
			}
		}()
	}
	// B submits once A is well under way.
	testkit.EventuallyWithin(b, 10*time.Minute, "A's flood to be under way", func() bool {
		return accepted.Load()+refused.Load() >= int64(*fairFlood)/10
	})
	start := time.Now()
	st, raw := post(keyB, mustJSON(map[string]any{"prompt": slowPrompt(0xfffffe, "fair")}))
	var a promptAnswer
	if st != 200 || json.Unmarshal(raw, &a) != nil {
		b.Fatalf("B's prompt: %d %s", st, raw)
	}
	// A fixed interval: the wait is what is measured.
	if !testkit.PollEvery(10*time.Minute, 5*time.Millisecond, func() bool {
		req, _ := http.NewRequest("GET", g.base+"/history/"+a.PromptID, nil)
		req.Header.Set("Authorization", "Bearer "+keyB)
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		return strings.Contains(buf.String(), a.PromptID)
	}) {
		b.Fatal("B's prompt did not finish in 10 minutes")
	}
	wait := time.Since(start)
	wg.Wait()
	return wait, accepted.Load(), refused.Load()
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// TestNoPromptCapWithKeysOff: with keys off, max_concurrent_prompts does
// not apply: a script queueing many prompts keeps working as with one
// ComfyUI.
func TestNoPromptCapWithKeysOff(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{Delay: 300 * time.Millisecond})
	g := startGate(t, addrsOf(ss), func(c *config.Config) { c.RateLimit.MaxConcurrentPrompts = 1 })
	for i := range 3 {
		if status, raw := postJSON(t, g.base+"/prompt", nil, map[string]any{"prompt": slowPrompt(i, "nocap")}, nil); status != 200 {
			t.Fatalf("prompt %d with keys off: %d %s", i, status, raw)
		}
	}
}
