package comfysim

import (
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"net/http"
	"net/url"
	"testing"
)

// srcImage is a small image whose every pixel differs, so scaling mistakes show.
func srcImage(w, h int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.SetNRGBA(x, y, color.NRGBA{uint8(x * 40), uint8(y * 50), uint8(100 + x + y), 255})
		}
	}
	return img
}

type historyEntryJSON struct {
	Prompt  []json.RawMessage `json:"prompt"`
	Outputs map[string]struct {
		Images []imageRef `json:"images"`
	} `json:"outputs"`
	Status struct {
		StatusStr string  `json:"status_str"`
		Completed bool    `json:"completed"`
		Messages  [][]any `json:"messages"`
	} `json:"status"`
}

func getHistoryEntry(t *testing.T, base, id string) historyEntryJSON {
	t.Helper()
	var h map[string]historyEntryJSON
	if code := getJSON(t, base+"/history/"+id, &h); code != 200 {
		t.Fatalf("GET /history/%s: %d", id, code)
	}
	e, ok := h[id]
	if !ok {
		t.Fatalf("history has no entry for %s: %v", id, h)
	}
	return e
}

func viewImage(t *testing.T, base string, ref imageRef) *image.NRGBA {
	t.Helper()
	q := url.Values{"filename": {ref.Filename}, "subfolder": {ref.Subfolder}, "type": {ref.Type}}
	code, hdr, body := doReq(t, "GET", base+"/view?"+q.Encode(), nil, nil)
	if code != 200 {
		t.Fatalf("GET /view %v: %d", ref, code)
	}
	if got, want := hdr.Get("Content-Disposition"), fmt.Sprintf("filename=%q", ref.Filename); got != want {
		t.Errorf("Content-Disposition = %q, want %q", got, want)
	}
	if ct := hdr.Get("Content-Type"); ct != "image/png" {
		t.Errorf("Content-Type = %q", ct)
	}
	return decodePNG(t, body)
}

// runAndFetch queues prompt for clientID, waits for completion over ws, and
// returns the first image of output node out.
func runAndFetch(t *testing.T, s *Server, ws *testWS, clientID string, prompt map[string]any, out string) *image.NRGBA {
	t.Helper()
	id := queuePrompt(t, s.URL(), map[string]any{"prompt": prompt, "client_id": clientID})
	ws.waitDone(id)
	e := getHistoryEntry(t, s.URL(), id)
	if e.Status.StatusStr != "success" {
		t.Fatalf("status %q: %v", e.Status.StatusStr, e.Status.Messages)
	}
	imgs := e.Outputs[out].Images
	if len(imgs) != 1 {
		t.Fatalf("outputs[%s] = %v", out, e.Outputs)
	}
	return viewImage(t, s.URL(), imgs[0])
}

// TestScaleByTwoEndToEnd is the acceptance scenario: upload a PNG,
// LoadImage -> ImageScaleBy(2) -> SaveImage, wait on /ws, fetch via /view.
func TestScaleByTwoEndToEnd(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{})
	src := srcImage(6, 4)
	code, up := upload(t, s.URL()+"/upload/image", "src.png", pngBytes(t, src), map[string]string{"type": "input", "overwrite": "true"})
	if code != 200 || up["name"] != "src.png" {
		t.Fatalf("upload: %d %v", code, up)
	}
	ws := dialWS(t, s.URL(), "e2e")
	ws.waitFor("status with sid", func(ms []wsMsg) bool { return len(ms) > 0 && ms[0].typ == "status" && ms[0].data["sid"] == "e2e" })

	for _, method := range []string{"nearest-exact", "lanczos", "bicubic", "bilinear", "area"} {
		t.Run(method, func(t *testing.T) {
			got := runAndFetch(t, s, ws, "e2e", map[string]any{
				"10": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": "src.png"}},
				"11": map[string]any{"class_type": "ImageScaleBy", "inputs": map[string]any{"image": []any{"10", 0}, "upscale_method": method, "scale_by": 2.0}},
				"12": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"11", 0}, "filename_prefix": "e2e_" + method}},
			}, "12")
			if b := got.Bounds(); b.Dx() != 12 || b.Dy() != 8 {
				t.Fatalf("size = %v, want 12x8", b.Size())
			}
			for y := 0; y < 8; y++ {
				for x := 0; x < 12; x++ {
					want := src.NRGBAAt(x/2, y/2)
					g := got.NRGBAAt(x, y)
					tol := 0
					if method != "nearest-exact" && method != "area" {
						tol = 40 // interpolating methods blend neighbours
					}
					if absDiff(g.R, want.R) > tol || absDiff(g.G, want.G) > tol || absDiff(g.B, want.B) > tol || g.A != 255 {
						t.Fatalf("pixel (%d,%d) = %v, want ~%v (tol %d)", x, y, g, want, tol)
					}
				}
			}
		})
	}
}

func absDiff(a, b uint8) int {
	if a > b {
		return int(a - b)
	}
	return int(b - a)
}

func TestRemoveBackground(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{Steps: 3})
	// White background, red square in the middle.
	src := image.NewNRGBA(image.Rect(0, 0, 20, 16))
	for y := 0; y < 16; y++ {
		for x := 0; x < 20; x++ {
			c := color.NRGBA{250, 252, 251, 255}
			if x >= 6 && x < 14 && y >= 4 && y < 12 {
				c = color.NRGBA{200, 20, 30, 255}
			}
			src.SetNRGBA(x, y, c)
		}
	}
	if code, _ := upload(t, s.URL()+"/upload/image", "product.png", pngBytes(t, src), nil); code != 200 {
		t.Fatalf("upload: %d", code)
	}
	ws := dialWS(t, s.URL(), "rembg")
	got := runAndFetch(t, s, ws, "rembg", map[string]any{
		"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": "product.png"}},
		"2": map[string]any{"class_type": RembgClass, "inputs": map[string]any{
			"images": []any{"1", 0}, "transparency": true, "model": "u2net", "post_processing": false,
			"only_mask": false, "alpha_matting": false, "alpha_matting_foreground_threshold": 240,
			"alpha_matting_background_threshold": 10, "alpha_matting_erode_size": 10, "background_color": "none",
		}},
		"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": "cutout"}},
	}, "3")
	if got.Bounds().Size() != src.Bounds().Size() {
		t.Fatalf("size %v", got.Bounds().Size())
	}
	for y := 0; y < 16; y++ {
		for x := 0; x < 20; x++ {
			a := got.NRGBAAt(x, y).A
			inside := x >= 6 && x < 14 && y >= 4 && y < 12
			if inside && (a != 255 || got.NRGBAAt(x, y).R != 200) {
				t.Fatalf("foreground pixel (%d,%d) = %v", x, y, got.NRGBAAt(x, y))
			}
			if !inside && a != 0 {
				t.Fatalf("background pixel (%d,%d) alpha = %d, want 0", x, y, a)
			}
		}
	}
	// The heavy node reported Steps progress ticks, each with a type-1 preview.
	var progress, previews int
	for _, m := range ws.snapshot() {
		if m.typ == "progress" && m.data["node"] == "2" {
			progress++
		}
		if m.binary && len(m.raw) > 8 && m.raw[3] == 1 {
			previews++
		}
	}
	if progress != 3 || previews != 3 {
		t.Errorf("progress=%d previews=%d, want 3 and 3", progress, previews)
	}
}

func TestUpscaleWithModel(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{})
	ws := dialWS(t, s.URL(), "up")
	for _, tc := range []struct {
		model string
		scale int
	}{{"RealESRGAN_x4plus.pth", 4}, {"RealESRGAN_x2plus.pth", 2}, {"4x-UltraSharp.pth", 4}} {
		got := runAndFetch(t, s, ws, "up", map[string]any{
			"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 10, "height": 6, "batch_size": 1, "color": 0x336699}},
			"2": map[string]any{"class_type": "UpscaleModelLoader", "inputs": map[string]any{"model_name": tc.model}},
			"3": map[string]any{"class_type": "ImageUpscaleWithModel", "inputs": map[string]any{"upscale_model": []any{"2", 0}, "image": []any{"1", 0}}},
			"4": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"3", 0}, "filename_prefix": "up"}},
		}, "4")
		if sz := got.Bounds().Size(); sz.X != 10*tc.scale || sz.Y != 6*tc.scale {
			t.Fatalf("%s: size %v, want %dx", tc.model, sz, tc.scale)
		}
		if c := got.NRGBAAt(5, 5); c != (color.NRGBA{0x33, 0x66, 0x99, 255}) {
			t.Fatalf("%s: pixel %v", tc.model, c)
		}
	}
}

func TestModelScale(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]int{
		"RealESRGAN_x4plus.pth": 4, "RealESRGAN_x2plus.pth": 2, "4x-UltraSharp.pth": 4,
		"2x-AnimeSharpV2.pth": 2, "4x_NMKD-Siax_200k.pth": 4, "8x_NMKD-Superscale.pt": 8,
		"SwinIR.pth": 4, "x3_model.pth": 3,
	} {
		if got := modelScale(name); got != want {
			t.Errorf("modelScale(%q) = %d, want %d", name, got, want)
		}
	}
}

func TestQueueOrderAndStatus(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{})
	ws := dialWS(t, s.URL(), "q")
	var ids []string
	for i := range 3 {
		ids = append(ids, queuePrompt(t, s.URL(), map[string]any{"client_id": "q", "prompt": map[string]any{
			"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": i}},
			"2": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"1", 0}, "filename_prefix": "q"}},
		}}))
	}
	ms := ws.waitDone(ids[2])
	// Prompts ran one at a time, in order.
	var starts []string
	for _, m := range ms {
		if m.typ == "execution_start" {
			starts = append(starts, m.data["prompt_id"].(string))
		}
	}
	if fmt.Sprint(starts) != fmt.Sprint(ids) {
		t.Fatalf("execution order %v, want %v", starts, ids)
	}
	for i := 1; i < 3; i++ {
		if doneIndex(ms, ids[i-1]) > indexOf(ms, "execution_start", ids[i]) {
			t.Fatalf("prompt %d started before %d finished", i, i-1)
		}
	}
	// The last status says the queue is empty; files got consecutive counters.
	last := -1
	for _, m := range ms {
		if m.typ == "status" {
			last = int(m.data["status"].(map[string]any)["exec_info"].(map[string]any)["queue_remaining"].(float64))
		}
	}
	if last != 0 {
		t.Fatalf("last queue_remaining = %d", last)
	}
	var names []string
	for _, id := range ids {
		names = append(names, getHistoryEntry(t, s.URL(), id).Outputs["2"].Images[0].Filename)
	}
	if fmt.Sprint(names) != "[q_00001_.png q_00002_.png q_00003_.png]" {
		t.Fatalf("file names %v", names)
	}
	if s.PromptsExecuted() != 3 {
		t.Fatalf("PromptsExecuted = %d", s.PromptsExecuted())
	}
}

func indexOf(ms []wsMsg, typ, id string) int {
	for i, m := range ms {
		if m.typ == typ && m.data["prompt_id"] == id {
			return i
		}
	}
	return -1
}

func TestViewErrors(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{})
	for _, tc := range []struct {
		desc, query string
		want        int
	}{
		{"no filename", "", 404},
		{"missing file", "?filename=nope.png&type=output", 404},
		{"bad type", "?filename=x.png&type=nope", 400},
		{"dotdot", "?filename=../x.png", 400},
		{"absolute", "?filename=/etc/passwd", 400},
		{"subfolder escape", "?filename=x.png&subfolder=../..", 403},
	} {
		code, hdr, body := doReq(t, "GET", s.URL()+"/view"+tc.query, nil, nil)
		if code != tc.want || len(body) != 0 {
			t.Errorf("%s: %d %q, want %d and no body", tc.desc, code, body, tc.want)
		}
		_ = hdr
	}
}

func TestUploadRename(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{})
	a := pngBytes(t, srcImage(2, 2))
	b := pngBytes(t, srcImage(3, 3))
	steps := []struct {
		data []byte
		want string
	}{{a, "x.png"}, {a, "x.png"}, {b, "x (1).png"}, {b, "x (1).png"}}
	for i, st := range steps {
		code, r := upload(t, s.URL()+"/api/upload/image", "x.png", st.data, nil)
		if code != http.StatusOK || r["name"] != st.want || r["type"] != "input" || r["subfolder"] != "" {
			t.Fatalf("step %d: %d %v, want name %q", i, code, r, st.want)
		}
	}
	code, _ := upload(t, s.URL()+"/upload/image", "x.png", a, map[string]string{"type": "bogus"})
	if code != 500 {
		t.Fatalf("bad type: %d, want 500", code)
	}
}
