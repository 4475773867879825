package bench

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit/stack"
)

// BenchmarkCachedJob measures a repeated job answered from the result
// cache: each round submits a new image to POST /api/upscale-image with
// Prefer: wait (it runs on the simulated instance), then the same image
// again, and times the second answer (completed, cached, with the
// result's bytes in base64). It reports the medians of both answers and
// how many executions the instance made for the second submissions
// (the cache's promise: none).
//
//	go test -run '^$' -bench CachedJob -benchtime 200x ./bench/
func BenchmarkCachedJob(b *testing.B) {
	st := stack.Start(b, stack.Options{
		Instances: 1,
		Jobs:      true,
		Sim:       comfysim.Options{RecordRuns: true},
		Config:    func(c *config.Config) { c.Jobs.CacheMaxBytes = 1 << 30 },
	})
	sim := st.Sims[0]
	hc := &http.Client{Timeout: 30 * time.Second}
	submit := func(body []byte) (id string, cached bool) {
		req, _ := http.NewRequest("POST", st.URL+"/api/upscale-image", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Prefer", "wait=30")
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var v struct {
			JobID       string `json:"job_id"`
			Status      string `json:"status"`
			Cached      bool   `json:"cached"`
			ImageBase64 string `json:"image_base64"`
		}
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || v.Status != "completed" || v.ImageBase64 == "" {
			b.Fatalf("POST /api/upscale-image: %d %v %q", resp.StatusCode, err, v.Status)
		}
		return v.JobID, v.Cached
	}
	body := func(i int) []byte {
		bb, _ := json.Marshal(map[string]string{"image_base64": base64.StdEncoding.EncodeToString(seededPNG(64, i))})
		return bb
	}
	for i := range 3 { // warm the connections and the instance
		bb := body(-1 - i)
		submit(bb)
		submit(bb)
	}
	var first, second []time.Duration
	var cachedIDs []string
	b.ResetTimer()
	for i := range b.N {
		bb := body(i)
		b.StopTimer()
		t0 := time.Now()
		if _, cached := submit(bb); cached {
			b.Fatal("a new image was answered from the cache")
		}
		first = append(first, time.Since(t0))
		b.StartTimer()
		t1 := time.Now()
		id, cached := submit(bb)
		second = append(second, time.Since(t1))
		b.StopTimer()
		if !cached {
			b.Fatal("the repeated image was not answered from the cache")
		}
		cachedIDs = append(cachedIDs, id)
		b.StartTimer()
	}
	b.StopTimer()
	// A job's id is the prompt id it would run under: the instance's
	// record says whether any cached job ran there.
	done := sim.Runs()
	cachedRuns := 0
	for _, id := range cachedIDs {
		cachedRuns += done[id]
	}
	b.ReportMetric(float64(median(first).Microseconds())/1000, "ms-first-median")
	b.ReportMetric(float64(median(second).Microseconds())/1000, "ms-cached-median")
	b.ReportMetric(float64(cachedRuns), "instance-runs-cached")
}

// seededPNG is a w×w image that differs for every seed.
func seededPNG(w, seed int) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, w))
	for y := range w {
		for x := range w {
			img.SetNRGBA(x, y, color.NRGBA{uint8(x * 4), uint8(y * 4), 128, 255})
		}
	}
	img.SetNRGBA(0, 0, color.NRGBA{uint8(seed), uint8(seed >> 8), uint8(seed >> 16), 255})
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	return buf.Bytes()
}
