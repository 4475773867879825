package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
)

// restartedService closes s and starts another service over f on the same
// state directory, as a restarted comfygate does.
func restartedService(t *testing.T, s *Service, f *fakeBackend, dir string) *Service {
	t.Helper()
	s.Close()
	s2 := newFakeService(t, f, func(c *config.Config) { c.Jobs.StateDir = dir })
	s2.Start(t.Context())
	return s2
}

func statusOf(t *testing.T, s *Service, id string) (int, statusView) {
	t.Helper()
	_, code, _, resp := serve(t, s, "GET", "/api/jobs/"+id+"/status", "", nil)
	var v statusView
	if code == 200 {
		if err := json.Unmarshal(resp, &v); err != nil {
			t.Fatalf("status: %s", resp)
		}
	}
	return code, v
}

// TestRestartKeepsWaitingJob: a job still in comfygate's line when it
// stops waits again after the restart, with its image, and is submitted.
func TestRestartKeepsWaitingJob(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := newFake(t, 2)
	s := newFakeService(t, f, func(c *config.Config) { c.Jobs.StateDir = dir })
	id := submitFake(t, s, "/api/upscale-image") // not started: it stays in line
	f2 := newFake(t, 2)
	s2 := restartedService(t, s, f2, dir)
	if code, v := statusOf(t, s2, id); code != 200 || v.Status == "" {
		t.Fatalf("status after restart: %d %+v", code, v)
	}
	if got := f2.waitSubmitted(); got != id {
		t.Fatalf("submitted %s after the restart, want %s", got, id)
	}
	testkit.Eventually(t, "the kept image uploaded", func() bool {
		f2.mu.Lock()
		defer f2.mu.Unlock()
		return f2.uploads["fake1"] == 1
	})
	testkit.Eventually(t, "queued at the instance", func() bool { return jobState(s2, id) == stQueued })
}

// TestRestartReconcilesSubmittedJob: a job that was at an instance is
// found there after the restart, by its prompt id: finished in the
// instance's history, it completes with its outputs fetched again; known
// to no instance, it is submitted again from the kept image.
func TestRestartReconcilesSubmittedJob(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc    string
		history bool
	}{{"in the history", true}, {"known nowhere", false}} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			f := newFake(t, 2)
			s := newFakeService(t, f, func(c *config.Config) { c.Jobs.StateDir = dir })
			s.Start(t.Context())
			id := submitFake(t, s, "/api/upscale-image")
			f.waitSubmitted()
			testkit.Eventually(t, "queued", func() bool { return jobState(s, id) == stQueued })

			f2 := newFake(t, 2)
			f2.callFn = func(method, path string) (int, []byte, bool) {
				switch {
				case path == "/queue":
					return 200, []byte(`{"queue_running": [], "queue_pending": []}`), true
				case path == "/history/"+id && tc.history:
					return 200, []byte(`{"` + id + `": {"prompt": [], "outputs": {"4": {"images": [{"filename": "up_00001_.png", "subfolder": "", "type": "output"}]}},
						"status": {"status_str": "success", "completed": true, "messages": []}}}`), true
				}
				return 0, nil, false
			}
			s2 := restartedService(t, s, f2, dir)
			if !tc.history {
				if got := f2.waitSubmitted(); got != id {
					t.Fatalf("submitted %s after the restart, want %s", got, id)
				}
				return
			}
			testkit.Eventually(t, "completed from the history", func() bool {
				_, v := statusOf(t, s2, id)
				return v.Status == statusCompleted
			})
			if _, _, _, resp := serve(t, s2, "GET", "/api/jobs/"+id+"/result?format=raw", "", nil); len(resp) == 0 {
				t.Fatal("no result after the restart")
			}
			f2.mu.Lock()
			n := len(f2.submits)
			f2.mu.Unlock()
			if n != 0 {
				t.Fatalf("a job the instance had finished was submitted again (%d)", n)
			}
		})
	}
}

// TestRecordsAreFilesOfTheirJobs: the state directory holds one record per
// job and its image; both go when the job expires.
func TestRecordsAreFilesOfTheirJobs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := newFake(t, 1)
	s := newFakeService(t, f, func(c *config.Config) { c.Jobs.StateDir = dir })
	id := submitFake(t, s, "/api/upscale-image")
	s.st.state.flush() // the writer's work, in a service not started
	b, err := os.ReadFile(filepath.Join(dir, id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil || rec.ID != id || rec.State != recWaiting || len(rec.Images) != 1 {
		t.Fatalf("record: %v %s", err, b)
	}
	if _, err := os.Stat(rec.Images[0].File); err != nil || !strings.HasPrefix(rec.Images[0].File, filepath.Join(dir, "inputs")) {
		t.Fatalf("kept image %q: %v", rec.Images[0].File, err)
	}
	if known, cancelled := s.CancelJob(context.Background(), id, ""); !known || !cancelled {
		t.Fatal("cancel")
	}
	s.st.state.flush()
	if _, err := os.Stat(rec.Images[0].File); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("image kept after the job ended: %v", err)
	}
	s.st.state.flush()
	b, _ = os.ReadFile(filepath.Join(dir, id+".json"))
	if err := json.Unmarshal(b, &rec); err != nil || rec.State != statusCancelled {
		t.Fatalf("record after cancel: %s", b)
	}
}

// TestInstanceFault5xxTriesAnother: a 5xx to a job's POST /prompt is the
// instance's fault: the job goes to another instance; when every instance
// answers so, it fails with their message.
func TestInstanceFault5xxTriesAnother(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc   string
		broken int // instances answering 500
	}{{"one of two broken", 1}, {"both broken", 2}} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			f := newFake(t, 2)
			f.submitFn = func(req prompts.SubmitRequest) (prompts.SubmitResult, error) {
				for k, inst := range f.insts {
					if req.Eligible != nil && !req.Eligible(inst) {
						continue
					}
					if k < tc.broken {
						return prompts.SubmitResult{Instance: inst, Status: 500, Body: []byte(`{"error": {"type": "server_error", "message": "CUDA error"}}`)}, nil
					}
					return f.accept(req), nil
				}
				return prompts.SubmitResult{}, upstream.ErrNoUpstream
			}
			s := newFakeService(t, f, nil)
			s.Start(t.Context())
			id := submitFake(t, s, "/api/upscale-image")
			if tc.broken == 1 {
				testkit.Eventually(t, "queued on the other instance", func() bool { return jobState(s, id) == stQueued })
				return
			}
			testkit.Eventually(t, "failed", func() bool { return jobState(s, id) == stFailed })
			_, v := statusOf(t, s, id)
			if v.Error == nil || !strings.Contains(*v.Error, "CUDA error") {
				t.Fatalf("error: %v", deref(v.Error))
			}
		})
	}
}

// TestLargeRawImageGoesToAFile: a raw image body past spoolThreshold goes
// straight to a file of the state directory (never whole in memory) and
// runs like any other; a too large or non-image one is refused and leaves
// no file behind.
func TestLargeRawImageGoesToAFile(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{Delay: 10 * time.Millisecond}, func(c *config.Config) {
		c.Jobs.MaxImageBytes = 4 << 20
	})
	inputs := filepath.Join(h.cfg.Jobs.StateDir, "inputs")
	big := uncompressedPNG(t, 700, 700) // ~1.5 MB
	if len(big) <= spoolThreshold {
		t.Fatalf("test image of %d bytes is not past the threshold", len(big))
	}
	form, formType := multipartBody(t, "image", "big.png", big, nil)
	for _, send := range []struct {
		desc, contentType string
		body              []byte
	}{{"raw", "image/png", big}, {"multipart", formType, form}} {
		code, _, resp := h.do("POST", "/api/remove-background", send.contentType, send.body)
		if code != http.StatusAccepted {
			t.Fatalf("%s POST: %d %s", send.desc, code, resp)
		}
		var a acceptedView
		_ = json.Unmarshal(resp, &a)
		v := h.waitStatus(a.JobID, 20*time.Second, statusCompleted, statusFailed)
		if v.Status != statusCompleted {
			t.Fatalf("%s: status %+v (%s)", send.desc, v, deref(v.Error))
		}
		if b := decodePNG(t, h.result(a.JobID)).Bounds(); b.Dx() != 700 || b.Dy() != 700 {
			t.Fatalf("%s: result %v, want 700x700", send.desc, b)
		}
	}
	tooLargeForm, tooLargeType := multipartBody(t, "image", "big.png", append(big, make([]byte, 3<<20)...), nil)
	notImageForm, notImageType := multipartBody(t, "image", "x.png", bytes.Repeat([]byte("x"), 2<<20), nil)
	for _, tc := range []struct {
		desc, contentType string
		body              []byte
		want              string
	}{
		{"too large", "image/png", append(big, make([]byte, 3<<20)...), errImageTooLarge},
		{"not an image", "image/png", bytes.Repeat([]byte("x"), 2<<20), errInvalidImage},
		{"too large, multipart", tooLargeType, tooLargeForm, errImageTooLarge},
		{"not an image, multipart", notImageType, notImageForm, errInvalidImage},
	} {
		code, _, resp := h.do("POST", "/api/remove-background", tc.contentType, tc.body)
		if code != http.StatusBadRequest || !bytes.Contains(resp, []byte(tc.want)) {
			t.Errorf("%s: %d %s, want 400 %s", tc.desc, code, resp, tc.want)
		}
	}
	testkit.Eventually(t, "no image kept once the jobs ended", func() bool {
		left, _ := os.ReadDir(inputs)
		return len(left) == 0
	})
}

// uncompressedPNG is a w×h opaque PNG stored without compression.
func uncompressedPNG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 7)
		if i%4 == 3 {
			img.Pix[i] = 255
		}
	}
	var buf bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.NoCompression}).Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestRestartKeepsOwnerAndIdempotencyKey: a restored job still belongs to
// the key that submitted it (another isolated key sees no such job), and
// a replay of its Idempotency-Key by that key after the restart returns
// the same job, while the same value from another key makes a new one.
func TestRestartKeepsOwnerAndIdempotencyKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := newFake(t, 2)
	s := newFakeService(t, f, func(c *config.Config) { c.Jobs.StateDir = dir })
	a := Request{Owner: "key-a", Scope: "key-a"}
	b := Request{Owner: "key-b", Scope: "key-b"}
	body, _ := json.Marshal(map[string]any{"image_base64": testPNG(t, 4, 4)})
	submit := func(s *Service, r Request) (int, http.Header, acceptedView) {
		t.Helper()
		_, code, h, resp := serveAs(t, s, r, "POST", "/api/upscale-image", "application/json", body, "Idempotency-Key", "same-key")
		var v acceptedView
		if code == 202 && json.Unmarshal(resp, &v) != nil {
			t.Fatalf("answer: %s", resp)
		}
		hh := http.Header{}
		for k, v := range h.All() {
			hh.Add(string(k), string(v))
		}
		return code, hh, v
	}
	code, _, first := submit(s, a)
	if code != 202 || first.JobID == "" {
		t.Fatalf("first submission: %d %+v", code, first)
	}

	s2 := restartedService(t, s, newFake(t, 2), dir)
	if owner, known := s2.JobOwner(first.JobID); !known || owner != "key-a" {
		t.Fatalf("JobOwner after restart: %q %v, want key-a true", owner, known)
	}
	status := func(r Request) int {
		_, code, _, _ := serveAs(t, s2, r, "GET", "/api/jobs/"+first.JobID+"/status", "", nil)
		return code
	}
	if got := status(a); got != 200 {
		t.Errorf("the owner reading its restored job: %d, want 200", got)
	}
	if got := status(b); got != 404 {
		t.Errorf("another isolated key reading the restored job: %d, want 404", got)
	}
	code, h, again := submit(s2, a)
	if code != 202 || again.JobID != first.JobID || h.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("the owner's replay after restart: %d %q replayed=%q, want the job %s", code, again.JobID, h.Get("Idempotent-Replayed"), first.JobID)
	}
	code, h, other := submit(s2, b)
	if code != 202 || other.JobID == "" || other.JobID == first.JobID || h.Get("Idempotent-Replayed") != "" {
		t.Fatalf("another key's same Idempotency-Key: %d %q replayed=%q, want a new job", code, other.JobID, h.Get("Idempotent-Replayed"))
	}
	if owner, _ := s2.JobOwner(other.JobID); owner != "key-b" {
		t.Fatalf("owner of B's job: %q", owner)
	}
}
