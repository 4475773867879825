package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/comfygate/comfygate/auth"
	"image/color"
	"image/png"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/fasthttp/websocket"
)

// uploadAs posts an upload form (fields first when fieldsFirst, else after
// the file, as the web UI sends them) with key's bearer header.
func uploadAs(t *testing.T, g *gate, key, path, name string, data []byte, fields map[string]string, fieldsFirst bool) (int, []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	writeFields := func() {
		for k, v := range fields {
			_ = mw.WriteField(k, v)
		}
	}
	if fieldsFirst {
		writeFields()
	}
	fw, err := mw.CreateFormFile("image", name)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fw.Write(data)
	if !fieldsFirst {
		writeFields()
	}
	_ = mw.Close()
	hdr := http.Header{"Content-Type": {mw.FormDataContentType()}}
	if key != "" {
		hdr.Set("Authorization", "Bearer "+key)
	}
	status, _, body := gateDo(t, "POST", g.base+path, hdr, &buf)
	return status, body
}

// viewAs is GET /view of ref with key: the status and the body.
func viewAs(t *testing.T, g *gate, key string, ref fileRef) (int, []byte) {
	t.Helper()
	q := url.Values{"filename": {ref.Filename}, "subfolder": {ref.Subfolder}, "type": {ref.Type}}
	status, _, body := gateDo(t, "GET", g.base+"/view?"+q.Encode(), bearer(key), nil)
	return status, body
}

// keyPrompt is a prompt that inverts the image value loads and saves it.
func keyPrompt(value, prefix string) map[string]any {
	return map[string]any{
		"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": value}},
		"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
		"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": prefix}},
	}
}

// TestKeyUploadsIsolated: with keys isolated, B's upload x.png is B's
// alone. A's upload of x.png with overwrite=true, and A's mask written
// over x.png, land in A's own folder; B still views and loads its own
// bytes; A's /view and prompts of x.png get A's file, and no path A can
// write reaches B's; every name A and B receive is the one they sent.
func TestKeyUploadsIsolated(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), withKeys)
	red, blue := color.NRGBA{200, 10, 10, 255}, color.NRGBA{10, 10, 200, 255}
	redPNG, bluePNG := pngOf(t, 4, 4, red), pngOf(t, 4, 4, blue)
	inv := func(c color.NRGBA) color.NRGBA { return color.NRGBA{255 - c.R, 255 - c.G, 255 - c.B, 255} }
	answer := func(status int, body []byte) uploadAnswer {
		t.Helper()
		var a uploadAnswer
		if status != http.StatusOK || json.Unmarshal(body, &a) != nil {
			t.Fatalf("upload: %d %s", status, body)
		}
		return a
	}

	// The answers carry the names the keys sent, as from one ComfyUI.
	if a := answer(uploadAs(t, g, keyB, "/upload/image", "x.png", redPNG, nil, false)); a != (uploadAnswer{"x.png", "", "input"}) {
		t.Fatalf("B's upload answer %+v", a)
	}
	if a := answer(uploadAs(t, g, keyA, "/api/upload/image", "x.png", bluePNG, map[string]string{"overwrite": "true"}, false)); a != (uploadAnswer{"x.png", "", "input"}) {
		t.Fatalf("A's overwrite answer %+v", a)
	}
	if a := answer(uploadAs(t, g, keyB, "/upload/image", "x.png", bluePNG, map[string]string{"subfolder": "pasted/"}, true)); a != (uploadAnswer{"x.png", "pasted/", "input"}) {
		t.Fatalf("B's upload to a subfolder: answer %+v", a)
	}

	// On the instance: each key's file in its own folder, none at the top.
	home := ss[0].InputDir()
	hA, hB := namespaceOf(auth.PlainKeyName("key", keyA)), namespaceOf(auth.PlainKeyName("key", keyB))
	for _, c := range []struct {
		rel  string
		want []byte
	}{{hB + "/x.png", redPNG}, {hA + "/x.png", bluePNG}, {hB + "/pasted/x.png", bluePNG}} {
		got, err := os.ReadFile(filepath.Join(home, filepath.FromSlash(c.rel)))
		if err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("%s on the home instance: %v (same bytes: %v)", c.rel, err, bytes.Equal(got, c.want))
		}
	}
	if _, err := os.Stat(filepath.Join(home, "x.png")); err == nil {
		t.Error("an isolated key's upload landed outside its folder")
	}

	x := fileRef{Filename: "x.png", Type: "input"}
	if status, body := viewAs(t, g, keyB, x); status != http.StatusOK || !bytes.Equal(body, redPNG) {
		t.Errorf("B's /view of x.png after A's overwrite: %d, B's bytes: %v", status, bytes.Equal(body, redPNG))
	}
	if status, body := viewAs(t, g, keyA, x); status != http.StatusOK || !bytes.Equal(body, bluePNG) {
		t.Errorf("A's /view of x.png: %d, A's bytes: %v", status, bytes.Equal(body, bluePNG))
	}
	if status, body := viewAs(t, g, keyB, fileRef{Filename: "x.png", Subfolder: "pasted/", Type: "input"}); status != http.StatusOK || !bytes.Equal(body, bluePNG) {
		t.Errorf("B's /view of pasted/x.png: %d", status)
	}
	// B's name under any path A can give: never B's bytes.
	for _, sub := range []string{"pasted", "../" + hB[len(keysDir)+1:], hB, strings.ToUpper(hB), "../../input/" + hB, "/" + hB} {
		status, body := viewAs(t, g, keyA, fileRef{Filename: "x.png", Subfolder: sub, Type: "input"})
		if bytes.Equal(body, redPNG) || (status == http.StatusOK && !bytes.Equal(body, bluePNG)) {
			t.Errorf("A's /view of x.png in %q: %d, a file not A's own", sub, status)
		}
	}
	if status, _ := viewAs(t, g, keyA, fileRef{Filename: "x.png [input]", Subfolder: hB, Type: "output"}); status != http.StatusNotFound {
		t.Errorf("A's /view of B's file by an annotated name: %d, want 404", status)
	}

	// A prompt loads its own key's x.png, on whichever instance it runs.
	n := 0
	runAs := func(key, value string) (color.NRGBA, historyEntry) {
		t.Helper()
		n++
		var a promptAnswer
		if status, raw := postJSON(t, g.base+"/prompt", bearer(key), map[string]any{"prompt": keyPrompt(value, fmt.Sprint("k", n))}, &a); status != http.StatusOK {
			t.Fatalf("prompt loading %q: %d %s", value, status, raw)
		}
		var e historyEntry
		testkit.Eventually(t, "history of "+a.PromptID, func() bool {
			h := historyOf(t, g, key, "/history/"+a.PromptID)
			if raw, ok := h[a.PromptID]; ok && json.Unmarshal(raw, &e) == nil && e.Status.Completed {
				return true
			}
			return e.Status.StatusStr == "error"
		})
		if e.Status.StatusStr != "success" {
			t.Fatalf("prompt loading %q: %s", value, e.Status.StatusStr)
		}
		out := e.Outputs["3"].Images[0]
		q := url.Values{"filename": {out.Filename}, "subfolder": {out.Subfolder}, "type": {out.Type}}
		status, _, body := gateDo(t, "GET", g.base+"/view?"+q.Encode(), bearer(key), nil)
		if status != http.StatusOK {
			t.Fatalf("output of the prompt loading %q: %d", value, status)
		}
		return pngPixel(t, body), e
	}
	// Until each key's prompts ran on both instances (the file is copied
	// to the other one within the key's folder): A, A, B, repeated.
	seen := map[string]map[string]bool{keyA: {}, keyB: {}}
	for i := 0; i < 24 && (len(seen[keyA]) < 2 || len(seen[keyB]) < 2); i++ {
		if i%3 < 2 {
			pa, ea := runAs(keyA, "x.png")
			if pa != inv(blue) {
				t.Fatalf("A's prompt loading x.png: pixel %v, want inverted blue (A's file)", pa)
			}
			if len(ea.Prompt) < 3 || !strings.Contains(string(ea.Prompt[2]), `"x.png"`) || strings.Contains(string(ea.Prompt[2]), keysDir) {
				t.Fatalf("A's history shows the prompt as %s, want its own name x.png", ea.Prompt[2])
			}
			seen[keyA][strings.Split(ea.Outputs["3"].Images[0].Subfolder, "/")[0]] = true
			continue
		}
		pb, eb := runAs(keyB, "x.png [input]")
		if pb != inv(red) {
			t.Fatalf("B's prompt loading x.png: pixel %v, want inverted red (B's file)", pb)
		}
		seen[keyB][strings.Split(eb.Outputs["3"].Images[0].Subfolder, "/")[0]] = true
	}
	if len(seen[keyA]) < 2 || len(seen[keyB]) < 2 {
		t.Fatalf("the keys' prompts ran at %v, want both instances for each", seen)
	}
	for _, c := range []struct {
		rel  string
		want []byte
	}{{hA + "/x.png", bluePNG}, {hB + "/x.png", redPNG}} {
		if got, err := os.ReadFile(filepath.Join(ss[1].InputDir(), filepath.FromSlash(c.rel))); err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("the copy %s on the second instance: %v (same bytes: %v)", c.rel, err, bytes.Equal(got, c.want))
		}
	}
	if _, err := os.Stat(filepath.Join(ss[1].InputDir(), "x.png")); err == nil {
		t.Error("a copy landed outside its key's folder")
	}
	if pb, _ := runAs(keyB, "pasted/x.png"); pb != inv(blue) {
		t.Errorf("B's prompt loading pasted/x.png: pixel %v, want inverted blue", pb)
	}
	// A cannot name B's folder in a prompt.
	for _, v := range []string{hB + "/x.png", "../input/" + strings.ToUpper(hB) + "/x.png [input]"} {
		status, raw := postJSON(t, g.base+"/prompt", bearer(keyA), map[string]any{"prompt": keyPrompt(v, "no")}, nil)
		if status != http.StatusBadRequest || !strings.Contains(string(raw), "invalid_prompt") {
			t.Errorf("A's prompt loading %q: %d %s, want 400 invalid_prompt", v, status, raw)
		}
	}

	// A's mask over x.png is applied to A's original, written in A's folder.
	mask := pngOf(t, 4, 4, color.NRGBA{0, 0, 0, 100})
	status, body := uploadAs(t, g, keyA, "/upload/mask", "x.png", mask, map[string]string{
		"overwrite": "true", "type": "input", "original_ref": `{"filename": "x.png", "subfolder": "", "type": "input"}`,
	}, false)
	if a := answer(status, body); a != (uploadAnswer{"x.png", "", "input"}) {
		t.Errorf("A's mask answer %+v", a)
	}
	if status, body := viewAs(t, g, keyB, x); status != http.StatusOK || !bytes.Equal(body, redPNG) {
		t.Errorf("B's x.png after A's mask: %d, B's bytes: %v", status, bytes.Equal(body, redPNG))
	}
	status, body = viewAs(t, g, keyA, x)
	if status != http.StatusOK || bytes.Equal(body, bluePNG) {
		t.Errorf("A's x.png after A's mask: %d, unchanged: %v", status, bytes.Equal(body, bluePNG))
	} else if px := pngPixel(t, body); px.R != blue.R || px.A != 100 {
		t.Errorf("A's masked x.png: pixel %v, want blue with alpha 100 (A's original)", px)
	}

	// A large upload streams through, fields before or after the file.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB
	for i, first := range []bool{false, true} {
		name := fmt.Sprintf("big%d.bin", i)
		if a := answer(uploadAs(t, g, keyA, "/upload/image", name, big, map[string]string{"subfolder": "deep/er", "overwrite": "1"}, first)); a != (uploadAnswer{name, "deep/er", "input"}) {
			t.Errorf("A's large upload answer %+v", a)
		}
		if got, err := os.ReadFile(filepath.Join(home, filepath.FromSlash(hA+"/deep/er/"+name))); err != nil || !bytes.Equal(got, big) {
			t.Errorf("A's large upload on the instance: %v (same bytes: %v)", err, bytes.Equal(got, big))
		}
		if status, body := viewAs(t, g, keyA, fileRef{Filename: name, Subfolder: "deep/er", Type: "input"}); status != http.StatusOK || !bytes.Equal(body, big) {
			t.Errorf("A's /view of its large upload: %d, same bytes: %v", status, bytes.Equal(body, big))
		}
		if status, _ := viewAs(t, g, keyB, fileRef{Filename: name, Subfolder: "deep/er", Type: "input"}); status != http.StatusNotFound {
			t.Errorf("B's /view of A's large upload: %d, want 404", status)
		}
	}

	// An original_ref naming B's folder, by its file name or subfolder,
	// never gives A B's image under A's mask.
	for _, ref := range []string{
		`{"filename": "` + hB + `/x.png", "subfolder": "", "type": "input"}`,
		`{"filename": "x.png", "subfolder": "` + hB + `", "type": "input"}`,
		`{"filename": "x.png [input]", "subfolder": "../` + hB[len(keysDir)+1:] + `"}`,
	} {
		uploadAs(t, g, keyA, "/upload/mask", "x.png", mask, map[string]string{"overwrite": "true", "type": "input", "original_ref": ref}, false)
		if _, body := viewAs(t, g, keyA, x); len(body) > 0 && pngPixel(t, body).R == red.R {
			t.Errorf("A's mask with original_ref %s: A's x.png holds B's image", ref)
		}
	}

	// A file name with a path could leave A's folder: refused.
	if status, body := uploadAs(t, g, keyA, "/upload/image", "../"+hB[len(keysDir)+1:]+"/x.png", bluePNG, map[string]string{"overwrite": "true"}, false); status != http.StatusBadRequest {
		t.Errorf("A's upload named ../<B>/x.png: %d %s, want 400", status, body)
	}
	if status, body := viewAs(t, g, keyB, x); status != http.StatusOK || !bytes.Equal(body, redPNG) {
		t.Errorf("B's x.png after A's upload with a path: %d, B's bytes: %v", status, bytes.Equal(body, redPNG))
	}

	// An admin's upload is not namespaced, and every key may read it.
	if a := answer(uploadAs(t, g, keyAdmin, "/upload/image", "shared.png", redPNG, nil, false)); a != (uploadAnswer{"shared.png", "", "input"}) {
		t.Fatalf("admin's upload answer %+v", a)
	}
	if _, err := os.Stat(filepath.Join(home, "shared.png")); err != nil {
		t.Errorf("admin's upload: %v, want it at the top of the input folder", err)
	}
	if status, body := viewAs(t, g, keyA, fileRef{Filename: "shared.png", Type: "input"}); status != http.StatusOK || !bytes.Equal(body, redPNG) {
		t.Errorf("A's /view of the admin's shared.png: %d", status)
	}
	if pa, _ := runAs(keyA, "shared.png"); pa != inv(red) {
		t.Errorf("A's prompt loading the admin's shared.png: pixel %v, want inverted red", pa)
	}
	// With a shared file of that name too, an original_ref whose file name
	// leads into B's folder still does not give A B's image.
	answer(uploadAs(t, g, keyAdmin, "/upload/image", "only.png", bluePNG, nil, false))
	answer(uploadAs(t, g, keyB, "/upload/image", "only.png", redPNG, nil, false))
	uploadAs(t, g, keyA, "/upload/mask", "only.png", mask, map[string]string{
		"overwrite": "true", "type": "input", "original_ref": `{"filename": "` + hB + `/only.png", "subfolder": "", "type": "input"}`,
	}, false)
	if _, body := viewAs(t, g, keyA, fileRef{Filename: "only.png", Type: "input"}); len(body) > 0 && pngPixel(t, body).R == red.R {
		t.Error("A's mask with original_ref naming B's folder in its file name: A's only.png holds B's image")
	}
}

// pngPixel is the first pixel of a PNG.
func pngPixel(t *testing.T, b []byte) color.NRGBA {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	return color.NRGBAModel.Convert(img.At(0, 0)).(color.NRGBA)
}

func TestNamespaceHelpers(t *testing.T) {
	t.Parallel()
	ns := namespaceOf(auth.PlainKeyName("key", keyA))
	if !strings.HasPrefix(ns, keysDir+"/") || len(ns) != len(keysDir)+1+16 || ns == namespaceOf(auth.PlainKeyName("key", keyB)) {
		t.Fatalf("namespaceOf: %q", ns)
	}
	for _, c := range []struct{ sub, want string }{
		{"", ns}, {"/", ns}, {"pasted", ns + "/pasted"}, {"pasted/", ns + "/pasted"}, {"a/../b", ns + "/b"},
		{"../..", ns}, {`..\..\x`, ns + "/x"}, {"/abs/p", ns + "/abs/p"},
	} {
		if got := intoNamespace(ns, c.sub); got != c.want {
			t.Errorf("intoNamespace(%q) = %q, want %q", c.sub, got, c.want)
		}
	}
	body := []byte(`{"a": "` + ns + `", "b": "` + ns + `/sub/x.png", "c": "Invalid image file: ` + ns + `/x.png", "d": "` + namespaceOf(auth.PlainKeyName("key", keyB)) + `/x.png"}`)
	want := `{"a": "", "b": "sub/x.png", "c": "Invalid image file: x.png", "d": "` + namespaceOf(auth.PlainKeyName("key", keyB)) + `/x.png"}`
	if got := string(stripNamespace(body, ns)); got != want {
		t.Errorf("stripNamespace:\n got %s\nwant %s", got, want)
	}
	frame := `{"m": "'/in/` + ns + `/x.png'", "i": ["` + namespaceOf(auth.PlainKeyName("key", keyB)) + `/y.png"], "k": "` + keysDir + `/short/z.png", "e": "` + keysDir + `/"}`
	wantFrame := `{"m": "'/in/x.png'", "i": ["y.png"], "k": "` + keysDir + `/short/z.png", "e": "` + keysDir + `/"}`
	if got := string(stripAnyNamespace([]byte(frame))); got != wantFrame {
		t.Errorf("stripAnyNamespace:\n got %s\nwant %s", got, wantFrame)
	}
	for cd, want := range map[string]bool{
		`form-data; name="image"; filename="x.png"`:                          false,
		`form-data; name*=UTF-8''subfolder`:                                  false,
		`form-data; name="subfolder"; name*=UTF-8''x`:                        true,
		`form-data; name="image"; filename="a;filename*=b"`:                  false,
		`form-data; name="image"; filename="a\";b"; FILENAME*=UTF-8''..%2Fx`: true,
	} {
		if ambiguousParams(cd) != want {
			t.Errorf("ambiguousParams(%s) = %v", cd, !want)
		}
	}
	for s, want := range map[string]bool{"x.png": false, keysDir: true, "../COMFYGATE-KEYS/x": true, "comfygate-copies/x": false} {
		if namesKeysDir(s) != want {
			t.Errorf("namesKeysDir(%q) = %v", s, !want)
		}
	}
}

// TestKeyUploadErrorsOwnNames: a prompt of an isolated key that fails on
// its uploaded file reports the error, on the WebSocket and in /history,
// with the file's name as the key sent it.
func TestKeyUploadErrorsOwnNames(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), withKeys)
	if status, body := uploadAs(t, g, keyA, "/upload/image", "bad.png", []byte("not an image"), nil, false); status != http.StatusOK {
		t.Fatalf("upload: %d %s", status, body)
	}
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+g.addr+"/ws?clientId=files-of-a", bearer(keyA))
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	var a promptAnswer
	if status, raw := postJSON(t, g.base+"/prompt", bearer(keyA), map[string]any{"prompt": keyPrompt("bad.png", "bad"), "client_id": "files-of-a"}, &a); status != http.StatusOK {
		t.Fatalf("prompt: %d %s", status, raw)
	}
	_ = ws.SetReadDeadline(time.Now().Add(gateTimeout))
	var frame []byte
	for frame == nil {
		typ, msg, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("waiting for execution_error: %v", err)
		}
		var m struct {
			Type string `json:"type"`
			Data struct {
				PromptID string `json:"prompt_id"`
			} `json:"data"`
		}
		if typ == websocket.TextMessage && json.Unmarshal(msg, &m) == nil && m.Type == "execution_error" && m.Data.PromptID == a.PromptID {
			frame = msg
		}
	}
	if !strings.Contains(string(frame), "bad.png") || strings.Contains(string(frame), keysDir) {
		t.Errorf("execution_error on A's socket: %s, want bad.png as A named it", frame)
	}
	var h []byte
	testkit.Eventually(t, "the failed prompt in A's history", func() bool {
		_, _, h = gateDo(t, "GET", g.base+"/history/"+a.PromptID, bearer(keyA), nil)
		return strings.Contains(string(h), "execution_error")
	})
	if strings.Contains(string(h), keysDir) || !strings.Contains(string(h), "bad.png") {
		t.Errorf("A's history of the failed prompt: %s, want bad.png as A named it", h)
	}
}

// FuzzUploadForm rewrites arbitrary multipart bodies as for an isolated
// key. Whatever the client sent, a form comfygate accepts reaches the
// instance with exactly one meaning for subfolder, inside the key's folder,
// and with no file name that has a path.
func FuzzUploadForm(f *testing.F) {
	for _, seed := range []string{
		"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\nPNG\r\n--b\r\nContent-Disposition: form-data; name=\"subfolder\"\r\n\r\n../a\r\n--b--\r\n",
		"--b\r\nContent-Disposition: form-data; name=\"subfolder\"\r\n\r\np\r\n--b\r\nContent-Disposition: form-data; name=\"subfolder\"\r\n\r\nq\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"..\\\\x.png\"\r\n\r\nPNG\r\n--b--\r\n",
		"--b\r\nContent-Disposition: form-data; name=subfolder; name=image\r\n\r\nz\r\n--b--\r\n",
		"--b\r\nContent-Disposition: form-data; name*=UTF-8''subfolder\r\n\r\n/etc\r\n--b--\r\n",
		"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"ok.png\"; filename*=UTF-8''..%2Fx.png\r\n\r\nPNG\r\n--b--\r\n",
		"--b\r\nContent-Disposition: form-data; name=\"subfolder\"\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n..\r\n--b--\r\n",
	} {
		f.Add([]byte(seed))
	}
	ns := namespaceOf(auth.PlainKeyName("key", keyA))
	f.Fuzz(func(t *testing.T, body []byte) {
		uf := &uploadForm{ns: ns}
		var out bytes.Buffer
		mw := newFormWriter(&out, []byte("b"))
		mr := multipart.NewReader(bytes.NewReader(body), "b")
		first, err := uf.head(mr, mw)
		if err == nil {
			err = uf.rest(mr, mw, first)
		}
		if err != nil {
			return
		}
		subs := 0
		r := multipart.NewReader(&out, mw.Boundary())
		for {
			part, err := r.NextRawPart()
			if err != nil {
				break
			}
			_, params, perr := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
			if perr != nil {
				t.Fatalf("a part the instance cannot name: %q", part.Header.Get("Content-Disposition"))
			}
			if fn, ok := params["filename"]; ok && strings.ContainsAny(fn, `/\`) {
				t.Fatalf("file name with a path: %q", fn)
			}
			if params["name"] == "subfolder" {
				v, _ := io.ReadAll(part)
				subs++
				if c := string(v); c != ns && !strings.HasPrefix(c, ns+"/") || slices.Contains(strings.Split(c, "/"), "..") {
					t.Fatalf("subfolder %q outside %s", c, ns)
				}
			}
		}
		if subs == 0 {
			t.Fatal("no subfolder field reached the instance")
		}
	})
}

// uploadAnswer is ComfyUI's answer to an upload, read strictly: the test
// checks what a client gets.
type uploadAnswer struct {
	Name      string `json:"name"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}
