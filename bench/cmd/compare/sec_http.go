package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// measureFn measures one round of one target at addr.
type measureFn func(ctx context.Context, target, addr string) (result, error)

// result is one round of one target.
type result struct {
	value, p50, p99 float64
	errors          int64
	peakRSSMB       float64
	bytesPerResp    float64 // body and headers per answer, to see all targets answer alike
}

// compare runs rounds of fn over the four targets, rotating their order
// each round so none always goes first, and adds the row to the report.
func compare(ctx context.Context, e *env, rep *report, section, work, kind, unit string, rounds int, fn measureFn) (*row, error) {
	r := &row{Section: section, Work: work, Upstream: kind, Unit: unit, Cells: map[string]*cell{}}
	for round := range rounds {
		order := slices.Clone(targetNames)
		for range round % len(order) {
			order = append(order[1:], order[0])
		}
		for _, t := range order {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			res, err := fn(ctx, t, e.addr(kind, t))
			if err != nil {
				return nil, fmt.Errorf("%s %s via %s: %w", work, kind, t, err)
			}
			c := r.Cells[t]
			if c == nil {
				c = &cell{}
				r.Cells[t] = c
			}
			c.add(res.value, res.p50, res.p99)
			c.Errors += res.errors
			c.PeakRSSMB = max(c.PeakRSSMB, res.peakRSSMB)
			c.BytesPerResponse = res.bytesPerResp
		}
	}
	if d := r.Cells["direct"]; d != nil && d.BytesPerResponse > 0 {
		for _, t := range targetNames {
			if c := r.Cells[t]; c != nil && math.Abs(c.BytesPerResponse-d.BytesPerResponse) > 0.1*d.BytesPerResponse {
				logf("  warning: %s %s: %s answers %.0f bytes per response, direct %.0f", work, kind, t, c.BytesPerResponse, d.BytesPerResponse)
			}
		}
	}
	logf("  %-28s %-4s direct %s | comfygate %s | nginx %s | haproxy %s", work, kind,
		r.cellText("direct"), r.cellText("comfygate"), r.cellText("nginx"), r.cellText("haproxy"))
	rep.Rows = append(rep.Rows, r)
	return r, nil
}

// wrkRate measures a request rate with wrk.
func wrkRate(e *env, path string, conns int, d time.Duration, script string, mb bool) measureFn {
	return func(ctx context.Context, _, addr string) (result, error) {
		w, err := e.runWrk(ctx, "http://"+addr+path, conns, d, script)
		if err != nil {
			return result{}, err
		}
		v := w.rps()
		if mb {
			v = w.mbps()
		}
		return result{value: v, p50: w.P50, p99: w.P99, errors: w.errors(), bytesPerResp: float64(w.Bytes) / float64(w.Requests)}, nil
	}
}

func sectionGet(ctx context.Context, o options, e *env, rep *report) error {
	script, err := e.wrkScript("get", "")
	if err != nil {
		return err
	}
	small := map[string]*row{}
	for _, path := range []string{"/system_stats", "/object_info"} {
		for _, kind := range []string{upSim, upMini} {
			r, err := compare(ctx, e, rep, "get", "GET "+path, kind, "req/s", o.rounds, wrkRate(e, path, o.conns, o.dur, script, false))
			if err != nil {
				return err
			}
			if path == "/system_stats" {
				small[kind] = r
			}
		}
	}
	lat := map[string]*row{}
	for _, kind := range []string{upSim, upMini} {
		fn := func(ctx context.Context, t, addr string) (result, error) {
			w, err := e.runWrk(ctx, "http://"+addr+"/system_stats", 1, max(o.dur/2, time.Second), script)
			return result{value: w.P50, p50: w.P50, p99: w.P99, errors: w.errors()}, err
		}
		r, err := compare(ctx, e, rep, "get", "GET /system_stats, 1 connection", kind, "µs", o.rounds, fn)
		if err != nil {
			return err
		}
		lat[kind] = r
	}
	for _, kind := range []string{upSim, upMini} {
		r := small[kind]
		n, h := r.speedup("nginx"), r.speedup("haproxy")
		rep.addTarget("small GET >= 1.1x nginx, >= 1.0x HAProxy ("+kind+")",
			fmt.Sprintf("%sx nginx, %sx HAProxy", fmtNum(n), fmtNum(h)), n >= 1.1 && h >= 1.0)
	}
	a := lat[upMini].added()
	rep.addTarget("added p50 < 50 µs (minimal upstream, 1 connection)", fmtUS(a), a < 50)
	return nil
}

// viewFiles makes the /view files in both instances' output folders
// (hard links: one copy on disk) and returns their names.
func (e *env) viewFile(name string, size int64) error {
	if e.fileSize == nil {
		e.fileSize = map[string]int64{}
	}
	if _, ok := e.fileSize[name]; ok {
		return nil
	}
	p := filepath.Join(e.simOut[0], name)
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	block := make([]byte, 1<<20)
	_, _ = rand.Read(block)
	for left := size; left > 0; left -= int64(len(block)) {
		if _, err := f.Write(block[:min(int64(len(block)), left)]); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	q := filepath.Join(e.simOut[1], name)
	_ = os.Remove(q)
	if err := os.Link(p, q); err != nil {
		return err
	}
	e.fileSize[name] = size
	return nil
}

// rssPID is the process whose memory is the target's own: nginx's
// worker, HAProxy; 0 for the others (the caller knows which comfygate).
func (e *env) rssPID(target string) int {
	if target != "nginx" && target != "haproxy" {
		return 0
	}
	p := e.ps.find(target)
	if p == nil {
		return 0
	}
	if target == "nginx" {
		if kids := childPIDs(p.pid()); len(kids) > 0 {
			return kids[0]
		}
	}
	return p.pid()
}

// childPIDs lists pid's children.
func childPIDs(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range bytes.Fields(b) {
		if n, err := strconv.Atoi(string(f)); err == nil {
			out = append(out, n)
		}
	}
	return out
}

func sectionView(ctx context.Context, o options, e *env, rep *report) error {
	const small, big = "bench-view-10mb.png", "bench-view-500mb.png"
	if err := e.viewFile(small, 10_000_000); err != nil {
		return err
	}
	if err := e.viewFile(big, 500_000_000); err != nil {
		return err
	}
	script, err := e.wrkScript("view", "")
	if err != nil {
		return err
	}
	rows10 := map[string]*row{}
	for _, kind := range []string{upSim, upMini} {
		r, err := compare(ctx, e, rep, "view", "GET /view 10 MB", kind, "MB/s", o.rounds,
			wrkRate(e, "/view?filename="+small+"&type=output", o.bigConns, o.bigDur, script, true))
		if err != nil {
			return err
		}
		rows10[kind] = r
	}
	hc := &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}, Timeout: 5 * time.Minute}
	rows500 := map[string]*row{}
	for _, kind := range []string{upSim, upMini} {
		fn := func(ctx context.Context, t, addr string) (result, error) {
			pid := e.rssPID(t)
			if t == "comfygate" {
				pid = e.gateProc[kind].pid()
			}
			var s *rssSampler
			if pid != 0 {
				s = sampleRSS(pid, 20*time.Millisecond)
			}
			t0 := time.Now()
			n, err := download(ctx, hc, "http://"+addr+"/view?filename="+big+"&type=output")
			d := time.Since(t0)
			var peak float64
			if s != nil {
				peak = s.stop()
			}
			if err == nil && n != 500_000_000 {
				err = fmt.Errorf("got %d bytes", n)
			}
			us := float64(d.Microseconds())
			return result{value: float64(n) / 1e6 / d.Seconds(), p50: us, p99: us, peakRSSMB: peak}, err
		}
		r, err := compare(ctx, e, rep, "view", "GET /view 500 MB, 1 client", kind, "MB/s", o.bigRounds, fn)
		if err != nil {
			return err
		}
		rows500[kind] = r
	}
	for _, kind := range []string{upSim, upMini} {
		a, b := rows10[kind].speedup("nginx"), rows500[kind].speedup("nginx")
		rep.addTarget("/view throughput >= nginx ("+kind+")", fmt.Sprintf("10 MB: %sx, 500 MB: %sx", fmtNum(a), fmtNum(b)), a >= 1 && b >= 1)
	}
	peak := max(rows500[upSim].Cells["comfygate"].PeakRSSMB, rows500[upMini].Cells["comfygate"].PeakRSSMB)
	rep.addTarget("peak RSS < 64 MB while streaming 500 MB", fmt.Sprintf("%.0f MB (comfygate's VmRSS sampled every 20 ms)", peak), peak < 64)
	return nil
}

// download reads url's body and returns its length.
func download(ctx context.Context, hc *http.Client, url string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, err := resp.Body.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func sectionUpload(ctx context.Context, o options, e *env, rep *report) error {
	img := make([]byte, 10_000_000)
	_, _ = rand.Read(img)
	copy(img, testPNG(1, 1)) // a PNG signature in front
	body, ctype := multipartBody(uploadName, img)
	bodyPath := filepath.Join(e.work, "upload-body")
	if err := os.WriteFile(bodyPath, body, 0o644); err != nil {
		return err
	}
	script, err := e.wrkScript("upload", uploadScript(bodyPath, ctype))
	if err != nil {
		return err
	}
	mb := float64(len(body)) / 1e6
	for _, kind := range []string{upSim, upMini} {
		fn := func(ctx context.Context, t, addr string) (result, error) {
			w, err := e.runWrk(ctx, "http://"+addr+"/upload/image", o.bigConns, o.bigDur, script)
			return result{value: w.rps() * mb, p50: w.P50, p99: w.P99, errors: w.errors()}, err
		}
		if _, err := compare(ctx, e, rep, "upload", "POST /upload/image 10 MB", kind, "MB/s", o.rounds, fn); err != nil {
			return err
		}
	}
	return nil
}

// promptBody is a POST /prompt body: EmptyImage -> ImageInvert ->
// SaveImage, one node that takes the instance's delay; seed makes each
// prompt differ, so nothing is served from a cache.
func promptBody(clientID string, seed int) []byte {
	b, _ := json.Marshal(map[string]any{"client_id": clientID, "prompt": map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": seed % 16777216}},
		"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
		"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": "bench"}},
	}})
	return b
}

// submit posts one prompt and returns its id.
func submit(ctx context.Context, hc *http.Client, base string, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/prompt", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var v struct {
		PromptID string `json:"prompt_id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&v)
	if resp.StatusCode != 200 || v.PromptID == "" {
		return "", fmt.Errorf("POST /prompt: status %d %v", resp.StatusCode, err)
	}
	return v.PromptID, nil
}

// queueEmpty reports whether the instance at addr has nothing queued or
// running.
func queueEmpty(hc *http.Client, addr string) bool {
	resp, err := hc.Get("http://" + addr + "/queue")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var q struct {
		Running []json.RawMessage `json:"queue_running"`
		Pending []json.RawMessage `json:"queue_pending"`
	}
	return json.NewDecoder(resp.Body).Decode(&q) == nil && len(q.Running) == 0 && len(q.Pending) == 0
}

// waitIdle waits (bounded) until every instance's queue is empty.
func waitIdle(ctx context.Context, hc *http.Client, addrs []string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		idle := true
		for _, a := range addrs {
			if !queueEmpty(hc, a) {
				idle = false
				break
			}
		}
		if idle {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("instances still busy after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func sectionSubmit(ctx context.Context, o options, e *env, rep *report) error {
	const perRound, spacing = 200, 4 * time.Millisecond
	hc := &http.Client{Timeout: 30 * time.Second}
	seed := 0
	fn := func(ctx context.Context, t, addr string) (result, error) {
		if err := waitIdle(ctx, hc, e.simAddr[:], time.Minute); err != nil {
			return result{}, err
		}
		var lats []time.Duration
		next := time.Now()
		for range perRound {
			seed++
			body := promptBody("bench-submit", seed)
			time.Sleep(time.Until(next))
			next = next.Add(spacing)
			t0 := time.Now()
			if _, err := submit(ctx, hc, "http://"+addr, body); err != nil {
				return result{}, err
			}
			lats = append(lats, time.Since(t0))
		}
		s := summarize(micros(lats))
		return result{value: s.P50, p50: s.P50, p99: s.P99}, nil
	}
	r, err := compare(ctx, e, rep, "submit", fmt.Sprintf("POST /prompt (one every %s)", spacing), upSim, "µs", o.rounds, fn)
	if err != nil {
		return err
	}
	rep.Raw["submit_added_p50_us"] = finite(r.added())
	return waitIdle(ctx, hc, e.simAddr[:], time.Minute)
}

// testPNG is a w×h PNG.
func testPNG(w, h int) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetNRGBA(x, y, color.NRGBA{uint8(x * 4), uint8(y * 4), 128, 255})
		}
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	return buf.Bytes()
}
