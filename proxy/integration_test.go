package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/jsonobj"
	"github.com/comfygate/comfygate/internal/testkit"
)

// sims starts n simulators with opts.
func sims(t *testing.T, n int, opts comfysim.Options) []*comfysim.Server {
	t.Helper()
	out := make([]*comfysim.Server, n)
	for i := range out {
		out[i] = testkit.Sim(t, opts)
	}
	return out
}

func addrsOf(ss []*comfysim.Server) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.Addr()
	}
	return out
}

// emptyImagePrompt is EmptyImage(color) -> SaveImage(prefix): every
// instance names its first output prefix_00001_.png.
func emptyImagePrompt(rgb int, prefix string) map[string]any {
	return map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": rgb}},
		"2": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"1", 0}, "filename_prefix": prefix}},
	}
}

// postJSON posts v and decodes the JSON answer into out (if not nil).
func postJSON(t *testing.T, url string, hdr http.Header, v any, out any) (int, []byte) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if hdr == nil {
		hdr = http.Header{}
	}
	hdr.Set("Content-Type", "application/json")
	status, _, body := gateDo(t, "POST", url, hdr, bytes.NewReader(b))
	if out != nil && status == 200 {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("POST %s: answer %s: %v", url, body, err)
		}
	}
	return status, body
}

type promptAnswer struct {
	PromptID string `json:"prompt_id"`
}

// submit posts a prompt through comfygate and returns its id.
func submit(t *testing.T, g *gate, body map[string]any) string {
	t.Helper()
	var a promptAnswer
	status, raw := postJSON(t, g.base+"/prompt", nil, body, &a)
	if status != 200 || a.PromptID == "" {
		t.Fatalf("POST /prompt = %d %s", status, raw)
	}
	return a.PromptID
}

type fileRef struct {
	Filename  string `json:"filename"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}

type historyEntry struct {
	Prompt  []json.RawMessage `json:"prompt"`
	Outputs map[string]struct {
		Images []fileRef `json:"images"`
	} `json:"outputs"`
	Status struct {
		StatusStr string `json:"status_str"`
		Completed bool   `json:"completed"`
	} `json:"status"`
}

// waitHistory polls /history/{id} through comfygate until the prompt is done.
func waitHistory(t *testing.T, g *gate, prefix, id string) historyEntry {
	t.Helper()
	var e historyEntry
	testkit.Eventually(t, "history of "+id, func() bool {
		status, _, body := gateDo(t, "GET", g.base+prefix+"/history/"+url.PathEscape(id), nil, nil)
		if status != 200 {
			t.Fatalf("GET /history/%s = %d %s", id, status, body)
		}
		var h map[string]historyEntry
		if err := json.Unmarshal(body, &h); err != nil {
			t.Fatalf("GET /history/%s: %v: %s", id, err, body)
		}
		var ok bool
		e, ok = h[id]
		if !ok && len(h) > 0 {
			t.Fatalf("GET /history/%s answered another key: %s", id, body)
		}
		return ok // history is written when the prompt ends, whatever its outcome
	})
	return e
}

// viewPixel fetches an image through comfygate and returns its top-left pixel.
func viewPixel(t *testing.T, g *gate, prefix string, ref fileRef) color.NRGBA {
	t.Helper()
	q := url.Values{"filename": {ref.Filename}, "subfolder": {ref.Subfolder}, "type": {ref.Type}}
	status, _, body := gateDo(t, "GET", g.base+prefix+"/view?"+q.Encode(), nil, nil)
	if status != 200 {
		t.Fatalf("GET /view %v = %d", ref, status)
	}
	img, err := png.Decode(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("GET /view %v: not a PNG: %v", ref, err)
	}
	return color.NRGBAModel.Convert(img.At(0, 0)).(color.NRGBA)
}

func rgbOf(c int) color.NRGBA {
	return color.NRGBA{uint8(c >> 16), uint8(c >> 8), uint8(c), 255}
}

// TestPromptsSpreadAndOwnResults: prompts spread over the instances, and
// /history/{id} and /view of every prompt give that prompt's own image even
// though both instances write the same file names.
func TestPromptsSpreadAndOwnResults(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	const n = 12
	ids := make([]string, n)
	colors := make([]int, n)
	for i := range n {
		colors[i] = 0x101010 * (i + 1)
		ids[i] = submit(t, g, map[string]any{"prompt": emptyImagePrompt(colors[i], "gate"), "client_id": "spread"})
	}
	// Let every prompt finish first: then the files are all written and a
	// client reading a prompt's history and then its image races with no
	// other prompt writing the same name (see the report on file names).
	for _, id := range ids {
		waitHistory(t, g, "", id)
	}
	names := map[string]int{}
	for i, id := range ids {
		prefix := []string{"", "/api"}[i%2]
		e := waitHistory(t, g, prefix, id)
		img := e.Outputs["2"].Images
		if e.Status.StatusStr != "success" || len(img) != 1 {
			t.Fatalf("prompt %d: status %q, images %v", i, e.Status.StatusStr, img)
		}
		names[img[0].Filename]++
		if got, want := viewPixel(t, g, prefix, img[0]), rgbOf(colors[i]); got != want {
			t.Errorf("prompt %d: /view of %s gives pixel %v, want its own %v", i, img[0].Filename, got, want)
		}
	}
	a, b := ss[0].PromptsExecuted(), ss[1].PromptsExecuted()
	t.Logf("split: %d / %d", a, b)
	if a == 0 || b == 0 || a+b != n {
		t.Errorf("executed %d and %d, want both > 0 and %d in all", a, b, n)
	}
	collisions := 0
	for _, c := range names {
		if c > 1 {
			collisions++
		}
	}
	if collisions == 0 {
		t.Errorf("no file name was written by both instances (%v): the test proves nothing", names)
	}
}

// pngOf encodes a w×h image of one colour.
func pngOf(t *testing.T, w, h int, c color.NRGBA) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetNRGBA(x, y, c)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// upload posts a file as /upload/image does and returns ComfyUI's answer.
func upload(t *testing.T, g *gate, path, name string, data []byte, fields map[string]string) map[string]string {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("image", name)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fw.Write(data)
	for k, v := range fields {
		_ = mw.WriteField(k, v)
	}
	_ = mw.Close()
	hdr := http.Header{"Content-Type": {mw.FormDataContentType()}}
	status, _, body := gateDo(t, "POST", g.base+path, hdr, &buf)
	var a map[string]string
	if status != 200 || json.Unmarshal(body, &a) != nil {
		t.Fatalf("POST %s = %d %s", path, status, body)
	}
	return a
}

// TestUploadUsableEverywhere: an image uploaded through comfygate works in
// prompts whatever instance they land on.
func TestUploadUsableEverywhere(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	red := color.NRGBA{200, 10, 10, 255}
	a := upload(t, g, "/api/upload/image", "source.png", pngOf(t, 4, 4, red), nil)
	if a["name"] != "source.png" || a["type"] != "input" {
		t.Fatalf("upload answer %v", a)
	}
	// A different image under the same name gets ComfyUI's rename, fleet-wide.
	b := upload(t, g, "/upload/image", "source.png", pngOf(t, 4, 4, color.NRGBA{1, 2, 3, 255}), nil)
	if b["name"] == "source.png" {
		t.Errorf("a second, different source.png kept the name: uploads do not land in one place")
	}
	prompt := func(img string) map[string]any {
		return map[string]any{
			"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": img}},
			"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
			"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": "up"}},
		}
	}
	var ids []string
	for range 6 {
		ids = append(ids, submit(t, g, map[string]any{"prompt": prompt(a["name"])}))
	}
	for _, id := range ids {
		e := waitHistory(t, g, "", id)
		if e.Status.StatusStr != "success" {
			t.Fatalf("prompt %s: %s", id, e.Status.StatusStr)
		}
		want := color.NRGBA{255 - 200, 255 - 10, 255 - 10, 255}
		if got := viewPixel(t, g, "", e.Outputs["3"].Images[0]); got != want {
			t.Errorf("prompt %s: pixel %v, want the inverted upload %v", id, got, want)
		}
	}
	if ss[0].PromptsExecuted() == 0 || ss[1].PromptsExecuted() == 0 {
		t.Errorf("executed %d and %d: the upload was not used on both instances", ss[0].PromptsExecuted(), ss[1].PromptsExecuted())
	}
}

// TestKilledInstanceAndRestart: once an instance dies, prompts go to the
// others from the first one on (none is lost), and it gets prompts again
// after it restarts.
func TestKilledInstanceAndRestart(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), func(c *config.Config) { c.HealthCheck.Interval = 200 * time.Millisecond })
	for i := range 4 {
		waitHistory(t, g, "", submit(t, g, map[string]any{"prompt": emptyImagePrompt(i, "k")}))
	}
	dead := ss[1]
	before := dead.PromptsExecuted()
	dead.Kill()
	killed := time.Now()
	var out time.Duration
	for i := range 8 {
		id := submit(t, g, map[string]any{"prompt": emptyImagePrompt(100+i, "k")})
		if e := waitHistory(t, g, "", id); e.Status.StatusStr != "success" {
			t.Fatalf("prompt after kill: %s", e.Status.StatusStr)
		}
		if out == 0 && !g.pool.Instances()[1].Available() {
			out = time.Since(killed)
		}
	}
	t.Logf("killed instance out of selection after %v", out)
	if dead.PromptsExecuted() != before {
		t.Errorf("dead instance executed %d prompts after the kill", dead.PromptsExecuted()-before)
	}
	if err := dead.Restart(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "restarted instance available", func() bool { return g.pool.Instances()[1].Available() })
	for i := 0; dead.PromptsExecuted() == before; i++ {
		if i == 20 {
			t.Fatal("restarted instance got no prompt out of 20")
		}
		waitHistory(t, g, "", submit(t, g, map[string]any{"prompt": emptyImagePrompt(200+i, "k")}))
	}
}

// TestHungSimDoesNotHangClients: with one instance hanging, every call
// answers within about COMFYUI_TIMEOUT (the client's own timeout would
// fail the test otherwise), and work goes on on the other.
func TestHungSimDoesNotHangClients(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), func(c *config.Config) {
		c.Timeout = 300 * time.Millisecond
		c.HealthCheck.Timeout = 300 * time.Millisecond
	})
	ss[0].SetHang(true)
	t.Cleanup(func() { ss[0].SetHang(false) })
	client := &http.Client{Timeout: 5 * time.Second}
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/system_stats", ""},
		{"GET", "/object_info", ""},
		{"GET", "/queue", ""},
		{"GET", "/history?max_items=5", ""},
		{"GET", "/", ""},
		{"POST", "/prompt", `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "h"}}}}`},
		{"POST", "/interrupt", ""},
	} {
		for range 3 {
			req, _ := http.NewRequest(tc.method, g.base+tc.path, strings.NewReader(tc.body))
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%s %s with a hung instance: %v", tc.method, tc.path, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case 200, http.StatusGatewayTimeout, http.StatusServiceUnavailable, http.StatusBadGateway:
			default:
				t.Errorf("%s %s = %d", tc.method, tc.path, resp.StatusCode)
			}
		}
	}
	// The hung instance leaves selection; prompts then run on the other.
	testkit.Eventually(t, "hung instance out", func() bool { return !g.pool.Instances()[0].Available() })
	waitHistory(t, g, "", submit(t, g, map[string]any{"prompt": emptyImagePrompt(7, "h")}))
}

// TestAPIPrefix: the routes answer the same under /api.
func TestAPIPrefix(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	id := submit(t, g, map[string]any{"prompt": emptyImagePrompt(0x123456, "api")})
	e := waitHistory(t, g, "/api", id)
	img := e.Outputs["2"].Images[0]
	q := url.Values{"filename": {img.Filename}, "subfolder": {img.Subfolder}, "type": {img.Type}}.Encode()
	for _, path := range []string{
		"/system_stats", "/object_info", "/object_info/SaveImage", "/embeddings", "/extensions",
		"/features", "/models", "/queue", "/history", "/history?max_items=1", "/history/" + id,
		"/prompt", "/view?" + q, "/settings", "/users",
	} {
		s1, _, b1 := gateDo(t, "GET", g.base+path, nil, nil)
		s2, _, b2 := gateDo(t, "GET", g.base+"/api"+path, nil, nil)
		if s1 != 200 || s2 != 200 {
			t.Errorf("GET %s = %d, /api%s = %d; want 200 both", path, s1, path, s2)
			continue
		}
		if path != "/system_stats" && !bytes.Equal(b1, b2) {
			t.Errorf("GET %s and /api%s differ:\n%s\n%s", path, path, b1, b2)
		}
	}
	status, _ := postJSON(t, g.base+"/api/prompt", nil, map[string]any{"prompt": emptyImagePrompt(1, "api")}, nil)
	if status != 200 {
		t.Errorf("POST /api/prompt = %d", status)
	}
	for _, path := range []string{"/interrupt", "/free", "/queue", "/history"} {
		if status, body := postJSON(t, g.base+"/api"+path, nil, map[string]any{}, nil); status != 200 {
			t.Errorf("POST /api%s = %d %s", path, status, body)
		}
	}
}

// TestBadRequestsAndUnknownRoutes: bodies comfygate cannot parse get
// ComfyUI's 400 shape; unknown routes reach an instance.
func TestBadRequestsAndUnknownRoutes(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	for _, tc := range []struct {
		desc, body, typ string
	}{
		{"malformed", `{"prompt": `, "invalid_prompt"},
		{"not an object", `[1, 2]`, "invalid_prompt"},
		{"null", `null`, "invalid_prompt"},
		{"no prompt", `{"client_id": "x"}`, "no_prompt"},
	} {
		for _, prefix := range []string{"", "/api"} {
			status, _, body := gateDo(t, "POST", g.base+prefix+"/prompt", http.Header{"Content-Type": {"application/json"}}, strings.NewReader(tc.body))
			var e struct {
				Error struct {
					Type, Message, Details string
					ExtraInfo              map[string]any `json:"extra_info"`
				} `json:"error"`
				NodeErrors map[string]any `json:"node_errors"`
			}
			if status != 400 || json.Unmarshal(body, &e) != nil || e.Error.Type != tc.typ || e.Error.Message == "" ||
				e.Error.ExtraInfo == nil || e.NodeErrors == nil {
				t.Errorf("%s (%s): %d %s; want 400 %s in ComfyUI's shape", tc.desc, prefix, status, body, tc.typ)
			}
		}
	}
	// The exact no_prompt body of ComfyUI 0.3.65 (traces/c-invalid-prompts.json).
	_, _, body := gateDo(t, "POST", g.base+"/prompt", nil, strings.NewReader(`{"client_id": "x"}`))
	var got, want any
	_ = json.Unmarshal(body, &got)
	_ = json.Unmarshal([]byte(`{"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}`), &want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("no_prompt body %s", body)
	}
	// Validation errors come from the instance, unchanged.
	status, body := postJSON(t, g.base+"/prompt", nil, map[string]any{"prompt": map[string]any{
		"1": map[string]any{"class_type": "NoSuchNode", "inputs": map[string]any{}},
	}}, nil)
	if status != 400 || !bytes.Contains(body, []byte("NoSuchNode")) {
		t.Errorf("unknown node: %d %s", status, body)
	}
	// No instance has the 2026 jobs API: the client sees an older ComfyUI's 404.
	if status, _, body := gateDo(t, "GET", g.base+"/api/jobs", nil, nil); status != 404 {
		t.Errorf("GET /api/jobs on 0.3.65 instances = %d %s, want 404", status, body)
	}
	status, _, body = gateDo(t, "GET", g.base+"/no/such/route", nil, nil)
	if status != 404 || string(body) != "404: Not Found" {
		t.Errorf("unknown route = %d %q; want the instance's 404", status, body)
	}
}

// TestMixedFleet: instances of three ComfyUI versions (one older than
// v0.3.45, one 2026 with strict prompt ids) look the same to the client:
// its own prompt_id and client_id round-trip through /prompt, /history,
// /queue and the jobs API.
func TestMixedFleet(t *testing.T) {
	t.Parallel()
	var ss []*comfysim.Server
	for _, v := range []string{"0.3.40", "0.3.65", "0.38.0"} {
		ss = append(ss, testkit.Sim(t, comfysim.Options{Version: v}))
	}
	g := startGate(t, addrsOf(ss), nil)
	const client = "mixed-client"
	ids := []string{}
	for i := range 9 {
		var id string
		if i%2 == 0 {
			id = newUUID()
		} else {
			id = fmt.Sprintf("my-own-id-%d", i)
		}
		var a promptAnswer
		status, body := postJSON(t, g.base+"/prompt", nil, map[string]any{
			"prompt": emptyImagePrompt(i, "mix"), "client_id": client, "prompt_id": id,
		}, &a)
		if status != 200 || a.PromptID != id {
			t.Fatalf("POST /prompt with prompt_id %q = %d %s", id, status, body)
		}
		ids = append(ids, id)
	}
	for _, id := range ids {
		e := waitHistory(t, g, "", id)
		var pid string
		var extra map[string]any
		if len(e.Prompt) < 4 || json.Unmarshal(e.Prompt[1], &pid) != nil || json.Unmarshal(e.Prompt[3], &extra) != nil {
			t.Fatalf("history of %s: prompt tuple %s", id, e.Prompt)
		}
		if pid != id || extra["client_id"] != client {
			t.Errorf("history of %s: prompt_id %q, client_id %v; want the client's own", id, pid, extra["client_id"])
		}
	}
	for i, s := range ss {
		if s.PromptsExecuted() == 0 {
			t.Errorf("instance %d (%s) ran nothing", i, s.Version())
		}
	}
	// The merged history is keyed by the client's ids only.
	_, _, body := gateDo(t, "GET", g.base+"/api/history", nil, nil)
	var h map[string]historyEntry
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, ok := h[id]; !ok {
			t.Errorf("merged history lacks %s", id)
		}
	}
	if len(h) != len(ids) {
		t.Errorf("merged history has %d entries, want %d", len(h), len(ids))
	}
	for _, inst := range g.pool.Instances() {
		if bytes.Contains(body, []byte(inst.SocketClientID())) {
			t.Errorf("merged history leaks comfygate's client_id for %s", inst.Name)
		}
	}
}

// TestBrowserOrigin: a browser on comfygate's address passes the
// instances' origin check (which compares a loopback Host with Origin), and
// comfygate applies that policy itself.
func TestBrowserOrigin(t *testing.T) {
	t.Parallel()
	ss := []*comfysim.Server{
		testkit.Sim(t, comfysim.Options{}),
		testkit.Sim(t, comfysim.Options{Version: "0.38.0"}), // also refuses Sec-Fetch-Site: cross-site
	}
	g := startGate(t, addrsOf(ss), nil)
	browser := func(origin, site string) http.Header {
		h := http.Header{"Host": {g.addr}, "Origin": {origin}, "Content-Type": {"application/json"}}
		if site != "" {
			h.Set("Sec-Fetch-Site", site)
		}
		return h
	}
	self := "http://" + g.addr
	for range 4 { // lands on both instances
		var a promptAnswer
		status, body := postJSON(t, g.base+"/api/prompt", browser(self, "same-origin"), map[string]any{"prompt": emptyImagePrompt(5, "o")}, &a)
		if status != 200 {
			t.Fatalf("browser POST /api/prompt = %d %q", status, body)
		}
	}
	for _, path := range []string{"/api/system_stats", "/api/object_info", "/", "/api/settings"} {
		for range 2 {
			if status, _, _ := gateDo(t, "GET", g.base+path, browser(self, "same-origin"), nil); status != 200 {
				t.Errorf("browser GET %s = %d", path, status)
			}
		}
	}
	// A cross-site GET (a link, an <img>) passes; the 2026 instance would refuse it itself.
	for range 2 {
		if status, _, _ := gateDo(t, "GET", g.base+"/api/system_stats", browser(self, "cross-site"), nil); status != 200 {
			t.Errorf("cross-site GET = %d, want 200", status)
		}
	}
	for _, tc := range []struct {
		desc, origin, site string
	}{
		{"other origin", "http://evil.example", ""},
		{"other port", "http://127.0.0.1:1", ""},
		{"cross-site POST", self, "cross-site"},
	} {
		status, body := postJSON(t, g.base+"/api/prompt", browser(tc.origin, tc.site), map[string]any{"prompt": emptyImagePrompt(5, "o")}, nil)
		if status != 403 || len(body) != 0 {
			t.Errorf("%s: POST /api/prompt = %d %q; want 403 with an empty body", tc.desc, status, body)
		}
	}
}

// TestMergedViews: GET /queue, /history (max_items, offset), /prompt and
// /api/jobs merge every instance's view, in the client's ids; targeted
// and fleet-wide queue actions reach the right instances.
func TestMergedViews(t *testing.T) {
	t.Parallel()
	ss := []*comfysim.Server{
		testkit.Sim(t, comfysim.Options{Delay: 20 * time.Millisecond, Version: "0.38.0"}),
		testkit.Sim(t, comfysim.Options{Delay: 20 * time.Millisecond, Version: "0.38.0"}),
	}
	g := startGate(t, addrsOf(ss), nil)
	// Held queues: all six are pending when /queue is read and the victim
	// is deleted (slow prompts alone lost that race on a loaded machine).
	for _, s := range ss {
		s.SetPaused(true)
	}
	slow := func(c int) map[string]any {
		p := emptyImagePrompt(c, "m")
		p["3"] = map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}}
		p["2"].(map[string]any)["inputs"].(map[string]any)["images"] = []any{"3", 0}
		return p
	}
	var ids []string
	for i := range 6 {
		ids = append(ids, submit(t, g, map[string]any{"prompt": slow(i), "client_id": "merge"}))
	}
	// The queue shows them all with the client's ids.
	_, _, body := gateDo(t, "GET", g.base+"/queue", nil, nil)
	var q struct {
		Running [][]json.RawMessage `json:"queue_running"`
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	if err := json.Unmarshal(body, &q); err != nil {
		t.Fatalf("GET /queue: %v: %s", err, body)
	}
	if len(q.Running)+len(q.Pending) != len(ids) {
		t.Fatalf("merged queue of paused instances does not hold the %d prompts: %s", len(ids), body)
	}
	known := map[string]bool{}
	for _, id := range ids {
		known[id] = true
	}
	var last float64 = -1
	for _, it := range append(q.Running, q.Pending...) {
		var id string
		_ = json.Unmarshal(it[1], &id)
		if !known[id] {
			t.Errorf("queue item id %q is not one of the client's", id)
		}
		var extra map[string]any
		_ = json.Unmarshal(it[3], &extra)
		if extra["client_id"] != "merge" {
			t.Errorf("queue item client_id %v, want merge", extra["client_id"])
		}
	}
	for _, it := range q.Pending {
		var n float64
		_ = json.Unmarshal(it[0], &n)
		if n < last {
			t.Errorf("pending not sorted by number: %s", body)
		}
		last = n
	}
	// Delete the last prompt from whichever queue holds it.
	victim := ids[len(ids)-1]
	if status, b := postJSON(t, g.base+"/queue", nil, map[string]any{"delete": []string{victim}}, nil); status != 200 {
		t.Fatalf("POST /queue delete = %d %s", status, b)
	}
	for _, s := range ss {
		s.SetPaused(false)
	}
	for _, id := range ids[:len(ids)-1] {
		waitHistory(t, g, "", id)
	}
	_, _, body = gateDo(t, "GET", g.base+"/history/"+victim, nil, nil)
	if string(body) != "{}" {
		t.Errorf("deleted prompt has history %s", body)
	}
	// Merged history: the 5 that ran, oldest first by completion; max_items
	// picks the newest, offset counts from the oldest.
	keysOf := func(path string) []string {
		_, _, body := gateDo(t, "GET", g.base+path, nil, nil)
		ms, err := jsonobj.Members(body)
		if err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, body)
		}
		var keys []string
		for _, m := range ms {
			keys = append(keys, m.Key)
		}
		return keys
	}
	all := keysOf("/history")
	if len(all) != 5 {
		t.Fatalf("history has %d entries, want 5: %v", len(all), all)
	}
	if got := keysOf("/history?max_items=2"); fmt.Sprint(got) != fmt.Sprint(all[3:]) {
		t.Errorf("max_items=2 gives %v, want the newest two %v", got, all[3:])
	}
	if got := keysOf("/history?max_items=2&offset=1"); fmt.Sprint(got) != fmt.Sprint(all[1:3]) {
		t.Errorf("max_items=2&offset=1 gives %v, want %v", got, all[1:3])
	}
	if status, _, b := gateDo(t, "GET", g.base+"/history?max_items=x", nil, nil); status != 500 {
		t.Errorf("max_items=x = %d %s; want ComfyUI's 500", status, b)
	}
	// GET /prompt sums the fleet's queue.
	_, _, body = gateDo(t, "GET", g.base+"/prompt", nil, nil)
	if !bytes.Contains(body, []byte(`"queue_remaining"`)) {
		t.Errorf("GET /prompt = %s", body)
	}
	// Jobs: merged and paginated again.
	_, _, body = gateDo(t, "GET", g.base+"/api/jobs?limit=3&sort_order=asc", nil, nil)
	var jobs struct {
		Jobs []struct {
			ID string `json:"id"`
		} `json:"jobs"`
		Pagination struct {
			Offset  int  `json:"offset"`
			Limit   int  `json:"limit"`
			Total   int  `json:"total"`
			HasMore bool `json:"has_more"`
		} `json:"pagination"`
	}
	if err := json.Unmarshal(body, &jobs); err != nil {
		t.Fatalf("GET /api/jobs: %v: %s", err, body)
	}
	if len(jobs.Jobs) != 3 || jobs.Pagination.Total != 5 || !jobs.Pagination.HasMore || jobs.Pagination.Limit != 3 {
		t.Errorf("GET /api/jobs?limit=3 = %s", body)
	}
	for _, j := range jobs.Jobs {
		if !known[j.ID] {
			t.Errorf("job id %q is not one of the client's", j.ID)
		}
	}
	status, _, body := gateDo(t, "GET", g.base+"/api/jobs/"+ids[0], nil, nil)
	if status != 200 || !bytes.Contains(body, []byte(ids[0])) {
		t.Errorf("GET /api/jobs/{id} = %d %s", status, body)
	}
	// Cancel: a finished job is a no-op.
	if status, b := postJSON(t, g.base+"/api/jobs/"+ids[0]+"/cancel", nil, map[string]any{}, nil); status != 200 || string(b) != `{"cancelled": false}` {
		t.Errorf("cancel of a finished job = %d %s", status, b)
	}
	if status, b := postJSON(t, g.base+"/api/jobs/cancel", nil, map[string]any{"job_ids": 3}, nil); status != 400 {
		t.Errorf("cancel with a bad body = %d %s", status, b)
	}
	// Clear everywhere.
	if status, b := postJSON(t, g.base+"/history", nil, map[string]any{"clear": true}, nil); status != 200 {
		t.Fatalf("POST /history clear = %d %s", status, b)
	}
	if keys := keysOf("/api/history"); len(keys) != 0 {
		t.Errorf("history after clear: %v", keys)
	}
}

// TestInterrupt: a targeted interrupt stops only that prompt, wherever it
// runs; a global one stops what runs everywhere.
func TestInterrupt(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{Delay: 200 * time.Millisecond, Version: "0.3.65"})
	g := startGate(t, addrsOf(ss), nil)
	// Ten 200 ms nodes: an interrupt lands at the next node boundary, long
	// before the prompt would end.
	slow := func(c int) map[string]any {
		p := emptyImagePrompt(c, "int")
		prev := "1"
		for i := range 10 {
			id := fmt.Sprint(10 + i)
			p[id] = map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{prev, 0}}}
			prev = id
		}
		p["2"].(map[string]any)["inputs"].(map[string]any)["images"] = []any{prev, 0}
		return p
	}
	a := submit(t, g, map[string]any{"prompt": slow(1)})
	b := submit(t, g, map[string]any{"prompt": slow(2)})
	testkit.Eventually(t, "both running", func() bool {
		_, _, body := gateDo(t, "GET", g.base+"/queue", nil, nil)
		var q struct {
			Running []any `json:"queue_running"`
		}
		_ = json.Unmarshal(body, &q)
		return len(q.Running) == 2
	})
	if status, body := postJSON(t, g.base+"/interrupt", nil, map[string]any{"prompt_id": a}, nil); status != 200 {
		t.Fatalf("targeted interrupt = %d %s", status, body)
	}
	if e := waitHistory(t, g, "", a); e.Status.StatusStr != "error" {
		t.Errorf("interrupted prompt status %q", e.Status.StatusStr)
	}
	// b still runs: interrupt everything.
	_, _, body := gateDo(t, "GET", g.base+"/history/"+b, nil, nil)
	if string(body) != "{}" {
		t.Errorf("the other prompt finished or stopped too early: %s", body)
	}
	if status, _, body := gateDo(t, "POST", g.base+"/interrupt", nil, strings.NewReader("not json")); status != 200 {
		t.Fatalf("global interrupt = %d %s", status, body)
	}
	if e := waitHistory(t, g, "", b); e.Status.StatusStr != "error" {
		t.Errorf("globally interrupted prompt status %q", e.Status.StatusStr)
	}
}

// TestHealthAndOwnRoutes checks /health's shape and that comfygate's own
// routes are not forwarded.
func TestHealthAndOwnRoutes(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	status, h, body := gateDo(t, "GET", g.base+"/health", nil, nil)
	var hb struct {
		Status    string  `json:"status"`
		Timestamp string  `json:"timestamp"`
		Uptime    float64 `json:"uptime"`
		Instances []struct {
			Host       string  `json:"host"`
			Healthy    bool    `json:"healthy"`
			ActiveJobs *int64  `json:"active_jobs"`
			LastCheck  *string `json:"last_check"`
			Name       string  `json:"name"`
			Breaker    string  `json:"breaker"`
		} `json:"comfyui_instances"`
	}
	if status != 200 || json.Unmarshal(body, &hb) != nil || h.Get("Content-Type") != jsonContentType {
		t.Fatalf("/health = %d %s", status, body)
	}
	if _, err := time.Parse(time.RFC3339, hb.Timestamp); err != nil || hb.Status != "healthy" || len(hb.Instances) != 2 {
		t.Fatalf("/health = %s", body)
	}
	for i, in := range hb.Instances {
		if in.Host != ss[i].Addr() || !in.Healthy || in.ActiveJobs == nil || in.LastCheck == nil || in.Breaker != "closed" || in.Name == "" {
			t.Errorf("/health instance %d = %+v", i, in)
		}
	}
	// Not forwarded: the simulators have no such routes.
	if status, _, _ := gateDo(t, "GET", g.base+"/metrics", nil, nil); status != 404 {
		t.Errorf("/metrics without metrics = %d, want comfygate's 404", status)
	}
	if status, _, _ := gateDo(t, "GET", g.base+"/api/health", nil, nil); status != 404 {
		t.Errorf("/api/health = %d: only /health is comfygate's", status)
	}
}

// TestConcurrentClients runs prompts from several clients at once.
func TestConcurrentClients(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{Delay: 5 * time.Millisecond})
	g := startGate(t, addrsOf(ss), nil)
	for c := range 4 {
		t.Run(fmt.Sprint("client", c), func(t *testing.T) {
			t.Parallel()
			for i := range 3 {
				col := c*16 + i
				// One prefix per client: two prompts finishing at the same
				// moment on two instances under one file name are told apart
				// only by which pin came last (see the report on file names).
				id := submit(t, g, map[string]any{"prompt": emptyImagePrompt(col, fmt.Sprint("cc", c)), "client_id": fmt.Sprint("c", c)})
				e := waitHistory(t, g, "", id)
				if got := viewPixel(t, g, "", e.Outputs["2"].Images[0]); got != rgbOf(col) {
					t.Errorf("prompt %d: pixel %v, want %v", i, got, rgbOf(col))
				}
			}
		})
	}
}

// TestMaskUploadGoesToOriginal: /upload/mask reaches the instance that
// holds the original image.
func TestMaskUploadGoesToOriginal(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	for i := range 2 { // one output on each instance, unique names
		id := submit(t, g, map[string]any{"prompt": emptyImagePrompt(0x808080, fmt.Sprint("orig", i))})
		e := waitHistory(t, g, "", id)
		ref := e.Outputs["2"].Images[0]
		owner := -1
		for j, s := range ss {
			if _, err := os.Stat(filepath.Join(s.OutputDir(), ref.Filename)); err == nil {
				owner = j
			}
		}
		if owner < 0 {
			t.Fatalf("no instance wrote %s", ref.Filename)
		}
		origRef, _ := json.Marshal(ref)
		mask := pngOf(t, 8, 8, color.NRGBA{0, 0, 0, 128})
		a := upload(t, g, "/api/upload/mask", "clipspace-mask.png", mask, map[string]string{
			"original_ref": string(origRef), "type": "input", "subfolder": "clipspace",
		})
		if _, err := os.Stat(filepath.Join(ss[owner].InputDir(), a["subfolder"], a["name"])); err != nil {
			t.Errorf("mask for %s (instance %d) not written there: %v (answer %v)", ref.Filename, owner, err, a)
		}
	}
}

// TestViewHead: HEAD /view answers the headers of the file.
func TestViewHead(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	e := waitHistory(t, g, "", submit(t, g, map[string]any{"prompt": emptyImagePrompt(1, "head")}))
	ref := e.Outputs["2"].Images[0]
	q := url.Values{"filename": {ref.Filename}, "type": {"output"}}.Encode()
	_, _, body := gateDo(t, "GET", g.base+"/view?"+q, nil, nil)
	resp, err := gateClient.Head(g.base + "/view?" + q)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(body)) {
		t.Errorf("HEAD /view = %d, length %d; want 200 and %d", resp.StatusCode, resp.ContentLength, len(body))
	}
	status, h, b := gateDo(t, "GET", g.base+"/view?filename=nobody_has_this.png", nil, nil)
	if status != 404 || len(b) != 0 || h.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("missing file = %d %q %q; want ComfyUI's empty 404", status, h.Get("Content-Type"), b)
	}
}

// TestDoneWhen is the acceptance run: a client runs 20 prompts
// (upload + LoadImage -> ImageScaleBy -> SaveImage) against two instances.
// The first 10 finish one after the other (the split is logged); then 5
// more are submitted and one instance is killed at once, with some of them
// still queued or running there, and 5 more follow. Every prompt finishes and every /view gives that
// prompt's own image.
func TestDoneWhen(t *testing.T) {
	t.Parallel()
	// The instance to be killed is slow, so that none of the prompts sent to
	// it right before the kill can finish there first (its history would die
	// with it, as a ComfyUI's does).
	ss := []*comfysim.Server{
		testkit.Sim(t, comfysim.Options{Delay: 20 * time.Millisecond}),
		testkit.Sim(t, comfysim.Options{Delay: 400 * time.Millisecond}),
	}
	g := startGate(t, addrsOf(ss), func(c *config.Config) { c.HealthCheck.Interval = time.Second })
	type job struct {
		id  string
		col color.NRGBA
	}
	var jobs []job
	run := func(i int) {
		col := color.NRGBA{uint8(10 * i), uint8(255 - 10*i), 77, 255}
		a := upload(t, g, "/upload/image", fmt.Sprintf("done_%02d.png", i), pngOf(t, 3, 2, col), nil)
		id := submit(t, g, map[string]any{"client_id": "done-when", "prompt": map[string]any{
			"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": a["name"]}},
			"2": map[string]any{"class_type": "ImageScaleBy", "inputs": map[string]any{"image": []any{"1", 0}, "upscale_method": "nearest-exact", "scale_by": 2.0}},
			"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": "done"}},
		}})
		jobs = append(jobs, job{id, col})
	}
	check := func(j job) {
		e := waitHistory(t, g, "", j.id)
		if e.Status.StatusStr != "success" {
			t.Fatalf("prompt %s: %s", j.id, e.Status.StatusStr)
		}
		ref := e.Outputs["3"].Images[0]
		q := url.Values{"filename": {ref.Filename}, "subfolder": {ref.Subfolder}, "type": {ref.Type}}
		_, _, body := gateDo(t, "GET", g.base+"/view?"+q.Encode(), nil, nil)
		img, err := png.Decode(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("prompt %s: /view: %v", j.id, err)
		}
		got := color.NRGBAModel.Convert(img.At(5, 3)).(color.NRGBA)
		if img.Bounds().Dx() != 6 || img.Bounds().Dy() != 4 || got != j.col {
			t.Errorf("prompt %s: /view gives %v %v, want 6x4 of %v", j.id, img.Bounds(), got, j.col)
		}
	}
	for i := range 10 {
		run(i)
		check(jobs[i])
	}
	split := [2]int{ss[0].PromptsExecuted(), ss[1].PromptsExecuted()}
	for i := 10; i < 15; i++ {
		run(i)
	}
	ss[1].Kill()
	killedAt := time.Now()
	for i := 15; i < 20; i++ {
		run(i)
	}
	var out time.Duration
	testkit.Eventually(t, "killed instance out of selection", func() bool {
		out = time.Since(killedAt)
		return !g.pool.Instances()[1].Available()
	})
	// The first 10 were checked before the kill (the killed instance's
	// history died with it, as a ComfyUI's does).
	for _, j := range jobs[10:] {
		check(j)
	}
	moved := 0
	for _, j := range jobs {
		if p, ok := g.prompts.Prompt(j.id); ok && p.Attempts() > 1 {
			moved++
		}
	}
	t.Logf("split of the first 10 prompts: %d / %d; after the kill %d more on the survivor; %d prompts resubmitted from the killed instance; all 20 finished with their own image; killed instance out of selection %v after the kill",
		split[0], split[1], ss[0].PromptsExecuted()-split[0], moved, out.Round(time.Millisecond))
	if split[0] < 3 || split[1] < 3 {
		t.Errorf("first 10 prompts split %d / %d: not spread", split[0], split[1])
	}
}

// TestQueueClearFalsy: a "clear" that Python reads as false ([ ], { },
// 0.0, "") clears nothing on any instance, as one ComfyUI would; a true
// one clears every instance's pending queue.
func TestQueueClearFalsy(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{Version: "0.3.65"})
	g := startGate(t, addrsOf(ss), nil)
	for _, s := range ss {
		s.SetPaused(true)
	}
	for i := range 4 {
		submit(t, g, map[string]any{"prompt": emptyImagePrompt(i, "clear")})
	}
	queued := func() int {
		_, _, body := gateDo(t, "GET", g.base+"/queue", nil, nil)
		var q struct {
			Running []json.RawMessage `json:"queue_running"`
			Pending []json.RawMessage `json:"queue_pending"`
		}
		if err := json.Unmarshal(body, &q); err != nil {
			t.Fatalf("GET /queue: %v: %s", err, body)
		}
		return len(q.Running) + len(q.Pending)
	}
	if n := queued(); n != 4 {
		t.Fatalf("%d prompts queued, want 4", n)
	}
	for _, body := range []string{`{"clear": [ ]}`, `{"clear": { }}`, `{"clear": []}`, `{"clear": 0.0}`, `{"clear": ""}`, `{"clear": null}`} {
		if status, _, b := gateDo(t, "POST", g.base+"/queue", nil, strings.NewReader(body)); status != 200 {
			t.Fatalf("POST /queue %s = %d %s", body, status, b)
		}
		if n := queued(); n != 4 {
			t.Fatalf("POST /queue %s cleared: %d prompts left of 4", body, n)
		}
	}
	if status, _, b := gateDo(t, "POST", g.base+"/queue", nil, strings.NewReader(`{"clear": [0]}`)); status != 200 {
		t.Fatalf("POST /queue clear = %d %s", status, b)
	}
	if n := queued(); n != 0 {
		t.Errorf("a truthy clear left %d prompts", n)
	}
}
