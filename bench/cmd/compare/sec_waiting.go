package main

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"time"
)

// bigPNG is an uncompressed, opaque w×w PNG of noise (3 bytes a pixel), different
// for every seed.
func bigPNG(w int, seed uint64) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, w))
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(img.Pix); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			img.Pix[i+k] = byte(v >> (8 * k))
		}
	}
	for i := 3; i < len(img.Pix); i += 4 {
		img.Pix[i] = 255
	}
	var buf bytes.Buffer
	_ = (&png.Encoder{CompressionLevel: png.NoCompression}).Encode(&buf, img)
	return buf.Bytes()
}

// dirBytes is the size of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// waitingJobs submits n remove-background jobs of 45 MB images to a
// comfygate whose two instances take a minute per heavy node, so all but
// the first few wait, and reports comfygate's memory and the instances'
// input folders. raw sends each image as the request body (image/png),
// else as a multipart form as curl -F does.
func (e *env) waitingJobs(ctx context.Context, n int, raw bool, rep *report) (float64, int, error) {
	how := "multipart"
	if raw {
		how = "raw"
	}
	var started []*proc
	defer func() {
		for i := len(started) - 1; i >= 0; i-- {
			e.ps.stopOne(started[i])
		}
	}()
	var addrs, inputs []string
	for i := range 2 {
		dir := filepath.Join(e.work, fmt.Sprintf("waiting-%s-%d", how, i))
		p, a, err := e.startSims(ctx, fmt.Sprintf("waiting-%s-sim%d", how, i), 1, "-delay", "60s",
			"-input-dir", filepath.Join(dir, "input"), "-output-dir", filepath.Join(dir, "output"), "-temp-dir", filepath.Join(dir, "temp"))
		if err != nil {
			return 0, 0, err
		}
		started = append(started, p)
		addrs = append(addrs, a[0])
		inputs = append(inputs, filepath.Join(dir, "input"))
	}
	gp, gate, err := e.startGate(ctx, "waiting-"+how+"-gate", addrs)
	if err != nil {
		return 0, 0, err
	}
	started = append(started, gp)
	const side = 3873 // opaque, so 3 bytes a pixel: 45 MB
	before := rssKB(gp.pid())
	s := sampleRSS(gp.pid(), 20*time.Millisecond)
	hc := &http.Client{Timeout: 2 * time.Minute}
	accepted, refused := 0, 0
	var size int
	for i := range n {
		if ctx.Err() != nil {
			s.stop()
			return 0, 0, ctx.Err()
		}
		body, ctype := bigPNG(side, uint64(i+1)), "image/png"
		if !raw {
			body, ctype = multipartBody("bench-waiting.png", body)
		}
		size = len(body)
		resp, err := hc.Post("http://"+gate+"/api/remove-background", ctype, bytes.NewReader(body))
		if err != nil {
			s.stop()
			return 0, 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case 202, 200:
			accepted++
		case 429, 503:
			refused++
		default:
			s.stop()
			return 0, 0, fmt.Errorf("job %d (%s): status %d", i, how, resp.StatusCode)
		}
	}
	time.Sleep(2 * time.Second)
	peak := s.stop()
	after := rssKB(gp.pid())
	var in int64
	for _, d := range inputs {
		in += dirBytes(d)
	}
	t := rep.table("jobs-waiting", fmt.Sprintf("Jobs of %.0f MB waiting (2 instances busy for a minute a job)", float64(size)/1e6),
		"POST /api/remove-background, one after the other, the image as the raw request body (image/png) or as a multipart form; RSS sampled every 20 ms; a fresh comfygate and instances for each.",
		"body", "jobs sent", "accepted", "refused (429/503)", "comfygate RSS before", "peak", "after", "instances' input folders")
	t.Rows = append(t.Rows, []string{how, fmt.Sprint(n), fmt.Sprint(accepted), fmt.Sprint(refused), fmt.Sprintf("%.0f MB", float64(before)/1024),
		fmt.Sprintf("%.0f MB", peak), fmt.Sprintf("%.0f MB", float64(after)/1024), fmt.Sprintf("%.0f MB", float64(in)/1e6)})
	rep.Raw["jobs_waiting_"+how] = map[string]any{"sent": n, "accepted": accepted, "refused": refused, "image_bytes": size,
		"rss_before_kb": before, "rss_peak_mb": peak, "rss_after_kb": after, "instance_input_bytes": in}
	logf("  %d jobs of 45 MB (%s): %d accepted, comfygate RSS peak %.0f MB, inputs %.0f MB", n, how, accepted, peak, float64(in)/1e6)
	return peak, accepted, nil
}
