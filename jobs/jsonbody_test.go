package jobs

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"maps"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"unicode"

	"github.com/comfygate/comfygate/config"
	"github.com/valyala/fasthttp"
)

// readObject reads a whole body with jsonObject: each member's value,
// the last one of a key winning.
func readObject(body []byte) (map[string]json.RawMessage, error) {
	o := &jsonObject{br: bufio.NewReader(bytes.NewReader(body))}
	if err := o.begin(); err != nil {
		return nil, err
	}
	out := map[string]json.RawMessage{}
	for {
		k, more, err := o.next(nil)
		if err != nil {
			return nil, err
		}
		if !more {
			return out, nil
		}
		v, err := o.value(1<<20, nil)
		if err != nil {
			return nil, err
		}
		out[k] = v
	}
}

// FuzzJSONObjectMatchesUnmarshal: the streaming reader accepts exactly the
// bodies json.Unmarshal reads as an object, with the same members.
func FuzzJSONObjectMatchesUnmarshal(f *testing.F) {
	for _, s := range []string{`{}`, ` {"a": 1, "b": [1, {"c": "}"}], "a": "x\"y"} `, `{"a":1}x`, `{"a" 1}`, `{,}`, `{"a":1,}`,
		`null`, `[]`, `{"\u0061": true}`, `{"a": -1.5e3}`, `{"a":tru}`, `{"a":"\q"}`, "{\"a\":\"\x01\"}", `{"a":{}}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var want map[string]json.RawMessage
		werr := json.Unmarshal(body, &want)
		got, gerr := readObject(body)
		if (werr != nil || want == nil) != (gerr != nil) {
			t.Fatalf("%q: json.Unmarshal %v (nil map %v), stream %v", body, werr, want == nil, gerr)
		}
		if gerr != nil {
			return
		}
		if !maps.EqualFunc(want, got, func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }) {
			t.Fatalf("%q: members %q, stream %q", body, want, got)
		}
	})
}

// FuzzBase64StreamMatchesDecode: an image_base64 value decodes as a
// stream (through its JSON string) to what decodeBase64Image makes of the
// whole string, and fails where it fails. (Unicode spaces beyond ASCII's,
// which strings.TrimSpace takes off the ends, are not base64 to the
// stream: such values are left out.)
func FuzzBase64StreamMatchesDecode(f *testing.F) {
	for _, s := range []string{"iVBORw0KGgo=", "iVBORw0KGgo", " data:image/png;base64,iVBO\nRw0K\r\nGgo= ", "-_-_", "+/-_", "QQ==QQ==",
		"QQ", "Q", "", "   ", "data:,", "data:image/png,abcd", "ab=c", "ab= =", "QUJD\tREVG"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		const max = 1 << 12
		if strings.IndexFunc(s, func(r rune) bool { return r > 0x7f && unicode.IsSpace(r) }) >= 0 {
			return
		}
		want, werr := decodeBase64Image(s, max)
		quoted, _ := json.Marshal(s)
		var got bytes.Buffer
		br := bufio.NewReader(bytes.NewReader(quoted))
		_, _, gerr := decodeBase64Stream(&got, &jsonString{br: br}, max)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("%q: whole %v, stream %v", s, werr, gerr)
		}
		if werr == nil && !bytes.Equal(want, got.Bytes()) {
			t.Fatalf("%q: whole %x, stream %x", s, want, got.Bytes())
		}
		if werr != nil && werr.typ != gerr.typ {
			t.Fatalf("%q: whole %s, stream %s", s, werr.typ, gerr.typ)
		}
	})
}

// noisyPNG is a PNG of random pixels: it does not compress, so its size
// is about 4*w*h bytes.
func noisyPNG(tb testing.TB, w, h int) []byte {
	tb.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	r := rand.New(rand.NewPCG(1, 2))
	for i := range img.Pix {
		img.Pix[i] = byte(r.Uint32())
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// serveStream is serve with the body sent as a stream, as the proxy's
// server (StreamRequestBody) hands it over.
func serveStream(s *Service, method, uri, contentType string, body []byte) (code int, respHdr *fasthttp.ResponseHeader, resp []byte) {
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	req.Header.SetContentType(contentType)
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, nil)
	ctx.Request.SetBodyStream(bytes.NewReader(body), len(body))
	s.ServeJobs(&ctx, Request{Path: rawPath(&ctx)})
	h := &fasthttp.ResponseHeader{}
	ctx.Response.Header.CopyTo(h)
	return ctx.Response.StatusCode(), h, append([]byte(nil), ctx.Response.Body()...)
}

// TestBase64ValueStreamsToFile: a JSON submission's image_base64 value
// is decoded into the job's file as it arrives, never held whole: the
// request allocates a small part of the body's size (a whole-body parse
// allocates several times it) and charges the body budget its read
// buffer only, so a budget of a quarter of the body is plenty. A member
// held in memory is charged what it holds: past the budget, 429 with
// Retry-After. Not parallel: it counts the process's allocations.
func TestBase64ValueStreamsToFile(t *testing.T) {
	img := noisyPNG(t, 800, 600)
	body, _ := json.Marshal(map[string]any{"image_base64": base64.StdEncoding.EncodeToString(img), "inputs": map[string]any{}})
	budget := int64(len(body) / 4)
	s := newFakeService(t, newFake(t, 1), func(c *config.Config) {
		c.Limits.MaxBufferedBodyBytes = budget
		c.Jobs.InputMemoryBytes = 0
	})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	code, _, resp := serveStream(s, "POST", "/api/upscale-image", "application/json", body)
	runtime.ReadMemStats(&after)
	if code != 202 {
		t.Fatalf("streamed submission: %d %s", code, resp)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(len(body))/4 {
		t.Errorf("the submission allocated %d bytes for a %d-byte body, want under a quarter of it", alloc, len(body))
	}
	if peak := s.bodies.Peak(); peak == 0 || peak > budget/4 {
		t.Errorf("held %d bytes of a %d-byte body at the peak, want at most %d", peak, len(body), budget/4)
	}
	if got := s.bodies.InUse(); got != 0 {
		t.Errorf("%d bytes still charged after the answer", got)
	}

	big := `{"junk": "` + strings.Repeat("A", int(budget)) + `"}`
	code, h, resp := serveStream(s, "POST", "/api/upscale-image", "application/json", []byte(big))
	if code != 429 || len(h.Peek("Retry-After")) == 0 || !strings.Contains(string(resp), errBusy) {
		t.Fatalf("a member over the budget: %d %q %s, want 429 %s with Retry-After", code, h.Peek("Retry-After"), resp, errBusy)
	}
	if got := s.bodies.InUse(); got != 0 {
		t.Errorf("%d bytes still charged after the refusal", got)
	}
}

// TestBase64SubmissionForms: base64 text decoded as a stream makes the
// same job image as the bytes sent raw, in every form it may come in,
// and bad text is refused as before.
func TestBase64SubmissionForms(t *testing.T) {
	t.Parallel()
	img := noisyPNG(t, 64, 48)
	b64 := base64.StdEncoding.EncodeToString(img)
	url := strings.TrimRight(base64.URLEncoding.EncodeToString(img), "=")
	var wrapped strings.Builder
	for i := 0; i < len(b64); i += 76 {
		wrapped.WriteString(b64[i:min(i+76, len(b64))] + "\r\n")
	}
	jsonOf := func(v string) ([]byte, string) {
		b, _ := json.Marshal(map[string]string{"image_base64": v})
		return b, "application/json"
	}
	escapedSlashes := func() ([]byte, string) {
		b, ct := jsonOf(b64)
		return bytes.ReplaceAll(b, []byte("/"), []byte(`\/`)), ct
	}
	mp := func(field, v string) func() ([]byte, string) {
		return func() ([]byte, string) { return multipartBody(t, "", "", nil, map[string]string{field: v}) }
	}
	for _, tc := range []struct {
		desc string
		body func() ([]byte, string)
		want int
		typ  string
	}{
		{"json", func() ([]byte, string) { return jsonOf(b64) }, 202, ""},
		{"json data URL", func() ([]byte, string) { return jsonOf("data:image/png;base64," + b64) }, 202, ""},
		{"json URL-safe unpadded", func() ([]byte, string) { return jsonOf(url) }, 202, ""},
		{"json line breaks", func() ([]byte, string) { return jsonOf(wrapped.String()) }, 202, ""},
		{"json escaped slashes", escapedSlashes, 202, ""},
		{"json last of two", func() ([]byte, string) {
			return []byte(`{"image_base64": "!!!!", "image_base64": "` + b64 + `"}`), "application/json"
		}, 202, ""},
		{"multipart image_base64", mp("image_base64", b64), 202, ""},
		{"multipart image text", mp("image", "data:image/png;base64,"+b64), 202, ""},
		{"json not base64", func() ([]byte, string) { return jsonOf("!!!" + b64) }, 400, errInvalidImage},
		{"json mixed alphabets", func() ([]byte, string) { return jsonOf("ab+_" + b64) }, 400, errInvalidImage},
		{"json empty", func() ([]byte, string) { return jsonOf("") }, 400, errMissingImage},
		{"json truncated", func() ([]byte, string) { b, ct := jsonOf(b64); return b[:len(b)/2], ct }, 400, errInvalidRequest},
		{"json trailing garbage", func() ([]byte, string) { b, ct := jsonOf(b64); return append(b, 'x'), ct }, 400, errInvalidRequest},
		{"json not an image", func() ([]byte, string) { return jsonOf(base64.StdEncoding.EncodeToString([]byte("hello"))) }, 400, errInvalidImage},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			s := newFakeService(t, newFake(t, 1), nil)
			body, ct := tc.body()
			code, _, resp := serveStream(s, "POST", "/api/upscale-image", ct, body)
			if code != tc.want || (tc.typ != "" && !strings.Contains(string(resp), `"`+tc.typ+`"`)) {
				t.Fatalf("%d %s, want %d %s", code, resp, tc.want, tc.typ)
			}
			if code != 202 {
				return
			}
			var a acceptedView
			_ = json.Unmarshal(resp, &a)
			s.eng.jobsMu.Lock()
			im := s.eng.jobs[a.JobID].images[0]
			s.eng.jobsMu.Unlock()
			r, err := im.open()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			got, _ := io.ReadAll(r)
			if !bytes.Equal(got, img) {
				t.Fatalf("kept image of %d bytes differs from the %d sent", len(got), len(img))
			}
		})
	}
}
