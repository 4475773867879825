package jobs

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"image"
	"image/color"
	"image/jpeg"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

func parse(tb testing.TB, contentType string, body []byte, max int64, wantImage bool) (*submission, *apiError) {
	tb.Helper()
	var req fasthttp.Request
	req.Header.SetMethod("POST")
	req.SetRequestURI("/api/upscale-image")
	if contentType != "" {
		req.Header.SetContentType(contentType)
	}
	req.SetBody(body)
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, nil)
	return parseSubmission(&ctx, max, wantImage)
}

func jpegBytes(tb testing.TB) []byte {
	tb.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 7, 5))
	img.Set(1, 1, color.RGBA{255, 0, 0, 255})
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, nil); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// webpVP8L is the header of a lossless WebP of 300x200.
func webpVP8L() []byte {
	b := make([]byte, 40)
	copy(b, "RIFF")
	binary.LittleEndian.PutUint32(b[4:], 32)
	copy(b[8:], "WEBPVP8L")
	binary.LittleEndian.PutUint32(b[16:], 20)
	b[20] = 0x2f
	binary.LittleEndian.PutUint32(b[21:], uint32(300-1)|uint32(200-1)<<14)
	return b
}

func TestParseSubmission(t *testing.T) {
	t.Parallel()
	pngB := testPNG(t, 10, 6)
	b64 := base64.StdEncoding.EncodeToString(pngB)
	jsonBody := func(v any) []byte { b, _ := json.Marshal(v); return b }
	mp, mpct := multipartBody(t, "image", "a.png", pngB, map[string]string{"inputs": `{"2.model": "silueta"}`})
	mpB64, mpB64ct := multipartBody(t, "", "", nil, map[string]string{"image_base64": "data:image/png;base64," + b64})
	mpNone, mpNonect := multipartBody(t, "", "", nil, map[string]string{"other": "x"})
	mpBadInputs, mpBadInputsct := multipartBody(t, "image", "a.png", pngB, map[string]string{"inputs": `not json`})
	big := append(bytes.Clone(pngB), make([]byte, 2000)...)
	mpBig, mpBigct := multipartBody(t, "image", "a.png", big, nil)
	for _, tc := range []struct {
		desc      string
		ct        string
		body      []byte
		noImage   bool // the workflow takes none
		wantType  string
		wantFmt   string
		wantW     int
		wantInput string
	}{
		{desc: "multipart file", ct: mpct, body: mp, wantFmt: "png", wantW: 10, wantInput: "2.model"},
		{desc: "multipart base64 field", ct: mpB64ct, body: mpB64, wantFmt: "png", wantW: 10},
		{desc: "json base64", ct: "application/json", body: jsonBody(map[string]any{"image_base64": b64}), wantFmt: "png", wantW: 10},
		{desc: "json data url", ct: "application/json; charset=utf-8", body: jsonBody(map[string]any{"image_base64": "data:image/png;base64," + b64, "inputs": map[string]any{"2.model": "x"}}), wantFmt: "png", wantW: 10, wantInput: "2.model"},
		{desc: "json url-safe unpadded with newlines", ct: "application/json", body: jsonBody(map[string]any{"image_base64": wrap(base64.RawURLEncoding.EncodeToString(pngB))}), wantFmt: "png", wantW: 10},
		{desc: "json without content type", body: jsonBody(map[string]any{"image_base64": b64}), wantFmt: "png", wantW: 10},
		{desc: "jpeg", ct: "application/json", body: jsonBody(map[string]any{"image_base64": base64.StdEncoding.EncodeToString(jpegBytes(t))}), wantFmt: "jpeg", wantW: 7},
		{desc: "webp", ct: "application/json", body: jsonBody(map[string]any{"image_base64": base64.StdEncoding.EncodeToString(webpVP8L())}), wantFmt: "webp", wantW: 300},
		{desc: "raw body", ct: "image/png", body: pngB, wantFmt: "png", wantW: 10},
		{desc: "no body", wantType: errMissingImage},
		{desc: "json no image", ct: "application/json", body: []byte(`{"inputs": {}}`), wantType: errMissingImage},
		{desc: "json empty image", ct: "application/json", body: []byte(`{"image_base64": ""}`), wantType: errMissingImage},
		{desc: "multipart no image", ct: mpNonect, body: mpNone, wantType: errMissingImage},
		{desc: "not base64", ct: "application/json", body: []byte(`{"image_base64": "!!!not base64!!!"}`), wantType: errInvalidImage},
		{desc: "data url not base64", ct: "application/json", body: []byte(`{"image_base64": "data:image/png,abc"}`), wantType: errInvalidImage},
		{desc: "text, not an image", ct: "application/json", body: jsonBody(map[string]any{"image_base64": base64.StdEncoding.EncodeToString([]byte("hello, this is not a picture"))}), wantType: errInvalidImage},
		{desc: "truncated png header", ct: "image/png", body: pngB[:20], wantType: errInvalidImage},
		{desc: "too large multipart", ct: mpBigct, body: mpBig, wantType: errImageTooLarge},
		{desc: "too large base64", ct: "application/json", body: jsonBody(map[string]any{"image_base64": base64.StdEncoding.EncodeToString(big)}), wantType: errImageTooLarge},
		{desc: "too large raw", ct: "image/png", body: big, wantType: errImageTooLarge},
		{desc: "body too large", ct: "application/json", body: jsonBody(map[string]any{"image_base64": strings.Repeat("A", 1<<20+2000)}), wantType: errImageTooLarge},
		{desc: "malformed json", ct: "application/json", body: []byte(`{"image_base64": `), wantType: errInvalidRequest},
		{desc: "image_base64 not a string", ct: "application/json", body: []byte(`{"image_base64": 5}`), wantType: errInvalidRequest},
		{desc: "inputs not an object", ct: "application/json", body: jsonBody(map[string]any{"image_base64": b64, "inputs": []int{1}}), wantType: errInvalidRequest},
		{desc: "multipart bad inputs", ct: mpBadInputsct, body: mpBadInputs, wantType: errInvalidOverride},
		{desc: "malformed multipart", ct: "multipart/form-data; boundary=xyz", body: []byte("garbage"), wantType: errInvalidRequest},
		{desc: "unsupported type", ct: "text/plain", body: []byte("hi"), wantType: errInvalidRequest},
		{desc: "image for a workflow without one", ct: "application/json", body: jsonBody(map[string]any{"image_base64": b64}), noImage: true, wantType: errInvalidRequest},
		{desc: "no image for a workflow without one", ct: "application/json", body: []byte(`{"inputs": {"1.seed": 3}}`), noImage: true, wantInput: "1.seed"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			sub, aerr := parse(t, tc.ct, tc.body, 1000, !tc.noImage)
			if tc.wantType != "" {
				if aerr == nil || aerr.typ != tc.wantType || aerr.status != 400 || aerr.msg == "" {
					t.Fatalf("error %+v, want a 400 %s", aerr, tc.wantType)
				}
				return
			}
			if aerr != nil {
				t.Fatalf("error %v", aerr)
			}
			if sub.format != tc.wantFmt || sub.width != tc.wantW {
				t.Errorf("format %q width %d, want %q %d", sub.format, sub.width, tc.wantFmt, tc.wantW)
			}
			if tc.wantInput != "" && sub.inputs[tc.wantInput] == nil {
				t.Errorf("inputs %v lack %s", sub.inputs, tc.wantInput)
			}
		})
	}
}

func wrap(s string) string {
	var b strings.Builder
	for len(s) > 16 {
		b.WriteString(s[:16] + "\n")
		s = s[16:]
	}
	b.WriteString(s)
	return b.String()
}

func FuzzDecodeBase64Image(f *testing.F) {
	f.Add("data:image/png;base64,iVBORw0KGgo=")
	f.Add("iVBORw0KGgo")
	f.Add("data:,")
	f.Add("-_==\n")
	f.Fuzz(func(t *testing.T, s string) {
		b, aerr := decodeBase64Image(s, 1<<16)
		if aerr == nil && int64(len(b)) > 1<<16+3 {
			t.Fatalf("decoded %d bytes past the limit", len(b))
		}
		if aerr != nil && (aerr.status != 400 || aerr.typ == "") {
			t.Fatalf("bad error %+v", aerr)
		}
	})
}

func FuzzSniffImage(f *testing.F) {
	f.Add(webpVP8L())
	f.Add([]byte("RIFF\x00\x00\x00\x00WEBPVP8X"))
	f.Add([]byte("\x89PNG\r\n\x1a\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, w, h, err := sniffImage(b)
		if err == nil && (w < 0 || h < 0) {
			t.Fatalf("negative size %dx%d", w, h)
		}
	})
}

func FuzzParseSubmission(f *testing.F) {
	f.Add("application/json", []byte(`{"image_base64": "iVBORw0KGgo=", "inputs": {"a.b": 1}}`))
	f.Add("multipart/form-data; boundary=x", []byte("--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\nabc\r\n--x--\r\n"))
	f.Add("image/png", []byte("\x89PNG"))
	f.Fuzz(func(t *testing.T, ct string, body []byte) {
		sub, aerr := parse(t, ct, body, 1<<16, true)
		if (sub == nil) == (aerr == nil) {
			t.Fatalf("sub %v err %v: want exactly one", sub, aerr)
		}
		if aerr != nil && aerr.status != 400 {
			t.Fatalf("status %d", aerr.status)
		}
		if sub != nil && (len(sub.image) == 0 || sub.format == "") {
			t.Fatalf("accepted without an image: %+v", sub)
		}
	})
}

// endless is a reader that never ends: a multipart file part whose body
// goes on forever.
type endless struct{ head []byte }

func (e *endless) Read(p []byte) (int, error) {
	if len(e.head) > 0 {
		n := copy(p, e.head)
		e.head = e.head[n:]
		return n, nil
	}
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

func TestStreamedBodiesAreBounded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc, ct string
		head     string
	}{
		{"multipart file", "multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"},
		{"multipart other field", "multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; name=\"junk\"\r\n\r\n"},
		{"json", "application/json", `{"image_base64": "`},
		{"raw", "image/png", ""},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			var req fasthttp.Request
			req.Header.SetMethod("POST")
			req.SetRequestURI("/api/upscale-image")
			req.Header.SetContentType(tc.ct)
			var ctx fasthttp.RequestCtx
			ctx.Init(&req, nil, nil)
			ctx.Request.SetBodyStream(&endless{head: []byte(tc.head)}, -1) // chunked: no Content-Length
			if ctx.RequestBodyStream() == nil {
				t.Fatal("no body stream")
			}
			_, aerr := parseSubmission(&ctx, 1000, true)
			if aerr == nil || aerr.typ != errImageTooLarge {
				t.Fatalf("error %+v, want image_too_large", aerr)
			}
		})
	}
}
