package jobs

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/ready"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/prompts"
	sharedstate "github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// harness is comfygate's job API end to end: n simulated ComfyUI
// instances, a real upstream.Pool, the Service, and a fasthttp server on a
// loopback port that serves ServeJobs (404 for anything else).
type harness struct {
	tb      testing.TB
	sims    []*comfysim.Server
	cfg     *config.Config
	pool    *upstream.Pool
	prompts *prompts.Table
	svc     *Service
	base    string
	hc      *http.Client
}

// newHarness starts everything; mod may change the configuration first.
func newHarness(tb testing.TB, n int, opts comfysim.Options, mod func(*config.Config)) *harness {
	tb.Helper()
	return newHarnessWith(tb, n, opts, mod, nil)
}

// newHarnessWith is newHarness with svcMod changing the Service's tuning
// before it starts.
func newHarnessWith(tb testing.TB, n int, opts comfysim.Options, mod func(*config.Config), svcMod func(*Service)) *harness {
	tb.Helper()
	return startHarness(tb, n, opts, mod, svcMod, nil, nil)
}

// startHarness is newHarnessWith in front of addrs (instances another
// harness started; nil: n of its own) with the shared state store shared
// (nil: memory): one replica of a fleet.
func startHarness(tb testing.TB, n int, opts comfysim.Options, mod func(*config.Config), svcMod func(*Service), addrs []string, shared *sharedstate.Store) *harness {
	tb.Helper()
	var log *slog.Logger
	if os.Getenv("JOBS_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	gw := testkit.Start(tb, testkit.GatewayOptions{
		Instances: max(n, 1),
		Addrs:     addrs,
		Sim:       opts,
		Config: func(c *config.Config) {
			for i := range c.Instances {
				c.Instances[i].Name = "sim" + itoa(i+1)
			}
			c.HealthCheck.Interval = 200 * time.Millisecond
			c.HealthCheck.Timeout = 500 * time.Millisecond
			c.Failover.SuspectGrace = 200 * time.Millisecond
			// These tests submit the same image again and again to watch it
			// run: the result cache would answer the repeats. The cache's own
			// tests turn it back on.
			c.Jobs.CacheMaxBytes = 0
			if mod != nil {
				mod(c)
			}
		},
		Logger: log,
	}, testkit.Wiring[*upstream.Pool, *prompts.Table, *Service, jobsServer]{
		Pool:    upstream.New,
		Prompts: prompts.New,
		Jobs: func(cfg *config.Config, pool *upstream.Pool, table *prompts.Table, m *metrics.Metrics, log *slog.Logger) (*Service, error) {
			svc, err := New(cfg, pool, table, shared, m, log)
			if err == nil && svcMod != nil {
				svcMod(svc)
			}
			return svc, err
		},
		Server: func(g *testkit.Gateway[*upstream.Pool, *prompts.Table, *Service, jobsServer]) (jobsServer, error) {
			svc := g.Jobs()
			return jobsServer{&fasthttp.Server{
				Handler: func(ctx *fasthttp.RequestCtx) {
					if !svc.ServeJobs(ctx, Request{Path: rawPath(ctx)}) {
						ctx.Error("not a job route", fasthttp.StatusNotFound)
						ctx.Response.Header.Set(notJobRoute, "1")
					}
				},
				MaxRequestBodySize: 64 << 20,
				StreamRequestBody:  true, // the proxy may stream bodies; parsing must cope
			}}, nil
		},
		Instances: ready.States,
	})
	return &harness{tb: tb, hc: &http.Client{Timeout: 30 * time.Second}, sims: gw.Sims, cfg: gw.Config,
		pool: gw.Pool(), prompts: gw.Prompts(), svc: gw.Jobs(), base: gw.URL}
}

// jobsServer serves the job API alone (404 for anything else), in place of
// the proxy server this package cannot import.
type jobsServer struct{ *fasthttp.Server }

// Shutdown stops it, bounded by ctx.
func (s jobsServer) Shutdown(ctx context.Context) error { return s.ShutdownWithContext(ctx) }

// notJobRoute marks the harness's own answer to a request ServeJobs left
// to the proxy (ComfyUI's routes): it is not the job API's answer.
const notJobRoute = "Comfygate-Test-Not-Job-Route"

// do sends one request and returns the status, headers and body. Every
// answer of the job API is checked against the OpenAPI document.
func (h *harness) do(method, path, contentType string, body []byte, hdr ...string) (int, http.Header, []byte) {
	h.tb.Helper()
	req, err := http.NewRequest(method, h.base+path, bytes.NewReader(body))
	if err != nil {
		h.tb.Fatalf("request: %v", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		h.tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.tb.Fatalf("%s %s: read body: %v", method, path, err)
	}
	if resp.Header.Get(notJobRoute) == "" {
		checkAnswer(h.tb, method, path, resp.StatusCode, resp.Header, b)
	}
	return resp.StatusCode, resp.Header, b
}

// submit posts img as JSON base64 to route and returns the job id.
func (h *harness) submit(route string, img []byte, inputs map[string]any) string {
	h.tb.Helper()
	body := map[string]any{"image_base64": base64.StdEncoding.EncodeToString(img)}
	if inputs != nil {
		body["inputs"] = inputs
	}
	b, _ := json.Marshal(body)
	status, _, resp := h.do("POST", route, "application/json", b)
	if status != http.StatusAccepted {
		h.tb.Fatalf("POST %s: status %d: %s", route, status, resp)
	}
	var a acceptedView
	if err := json.Unmarshal(resp, &a); err != nil || a.JobID == "" || a.Status != "pending" || a.Estimated <= 0 {
		h.tb.Fatalf("POST %s: bad answer %s (%v)", route, resp, err)
	}
	return a.JobID
}

// status returns a job's status view and HTTP status.
func (h *harness) status(id string) (int, statusView) {
	h.tb.Helper()
	code, _, b := h.do("GET", "/api/jobs/"+id+"/status", "", nil)
	var v statusView
	if code == 200 {
		if err := json.Unmarshal(b, &v); err != nil {
			h.tb.Fatalf("status %s: %v: %s", id, err, b)
		}
	}
	return code, v
}

// waitStatus polls until the job's status is one of want, or fails.
func (h *harness) waitStatus(id string, timeout time.Duration, want ...string) statusView {
	h.tb.Helper()
	var code int
	var v statusView
	found := testkit.Poll(timeout, func() bool {
		code, v = h.status(id)
		return code != 200 || slices.Contains(want, v.Status)
	})
	switch {
	case code != 200:
		h.tb.Fatalf("status %s: HTTP %d", id, code)
	case !found:
		h.tb.Fatalf("job %s: status %q (progress %d, error %v) after %v, want %v", id, v.Status, v.Progress, deref(v.Error), timeout, want)
	}
	return v
}

// result fetches a completed job's image through the JSON form.
func (h *harness) result(id string) []byte {
	h.tb.Helper()
	code, _, b := h.do("GET", "/api/jobs/"+id+"/result", "", nil)
	if code != 200 {
		h.tb.Fatalf("result %s: HTTP %d: %s", id, code, b)
	}
	var r resultView
	if err := json.Unmarshal(b, &r); err != nil {
		h.tb.Fatalf("result %s: %v", id, err)
	}
	const prefix = "data:image/png;base64,"
	if len(r.ImageBase64) < len(prefix) || r.ImageBase64[:len(prefix)] != prefix {
		h.tb.Fatalf("result %s: image_base64 does not start with %q: %.60s", id, prefix, r.ImageBase64)
	}
	img, err := base64.StdEncoding.DecodeString(r.ImageBase64[len(prefix):])
	if err != nil {
		h.tb.Fatalf("result %s: base64: %v", id, err)
	}
	return img
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// testPNG is a w×h image: a flat light-grey background with a dark
// square in the middle (the "subject" background removal keeps).
func testPNG(tb testing.TB, w, h int) []byte {
	tb.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			c := color.NRGBA{230, 230, 230, 255}
			if x > w/4 && x < 3*w/4 && y > h/4 && y < 3*h/4 {
				c = color.NRGBA{200, 30, 40, 255}
			}
			img.SetNRGBA(x, y, c)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// multipartBody builds a multipart/form-data body with one file field.
func multipartBody(tb testing.TB, field, filename string, data []byte, values map[string]string) ([]byte, string) {
	tb.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if field != "" {
		w, err := mw.CreateFormFile(field, filename)
		if err != nil {
			tb.Fatal(err)
		}
		_, _ = w.Write(data)
	}
	for k, v := range values {
		_ = mw.WriteField(k, v)
	}
	_ = mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}
