package proxy

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/prompts"
)

// BenchmarkAffinityMakespan runs one mixed-model workload over two
// simulated GPUs that hold one model at a time and take modelLoad to load
// another, with model affinity off (plain least-busy) and on, and reports
// the makespan (first submission to last completion) and the model loads.
//
//	go test -run '^$' -bench BenchmarkAffinityMakespan -benchtime 1x -count 3 ./proxy/
func BenchmarkAffinityMakespan(b *testing.B) {
	const (
		nPrompts  = 48
		clients   = 4 // each submits its next prompt when its last one finished
		modelLoad = 300 * time.Millisecond
		nodeTime  = 40 * time.Millisecond
	)
	models := []string{"flux_x2.pth", "sdxl_x2.pth", "sd15_x2.pth"}
	for _, tc := range []struct {
		name   string
		margin int
	}{{"least-busy", -1}, {"affinity", 2}} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				opts := comfysim.Options{Delay: nodeTime, Steps: 1, ModelLoadTime: modelLoad, ModelSlots: 1,
					Models: map[string][]string{"upscale_models": models}}
				ss := []*comfysim.Server{}
				for range 2 {
					s, err := comfysim.New(opts)
					if err != nil {
						b.Fatal(err)
					}
					if err := s.Start("127.0.0.1:0"); err != nil {
						b.Fatal(err)
					}
					ss = append(ss, s)
				}
				g, _ := startFleetGate(b, ss, func(c *config.Config) { c.Routing.AffinityMargin = tc.margin }, nil)
				rng := rand.New(rand.NewPCG(7, 7)) // the same workload for both
				work := make(chan string, nPrompts)
				for range nPrompts {
					work <- models[rng.IntN(len(models))]
				}
				close(work)
				b.StartTimer()
				start := time.Now()
				var wg sync.WaitGroup
				var seq sync.Mutex
				n := 0
				for range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for m := range work {
							seq.Lock()
							n++
							k := n
							seq.Unlock()
							id := benchSubmit(b, g, upscalePromptColor(m, k))
							p, _ := g.prompts.Prompt(id)
							if !testkit.PollEvery(5*time.Minute, 2*time.Millisecond, func() bool { return p.State() == prompts.PromptDone }) {
								b.Errorf("prompt %s not done after 5 minutes", id)
								return
							}
						}
					}()
				}
				wg.Wait()
				makespan := time.Since(start)
				b.StopTimer()
				loads := 0
				for _, s := range ss {
					loads += s.ModelLoadCount()
					_ = s.Close()
				}
				b.ReportMetric(makespan.Seconds(), "makespan_s")
				b.ReportMetric(float64(loads), "model_loads")
				b.StartTimer()
			}
		})
	}
}

// upscalePromptColor is upscalePrompt with its own colour, so no two
// prompts share cached image nodes (the loader is shared: it is cached
// while the same model stays loaded, as in ComfyUI).
func upscalePromptColor(model string, k int) map[string]any {
	g := upscalePrompt(model, nil)
	g["1"] = map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 4, "height": 4, "batch_size": 1, "color": k}}
	return g
}

func benchSubmit(b *testing.B, g *gate, prompt map[string]any) string {
	body, _ := json.Marshal(map[string]any{"prompt": prompt})
	resp, err := http.Post(g.base+"/prompt", "application/json", strings.NewReader(string(body)))
	if err != nil {
		b.Error(err)
		return ""
	}
	defer resp.Body.Close()
	var a promptAnswer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || resp.StatusCode != 200 {
		b.Error(fmt.Errorf("POST /prompt: %d %v", resp.StatusCode, err))
	}
	return a.PromptID
}
