package faults

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/ids"
	"github.com/comfygate/comfygate/internal/testkit"
)

// pollResult is what one polling client saw of its prompt.
type pollResult struct {
	id     string
	status string        // status_str of the history entry it finally read
	after  time.Duration // from the fault to that read
	codes  map[int]int   // answers to its /history polls other than 200
}

// Hung, clients polling: as ComfyUI's polling SDKs do, each client posts
// its prompt over HTTP only (no socket) and polls GET /history/{id}. The
// instance holding most of them stops (SIGSTOP) while polls to it are in
// flight; its prompts move, and every client must read its result within
// 10 s of the stop, without a 504.
func TestHungPollingClients(t *testing.T) {
	f := newFixture(t, "", 300*time.Millisecond, nil)
	f.hold()
	ids := make([]string, 10)
	for i := range ids {
		ids[i] = f.postOnly(i)
	}
	i := f.busiest(2)
	sim, fp := f.st.Sims[i], f.st.Faults[i]
	results := make([]pollResult, len(ids))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for n, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[n] = f.poll(id, stop)
		}()
	}
	f.waitRunning(sim, 2)
	f.inject(fmt.Sprintf("SIGSTOP sim%d while clients poll /history", i), func() {
		fp.Hang()
		sim.SetFrozen(true)
	})
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(f.bound):
		close(stop)
		<-done
	}
	var slowest time.Duration
	got504, completed := 0, 0
	for _, r := range results {
		got504 += r.codes[http.StatusGatewayTimeout]
		if r.status == "success" {
			completed++
		} else {
			t.Errorf("prompt %s: polling ended without its result (%q, answers %v)", r.id, r.status, r.codes)
		}
		if r.after > slowest {
			slowest = r.after
		}
		if r.after > 10*time.Second {
			t.Errorf("prompt %s: its client read the result %v after the stop, want within 10 s", r.id, r.after.Round(time.Millisecond))
		}
	}
	if got504 > 0 {
		t.Errorf("polling clients got %d × 504", got504)
	}
	f.mu.Lock()
	f.polled.accepted, f.polled.completed = len(ids), completed
	f.recover = slowest
	f.notes = append(f.notes, fmt.Sprintf("%d polling clients: %d completed, %d × 504, slowest result %v after the stop",
		len(ids), completed, got504, slowest.Round(10*time.Millisecond)))
	f.mu.Unlock()
	fp.Resume()
	sim.SetFrozen(false)
	// Once the woken instance has run what it still held, a prompt that
	// ran on both instances is the one it was running at the stop, and
	// the metric counts exactly those.
	f.settle()
	ranTwice := 0
	for _, id := range ids {
		n := 0
		for _, s := range f.st.Sims {
			n += s.RunsByExtra(testkit.RunTag)[id]
		}
		if n > 1 {
			ranTwice++
		}
	}
	if ranTwice > 1 {
		t.Errorf("%d prompts ran on both instances, want at most the one running at the stop", ranTwice)
	}
	counted := 0.0
	testkit.Eventually(t, "comfygate_prompts_ran_twice_total to count them", func() bool {
		counted = ranTwiceCounted(t, f)
		return int(counted) == ranTwice
	})
	f.mu.Lock()
	f.notes = append(f.notes, fmt.Sprintf("%d ran at both instances (running at the stop; counted in comfygate_prompts_ran_twice_total)", ranTwice))
	f.mu.Unlock()
	f.finish("hung, clients polling /history")
}

// ranTwiceCounted sums comfygate_prompts_ran_twice_total.
func ranTwiceCounted(t *testing.T, f *fixture) float64 {
	mfs, err := f.st.Metrics().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "comfygate_prompts_ran_twice_total" {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// postOnly posts prompt n over HTTP, tagged for run counting, and returns
// its id.
func (f *fixture) postOnly(n int) string {
	f.t.Helper()
	id := ids.UUID()
	body, _ := json.Marshal(map[string]any{"prompt": testkit.Workflow(0x7000+n, "polled"), "prompt_id": id,
		"extra_data": map[string]any{testkit.RunTag: id}})
	resp, err := f.hc.Post(f.st.URL+"/prompt", "application/json", bytes.NewReader(body))
	if err != nil {
		f.t.Fatalf("POST /prompt: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		f.t.Fatalf("POST /prompt: %d %s", resp.StatusCode, b)
	}
	return id
}

// poll reads GET /history/{id} every 200 ms until the entry is there.
func (f *fixture) poll(id string, stop <-chan struct{}) pollResult {
	r := pollResult{id: id, codes: map[int]int{}}
	for f.ctx.Err() == nil {
		resp, err := f.hc.Get(f.st.URL + "/history/" + id)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				r.codes[resp.StatusCode]++
			} else {
				var h map[string]struct {
					Status struct {
						StatusStr string `json:"status_str"`
					} `json:"status"`
				}
				if json.Unmarshal(b, &h) == nil {
					if e, ok := h[id]; ok {
						r.status = e.Status.StatusStr
						f.mu.Lock()
						at := f.faultAt
						f.mu.Unlock()
						if !at.IsZero() {
							r.after = time.Since(at)
						}
						return r
					}
				}
			}
		}
		select {
		case <-stop:
			return r
		case <-f.ctx.Done():
			return r
		case <-time.After(200 * time.Millisecond):
		}
	}
	return r
}
