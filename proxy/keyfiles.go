package proxy

// Uploads of isolated keys live in a folder of their own.
//
// Why: file names in an instance's input folder are shared by everyone who
// talks to it. With keys isolated (auth.isolation), key A could otherwise
// replace key B's upload (overwrite=true, or a mask written over it) and
// read it back (/view?type=input), by name alone.
//
// How: every upload of an isolated key lands on the instance under
// keysDir/<namespace>/ (namespace: the first 16 hex digits of the SHA-256
// of the key's name) followed by the subfolder the client asked for, and
// every way the key names a file later maps into that folder the same way:
//
//   - POST /upload/image and /upload/mask: the form's subfolder field
//     (added when absent), and a mask's original_ref (see below); the
//     answer carries the client's own subfolder again;
//   - GET /view: the key's own file first; a file outside every key's
//     folder (one the operator put there, an admin's upload) second, read
//     only; another key's file is never reached, so it is not found (404);
//   - POST /prompt: a string input naming an input file ("x.png",
//     "sub/x.png", "x.png [input]") becomes "comfygate-keys/<ns>/sub/x.png"
//     when the key uploaded that file (known to the pin table, or, for
//     names with a media extension, found by asking the instances); other
//     values go unchanged, so text stays text and shared files still load.
//     The prompt table then copies the namespaced file to the instance
//     that runs the prompt as for any upload (prompts.Table.EnsureInputs);
//   - answers the key receives (POST /prompt errors, /history, /queue,
//     /api/jobs, uploads) lose the key's own folder prefix again, and so
//     do the WebSocket events of its prompts (an execution_error's
//     current_inputs and message): the key sees the names it would see on
//     one ComfyUI.
//
// A key may not reach into keysDir by itself: a prompt input that names it
// is refused (400); a subfolder it gives is cleaned as a path rooted at
// its own folder ("../x" is "x" there), and is never looked up outside it
// when it starts with keysDir; an uploaded file name with a path in it is
// refused (400).
//
// With keys off, and for admin keys, nothing changes: no namespace.
//
// Outputs and temp files the key's prompts write keep their names and the
// instance encoding (outputref.go). An upload with type output or temp is
// namespaced too (no key overwrites another's outputs by upload), and its
// /view finds it; a prompt naming it as "x.png [output]" is not mapped.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"path"
	"strings"
	"sync"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// keysDir is the folder, inside an instance's input, output and temp
// folders, that holds the isolated keys' uploads: keysDir/<namespace>/...
const keysDir = "comfygate-keys"

// maxFormField caps a form field comfygate reads to rewrite (subfolder,
// original_ref) and the fields before the first file of an upload, which
// are held until the file starts.
const maxFormField = 64 << 10

// errUploadForm is an upload form comfygate will not forward for an
// isolated key (see checkUploadPart).
var errUploadForm = errors.New("upload form refused")

// keyNamespace is the folder of the request key's uploads
// ("comfygate-keys/<16 hex digits>"), "" when the key is not isolated
// (keys off, admin keys, isolation off).
func (s *fileRoutes) keyNamespace(ctx *fasthttp.RequestCtx) string {
	k := requestKey(ctx)
	if !s.keys.isolated(k) {
		return ""
	}
	return namespaceOf(k.Name)
}

// namespaceOf is the folder of the key called name.
func namespaceOf(name string) string {
	sum := sha256.Sum256([]byte(name))
	return keysDir + "/" + hex.EncodeToString(sum[:])[:16]
}

// intoNamespace maps a client's subfolder into ns: cleaned as a path
// rooted at ns, so that no ".." leaves it; backslashes count as slashes.
func intoNamespace(ns, sub string) string {
	c := path.Clean("/" + strings.ReplaceAll(sub, `\`, "/"))
	if c == "/" {
		return ns
	}
	return ns + c
}

// namesKeysDir reports whether a client's value or subfolder names
// keysDir anywhere (any case: instance file systems may fold it).
func namesKeysDir(s string) bool {
	return len(s) >= len(keysDir) && strings.Contains(strings.ToLower(s), keysDir)
}

// stripNamespace removes ns from what an answer says: a subfolder equal
// to ns becomes "", and ns + "/" anywhere in a string is dropped. The key
// cannot send text naming keysDir (namespacePrompt), so every occurrence
// in its answers is comfygate's own rewriting.
func stripNamespace(body []byte, ns string) []byte {
	if !bytes.Contains(body, []byte(ns)) {
		return body
	}
	body = bytes.ReplaceAll(body, []byte(`"`+ns+`"`), []byte(`""`))
	return bytes.ReplaceAll(body, []byte(ns+"/"), nil)
}

// stripAnyNamespace removes every "comfygate-keys/<16 hex digits>/" from
// an event frame of a prompt. A prompt's values name only its own key's
// folder (a key cannot name keysDir itself), and its events go only to
// the socket of its client_id, which belongs to that key: whichever folder
// a frame names is its receiver's.
func stripAnyNamespace(frame []byte) []byte {
	mark := []byte(keysDir + "/")
	const hexLen = 16
	if !bytes.Contains(frame, mark) {
		return frame
	}
	out := make([]byte, 0, len(frame))
	rest := frame
	for {
		i := bytes.Index(rest, mark)
		if i < 0 {
			return append(out, rest...)
		}
		j := i + len(mark)
		if len(rest) > j+hexLen && isLowerHex(rest[j:j+hexLen]) && rest[j+hexLen] == '/' {
			out = append(out, rest[:i]...)
			rest = rest[j+hexLen+1:]
			continue
		}
		out = append(out, rest[:j]...)
		rest = rest[j:]
	}
}

func isLowerHex(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// namespacedAnswer reports whether route p (without /api) answers with
// names that stripNamespace must rewrite for an isolated key.
func namespacedAnswer(p []byte, api bool) bool {
	switch string(p) {
	case "/prompt", "/queue", "/history", "/upload/image", "/upload/mask":
		return true
	}
	return bytes.HasPrefix(p, []byte("/history/")) || (api && (string(p) == "/jobs" || bytes.HasPrefix(p, []byte("/jobs/"))))
}

// unnamespaceAnswer rewrites the answer the handler set for the key of
// namespace ns (stripNamespace); streamed answers are files, left alone.
func unnamespaceAnswer(ctx *fasthttp.RequestCtx, ns string) {
	if ctx.Response.IsBodyStream() {
		return
	}
	body := ctx.Response.Body()
	if out := stripNamespace(body, ns); len(out) != len(body) {
		ctx.Response.SetBody(out)
	}
}

// viewNamespaced serves GET /view of ref for the key of namespace ns: the
// key's own file, else a file outside keysDir (namespacedRef), else
// ComfyUI's answer to a missing file (404, empty body).
func (s *fileRoutes) viewNamespaced(ctx *fasthttp.RequestCtx, ns string, ref prompts.FileRef) {
	c, inst := s.namespacedRef(ns, ref)
	if inst == nil {
		if len(s.pool.Healthy()) == 0 {
			s.fwd.writeError(ctx, upstream.ErrNoUpstream)
			return
		}
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		ctx.SetContentType("application/octet-stream")
		return
	}
	var args fasthttp.Args
	ctx.QueryArgs().CopyTo(&args)
	args.Set("subfolder", c.Subfolder)
	uri := append(append([]byte(nil), splitPath(rawRequestURI(ctx))...), '?')
	uri = append(uri, args.QueryString()...)
	s.fwd.forwardTo(ctx, inst, &forwardOpts{uri: uri})
}

// namespacedRef is ref (a key's name for a file) in the key's namespace,
// with the file it means there: the key's own when it has one, else a
// file outside keysDir that an instance holds, else the namespaced name
// (missing). inst is its holder, nil when none is known.
func (s *fileRoutes) namespacedRef(ns string, ref prompts.FileRef) (prompts.FileRef, *upstream.Instance) {
	own := prompts.FileRef{Filename: ref.Filename, Subfolder: intoNamespace(ns, ref.Subfolder), Type: ref.Type}
	cands := []prompts.FileRef{own}
	// A mask's original_ref joins its filename, path and all, to the
	// subfolder (/view keeps only the base name): neither may name keysDir
	// outside the key's folder.
	if !namesKeysDir(ref.Subfolder) && !namesKeysDir(ref.Filename) {
		cands = append(cands, ref)
	}
	for _, c := range cands {
		cctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		inst, ok := s.prompts.FileOwner(cctx, c)
		cancel()
		if ok {
			return c, inst
		}
	}
	return own, nil
}

// mediaExts are the extensions of files worth asking the instances about
// when a prompt input names one the pin table does not know.
var mediaExts = map[string]bool{
	".png": true, ".jpg": true, ".jpeg": true, ".webp": true, ".gif": true, ".bmp": true, ".tif": true,
	".tiff": true, ".avif": true, ".heic": true, ".exr": true, ".mp4": true, ".webm": true, ".mov": true,
	".mkv": true, ".wav": true, ".mp3": true, ".flac": true, ".ogg": true,
}

// namespaceInput returns the prompt input value s mapped into ns when it
// names an input file the key uploaded; ok=false leaves s as it is.
func (s *fileRoutes) namespaceInput(ns, v string) (string, bool) {
	if v == "" || len(v) > maxInputValue || strings.ContainsAny(v, "\n\r\x00") || v[0] == outputRefMark {
		return "", false
	}
	val, suffix := v, ""
	if rest, ok := strings.CutSuffix(v, " [input]"); ok {
		val, suffix = rest, " [input]"
	} else if strings.HasSuffix(v, " [output]") || strings.HasSuffix(v, " [temp]") {
		return "", false
	}
	dir, name := path.Split(strings.ReplaceAll(val, `\`, "/"))
	if name == "" || name == "." || name == ".." {
		return "", false
	}
	sub := intoNamespace(ns, dir)
	ref := prompts.FileRef{Filename: name, Subfolder: sub, Type: "input"}
	if !s.prompts.FilePinned(ref) {
		if !mediaExts[strings.ToLower(path.Ext(name))] {
			return "", false
		}
		cctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		_, found := s.prompts.FileOwner(cctx, ref)
		cancel()
		if !found {
			return "", false
		}
	}
	return sub + "/" + name + suffix, true
}

// maxInputValue bounds the prompt strings read as possible file names;
// longer ones are text (as prompts.EnsureInputs reads them).
const maxInputValue = 1024

// namespacePrompt returns the prompt graph ({node: {"inputs": {...}}}) of
// the key of namespace ns with its input file names mapped into ns
// (namespaceInput). A string input that names keysDir is refused. A graph
// that is not an object of nodes is returned as it is, for the instance
// to answer.
func (s *fileRoutes) namespacePrompt(ns string, graph json.RawMessage) (json.RawMessage, error) {
	out, _, err := comfyapi.EditGraphInputs(graph, func(nodeID, input string, val json.RawMessage) (json.RawMessage, error) {
		v, ok := comfyapi.String(val)
		if !ok {
			return nil, nil
		}
		if namesKeysDir(v) {
			return nil, fmt.Errorf("input %q of node %q names comfygate's folder %q", input, nodeID, keysDir)
		}
		if w, ok := s.namespaceInput(ns, v); ok {
			return comfyapi.AppendPyString(nil, w), nil
		}
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// uploadForm rewrites an upload's multipart form for the key of
// namespace ns: every subfolder field is moved into ns (one is added at
// the end when the form has none), an original_ref field is replaced by
// origRef when that is set, and every other part is copied raw. It
// remembers the client's own subfolder, for the answer.
type uploadForm struct {
	ns      string
	origRef []byte

	mu         sync.Mutex // guards sawSub, clientSub, sentSubDir
	sawSub     bool
	clientSub  string // the client's first subfolder value
	sentSubDir string // what the instance gets for clientSub
}

// head copies the parts before the first file part and returns that part
// (nil at the end of the form), unread: an upload is checked before any
// of it goes to an instance, as far as its file's name.
func (f *uploadForm) head(mr *multipart.Reader, mw *multipart.Writer) (*multipart.Part, error) {
	for {
		part, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		name, file, err := checkUploadPart(part)
		if err != nil {
			return nil, err
		}
		if file {
			return part, nil
		}
		if err := f.copyPart(part, name, mw, maxFormField); err != nil {
			return nil, err
		}
	}
}

// rest copies first (the first file part, or nil) and every later part,
// then ends the form.
func (f *uploadForm) rest(mr *multipart.Reader, mw *multipart.Writer, first *multipart.Part) error {
	part := first
	for part != nil {
		name, _, err := checkUploadPart(part)
		if err != nil {
			return err
		}
		if err := f.copyPart(part, name, mw, -1); err != nil {
			return err
		}
		next, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		part = next
	}
	f.mu.Lock()
	add := !f.sawSub
	if add {
		f.sawSub, f.sentSubDir = true, f.ns
	}
	f.mu.Unlock()
	if add {
		if err := mw.WriteField("subfolder", f.ns); err != nil {
			return err
		}
	}
	return mw.Close()
}

// checkUploadPart returns the field name of a part and whether it is a
// file. It refuses a part comfygate may not name as the instance does (a
// Content-Disposition that is not form-data with a name) and a file whose
// name carries a path, which the instance would join to the key's folder
// and so leave it.
func checkUploadPart(part *multipart.Part) (name string, file bool, err error) {
	cd := part.Header.Values("Content-Disposition")
	if len(cd) != 1 || ambiguousParams(cd[0]) {
		return "", false, fmt.Errorf("%w: a part whose Content-Disposition parsers may read differently", errUploadForm)
	}
	disp, params, err := mime.ParseMediaType(cd[0])
	if err != nil || disp != "form-data" || params["name"] == "" {
		return "", false, fmt.Errorf("%w: a part without a form-data Content-Disposition and name", errUploadForm)
	}
	fn, file := params["filename"]
	if file && (strings.ContainsAny(fn, `/\`) || fn == "." || fn == "..") {
		return "", true, fmt.Errorf("%w: file name %q has a path", errUploadForm, fn)
	}
	return params["name"], file, nil
}

// ambiguousParams reports whether a Content-Disposition gives a parameter
// both plainly and in its RFC 2231 form (name and name*): which one wins
// is up to the parser, and comfygate must read the form as the instance.
func ambiguousParams(cd string) bool {
	seen := map[string]bool{}
	inQuote, escaped, start := false, false, 0
	for i := 0; i <= len(cd); i++ {
		if i < len(cd) {
			c := cd[i]
			switch {
			case escaped:
				escaped = false
				continue
			case c == '\\' && inQuote:
				escaped = true
				continue
			case c == '"':
				inQuote = !inQuote
				continue
			case c != ';' || inQuote:
				continue
			}
		}
		key, _, _ := strings.Cut(cd[start:i], "=")
		seen[strings.ToLower(strings.TrimSpace(key))] = true
		start = i + 1
	}
	return (seen["name"] && seen["name*"]) || (seen["filename"] && seen["filename*"])
}

// copyPart copies one part, of field name (checkUploadPart), rewriting
// subfolder and original_ref fields; limit > 0 caps every part's size (the
// held head of the form).
func (f *uploadForm) copyPart(part *multipart.Part, name string, mw *multipart.Writer, limit int64) error {
	if name == "subfolder" || (name == "original_ref" && f.origRef != nil) {
		b, err := io.ReadAll(io.LimitReader(part, maxFormField+1))
		if err != nil {
			return err
		}
		if len(b) > maxFormField {
			return fmt.Errorf("%w: field %s over %d bytes", errUploadForm, name, maxFormField)
		}
		val := f.origRef
		if name == "subfolder" {
			sent := intoNamespace(f.ns, string(b))
			f.mu.Lock()
			if !f.sawSub {
				f.sawSub, f.clientSub, f.sentSubDir = true, string(b), sent
			}
			f.mu.Unlock()
			val = []byte(sent)
		}
		// A plain header: the instance reads this field's name as comfygate.
		w, err := mw.CreateFormField(name)
		if err != nil {
			return err
		}
		_, err = w.Write(val)
		return err
	}
	w, err := mw.CreatePart(part.Header)
	if err != nil {
		return err
	}
	var r io.Reader = part
	if limit > 0 {
		r = io.LimitReader(part, limit+1)
	}
	n, err := io.Copy(w, r)
	if err != nil {
		return err
	}
	if limit > 0 && n > limit {
		return fmt.Errorf("%w: field %s over %d bytes before the file", errUploadForm, name, limit)
	}
	return nil
}

// answer rewrites an upload answer of the instance for the client: the
// subfolder comfygate sent becomes the client's own again.
func (f *uploadForm) answer(body []byte) []byte {
	f.mu.Lock()
	sent, client := f.sentSubDir, f.clientSub
	f.mu.Unlock()
	out, err := comfyapi.EditUploadAnswer(body, func(sub string) (string, bool) {
		if sent != "" && sub == sent {
			return client, true
		}
		if rest, found := strings.CutPrefix(sub, f.ns+"/"); found {
			return rest, true
		}
		return "", sub == f.ns
	})
	if err != nil {
		return stripNamespace(body, f.ns)
	}
	return out
}

// switchWriter writes to w, which the upload changes from the held head
// to the pipe once the head is checked.
type switchWriter struct{ w io.Writer }

func (s *switchWriter) Write(p []byte) (int, error) { return s.w.Write(p) }

// newFormWriter is a multipart writer keeping boundary when it is valid.
func newFormWriter(w io.Writer, boundary []byte) *multipart.Writer {
	mw := multipart.NewWriter(w)
	if mw.SetBoundary(string(boundary)) != nil {
		mw = multipart.NewWriter(w)
	}
	return mw
}

// uploadRefused answers an upload form refused for an isolated key.
func (s *fileRoutes) uploadRefused(ctx *fasthttp.RequestCtx, err error) {
	s.log.Info("upload refused", "path", string(ctx.Path()), "err", err)
	writeJSONError(ctx, fasthttp.StatusBadRequest, "bad_upload",
		"the upload form could not be read, or its file name has a path in it")
}

// uploadImageNamespaced serves POST /upload/image for the key of
// namespace ns: the form streams to the home instance with its subfolder
// in ns (uploadForm). The fields before the file are held (at most
// maxFormField each) until the file's name is checked; the file and what
// follows stream through a pipe, never held whole.
func (s *fileRoutes) uploadImageNamespaced(ctx *fasthttp.RequestCtx, ns string) {
	boundary := ctx.Request.Header.MultipartFormBoundary()
	if len(boundary) == 0 {
		// Not a multipart form: ComfyUI finds no image in it and writes nothing.
		s.fwd.forwardPicked(ctx, s.fwd.home, nil)
		return
	}
	var src io.Reader
	if bs := ctx.RequestBodyStream(); bs != nil {
		src = &stallGuard{r: bs, conn: ctx.Conn(), idle: s.cfg.Timeout}
	} else {
		src = bytes.NewReader(ctx.Request.Body())
	}
	f := &uploadForm{ns: ns}
	var held bytes.Buffer
	sw := &switchWriter{w: &held}
	mw := newFormWriter(sw, boundary)
	mr := multipart.NewReader(src, string(boundary))
	first, err := f.head(mr, mw)
	if err != nil {
		s.uploadRefused(ctx, err)
		return
	}
	pr, pw := io.Pipe()
	sw.w = pw
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(f.rest(mr, mw, first))
	}()
	ctx.Request.Header.SetContentType(mw.FormDataContentType())
	s.fwd.forwardPicked(ctx, s.fwd.home, &forwardOpts{
		bodyStream: io.MultiReader(&held, pr),
		rewrite: func(inst *upstream.Instance, status int, body []byte) []byte {
			return f.answer(s.pinUpload(inst, status, body))
		},
	})
	// The form is read from the client's body, which is fasthttp's only
	// while the handler runs: stop the copy and wait for it.
	pr.CloseWithError(errors.New("upload ended"))
	<-done
}

// uploadMaskNamespaced serves POST /upload/mask (body, read whole) for the
// key of namespace ns: the mask is written in ns, and original_ref names
// the key's own original (or a file outside keysDir; namespacedRef), on
// the instance that holds it (home when none is known). An original
// handed out by comfygate as an output ("@<instance>/...") is that
// instance's own, as for any key.
func (s *fileRoutes) uploadMaskNamespaced(ctx *fasthttp.RequestCtx, ns string, body []byte) {
	boundary := ctx.Request.Header.MultipartFormBoundary()
	if len(boundary) == 0 {
		s.fwd.forwardPicked(ctx, s.fwd.home, &forwardOpts{body: body, setBody: true})
		return
	}
	var target *upstream.Instance
	var origRef []byte
	if ref, ok := originalRef(body, boundary); ok {
		if ref.Type == "" {
			ref.Type = "output" // ComfyUI's default for original_ref
		}
		if token, orig, enc := decodeSubfolder(ref.Subfolder); enc && encodedType(viewType(ref.Filename, ref.Type)) {
			if inst := instanceByToken(s.pool.Instances(), token); inst != nil {
				ref.Subfolder, target = orig, inst
			}
		} else {
			ref, target = s.namespacedRef(ns, ref)
		}
		origRef, _ = json.Marshal(map[string]string{"filename": ref.Filename, "subfolder": ref.Subfolder, "type": ref.Type})
	}
	f := &uploadForm{ns: ns, origRef: origRef}
	var out bytes.Buffer
	out.Grow(len(body) + 256)
	mw := newFormWriter(&out, boundary)
	mr := multipart.NewReader(bytes.NewReader(body), string(boundary))
	first, err := f.head(mr, mw)
	if err == nil {
		err = f.rest(mr, mw, first)
	}
	if err != nil {
		s.uploadRefused(ctx, err)
		return
	}
	ctx.Request.Header.SetContentType(mw.FormDataContentType())
	o := &forwardOpts{body: out.Bytes(), setBody: true, rewrite: func(inst *upstream.Instance, status int, body []byte) []byte {
		return f.answer(s.pinUpload(inst, status, body))
	}}
	if target != nil {
		s.fwd.forwardTo(ctx, target, o)
		return
	}
	s.fwd.forwardPicked(ctx, s.fwd.home, o)
}
