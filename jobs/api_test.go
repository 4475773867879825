package jobs

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/gif"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
)

// videoWorkflow writes a workflow that makes an n-frame animated GIF
// (VHS_VideoCombine) from an empty image batch, with typed parameters.
func videoWorkflow(t *testing.T, c *config.Config) {
	t.Helper()
	dir := t.TempDir()
	graph := `{
	  "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 12, "batch_size": 4, "color": 255}},
	  "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
	  "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
	  "4": {"class_type": "VHS_VideoCombine", "inputs": {"images": ["2", 0], "frame_rate": 8, "loop_count": 0,
	        "filename_prefix": "clip", "format": "image/gif", "pingpong": false, "save_output": true}}
	}`
	p := filepath.Join(dir, "video.json")
	if err := os.WriteFile(p, []byte(graph), 0o600); err != nil {
		t.Fatal(err)
	}
	fmax := 64.0
	one := 1.0
	c.Workflows = map[string]config.Workflow{"video": {File: p, OutputNode: "4", Parameters: []config.Parameter{
		{Name: "width", Node: "1", Input: "width", Type: "int", Default: 16, Min: &one, Max: &fmax},
		{Name: "frames", Node: "1", Input: "batch_size", Type: "int", Min: &one, Max: &fmax, Required: true},
		{Name: "fps", Node: "4", Input: "frame_rate", Type: "float", Default: 8.0},
		{Name: "format", Node: "4", Input: "format", Type: "enum", Options: []string{"image/gif", "video/h264-mp4"}, Default: "image/gif"},
		{Name: "save", Node: "4", Input: "save_output", Type: "bool"},
	}}}
}

func postJSON(h *harness, path string, body any, hdr ...string) (int, http.Header, []byte) {
	h.tb.Helper()
	b, _ := json.Marshal(body)
	return h.do("POST", path, "application/json", b, hdr...)
}

func TestWaitInOneRequest(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2, comfysim.Options{Delay: 5 * time.Millisecond}, nil)
	img := base64.StdEncoding.EncodeToString(testPNG(t, 32, 32))
	for _, tc := range []struct {
		desc, path string
		hdr        []string
	}{
		{"query", "/api/upscale-image?wait=20s", nil},
		{"prefer", "/api/upscale-image", []string{"Prefer", "respond-async, wait=20"}},
	} {
		code, _, b := postJSON(h, tc.path, map[string]any{"image_base64": img}, tc.hdr...)
		if code != 200 {
			t.Fatalf("%s: %d %s", tc.desc, code, b)
		}
		var v waitedView
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		if v.Status != statusCompleted || v.Progress != 100 || len(v.Outputs) != 1 || v.ContentType != "image/png" ||
			!strings.HasPrefix(v.ImageBase64, "data:image/png;base64,") || v.Outputs[0].Base64 != "" {
			t.Fatalf("%s: %s", tc.desc, b)
		}
		raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(v.ImageBase64, "data:image/png;base64,"))
		if img := decodePNG(t, raw); img.Bounds().Dx() != 128 {
			t.Fatalf("%s: upscaled width %d, want 128", tc.desc, img.Bounds().Dx())
		}
	}

	// A wait shorter than the job answers 202 with the job, as without wait.
	slow := newHarness(t, 1, comfysim.Options{Delay: 300 * time.Millisecond}, func(c *config.Config) { c.Jobs.MaxWait = 20 * time.Millisecond })
	code, _, b := postJSON(slow, "/api/upscale-image?wait=10s", map[string]any{"image_base64": img})
	var a acceptedView
	if code != 202 || json.Unmarshal(b, &a) != nil || a.JobID == "" {
		t.Fatalf("short wait: %d %s", code, b)
	}
	// The long poll answers once the status moved past "pending" or "processing".
	code, _, b = slow.do("GET", "/api/jobs/"+a.JobID+"/status?wait=1&status=processing", "", nil)
	if code != 200 {
		t.Fatalf("long poll: %d %s", code, b)
	}
	slow.waitStatus(a.JobID, 10*time.Second, statusCompleted)

	// Long polls end when the status moves on: /status, and GET
	// /api/jobs/{id}?wait=, which then leaves the answer to ComfyUI's route
	// (this test server's 404).
	poll := newHarness(t, 1, comfysim.Options{Delay: 100 * time.Millisecond}, nil)
	for _, tc := range []struct {
		path string
		code int
	}{{"/status?wait=20s&status=", 200}, {"?wait=20s&status=", 404}} {
		id := poll.submit("/api/upscale-image", testPNG(t, 8, 8), nil)
		for _, from := range []string{statusPending, statusProcessing} {
			code, _, b := poll.do("GET", "/api/jobs/"+id+tc.path+from, "", nil)
			if _, v := poll.status(id); code != tc.code || v.Status == from {
				t.Fatalf("GET %s%s: %d %s, then status %q", tc.path, from, code, b, v.Status)
			}
		}
		if _, v := poll.status(id); v.Status != statusCompleted {
			t.Fatalf("after waiting past processing: %q", v.Status)
		}
	}
	if code, _, b := slow.do("GET", "/api/upscale-image?wait=x", "", nil); code != 405 {
		t.Fatalf("GET submit: %d %s", code, b)
	}
	if code, _, b := postJSON(slow, "/api/upscale-image?wait=soon", map[string]any{"image_base64": img}); code != 400 {
		t.Fatalf("bad wait: %d %s", code, b)
	}
}

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct {
	id   int
	typ  string
	data string
}

// readEvents reads events from an SSE body until the stream ends or stop
// says so after an event. Each event's data is checked against the
// OpenAPI document's Event.
func readEvents(t *testing.T, body io.Reader, stop func(sseEvent) bool) ([]sseEvent, bool) {
	t.Helper()
	var evs []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.typ != "" {
				checkSchema(t, "/components/schemas/Event", []byte(cur.data))
				evs = append(evs, cur)
				if stop(cur) {
					return evs, false
				}
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.id, _ = strconv.Atoi(line[4:])
		case strings.HasPrefix(line, "event: "):
			cur.typ = line[7:]
		case strings.HasPrefix(line, "data: "):
			cur.data = line[6:]
		}
	}
	return evs, true
}

func TestEventStreamResumes(t *testing.T) {
	t.Parallel()
	h := newHarnessWith(t, 1, comfysim.Options{Delay: 40 * time.Millisecond, Steps: 4}, nil,
		func(s *Service) { s.del.heartbeat = 20 * time.Millisecond })
	id := h.submit("/api/upscale-image", testPNG(t, 16, 16), nil)
	open := func(last int) *http.Response {
		req, _ := http.NewRequest("GET", h.base+"/api/jobs/"+id+"/events", nil)
		if last > 0 {
			req.Header.Set("Last-Event-ID", strconv.Itoa(last))
		}
		resp, err := h.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("events: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		checkAnswer(t, "GET", req.URL.Path, resp.StatusCode, resp.Header, nil) // the events are checked as they are read
		return resp
	}
	// First connection: dropped after the first progress event.
	resp := open(0)
	first, ended := readEvents(t, resp.Body, func(e sseEvent) bool { return e.typ == evProgress })
	resp.Body.Close()
	if ended || len(first) < 2 || first[0].typ != evQueued {
		t.Fatalf("first connection: ended %v, events %+v", ended, first)
	}
	last := first[len(first)-1].id
	// Resumed: the rest, ending with the terminal event, then the stream ends.
	resp = open(last)
	rest, ended := readEvents(t, resp.Body, func(sseEvent) bool { return false })
	resp.Body.Close()
	if !ended || len(rest) == 0 {
		t.Fatalf("resumed: ended %v events %+v", ended, rest)
	}
	all := append(first, rest...)
	for i, e := range all {
		if e.id != i+1 {
			t.Fatalf("event %d has id %d: a gap or a repeat (%+v)", i+1, e.id, all)
		}
	}
	term := rest[len(rest)-1]
	if term.typ != evCompleted {
		t.Fatalf("last event %+v, want completed", term)
	}
	var v eventView
	if err := json.Unmarshal([]byte(term.data), &v); err != nil || v.Progress != 100 || len(v.Outputs) != 1 || v.Outputs[0].URL == "" {
		t.Fatalf("completed event %s (%v)", term.data, err)
	}
	// After the end, a reconnect replays only what it asks for.
	resp = open(term.id - 1)
	again, ended := readEvents(t, resp.Body, func(sseEvent) bool { return false })
	resp.Body.Close()
	if !ended || len(again) != 1 || again[0].typ != evCompleted {
		t.Fatalf("replay of the terminal event: %+v", again)
	}
}

func TestIdempotentSubmit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{}, nil)
	img := base64.StdEncoding.EncodeToString(testPNG(t, 16, 16))
	body := map[string]any{"image_base64": img}
	code, hdr1, b1 := postJSON(h, "/api/upscale-image", body, "Idempotency-Key", "k1")
	code2, hdr2, b2 := postJSON(h, "/api/upscale-image", body, "Idempotency-Key", "k1")
	var a1, a2 acceptedView
	_ = json.Unmarshal(b1, &a1)
	_ = json.Unmarshal(b2, &a2)
	if code != 202 || code2 != 202 || a1.JobID == "" || a1.JobID != a2.JobID {
		t.Fatalf("retry: %d %s / %d %s", code, b1, code2, b2)
	}
	if hdr1.Get("Idempotent-Replayed") != "" || hdr2.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("Idempotent-Replayed: %q %q", hdr1.Get("Idempotent-Replayed"), hdr2.Get("Idempotent-Replayed"))
	}
	// The same key with another body.
	other := map[string]any{"image_base64": base64.StdEncoding.EncodeToString(testPNG(t, 17, 16))}
	if code, _, b := postJSON(h, "/api/upscale-image", other, "Idempotency-Key", "k1"); code != 422 {
		t.Fatalf("other body: %d %s", code, b)
	}
	// Another key: another job.
	_, _, b3 := postJSON(h, "/api/upscale-image", body, "Idempotency-Key", "k2")
	var a3 acceptedView
	_ = json.Unmarshal(b3, &a3)
	if a3.JobID == "" || a3.JobID == a1.JobID {
		t.Fatalf("new key reused the job: %s", b3)
	}
	h.waitStatus(a1.JobID, 10*time.Second, statusCompleted)

	// While the first request is still creating its job: 409.
	fp := [32]byte{1}
	if id, aerr := h.svc.st.idemBegin(idemKey{key: "k3"}, fp); id != "" || aerr != nil {
		t.Fatalf("reserve: %q %v", id, aerr)
	}
	if _, aerr := h.svc.st.idemBegin(idemKey{key: "k3"}, fp); aerr == nil || aerr.status != 409 {
		t.Fatalf("in progress: %v", aerr)
	}
	h.svc.st.idemAbort(idemKey{key: "k3"}, fp)
	if id, aerr := h.svc.st.idemBegin(idemKey{key: "k3"}, fp); id != "" || aerr != nil {
		t.Fatalf("after abort: %q %v", id, aerr)
	}
}

func TestVideoOutputRoundTrips(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc   string
		memory int64
	}{{"memory", 256 << 20}, {"disk", 0}} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			h := newHarness(t, 1, comfysim.Options{}, func(c *config.Config) {
				videoWorkflow(t, c)
				c.Jobs.OutputMemoryBytes = tc.memory
				c.Jobs.OutputDir = dir
			})
			code, _, b := postJSON(h, "/api/workflows/video?wait=20s", map[string]any{"frames": 4, "fps": 4, "save": true})
			if code != 200 {
				t.Fatalf("submit: %d %s", code, b)
			}
			var v waitedView
			_ = json.Unmarshal(b, &v)
			if v.Status != statusCompleted || v.ImageBase64 != "" || len(v.Outputs) != 5 {
				t.Fatalf("answer: %s", b)
			}
			out := v.Outputs[0]
			if out.Kind != "gifs" || out.Node != "4" || out.ContentType != "image/gif" || out.Size <= 0 || out.Instance != "sim1" {
				t.Fatalf("first output %+v, want the video", out)
			}
			for _, o := range v.Outputs[1:] {
				if o.Node != "3" || o.ContentType != "image/png" || o.Kind != "images" {
					t.Fatalf("preview output %+v", o)
				}
			}
			// The instance goes away; comfygate still has the files.
			h.sims[0].Kill()
			code, hdr, data := h.do("GET", out.URL, "", nil)
			if code != 200 || hdr.Get("Content-Type") != "image/gif" || int64(len(data)) != out.Size || hdr.Get("Accept-Ranges") != "bytes" {
				t.Fatalf("GET %s: %d %q %d bytes", out.URL, code, hdr.Get("Content-Type"), len(data))
			}
			g, err := gif.DecodeAll(bytes.NewReader(data))
			if err != nil || len(g.Image) != 4 || g.Delay[0] != 25 || g.Image[0].Bounds().Dx() != 16 {
				t.Fatalf("gif: %v", err)
			}
			code, hdr, part := h.do("GET", out.URL, "", nil, "Range", "bytes=6-15")
			if code != 206 || !bytes.Equal(part, data[6:16]) || hdr.Get("Content-Range") != "bytes 6-15/"+strconv.Itoa(len(data)) {
				t.Fatalf("range: %d %q %d bytes", code, hdr.Get("Content-Range"), len(part))
			}
			if code, _, _ := h.do("GET", out.URL, "", nil, "Range", "bytes=99999-"); code != 416 {
				t.Fatalf("range past the end: %d", code)
			}
			if code, _, _ := h.do("GET", "/api/jobs/"+v.JobID+"/outputs/9", "", nil); code != 404 {
				t.Fatalf("output 9: %d", code)
			}
			entries, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
			if onDisk := len(entries) > 0; onDisk != (tc.memory == 0) {
				t.Fatalf("files on disk: %v", entries)
			}
			// Expiry frees them.
			h.svc.eng.jobsMu.Lock()
			h.svc.eng.jobs[v.JobID].finished = time.Now().Add(-time.Hour)
			h.svc.eng.jobsMu.Unlock()
			h.svc.wd.sweep()
			entries, _ = filepath.Glob(filepath.Join(dir, "*", "*"))
			mem := h.svc.del.outMem.Load()
			if len(entries) != 0 || mem != 0 {
				t.Fatalf("after expiry: files %v, memory %d", entries, mem)
			}
		})
	}
}

func TestTypedParameters(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{}, func(c *config.Config) { videoWorkflow(t, c) })
	// Every error at once.
	code, _, b := postJSON(h, "/api/workflows/video", map[string]any{"width": "wide", "fps": true, "format": "avi", "junk": 1})
	var e struct {
		Error struct {
			Type    string       `json:"type"`
			Details []fieldError `json:"details"`
		} `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	if code != 400 || e.Error.Type != errInvalidParams {
		t.Fatalf("bad parameters: %d %s", code, b)
	}
	fields := map[string]bool{}
	for _, d := range e.Error.Details {
		fields[d.Field] = true
	}
	for _, f := range []string{"width", "fps", "format", "junk", "frames"} {
		if !fields[f] {
			t.Errorf("no error for %q in %s", f, b)
		}
	}
	if code, _, b := postJSON(h, "/api/workflows/video", map[string]any{"frames": 65}); code != 400 || !strings.Contains(string(b), "maximum") {
		t.Fatalf("above max: %d %s", code, b)
	}
	// A JSON value must have the parameter's type: text that reads as one is refused.
	for _, tc := range []struct {
		field string
		value any
		want  string
	}{
		{"width", "40", "want an integer (a JSON number), got a string"},
		{"fps", "4.5", "want a number, got a string"},
		{"save", "true", "want true or false (a JSON boolean), got a string"},
		{"width", true, "want an integer (a JSON number), got a boolean"},
		{"format", 1, "want a string, got a number"},
	} {
		code, _, b := postJSON(h, "/api/workflows/video?dry_run=1", map[string]any{"frames": 2, tc.field: tc.value})
		e.Error.Details = nil
		_ = json.Unmarshal(b, &e)
		if code != 400 || e.Error.Type != errInvalidParams || len(e.Error.Details) != 1 ||
			e.Error.Details[0] != (fieldError{Field: tc.field, Message: tc.want}) || !strings.Contains(string(b), tc.field+": "+tc.want) {
			t.Errorf("%s %v: %d %s, want 400 naming %q", tc.field, tc.value, code, b, tc.want)
		}
	}
	// Multipart text fields are read by type.
	mp, ct := multipartBody(t, "", "", nil, map[string]string{"frames": "2", "width": "8", "save": "false"})
	code, _, b = h.do("POST", "/api/workflows/video?wait=20s", ct, mp)
	var v waitedView
	_ = json.Unmarshal(b, &v)
	if code != 200 || v.Status != statusCompleted || len(v.Outputs) != 3 {
		t.Fatalf("multipart: %d %s", code, b)
	}
	_, _, data := h.do("GET", v.Outputs[0].URL, "", nil)
	if g, err := gif.DecodeAll(bytes.NewReader(data)); err != nil || len(g.Image) != 2 || g.Image[0].Bounds().Dx() != 8 {
		t.Fatalf("the parameters did not reach the graph: %v", err)
	}
	if v.ImageBase64 != "" {
		t.Fatalf("a generic workflow's answer carries image_base64 unasked: %.80s", b)
	}
	// One request is enough: include=base64 carries the first output inline.
	code, _, b = postJSON(h, "/api/workflows/video?wait=20s&include=base64", map[string]any{"frames": 2, "width": 8})
	v = waitedView{}
	_ = json.Unmarshal(b, &v)
	const gifPrefix = "data:image/gif;base64,"
	if code != 200 || v.Status != statusCompleted || v.ContentType != "image/gif" || !strings.HasPrefix(v.ImageBase64, gifPrefix) || v.Outputs[0].Base64 != "" {
		t.Fatalf("include=base64: %d %.200s", code, b)
	}
	inline, err := base64.StdEncoding.DecodeString(v.ImageBase64[len(gifPrefix):])
	if g, gerr := gif.DecodeAll(bytes.NewReader(inline)); err != nil || gerr != nil || len(g.Image) != 2 {
		t.Fatalf("include=base64: the inline image is no 2-frame GIF: %v %v", err, gerr)
	}
	for _, q := range []string{"include=outputs", "include=base64&base64=0"} {
		if code, _, b := postJSON(h, "/api/workflows/video?wait=20s&"+q, map[string]any{"frames": 2}); code != 400 || !strings.Contains(string(b), errInvalidRequest) {
			t.Errorf("%s: %d %s, want 400", q, code, b)
		}
	}

	// The list with JSON Schema.
	code, _, b = h.do("GET", "/api/workflows", "", nil)
	var list struct {
		Workflows []struct {
			Name   string `json:"name"`
			Schema struct {
				Properties map[string]map[string]any `json:"properties"`
				Required   []string                  `json:"required"`
				Additional *bool                     `json:"additionalProperties"`
			} `json:"schema"`
		} `json:"workflows"`
	}
	if code != 200 || json.Unmarshal(b, &list) != nil || len(list.Workflows) != 3 {
		t.Fatalf("workflows: %d %s", code, b)
	}
	for _, w := range list.Workflows {
		if w.Name != "video" {
			continue
		}
		p := w.Schema.Properties
		if p["frames"]["type"] != "integer" || p["frames"]["maximum"] != 64.0 || p["fps"]["type"] != "number" ||
			p["format"]["enum"] == nil || len(w.Schema.Required) != 1 || w.Schema.Required[0] != "frames" || w.Schema.Additional == nil || *w.Schema.Additional {
			t.Fatalf("schema %+v", w.Schema)
		}
	}
}

func TestDryRun(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{}, func(c *config.Config) { videoWorkflow(t, c) })
	code, _, b := postJSON(h, "/api/workflows/video?dry_run=1", map[string]any{"frames": 3})
	if code != 200 || !strings.Contains(string(b), `"valid":true`) {
		t.Fatalf("valid: %d %s", code, b)
	}
	// comfysim offers only image/gif: the instance's choices refuse mp4.
	code, _, b = postJSON(h, "/api/workflows/video?dry_run=1", map[string]any{"frames": 3, "format": "video/h264-mp4"})
	if code != 400 || !strings.Contains(string(b), errInvalidWorkflow) || !strings.Contains(string(b), "node 4 (VHS_VideoCombine).format") {
		t.Fatalf("bad choice: %d %s", code, b)
	}
	code, _, b = postJSON(h, "/api/workflows/video?dry_run=1", map[string]any{"width": 0})
	if code != 400 || !strings.Contains(string(b), errInvalidParams) {
		t.Fatalf("bad params: %d %s", code, b)
	}
	code, _, b = h.do("GET", "/api/jobs?source=comfygate", "", nil)
	if code != 200 || !strings.Contains(string(b), `"total":0`) {
		t.Fatalf("a dry run made a job: %s", b)
	}
	// A POST /prompt body, checked without running.
	graph := `{"1": {"class_type": "LoadImage", "inputs": {"image": "not-uploaded-yet.png"}},
	  "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "%s"}},
	  "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
	  "4": {"class_type": "SaveImage", "inputs": {"images": ["3", %d], "filename_prefix": "x"}}}`
	code, _, b = h.do("POST", "/api/prompt/validate", "application/json", []byte(`{"prompt": `+fmt.Sprintf(graph, "RealESRGAN_x4plus.pth", 0)+`, "client_id": "c"}`))
	if code != 200 || !strings.Contains(string(b), `"valid":true`) {
		t.Fatalf("validate: %d %s", code, b)
	}
	code, _, b = h.do("POST", "/api/prompt/validate", "application/json", []byte(fmt.Sprintf(graph, "nope.pth", 3)))
	if code != 400 || !strings.Contains(string(b), "node 2 (UpscaleModelLoader).model_name") || !strings.Contains(string(b), "node 4 (SaveImage).images") {
		t.Fatalf("validate bad graph: %d %s", code, b)
	}
	if g := checkGraph(json.RawMessage(`{"1":{"class_type":"Nope","inputs":{}},"2":{"class_type":"EmptyImage","inputs":{"width":1.5}}}`),
		map[string]classInfo{"EmptyImage": func() classInfo {
			var c classInfo
			_ = json.Unmarshal([]byte(`{"input":{"required":{"width":["INT",{"min":1}],"height":["INT",{}]}},"output":["IMAGE"]}`), &c)
			return c
		}()}, nil); len(g) != 3 {
		t.Fatalf("checkGraph: %+v", g)
	}
}

// webhookReceiver is a test receiver that fails its first fail attempts.
type webhookReceiver struct {
	mu    sync.Mutex
	fail  int
	calls []*http.Request
	body  [][]byte
	got   chan struct{}
}

func (r *webhookReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.calls = append(r.calls, req)
	r.body = append(r.body, b)
	n := len(r.calls)
	r.mu.Unlock()
	if n <= r.fail {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
	select {
	case r.got <- struct{}{}:
	default:
	}
}

// webhookBodySchema is where the OpenAPI document describes a webhook's body.
const webhookBodySchema = "/webhooks/jobFinished/post/requestBody/content/application~1json/schema"

func TestWebhookSignedAndRetried(t *testing.T) {
	t.Parallel()
	rcv := &webhookReceiver{fail: 2, got: make(chan struct{}, 1)}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	m := metrics.New("test")
	key := []byte("0123456789abcdef0123456789abcdef")
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	h := newHarnessWith(t, 1, comfysim.Options{}, func(c *config.Config) {
		c.Webhooks.AllowedHosts = []string{"127.0.0.1"}
		c.Webhooks.Secret = secret
	}, func(s *Service) {
		s.del.webhookBackoff = 5 * time.Millisecond
		s.eng.m, s.del.m, s.st.m = m, m, m
	})
	img := base64.StdEncoding.EncodeToString(testPNG(t, 16, 16))
	code, _, b := postJSON(h, "/api/upscale-image", map[string]any{"image_base64": img, "webhook_url": srv.URL + "/hook"})
	var a acceptedView
	if code != 202 || json.Unmarshal(b, &a) != nil {
		t.Fatalf("submit: %d %s", code, b)
	}
	select {
	case <-rcv.got:
	case <-time.After(20 * time.Second):
		t.Fatal("no successful delivery")
	}
	rcv.mu.Lock()
	calls, bodies := rcv.calls, rcv.body
	rcv.mu.Unlock()
	if len(calls) != 3 {
		t.Fatalf("%d attempts, want 3", len(calls))
	}
	id := calls[0].Header.Get("webhook-id")
	for i, c := range calls {
		if c.Header.Get("webhook-id") != id || !bytes.Equal(bodies[i], bodies[0]) {
			t.Fatalf("attempt %d: id %q body %s, want the same delivery", i+1, c.Header.Get("webhook-id"), bodies[i])
		}
	}
	last := calls[2]
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + last.Header.Get("webhook-timestamp") + "."))
	mac.Write(bodies[2])
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	if last.Header.Get("webhook-signature") != want {
		t.Fatalf("signature %q, want %q", last.Header.Get("webhook-signature"), want)
	}
	checkSchema(t, webhookBodySchema, bodies[2])
	var payload struct {
		Type string    `json:"type"`
		Data eventView `json:"data"`
	}
	if err := json.Unmarshal(bodies[2], &payload); err != nil || payload.Type != "job.completed" || payload.Data.JobID != a.JobID || len(payload.Data.Outputs) != 1 {
		t.Fatalf("payload %s (%v)", bodies[2], err)
	}
	// The delivery log is in the job's status.
	var v statusView
	if !testkit.Poll(10*time.Second, func() bool {
		_, v = h.status(a.JobID)
		return v.Webhook != nil && v.Webhook.Status == "delivered"
	}) {
		t.Fatalf("webhook status %+v", v.Webhook)
	}
	if len(v.Webhook.Deliveries) != 3 || v.Webhook.Deliveries[0].StatusCode != 503 || v.Webhook.Deliveries[2].StatusCode != 204 || v.Webhook.ID != id {
		t.Fatalf("delivery log %+v", v.Webhook)
	}

	attempts := map[string]float64{}
	fams, _ := m.Registry().Gather()
	for _, f := range fams {
		if f.GetName() == "comfygate_webhook_attempts_total" {
			for _, mt := range f.GetMetric() {
				attempts[mt.GetLabel()[0].GetValue()] = mt.GetCounter().GetValue()
			}
		}
	}
	if attempts["retry"] != 2 || attempts["delivered"] != 1 || attempts["gave_up"] != 0 {
		t.Fatalf("comfygate_webhook_attempts_total %v", attempts)
	}

	// Refused at submission: hosts not allowed, internal addresses not listed literally.
	for _, u := range []string{"http://example.com/hook", "http://10.0.0.1/hook", "ftp://127.0.0.1/x", "http://user:pw@127.0.0.1/"} {
		if code, _, b := postJSON(h, "/api/upscale-image", map[string]any{"image_base64": img, "webhook_url": u}); code != 400 || !strings.Contains(string(b), errWebhook) {
			t.Errorf("%s: %d %s", u, code, b)
		}
	}
}

func TestWebhookRules(t *testing.T) {
	t.Parallel()
	off := newWebhookClient(config.Default().Webhooks)
	if err := off.check("https://hooks.example.com/x"); err == nil {
		t.Fatal("webhooks off, yet a URL passed")
	}
	c := config.Default().Webhooks
	c.AllowedHosts = []string{"*.example.com", "hooks.test:8443", "127.0.0.1"}
	w := newWebhookClient(c)
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"https://a.example.com/h", true},
		{"https://example.com/h", false},
		{"https://hooks.test:8443/h", true},
		{"https://hooks.test/h", false},
		{"http://127.0.0.1:9/h", true},
		{"http://[::1]/h", false},
		{"http://169.254.169.254/latest", false},
	} {
		if err := w.check(tc.url); (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.url, err, tc.ok)
		}
	}
	// A name that resolves to an internal address is refused at connect time.
	for _, tc := range []struct {
		addr    string
		literal bool
		ok      bool
	}{
		{"127.0.0.1:80", false, false},
		{"127.0.0.1:80", true, true},
		{"[::ffff:10.1.2.3]:443", false, false},
		{"[fe80::1]:443", false, false},
		{"93.184.216.34:443", false, true},
	} {
		if err := guardAddr(tc.addr, tc.literal, "webhooks.allowed_hosts"); (err == nil) != tc.ok {
			t.Errorf("%s literal=%v: %v", tc.addr, tc.literal, err)
		}
	}
}

// TestOpenAPIDocumentsTheRoutes checks that the served document is
// OpenAPI 3.1 JSON naming every route ServeJobs answers (.ci/run checks it
// against the OpenAPI schema).
func TestOpenAPIDocumentsTheRoutes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{}, nil)
	code, hdr, b := h.do("GET", "/api/openapi.json", "", nil)
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") || json.Unmarshal(b, &doc) != nil || doc.OpenAPI != "3.1.0" {
		t.Fatalf("GET /api/openapi.json: %d %q %.80s", code, hdr.Get("Content-Type"), b)
	}
	for _, r := range []struct{ path, method string }{
		{routeRemoveBackground, "post"}, {routeUpscaleImage, "post"}, {"/api/workflows/{name}", "post"},
		{routeWorkflowList, "get"}, {routeOpenAPI, "get"}, {routeValidatePrompt, "post"}, {"/api/jobs/{id}/status", "get"},
		{"/api/jobs/{id}/events", "get"}, {"/api/jobs/{id}/result", "get"}, {"/api/jobs/{id}/outputs", "get"},
		{"/api/jobs/{id}/outputs/{n}", "get"}, {"/api/jobs/{id}", "delete"}, {routeJobs, "get"},
	} {
		if doc.Paths[r.path][r.method] == nil {
			t.Errorf("%s %s is not documented", strings.ToUpper(r.method), r.path)
		}
	}
}

// TestImageParameters: a workflow with two image inputs, sent as a
// multipart file, as base64 and as a URL from an allowed host.
func TestImageParameters(t *testing.T) {
	t.Parallel()
	small, large := testPNG(t, 10, 8), testPNG(t, 24, 20)
	files := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(large)
	}))
	defer files.Close()
	dir := t.TempDir()
	graph := `{
	  "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
	  "2": {"class_type": "LoadImage", "inputs": {"image": "y.png"}},
	  "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}},
	  "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "b"}}
	}`
	p := filepath.Join(dir, "two.json")
	if err := os.WriteFile(p, []byte(graph), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, 2, comfysim.Options{}, func(c *config.Config) {
		c.ImageURLs.AllowedHosts = []string{"127.0.0.1"}
		c.Workflows = map[string]config.Workflow{"two": {File: p, OutputNode: "3", Parameters: []config.Parameter{
			{Name: "base", Node: "1", Input: "image", Type: "image", Required: true},
			{Name: "overlay", Node: "2", Input: "image", Type: "image", Required: true},
		}}}
	})
	sizes := func(b []byte) [2]int {
		t.Helper()
		var v waitedView
		if err := json.Unmarshal(b, &v); err != nil || v.Status != statusCompleted || len(v.Outputs) != 2 {
			t.Fatalf("answer %s", b)
		}
		var out [2]int
		for i, o := range v.Outputs {
			_, _, data := h.do("GET", o.URL, "", nil)
			out[i] = decodePNG(t, data).Bounds().Dx()
		}
		return out
	}
	// base64 and URL.
	code, _, b := postJSON(h, "/api/workflows/two?wait=20s", map[string]any{
		"base": base64.StdEncoding.EncodeToString(small), "overlay": files.URL + "/large.png"})
	if code != 200 || sizes(b) != [2]int{10, 24} {
		t.Fatalf("json: %d %s", code, b)
	}
	// Multipart files.
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for name, data := range map[string][]byte{"base": large, "overlay": small} {
		w, _ := mw.CreateFormFile(name, name+".png")
		_, _ = w.Write(data)
	}
	_ = mw.Close()
	code, _, b = h.do("POST", "/api/workflows/two?wait=20s", mw.FormDataContentType(), buf.Bytes())
	if code != 200 || sizes(b) != [2]int{24, 10} {
		t.Fatalf("multipart: %d %s", code, b)
	}
	// A parameter may be called "image": the file field "image" fills it.
	h2 := newHarness(t, 1, comfysim.Options{}, func(c *config.Config) {
		c.Workflows = map[string]config.Workflow{"two": {File: p, OutputNode: "3", Parameters: []config.Parameter{
			{Name: "image", Node: "1", Input: "image", Type: "image", Required: true},
			{Name: "overlay", Node: "2", Input: "image", Type: "image", Required: true},
		}}}
	})
	buf.Reset()
	mw = multipart.NewWriter(&buf)
	for name, data := range map[string][]byte{"image": large, "overlay": small} {
		w, _ := mw.CreateFormFile(name, name+".png")
		_, _ = w.Write(data)
	}
	_ = mw.Close()
	code, _, b = h2.do("POST", "/api/workflows/two?wait=20s", mw.FormDataContentType(), buf.Bytes())
	if v := (waitedView{}); code != 200 || json.Unmarshal(b, &v) != nil || v.Status != statusCompleted {
		t.Fatalf("parameter called image: %d %s", code, b)
	}
	schema := workflowSchemas(h2)["two"]
	for _, key := range []string{"image", keyImageBase64} {
		body, _ := json.Marshal(map[string]any{key: base64.StdEncoding.EncodeToString(small), "overlay": base64.StdEncoding.EncodeToString(large)})
		code, _, b = h2.do("POST", "/api/workflows/two?wait=20s", "application/json", body)
		if v := (waitedView{}); code != 200 || json.Unmarshal(b, &v) != nil || v.Status != statusCompleted {
			t.Fatalf("parameter called image, JSON %s: %d %s", key, code, b)
		}
		if err := checkBody(schema, body); err != nil {
			t.Errorf("parameter called image, JSON %s: accepted, yet the workflow's schema refuses it: %v", key, err)
		}
	}
	if err := checkBody(schema, []byte(`{"overlay": "AA=="}`)); err == nil {
		t.Error("the workflow's schema lets the required image out")
	}

	// A host that is not allowed, and a file that is no image: both reported.
	code, _, b = postJSON(h, "/api/workflows/two", map[string]any{"base": "http://example.com/a.png", "overlay": "bm90IGFuIGltYWdl"})
	if code != 400 || !strings.Contains(string(b), `"field":"base"`) || !strings.Contains(string(b), `"field":"overlay"`) || !strings.Contains(string(b), "image_urls.allowed_hosts") {
		t.Fatalf("refused: %d %s", code, b)
	}
}

// TestWebhookProgress: with webhook_progress the receiver gets the job's
// events in order, the terminal one last and once.
func TestWebhookProgress(t *testing.T) {
	t.Parallel()
	rcv := &webhookReceiver{got: make(chan struct{}, 8)}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	h := newHarness(t, 1, comfysim.Options{Delay: 20 * time.Millisecond, Steps: 4}, func(c *config.Config) {
		c.Webhooks.AllowedHosts = []string{"127.0.0.1"}
		c.Webhooks.Secret = "s3cret"
	})
	img := base64.StdEncoding.EncodeToString(testPNG(t, 16, 16))
	code, _, b := postJSON(h, "/api/upscale-image?wait=20s", map[string]any{"image_base64": img, "webhook_url": srv.URL, "webhook_progress": true})
	if code != 200 {
		t.Fatalf("submit: %d %s", code, b)
	}
	var v waitedView
	_ = json.Unmarshal(b, &v)
	var st statusView
	if !testkit.Poll(10*time.Second, func() bool {
		_, st = h.status(v.JobID)
		return st.Webhook != nil && st.Webhook.Status == "delivered"
	}) {
		t.Fatalf("webhook %+v", st.Webhook)
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	var types []string
	last := 0
	for i, body := range rcv.body {
		checkSchema(t, webhookBodySchema, body)
		var p struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(body, &p)
		types = append(types, p.Type)
		id := rcv.calls[i].Header.Get("webhook-id")
		n, _ := strconv.Atoi(id[strings.LastIndex(id, "_")+1:])
		if n <= last {
			t.Fatalf("deliveries out of order: %v", types)
		}
		last = n
	}
	if len(types) < 2 || types[len(types)-1] != "job.completed" || slices.Index(types, "job.completed") != len(types)-1 {
		t.Fatalf("deliveries %v", types)
	}
}

// TestQueuedEventsFollowThePlace: a waiting job's stream shows its place
// in the wait line as it moves up.
func TestQueuedEventsFollowThePlace(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{Delay: 60 * time.Millisecond}, func(c *config.Config) { c.Jobs.MaxConcurrent = 1 })
	img := testPNG(t, 8, 8)
	var ids []string
	for range 3 {
		ids = append(ids, h.submit("/api/upscale-image", img, nil))
	}
	resp, err := h.hc.Get(h.base + "/api/jobs/" + ids[2] + "/events")
	if err != nil {
		t.Fatal(err)
	}
	checkAnswer(t, "GET", resp.Request.URL.Path, resp.StatusCode, resp.Header, nil)
	evs, _ := readEvents(t, resp.Body, func(e sseEvent) bool { return e.typ == evStarted })
	resp.Body.Close()
	var places []int
	for _, e := range evs {
		if e.typ == evQueued {
			var v eventView
			_ = json.Unmarshal([]byte(e.data), &v)
			places = append(places, *v.QueuePosition)
		}
	}
	if len(places) < 2 || places[len(places)-1] != 1 {
		t.Fatalf("places %v, want a countdown to 1", places)
	}
	for i := 1; i < len(places); i++ {
		if places[i] >= places[i-1] {
			t.Fatalf("places %v, want each smaller than the one before", places)
		}
	}
}
