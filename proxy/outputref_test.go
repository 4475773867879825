package proxy

import (
	"bytes"
	"encoding/json"
	"mime/multipart"
	"reflect"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
)

func TestOutputToken(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ desc, name, want string }{
		{"plain name", "gpu-1", "gpu-1"},
		{"all allowed", "A.z_0-9", "A.z_0-9"},
		{"address", "127.0.0.1:8188", "127.0.0.1-8188"},
		{"slash and at", "a/b@c", "a-b-c"},
		{"space and unicode", "gpu é", "gpu---"},
		{"empty", "", "-"},
	} {
		if got := outputToken(tc.name); got != tc.want {
			t.Errorf("%s: outputToken(%q) = %q, want %q", tc.desc, tc.name, got, tc.want)
		}
	}
}

func TestSubfolderCodec(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc, token, sub, enc string
	}{
		{"root", "i0", "", "@i0"},
		{"one level", "i0", "faces", "@i0/faces"},
		{"nested", "gpu-1", "a/b/c", "@gpu-1/a/b/c"},
		{"sub that looks encoded", "i1", "@i0/x", "@i1/@i0/x"},
		{"trailing slash kept", "i0", "a/", "@i0/a/"},
	} {
		if got := encodeSubfolder(tc.token, tc.sub); got != tc.enc {
			t.Errorf("%s: encode = %q, want %q", tc.desc, got, tc.enc)
		}
		tok, orig, ok := decodeSubfolder(tc.enc)
		if !ok || tok != tc.token || orig != tc.sub {
			t.Errorf("%s: decode(%q) = %q %q %v, want %q %q true", tc.desc, tc.enc, tok, orig, ok, tc.token, tc.sub)
		}
	}
	for _, sub := range []string{"", "faces", "a/@b", " @x"} {
		if _, _, ok := decodeSubfolder(sub); ok {
			t.Errorf("decode(%q) reports an encoded subfolder", sub)
		}
	}
	// "@i0/" is the root of i0 too (what a client may build by hand).
	if tok, orig, ok := decodeSubfolder("@i0/"); !ok || tok != "i0" || orig != "" {
		t.Errorf(`decode("@i0/") = %q %q %v`, tok, orig, ok)
	}
}

// tokenName is the name part of an instance token ("i0" of "i0~1a2b3c4d").
func tokenName(tok string) string {
	name, _, _ := strings.Cut(tok, string(tokenIDMark))
	return name
}

func TestInstanceByToken(t *testing.T) {
	t.Parallel()
	insts := []*upstream.Instance{{Name: "i0", Addr: "gpu0:8188"}, {Name: "127.0.0.1:9000", Addr: "127.0.0.1:9000"},
		{Name: "a:b", Addr: "ab1:1"}, {Name: "a-b", Addr: "ab2:1"}, {Name: "renamed", Addr: "moved:1"}}
	tok := func(k int) string { return instanceToken(insts[k]) }
	gone := &upstream.Instance{Name: "i0", Addr: "gpu0-old:8188"} // i0 before a reload moved it
	moved := &upstream.Instance{Name: "before", Addr: "MOVED:1"}  // "renamed" under its earlier name
	for _, tc := range []struct {
		desc, token string
		want        *upstream.Instance
	}{
		{"by name and id", tok(0), insts[0]},
		{"sanitized address", tok(1), insts[1]},
		{"names alike, ids apart", tok(2), insts[2]},
		{"names alike, ids apart (other)", tok(3), insts[3]},
		{"name without id", "i0", nil},
		{"name with an empty id", "i0~", nil},
		{"same name at another address", instanceToken(gone), nil},
		{"same address under another name", instanceToken(moved), insts[4]},
		{"unknown", "i9~00000000", nil},
		{"raw name with a colon is no token", "127.0.0.1:9000", nil},
		{"empty", "", nil},
	} {
		if got := instanceByToken(insts, tc.token); got != tc.want {
			t.Errorf("%s: instanceByToken(%q) = %v, want %v", tc.desc, tc.token, got, tc.want)
		}
	}
}

func TestEncodeOutputs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ desc, in, want string }{
		{
			"images at the root and in a subfolder",
			`{"2": {"images": [{"filename": "a_00001_.png", "subfolder": "", "type": "output"}, {"filename": "b.png", "subfolder": "faces", "type": "output"}]}}`,
			`{"2": {"images": [{"filename": "a_00001_.png", "subfolder": "@i0", "type": "output"}, {"filename": "b.png", "subfolder": "@i0/faces", "type": "output"}]}}`,
		},
		{
			"temp previews, gifs, audio and other lists; other keys and order kept",
			`{"5": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}], "animated": [false], "text": ["hi"]}, "7": {"gifs": [{"filename": "v.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4", "frame_rate": 8.0}], "audio": [{"subfolder": "s", "filename": "x.flac", "type": "output"}]}}`,
			`{"5": {"images": [{"filename": "p.png", "subfolder": "@i0", "type": "temp"}], "animated": [false], "text": ["hi"]}, "7": {"gifs": [{"filename": "v.mp4", "subfolder": "@i0", "type": "output", "format": "video/h264-mp4", "frame_rate": 8.0}], "audio": [{"subfolder": "@i0/s", "filename": "x.flac", "type": "output"}]}}`,
		},
		{
			"input refs are never encoded",
			`{"9": {"images": [{"filename": "up.png", "subfolder": "", "type": "input"}]}}`,
			`{"9": {"images": [{"filename": "up.png", "subfolder": "", "type": "input"}]}}`,
		},
		{
			"empty type (output for /view) is encoded",
			`{"9": {"images": [{"filename": "x.png", "subfolder": "", "type": ""}]}}`,
			`{"9": {"images": [{"filename": "x.png", "subfolder": "@i0", "type": ""}]}}`,
		},
		{
			"objects without filename, subfolder or type, or with other value types, pass",
			`{"1": {"images": [{"filename": "x.png", "type": "output"}, {"subfolder": "", "type": "output"}, {"filename": "y.png", "subfolder": "", "type": null}, {"filename": "z.png", "subfolder": 3, "type": "output"}]}}`,
			`{"1": {"images": [{"filename": "x.png", "type": "output"}, {"subfolder": "", "type": "output"}, {"filename": "y.png", "subfolder": "", "type": null}, {"filename": "z.png", "subfolder": 3, "type": "output"}]}}`,
		},
		{
			"compact JSON from another server is left as is when nothing changes",
			`{"1":{"text":["a","b"]}}`,
			`{"1":{"text":["a","b"]}}`,
		},
		{"empty outputs", `{}`, `{}`},
		{"null", `null`, `null`},
		{"not JSON", `{"1": {`, `{"1": {`},
		{
			"non-ASCII subfolder in Python's escaping",
			`{"1": {"images": [{"filename": "x.png", "subfolder": "caf\u00e9", "type": "output"}]}}`,
			`{"1": {"images": [{"filename": "x.png", "subfolder": "@i0/caf\u00e9", "type": "output"}]}}`,
		},
	} {
		got := encodeOutputs("i0", json.RawMessage(tc.in))
		if string(got) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.desc, got, tc.want)
		}
	}
}

func TestEncodeExecutedFrame(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ desc, in, want string }{
		{
			"SaveImage output",
			`{"type": "executed", "data": {"node": "9", "display_node": "9", "output": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}, "prompt_id": "p1"}}`,
			`{"type": "executed", "data": {"node": "9", "display_node": "9", "output": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "@gpu-1", "type": "output"}]}, "prompt_id": "p1"}}`,
		},
		{
			"null output",
			`{"type": "executed", "data": {"node": "3", "output": null, "prompt_id": "p1"}}`,
			`{"type": "executed", "data": {"node": "3", "output": null, "prompt_id": "p1"}}`,
		},
		{
			"text output only",
			`{"type": "executed", "data": {"node": "3", "output": {"text": ["subfolder"]}, "prompt_id": "p1"}}`,
			`{"type": "executed", "data": {"node": "3", "output": {"text": ["subfolder"]}, "prompt_id": "p1"}}`,
		},
		{"not JSON", `{"type": "executed", "subfolder"`, `{"type": "executed", "subfolder"`},
	} {
		if got := encodeExecutedFrame("gpu-1", []byte(tc.in)); string(got) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.desc, got, tc.want)
		}
	}
}

func TestRewriteJobEncodesRefs(t *testing.T) {
	t.Parallel()
	s, inst := rewriteServer(t) // instance "a"
	job := `{"id": "j1", "status": "completed", "preview_output": {"filename": "x.png", "subfolder": "", "type": "output", "nodeId": "2", "mediaType": "images"}, "outputs": {"2": {"images": [{"filename": "x.png", "subfolder": "s", "type": "output"}]}}}`
	_, out := s.rewriteJob(inst, json.RawMessage(job))
	want := `{"id": "j1", "status": "completed", "preview_output": {"filename": "x.png", "subfolder": "@TOK", "type": "output", "nodeId": "2", "mediaType": "images"}, "outputs": {"2": {"images": [{"filename": "x.png", "subfolder": "@TOK/s", "type": "output"}]}}}`
	want = strings.ReplaceAll(want, "TOK", "a~"+inst.ID())
	if string(out) != want {
		t.Errorf("rewriteJob:\n got %s\nwant %s", out, want)
	}
	// The pin table learned the instance's own refs.
	for _, ref := range []prompts.FileRef{{Filename: "x.png", Type: "output"}, {Filename: "x.png", Subfolder: "s", Type: "output"}} {
		if got, ok := s.prompts.FileOwner(t.Context(), ref); !ok || got != inst {
			t.Errorf("%v not pinned: %v %v", ref, got, ok)
		}
	}
}

func TestPromptFiles(t *testing.T) {
	t.Parallel()
	i0, i1 := &upstream.Instance{Name: "i0", Addr: "gpu0:8188"}, &upstream.Instance{Name: "i1", Addr: "gpu1:8188"}
	insts := []*upstream.Instance{i0, i1}
	// The tests' "@i0/" and "@i1/" stand for the instances' tokens.
	tokens := strings.NewReplacer("@i0/", "@"+instanceToken(i0)+"/", "@i1/", "@"+instanceToken(i1)+"/")
	for _, tc := range []struct {
		desc   string
		in     string
		want   map[string]prompts.InstanceFile
		prefer *upstream.Instance
	}{
		{
			"outputs and temps of two instances loaded as inputs: the one with most",
			`{"1": {"class_type": "LoadImage", "inputs": {"image": "@i1/sub/x.png [output]"}}, "2": {"inputs": {"image": "@i0/p.png [temp]", "n": 3, "m": "@i0/q.png [output]"}}, "3": {"inputs": {"image": "@i1/sub/x.png [output]"}}}`,
			map[string]prompts.InstanceFile{
				"@i1/sub/x.png [output]": {Instance: i1, Value: "sub/x.png [output]"},
				"@i0/p.png [temp]":       {Instance: i0, Value: "p.png [temp]"},
				"@i0/q.png [output]":     {Instance: i0, Value: "q.png [output]"},
			},
			i0,
		},
		{
			"a tie goes to the first named",
			`{"1": {"inputs": {"a": "@i1/x.png [output]", "b": "@i0/y.png [output]"}}}`,
			map[string]prompts.InstanceFile{
				"@i1/x.png [output]": {Instance: i1, Value: "x.png [output]"},
				"@i0/y.png [output]": {Instance: i0, Value: "y.png [output]"},
			},
			i1,
		},
		{
			"unknown token, input annotation, no annotation, text: none",
			`{"1": {"inputs": {"a": "@i9/x.png [output]", "b": "@i0/x.png [input]", "c": "@i0/x.png", "d": "@i0 [output]", "e": "hello @i0/x [output] world"}}}`,
			nil, nil,
		},
		{"no graph", `null`, nil, nil},
	} {
		var want map[string]prompts.InstanceFile
		for k, v := range tc.want {
			if want == nil {
				want = map[string]prompts.InstanceFile{}
			}
			want[tokens.Replace(k)] = v
		}
		got, prefer := promptFiles(insts, json.RawMessage(tokens.Replace(tc.in)))
		if !reflect.DeepEqual(got, want) || prefer != tc.prefer {
			t.Errorf("%s:\n got %v (prefer %v)\nwant %v (prefer %v)", tc.desc, got, prefer, want, tc.prefer)
		}
	}
	// A name without the id of its machine names no file.
	if got, prefer := promptFiles(insts, json.RawMessage(`{"1": {"inputs": {"a": "@i0/x.png [output]"}}}`)); got != nil || prefer != nil {
		t.Errorf("a bare name: %v (prefer %v), want none", got, prefer)
	}
}

func TestReplaceOriginalRef(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, _ := mw.CreateFormFile("image", "clipspace-mask.png")
	img := []byte("\x89PNG\r\n\x1a\nnot really --" + mw.Boundary() + "x")
	_, _ = fw.Write(img)
	_ = mw.WriteField("original_ref", `{"filename": "a.png", "subfolder": "@i1/s", "type": "output"}`)
	_ = mw.WriteField("type", "input")
	_ = mw.Close()
	body := buf.Bytes()

	out, ct, err := replaceOriginalRef(body, []byte(mw.Boundary()), prompts.FileRef{Filename: "a.png", Subfolder: "s", Type: "output"})
	if err != nil {
		t.Fatal(err)
	}
	if ct != mw.FormDataContentType() {
		t.Errorf("content type %q, want the client's %q", ct, mw.FormDataContentType())
	}
	ref, ok := originalRef(out, []byte(mw.Boundary()))
	if !ok || ref != (prompts.FileRef{Filename: "a.png", Subfolder: "s", Type: "output"}) {
		t.Errorf("original_ref after rewrite = %v %v", ref, ok)
	}
	form, err := multipart.NewReader(bytes.NewReader(out), mw.Boundary()).ReadForm(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	f, err := form.File["image"][0].Open()
	if err != nil {
		t.Fatal(err)
	}
	got := new(bytes.Buffer)
	_, _ = got.ReadFrom(f)
	if !bytes.Equal(got.Bytes(), img) || form.Value["type"][0] != "input" || form.File["image"][0].Filename != "clipspace-mask.png" {
		t.Errorf("other parts changed: image %q, fields %v", got.Bytes(), form.Value)
	}
	if _, _, err := replaceOriginalRef([]byte("garbage"), []byte("b"), prompts.FileRef{}); err == nil {
		t.Error("a body that is not multipart was rewritten")
	}
}

// FuzzOutputRef: the subfolder codec round-trips any name and subfolder,
// and rewriting arbitrary outputs never panics, keeps valid JSON valid,
// and changes only subfolders.
func FuzzOutputRef(f *testing.F) {
	f.Add("gpu-1", "", `{"2": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}`)
	f.Add("127.0.0.1:8188", "a/b", `{"2": {"images": [{"filename": "a.png", "subfolder": "x", "type": "temp"}], "text": ["t"]}}`)
	f.Add("é/@", "@x/y", `{"1": {"gifs": [{"filename": "v", "subfolder": "\u00e9", "type": ""}]}}`)
	f.Add("", "/", `[]`)
	f.Fuzz(func(t *testing.T, name, sub, outputs string) {
		tok := outputToken(name)
		if tok == "" || strings.ContainsFunc(tok, func(r rune) bool { return r > 0x7f || !tokenByte(byte(r)) }) {
			t.Fatalf("token %q of %q has characters outside [A-Za-z0-9._-]", tok, name)
		}
		if outputToken(tok) != tok {
			t.Fatalf("token %q is not stable", tok)
		}
		gt, gs, ok := decodeSubfolder(encodeSubfolder(tok, sub))
		if !ok || gt != tok || gs != sub {
			t.Fatalf("round trip of (%q, %q): (%q, %q, %v)", tok, sub, gt, gs, ok)
		}
		inst := &upstream.Instance{Name: name, Addr: sub}
		if it := instanceToken(inst); instanceByToken([]*upstream.Instance{inst}, it) != inst {
			t.Fatalf("instance %q not found by its token %q", name, it)
		}

		in := json.RawMessage(outputs)
		out := encodeOutputs(tok, in)
		if !json.Valid(in) {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("valid %s became invalid %s", in, out)
		}
		// Decoding every encoded subfolder gives back the input's value.
		var a, b any
		_ = json.Unmarshal(in, &a)
		_ = json.Unmarshal(out, &b)
		if !equalModuloSubfolders(a, b, tok) {
			t.Fatalf("rewrite changed more than subfolders:\n in %s\nout %s", in, out)
		}
	})
}

// equalModuloSubfolders compares decoded JSON values, where b's string
// "subfolder" values may carry the token of tok.
func equalModuloSubfolders(a, b any, tok string) bool {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for k, x := range av {
			y, ok := bv[k]
			if !ok {
				return false
			}
			if k == "subfolder" {
				if xs, ok := x.(string); ok {
					if ys, ok := y.(string); ok && ys != xs {
						gt, gs, enc := decodeSubfolder(ys)
						if !enc || tokenName(gt) != tok || gs != xs {
							return false
						}
						continue
					}
				}
			}
			if !equalModuloSubfolders(x, y, tok) {
				return false
			}
		}
		return true
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for i := range av {
			if !equalModuloSubfolders(av[i], bv[i], tok) {
				return false
			}
		}
		return true
	default:
		ab, _ := json.Marshal(a)
		bb, _ := json.Marshal(b)
		return bytes.Equal(ab, bb)
	}
}
