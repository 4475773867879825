package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/prompts"
	sharedstate "github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// fakeBackend is a scripted pool: it records what the Service asks and
// lets a test play the instance's events into a job's sink.
type fakeBackend struct {
	tb testing.TB

	mu        sync.Mutex // guards the fields below
	insts     []*upstream.Instance
	healthy   []*upstream.Instance
	submits   []prompts.SubmitRequest
	cancels   []string
	uploads   map[string]int // instance name -> uploads
	pins      []prompts.FileRef
	prompts   map[string]*prompts.Prompt
	submitFn  func(req prompts.SubmitRequest) (prompts.SubmitResult, error)
	cancelFn  func(id string) (bool, error)
	viewBody  []byte
	submitted chan string // job ids, as Submit is called
	// callFn, when set, answers Call first (handled false: the defaults).
	callFn func(method, path string) (status int, body []byte, handled bool)
}

func newFake(tb testing.TB, n int) *fakeBackend {
	f := &fakeBackend{tb: tb, uploads: map[string]int{}, prompts: map[string]*prompts.Prompt{}, submitted: make(chan string, 100)}
	for i := range n {
		f.insts = append(f.insts, &upstream.Instance{Name: fmt.Sprintf("fake%d", i+1), Addr: fmt.Sprintf("127.0.0.1:%d", 1+i)})
	}
	f.healthy = f.insts
	f.viewBody = testPNG(tb, 4, 4)
	return f
}

func (f *fakeBackend) Select(exclude ...*upstream.Instance) (*upstream.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.healthy) == 0 {
		return nil, upstream.ErrNoUpstream
	}
	return f.healthy[0], nil
}

func (f *fakeBackend) Instances() []*upstream.Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*upstream.Instance(nil), f.insts...)
}

// Upload reads the image and counts it as uploaded to inst.
func (f *fakeBackend) Upload(ctx context.Context, inst *upstream.Instance, ref prompts.FileRef, img io.Reader, size int64) error {
	if _, err := io.Copy(io.Discard, img); err != nil {
		return err
	}
	f.mu.Lock()
	f.uploads[inst.Name]++
	f.mu.Unlock()
	return nil
}

func (f *fakeBackend) Healthy() []*upstream.Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*upstream.Instance(nil), f.healthy...)
}

func (f *fakeBackend) setHealthy(insts ...*upstream.Instance) {
	f.mu.Lock()
	f.healthy = insts
	f.mu.Unlock()
}

func (f *fakeBackend) PinFile(ref prompts.FileRef, inst *upstream.Instance) {
	f.mu.Lock()
	f.pins = append(f.pins, ref)
	f.mu.Unlock()
}

func (f *fakeBackend) FileOwner(ctx context.Context, ref prompts.FileRef) (*upstream.Instance, bool) {
	return nil, false
}

func (f *fakeBackend) Submit(ctx context.Context, req prompts.SubmitRequest) (prompts.SubmitResult, error) {
	f.mu.Lock()
	f.submits = append(f.submits, req)
	fn := f.submitFn
	f.mu.Unlock()
	f.submitted <- req.PromptID
	if fn != nil {
		return fn(req)
	}
	if req.Prepare != nil {
		// As the pool does: the files go to the instance it chose.
		_ = req.Prepare(ctx, f.insts[0])
	}
	return f.accept(req), nil
}

// accept answers a submission with 200 on the first instance.
func (f *fakeBackend) accept(req prompts.SubmitRequest) prompts.SubmitResult {
	p := &prompts.Prompt{ID: req.PromptID, Sink: req.Sink, Created: time.Now()}
	f.mu.Lock()
	f.prompts[req.PromptID] = p
	inst := f.insts[0]
	f.mu.Unlock()
	return prompts.SubmitResult{Prompt: p, Instance: inst, Status: 200, Body: []byte(`{"prompt_id": "` + req.PromptID + `", "number": 0, "node_errors": {}}`)}
}

func (f *fakeBackend) Prompt(id string) (*prompts.Prompt, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.prompts[id]
	return p, ok
}

func (f *fakeBackend) Cancel(ctx context.Context, id string) (bool, error) {
	f.mu.Lock()
	f.cancels = append(f.cancels, id)
	fn := f.cancelFn
	f.mu.Unlock()
	if fn != nil {
		return fn(id)
	}
	return true, nil
}

func (f *fakeBackend) Fetch(ctx context.Context, inst *upstream.Instance, path string, w io.Writer) (int, error) {
	status, body, err := f.Call(ctx, inst, "GET", path, nil, nil)
	if err != nil || status != 200 {
		return status, err
	}
	_, err = w.Write(body)
	return status, err
}

func (f *fakeBackend) Call(ctx context.Context, inst *upstream.Instance, method, path string, header map[string]string, body []byte) (int, []byte, error) {
	f.mu.Lock()
	fn := f.callFn
	f.mu.Unlock()
	if fn != nil {
		if status, b, ok := fn(method, path); ok {
			return status, b, nil
		}
	}
	switch {
	case method == "POST" && path == "/upload/image":
		_, params, err := mime.ParseMediaType(header["Content-Type"])
		if err != nil {
			return 400, nil, nil
		}
		form, err := multipart.NewReader(bytes.NewReader(body), params["boundary"]).ReadForm(1 << 20)
		if err != nil || len(form.File["image"]) == 0 || form.Value["overwrite"][0] != "true" {
			return 400, nil, nil
		}
		f.mu.Lock()
		f.uploads[inst.Name]++
		f.mu.Unlock()
		return 200, []byte(`{"name": "` + form.File["image"][0].Filename + `", "subfolder": "", "type": "input"}`), nil
	case method == "GET" && strings.HasPrefix(path, "/view?"):
		f.mu.Lock()
		defer f.mu.Unlock()
		return 200, f.viewBody, nil
	case method == "GET" && strings.HasPrefix(path, "/history/"):
		return 200, []byte(`{}`), nil
	}
	return 404, nil, nil
}

// event plays one ComfyUI message into the job's sink as inst sent it.
func (f *fakeBackend) event(id string, inst *upstream.Instance, typ string, data map[string]any) {
	f.tb.Helper()
	var p *prompts.Prompt
	testkit.Eventually(f.tb, "prompt "+id+" accepted", func() bool {
		var ok bool
		p, ok = f.Prompt(id)
		return ok
	})
	data["prompt_id"] = id
	b, _ := json.Marshal(map[string]any{"type": typ, "data": data})
	p.Sink.PromptEvent(p, prompts.Event{Instance: inst, Type: typ, PromptID: id, Data: b})
}

// waitSubmitted waits for the next Submit call.
func (f *fakeBackend) waitSubmitted() string {
	f.tb.Helper()
	select {
	case id := <-f.submitted:
		return id
	case <-time.After(5 * time.Second):
		f.tb.Fatal("no Submit within 5s")
		return ""
	}
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newFakeService returns a service over a fake backend, not started.
func newFakeService(tb testing.TB, f *fakeBackend, mod func(*config.Config)) *Service {
	tb.Helper()
	return newSharedFakeService(tb, f, nil, mod)
}

// newSharedFakeService is newFakeService with the shared state store
// shared (nil: memory), for services that stand for replicas.
func newSharedFakeService(tb testing.TB, f *fakeBackend, shared *sharedstate.Store, mod func(*config.Config)) *Service {
	tb.Helper()
	cfg := config.Default()
	cfg.Jobs.StateDir = tb.TempDir()
	if mod != nil {
		mod(cfg)
	}
	s, err := newService(cfg, f, shared, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	s.eng.retryDelay, s.del.retryDelay = time.Millisecond, time.Millisecond
	tb.Cleanup(s.Close)
	return s
}

// serve runs one request through ServeJobs in memory; an answer it gives
// is checked against the OpenAPI document.
func serve(tb testing.TB, s *Service, method, uri, contentType string, body []byte, hdr ...string) (handled bool, code int, respHdr *fasthttp.ResponseHeader, resp []byte) {
	tb.Helper()
	return serveAs(tb, s, Request{}, method, uri, contentType, body, hdr...)
}

// serveAs is serve for a request of r's Owner and Scope (r.Path is the
// request's raw path).
func serveAs(tb testing.TB, s *Service, r Request, method, uri, contentType string, body []byte, hdr ...string) (handled bool, code int, respHdr *fasthttp.ResponseHeader, resp []byte) {
	tb.Helper()
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	if contentType != "" {
		req.Header.SetContentType(contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	req.SetBody(body)
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, nil)
	r.Path = rawPath(&ctx)
	handled = s.ServeJobs(&ctx, r)
	h := &fasthttp.ResponseHeader{}
	ctx.Response.Header.CopyTo(h)
	resp = append([]byte(nil), ctx.Response.Body()...)
	if handled {
		checkAnswer(tb, method, uri, ctx.Response.StatusCode(), http.Header{"Content-Type": {string(h.ContentType())}}, resp)
	}
	return handled, ctx.Response.StatusCode(), h, resp
}

// rawPath is the request's raw path (before '?'), as the proxy passes it.
func rawPath(ctx *fasthttp.RequestCtx) string {
	p, _, _ := strings.Cut(string(ctx.Request.Header.RequestURI()), "?")
	return p
}

// submitFake posts a small PNG to the upscale route and returns the job id.
func submitFake(tb testing.TB, s *Service, route string) string {
	tb.Helper()
	body, _ := json.Marshal(map[string]any{"image_base64": testPNG(tb, 4, 4)}) // []byte marshals as base64
	_, code, _, resp := serve(tb, s, "POST", route, "application/json", body)
	if code != 202 {
		tb.Fatalf("POST %s: %d %s", route, code, resp)
	}
	var a acceptedView
	if err := json.Unmarshal(resp, &a); err != nil {
		tb.Fatal(err)
	}
	return a.JobID
}

// jobState reads a job's internal state.
func jobState(s *Service, id string) state {
	s.eng.jobsMu.Lock()
	defer s.eng.jobsMu.Unlock()
	return s.eng.jobs[id].state
}
