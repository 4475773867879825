package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/valyala/fasthttp"
)

// lockedBuffer is an io.Writer the test can read while run writes to it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestUnknownCommandIsAnError(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"frobnicate"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "frobnicate") {
		t.Fatalf("run(frobnicate) = %v, want an error naming the command", err)
	}
}

func TestBadConfigStopsStartUp(t *testing.T) {
	t.Setenv("COMFYUI_TIMEOUT", "soon")
	err := run(context.Background(), []string{"-listen", "127.0.0.1:0"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "COMFYUI_TIMEOUT") {
		t.Fatalf("run with COMFYUI_TIMEOUT=soon = %v, want an error naming the variable", err)
	}
}

func httpDo(t *testing.T, method, url string, body []byte) (int, []byte) {
	t.Helper()
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	req.SetRequestURI(url)
	if body != nil {
		req.Header.SetContentType("application/json")
		req.SetBody(body)
	}
	if err := fasthttp.DoTimeout(req, resp, 10*time.Second); err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp.StatusCode(), append([]byte(nil), resp.Body()...)
}

// demoRun is a `comfygate` command the test runs in-process (run): its
// output, its end, and how to stop it.
type demoRun struct {
	out  *lockedBuffer
	done chan error
	stop context.CancelFunc
}

// startDemo runs the command args until stopWithin or the test's end.
func startDemo(t *testing.T, args ...string) *demoRun {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	d := &demoRun{out: &lockedBuffer{}, done: make(chan error, 1), stop: cancel}
	go func() { d.done <- run(ctx, args, d.out, d.out) }()
	return d
}

// await returns re's submatches in the output once it prints a match;
// the test fails when the command exits first or prints none within
// bound.
func (d *demoRun) await(t *testing.T, re *regexp.Regexp, bound time.Duration) []string {
	t.Helper()
	var m []string
	var exited bool
	var exitErr error
	testkit.Poll(bound, func() bool {
		if m = re.FindStringSubmatch(d.out.String()); m != nil {
			return true
		}
		select {
		case exitErr = <-d.done:
			exited = true
			return true
		default:
			return false
		}
	})
	if exited {
		t.Fatalf("demo exited early: %v\n%s", exitErr, d.out.String())
	}
	if m == nil {
		t.Fatalf("demo never printed %s:\n%s", re, d.out.String())
	}
	return m
}

// stopWithin ends the command as SIGINT does and fails the test unless
// it returns cleanly within bound.
func (d *demoRun) stopWithin(t *testing.T, bound time.Duration) {
	t.Helper()
	d.stop()
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("demo did not shut down cleanly: %v", err)
		}
	case <-time.After(bound):
		t.Fatal("demo did not stop after its context ended")
	}
}

// TestDemoRunsTheAdvertisedWorkflowAndShutsDown runs `comfygate demo` as the
// README's first command does, sends the curl it prints, downloads the
// result, checks the pixels, and stops it the way SIGINT does.
func TestDemoRunsTheAdvertisedWorkflowAndShutsDown(t *testing.T) {
	d := startDemo(t, "demo", "-listen", "127.0.0.1:0", "-delay", "0s", "-log-format", "json")
	base := d.await(t, regexp.MustCompile(`comfygate demo: (http://127\.0\.0\.1:\d+)`), 20*time.Second)[1]

	if code, body := httpDo(t, "GET", base+"/health", nil); code != 200 {
		t.Fatalf("/health = %d %s", code, body)
	}

	curl := demoCurl(base)
	payload := curl[strings.Index(curl, "-d '")+4 : len(curl)-1]
	code, body := httpDo(t, "POST", base+"/prompt", []byte(payload))
	if code != 200 {
		t.Fatalf("POST /prompt = %d %s", code, body)
	}
	var accepted struct {
		PromptID string `json:"prompt_id"`
	}
	if err := json.Unmarshal(body, &accepted); err != nil || accepted.PromptID == "" {
		t.Fatalf("POST /prompt answer %s: %v", body, err)
	}

	type image struct{ Filename, Subfolder, Type string }
	var images []image
	var badHistory error
	testkit.Poll(20*time.Second, func() bool {
		_, hist := httpDo(t, "GET", base+"/history/"+accepted.PromptID, nil)
		var h map[string]struct {
			Outputs map[string]struct {
				Images []image `json:"images"`
			} `json:"outputs"`
		}
		if err := json.Unmarshal(hist, &h); err != nil {
			badHistory = fmt.Errorf("history %s: %w", hist, err)
			return true
		}
		for _, o := range h[accepted.PromptID].Outputs {
			images = append(images, o.Images...)
		}
		return len(images) > 0
	})
	if badHistory != nil {
		t.Fatal(badHistory)
	}
	if len(images) != 1 {
		t.Fatalf("history of %s never listed one image", accepted.PromptID)
	}
	code, pngBytes := httpDo(t, "GET", base+"/view?filename="+images[0].Filename+"&subfolder="+images[0].Subfolder+"&type="+images[0].Type, nil)
	if code != 200 {
		t.Fatalf("/view = %d", code)
	}
	img, err := png.Decode(bytes.NewReader(pngBytes))
	if err != nil {
		t.Fatalf("/view is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 256 || b.Dy() != 256 {
		t.Fatalf("image is %v, want 256x256", b)
	}
	// EmptyImage color 1193046 = 0x123456, inverted = 0xEDCBA9.
	r, g, bl, _ := img.At(10, 10).RGBA()
	if r>>8 != 0xED || g>>8 != 0xCB || bl>>8 != 0xA9 {
		t.Fatalf("pixel = %02x%02x%02x, want edcba9 (inverted 123456)", r>>8, g>>8, bl>>8)
	}

	if err := run(context.Background(), []string{"healthcheck", "-url", base + "/health"}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatalf("healthcheck against a healthy gateway: %v", err)
	}

	d.stopWithin(t, shutdownGrace+5*time.Second)
	if err := run(context.Background(), []string{"healthcheck", "-url", base + "/health", "-timeout", "500ms"}, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Fatal("healthcheck passed against a stopped gateway")
	}
}
