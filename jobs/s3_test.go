package jobs

import (
	"bytes"
	"encoding/json"
	"image/gif"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// TestOutputsUploadedToS3 runs a video job with outputs going to an S3
// server (gofakes3, speaking the S3 protocol in-process) and fetches the
// presigned URL.
func TestOutputsUploadedToS3(t *testing.T) {
	// Credentials come from the environment: no t.Parallel.
	t.Setenv("AWS_ACCESS_KEY_ID", "comfygate-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "comfygate-test-secret")
	backend := s3mem.New()
	if err := backend.CreateBucket("results"); err != nil {
		t.Fatal(err)
	}
	s3 := httptest.NewServer(gofakes3.New(backend).Server())
	defer s3.Close()
	h := newHarness(t, 1, comfysim.Options{}, func(c *config.Config) {
		videoWorkflow(t, c)
		c.Jobs.S3.Endpoint = strings.TrimPrefix(s3.URL, "http://")
		c.Jobs.S3.Bucket = "results"
		c.Jobs.S3.Prefix = "comfy/"
		c.Jobs.S3.Insecure = true
	})
	code, _, b := postJSON(h, "/api/workflows/video?wait=20s", map[string]any{"frames": 3})
	var v waitedView
	if code != 200 || json.Unmarshal(b, &v) != nil || v.Status != statusCompleted || len(v.Outputs) == 0 {
		t.Fatalf("submit: %d %s", code, b)
	}
	out := v.Outputs[0]
	if out.S3Error != "" || !strings.HasPrefix(out.S3Key, "comfy/"+v.JobID+"/0-") || !strings.HasPrefix(out.S3URL, s3.URL+"/results/comfy/") ||
		!strings.Contains(out.S3URL, "X-Amz-Signature=") {
		t.Fatalf("output %+v", out)
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(out.S3URL)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/gif" || int64(len(data)) != out.Size {
		t.Fatalf("GET presigned: %d %q %d bytes", resp.StatusCode, resp.Header.Get("Content-Type"), len(data))
	}
	if g, err := gif.DecodeAll(bytes.NewReader(data)); err != nil || len(g.Image) != 3 {
		t.Fatalf("the object is not the video: %v", err)
	}
	// The same bytes as comfygate serves.
	_, _, own := h.do("GET", out.URL, "", nil)
	if !bytes.Equal(own, data) {
		t.Fatal("S3 object and comfygate's copy differ")
	}
}

// TestS3UploadFailureKeepsTheJob: a bucket that does not exist leaves the
// job completed, its outputs served by comfygate, and says why.
func TestS3UploadFailureKeepsTheJob(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "comfygate-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "comfygate-test-secret")
	s3 := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	defer s3.Close()
	h := newHarness(t, 1, comfysim.Options{}, func(c *config.Config) {
		videoWorkflow(t, c)
		c.Jobs.S3.Endpoint = strings.TrimPrefix(s3.URL, "http://")
		c.Jobs.S3.Bucket = "missing"
		c.Jobs.S3.Insecure = true
	})
	code, _, b := postJSON(h, "/api/workflows/video?wait=20s", map[string]any{"frames": 2})
	var v waitedView
	if code != 200 || json.Unmarshal(b, &v) != nil || v.Status != statusCompleted || len(v.Outputs) == 0 {
		t.Fatalf("submit: %d %s", code, b)
	}
	if o := v.Outputs[0]; o.S3Error == "" || o.S3URL != "" {
		t.Fatalf("output %+v, want an S3 error", o)
	}
	if code, _, _ := h.do("GET", v.Outputs[0].URL, "", nil); code != 200 {
		t.Fatalf("comfygate's copy: %d", code)
	}
}
