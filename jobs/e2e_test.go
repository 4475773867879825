package jobs

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"image"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

func decodePNG(tb testing.TB, b []byte) image.Image {
	tb.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		tb.Fatalf("result is not a PNG: %v", err)
	}
	return img
}

func TestRemoveBackgroundEndToEnd(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2, comfysim.Options{Delay: 10 * time.Millisecond}, nil)
	src := testPNG(t, 64, 48)
	body, ct := multipartBody(t, "image", "photo.png", src, nil)
	code, hdr, resp := h.do("POST", "/api/remove-background", ct, body)
	if code != http.StatusAccepted {
		t.Fatalf("POST: %d %s", code, resp)
	}
	var a acceptedView
	_ = json.Unmarshal(resp, &a)
	if hdr.Get("Location") != "/api/jobs/"+a.JobID+"/status" {
		t.Errorf("Location = %q", hdr.Get("Location"))
	}
	v := h.waitStatus(a.JobID, 10*time.Second, statusCompleted, statusFailed)
	if v.Status != statusCompleted || v.Progress != 100 || v.Instance == nil || !strings.HasPrefix(*v.Instance, "sim") {
		t.Fatalf("status = %+v", v)
	}
	img := decodePNG(t, h.result(a.JobID))
	nrgba, ok := img.(*image.NRGBA)
	if !ok {
		t.Fatalf("result is %T, want an RGBA PNG (NRGBA)", img)
	}
	b := nrgba.Bounds()
	if b.Dx() != 64 || b.Dy() != 48 {
		t.Fatalf("size %v, want 64x48", b)
	}
	for x := b.Min.X; x < b.Max.X; x++ {
		for _, y := range []int{b.Min.Y, b.Max.Y - 1} {
			if a := nrgba.NRGBAAt(x, y).A; a != 0 {
				t.Fatalf("border pixel (%d,%d) alpha %d, want 0", x, y, a)
			}
		}
	}
	if a := nrgba.NRGBAAt(32, 24).A; a != 255 {
		t.Errorf("centre pixel alpha %d, want 255 (the subject stays)", a)
	}

	// Raw bytes by Accept and by ?format=raw.
	for _, tc := range []struct {
		desc, path string
		hdr        []string
	}{
		{"accept", "/api/jobs/" + a.JobID + "/result", []string{"Accept", "image/png"}},
		{"format", "/api/jobs/" + a.JobID + "/result?format=raw", nil},
	} {
		code, hdr, raw := h.do("GET", tc.path, "", nil, tc.hdr...)
		if code != 200 || hdr.Get("Content-Type") != "image/png" {
			t.Fatalf("%s: %d %q", tc.desc, code, hdr.Get("Content-Type"))
		}
		decodePNG(t, raw)
	}
}

func TestUpscaleEndToEnd(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2, comfysim.Options{Delay: 10 * time.Millisecond}, nil)
	id := h.submit("/api/upscale-image", testPNG(t, 20, 15), nil)
	h.waitStatus(id, 10*time.Second, statusCompleted)
	img := decodePNG(t, h.result(id))
	if b := img.Bounds(); b.Dx() != 80 || b.Dy() != 60 {
		t.Fatalf("upscaled size %v, want 80x60", b)
	}

	// An allowed override: a 2x model.
	id = h.submit("/api/workflows/upscale-image", testPNG(t, 20, 15), map[string]any{"2.model_name": "RealESRGAN_x2plus.pth"})
	h.waitStatus(id, 10*time.Second, statusCompleted)
	if b := decodePNG(t, h.result(id)).Bounds(); b.Dx() != 40 || b.Dy() != 30 {
		t.Fatalf("2x model: size %v, want 40x30", b)
	}

	// An override ComfyUI rejects (model not installed): failed with ComfyUI's message.
	id = h.submit("/api/upscale-image", testPNG(t, 20, 15), map[string]any{"2.model_name": "nope.pth"})
	v := h.waitStatus(id, 10*time.Second, statusFailed, statusCompleted)
	if v.Status != statusFailed || v.Error == nil || !strings.Contains(*v.Error, "nope.pth") {
		t.Fatalf("status = %+v (error %q)", v, deref(v.Error))
	}
	code, _, b := h.do("GET", "/api/jobs/"+id+"/result", "", nil)
	if code != http.StatusConflict || !strings.Contains(string(b), `"failed"`) {
		t.Fatalf("result of a failed job: %d %s", code, b)
	}
}

func TestManyJobsTwoInstances(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2, comfysim.Options{Delay: 20 * time.Millisecond}, func(c *config.Config) {
		c.Jobs.MaxConcurrent = 6
	})
	src := testPNG(t, 16, 16)
	ids := make([]string, 12)
	for i := range ids {
		route := "/api/upscale-image"
		if i%2 == 1 {
			route = "/api/remove-background"
		}
		ids[i] = h.submit(route, src, nil)
	}
	// Never more than MaxConcurrent at the instances.
	maxSeen, done := 0, 0
	if !testkit.Poll(20*time.Second, func() bool {
		h.svc.eng.jobsMu.Lock()
		maxSeen = max(maxSeen, h.svc.eng.inFlight)
		h.svc.eng.jobsMu.Unlock()
		done = 0
		for _, id := range ids {
			if _, v := h.status(id); v.Status == statusCompleted || v.Status == statusFailed {
				done++
			}
		}
		return done == len(ids)
	}) {
		t.Fatalf("%d of %d jobs done after 20s", done, len(ids))
	}
	for _, id := range ids {
		if _, v := h.status(id); v.Status != statusCompleted {
			t.Errorf("job %s: %s (%s)", id, v.Status, deref(v.Error))
		}
		decodePNG(t, h.result(id))
	}
	for i, s := range h.sims {
		if n := s.PromptsExecuted(); n == 0 {
			t.Errorf("instance %d ran no job", i+1)
		}
	}
	if maxSeen > 6 {
		t.Errorf("%d jobs at the instances at once, MaxConcurrent is 6", maxSeen)
	}
	// The list shows them all.
	code, _, b := h.do("GET", "/api/jobs?source=comfygate", "", nil)
	var l listView
	if code != 200 || json.Unmarshal(b, &l) != nil || l.Total != 12 || len(l.Jobs) != 12 || l.Jobs[0].JobID != ids[0] {
		t.Fatalf("list: %d %s", code, b)
	}
}

func TestProgressMonotonic(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{Delay: 400 * time.Millisecond, Steps: 8}, nil)
	// The instance holds its queue until the first poll: a loaded machine
	// may otherwise run the first nodes (50%) before that poll comes.
	h.sims[0].SetPaused(true)
	id := h.submit("/api/upscale-image", testPNG(t, 16, 16), nil)
	var seen []int
	var v statusView
	if !testkit.Poll(15*time.Second, func() bool {
		_, v = h.status(id)
		if len(seen) == 0 || seen[len(seen)-1] != v.Progress {
			seen = append(seen, v.Progress)
		}
		h.sims[0].SetPaused(false)
		return v.Status == statusCompleted || v.Status == statusFailed || v.Progress == 100
	}) || v.Status == statusFailed {
		t.Fatalf("status %+v", v)
	}
	if v.Status != statusCompleted {
		t.Fatalf("progress 100 while %s", v.Status)
	}
	if seen[0] != 0 || seen[len(seen)-1] != 100 {
		t.Fatalf("progress %v: want 0 first and 100 last", seen)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] < seen[i-1] {
			t.Fatalf("progress went down: %v", seen)
		}
	}
	if len(seen) < 4 {
		t.Fatalf("progress %v: want intermediate values", seen)
	}
	t.Logf("progress seen: %v", seen)
}

func TestCancelEveryState(t *testing.T) {
	t.Parallel()
	// One instance, two jobs at it at once (one running, one queued there),
	// a third waiting in comfygate.
	h := newHarness(t, 1, comfysim.Options{Delay: 1500 * time.Millisecond, Steps: 30}, func(c *config.Config) {
		c.Jobs.MaxConcurrent = 2
	})
	src := testPNG(t, 16, 16)
	running := h.submit("/api/upscale-image", src, nil)
	h.waitStatus(running, 5*time.Second, statusProcessing)
	queued := h.submit("/api/upscale-image", src, nil)
	waiting := h.submit("/api/upscale-image", src, nil)
	// queued reaches the instance's queue (pending there), waiting stays in comfygate.
	var st state
	if !testkit.Poll(5*time.Second, func() bool {
		h.svc.eng.jobsMu.Lock()
		st = h.svc.eng.jobs[queued].state
		h.svc.eng.jobsMu.Unlock()
		return st == stQueued
	}) {
		t.Fatalf("second job never queued at the instance (state %d)", st)
	}
	_, v := h.status(waiting)
	if v.Status != statusPending || v.QueuePosition == nil || *v.QueuePosition != 1 {
		t.Fatalf("waiting job: %+v", v)
	}
	if body, ok := h.svc.WaitingJob(waiting, ""); !ok || !bytes.Contains(body, []byte(`"status":"pending"`)) {
		t.Fatalf("WaitingJob: %s %v", body, ok)
	}

	// Waiting: removed from the line.
	code, _, b := h.do("DELETE", "/api/jobs/"+waiting, "", nil)
	if code != 200 || !bytes.Contains(b, []byte(`"cancelled":true`)) {
		t.Fatalf("DELETE waiting: %d %s", code, b)
	}
	if _, v := h.status(waiting); v.Status != statusCancelled {
		t.Fatalf("waiting job after cancel: %+v", v)
	}
	// Pending at the instance: deleted from its queue.
	if known, ok := h.svc.CancelJob(t.Context(), queued, ""); !known || !ok {
		t.Fatalf("CancelJob(queued) = %v, %v", known, ok)
	}
	// Running: interrupted.
	code, _, b = h.do("DELETE", "/api/jobs/"+running, "", nil)
	if code != 200 || !bytes.Contains(b, []byte(`"cancelled":true`)) {
		t.Fatalf("DELETE running: %d %s", code, b)
	}
	for _, id := range []string{waiting, queued, running} {
		if v := h.waitStatus(id, 5*time.Second, statusCancelled, statusCompleted, statusFailed); v.Status != statusCancelled {
			t.Errorf("job %s: %s", id, v.Status)
		}
	}
	// The slots come back: the interrupt took effect on the instance.
	var held int
	if !testkit.Poll(5*time.Second, func() bool {
		h.svc.eng.jobsMu.Lock()
		held = h.svc.eng.inFlight
		h.svc.eng.jobsMu.Unlock()
		return held == 0
	}) {
		t.Fatalf("%d slots still held after cancelling everything", held)
	}
	if n := h.sims[0].PromptsExecuted(); n > 1 {
		t.Errorf("instance executed %d prompts; only the interrupted one started", n)
	}
	// Cancelling again: known, nothing to cancel; unknown ids: 404.
	if known, ok := h.svc.CancelJob(t.Context(), running, ""); !known || ok {
		t.Errorf("second cancel = %v, %v", known, ok)
	}
	if code, _, _ := h.do("DELETE", "/api/jobs/00000000-0000-4000-8000-000000000000", "", nil); code != 404 {
		t.Errorf("DELETE unknown: %d", code)
	}
	// A new job still runs to completion afterwards.
	id := h.submit("/api/remove-background", src, nil)
	h.waitStatus(id, 10*time.Second, statusCompleted)
}

func TestExpiry(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{}, func(c *config.Config) {
		c.Jobs.Timeout = 300 * time.Millisecond
	})
	id := h.submit("/api/upscale-image", testPNG(t, 8, 8), nil)
	h.waitStatus(id, 10*time.Second, statusCompleted)
	decodePNG(t, h.result(id)) // fetched results stay until expiry
	decodePNG(t, h.result(id))
	testkit.EventuallyWithin(t, 5*time.Second, "a job 300ms past its JOB_TIMEOUT to be gone", func() bool {
		code, _ := h.status(id)
		return code == 404
	})
	if code, _, _ := h.do("GET", "/api/jobs/"+id+"/result", "", nil); code != 404 {
		t.Fatalf("result of an expired job: %d", code)
	}
	// The sweeper dropped it from memory, not just from view.
	testkit.EventuallyWithin(t, 5*time.Second, "the sweeper to drop the expired job from memory", func() bool {
		h.svc.eng.jobsMu.Lock()
		defer h.svc.eng.jobsMu.Unlock()
		return len(h.svc.eng.jobs) == 0
	})
}

func TestKilledInstanceLosesNoJob(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2, comfysim.Options{Delay: 300 * time.Millisecond, Steps: 3, RecordRuns: true}, func(c *config.Config) {
		c.Jobs.MaxConcurrent = 8
	})
	src := testPNG(t, 16, 16)
	ids := make([]string, 8)
	for i := range ids {
		ids[i] = h.submit("/api/upscale-image", src, nil)
	}
	// Kill the first instance once it is running one of them.
	testkit.EventuallyWithin(t, 10*time.Second, "sim1 to run a job", func() bool {
		for _, id := range ids {
			if _, v := h.status(id); v.Status == statusProcessing && v.Instance != nil && *v.Instance == "sim1" {
				return true
			}
		}
		return false
	})
	h.sims[0].Kill()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := h.waitStatus(id, 30*time.Second, statusCompleted, statusFailed, statusCancelled)
			if v.Status != statusCompleted {
				t.Errorf("job %s: %s (%s)", id, v.Status, deref(v.Error))
			}
		}()
	}
	wg.Wait()
	moved := 0
	for _, id := range ids {
		if p, ok := h.prompts.Prompt(id); ok && p.Attempts() > 1 {
			moved++
		}
	}
	if moved == 0 {
		t.Error("no job was resubmitted: the kill did not hit any")
	}
	t.Logf("%d of %d jobs were resubmitted after sim1 died", moved, len(ids))
	// Each image went only where its job was sent: sim2 holds the images of
	// the jobs it ran (those moved off sim1 uploaded again from comfygate's
	// copy), in comfygate's subfolder under the job's name, and no other.
	runs := h.sims[1].Runs()
	for _, id := range ids {
		_, err := os.Stat(filepath.Join(h.sims[1].InputDir(), inputSubfolder, id+".png"))
		if has := err == nil; has != (runs[id] > 0) {
			t.Errorf("job %s: ran %d times on sim2 (%d on sim1), its image there: %v", id, runs[id], h.sims[0].Runs()[id], has)
		}
	}
	for _, id := range ids {
		if _, v := h.status(id); v.Status == statusCompleted {
			if b := decodePNG(t, h.result(id)).Bounds(); b.Dx() != 64 {
				t.Errorf("job %s: size %v", id, b)
			}
		}
	}
}

func TestBadInputEndToEnd(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{}, func(c *config.Config) { c.Jobs.MaxImageBytes = 4096 })
	big := testPNG(t, 200, 200)
	if len(big) <= 4096 {
		big = append(big, make([]byte, 5000)...)
	}
	mp, mpct := multipartBody(t, "image", "x.png", big, nil)
	small := base64.StdEncoding.EncodeToString(testPNG(t, 4, 4))
	for _, tc := range []struct {
		desc, path, ct string
		body           []byte
		code           int
		typ            string
	}{
		{"no image", "/api/upscale-image", "application/json", []byte(`{}`), 400, errMissingImage},
		{"not an image", "/api/upscale-image", "application/json", []byte(`{"image_base64":"aGVsbG8gd29ybGQ="}`), 400, errInvalidImage},
		{"too large", "/api/remove-background", mpct, mp, 400, errImageTooLarge},
		{"unknown workflow", "/api/workflows/nope", "application/json", []byte(`{}`), 400, errUnknownWorkflow},
		{"bad override", "/api/workflows/upscale-image", "application/json", []byte(`{"image_base64":"` + small + `","inputs":{"4.filename_prefix":"x"}}`), 400, errInvalidOverride},
		{"bad json", "/api/upscale-image", "application/json", []byte(`{`), 400, errInvalidRequest},
		{"wrong method", "/api/upscale-image", "", nil, 405, errMethodNotAllowed},
	} {
		method := "POST"
		if tc.code == 405 {
			method = "GET"
		}
		code, _, b := h.do(method, tc.path, tc.ct, tc.body)
		var e struct {
			Error struct{ Type, Message string } `json:"error"`
		}
		if code != tc.code || json.Unmarshal(b, &e) != nil || e.Error.Type != tc.typ || e.Error.Message == "" {
			t.Errorf("%s: %d %s, want %d with type %s", tc.desc, code, b, tc.code, tc.typ)
		}
	}
	if n := h.sims[0].PromptsExecuted(); n != 0 {
		t.Errorf("bad input reached the instance: %d prompts", n)
	}
}

// TestInstanceVersions runs a job on each ComfyUI generation the simulator
// emulates: 2024 (server-minted prompt ids, mapped by the pool), Oct-2025,
// and 2026 (canonical UUID prompt ids required, jobs API).
func TestInstanceVersions(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"0.3.40", "0.3.65", "0.38.0"} {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, 1, comfysim.Options{Version: v}, nil)
			id := h.submit("/api/remove-background", testPNG(t, 12, 12), nil)
			if got := h.waitStatus(id, 10*time.Second, statusCompleted, statusFailed); got.Status != statusCompleted {
				t.Fatalf("%+v (%s)", got, deref(got.Error))
			}
			decodePNG(t, h.result(id))
		})
	}
}
