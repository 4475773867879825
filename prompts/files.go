package prompts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// copyKey names one copy of a file to an instance, so concurrent prompts
// that need the same file on the same instance copy it once.
type copyKey struct {
	ref  FileRef
	inst string // the target's endpoint
}

// maxInputValue bounds the strings EnsureInputs treats as possible file
// names; longer ones are prompts' text.
const maxInputValue = 1024

// copiesDir is the subfolder of an instance's output and temp folders that
// holds copies of other instances' files: <copiesDir>/<instance>~<id>/<subfolder>/<name>
// (copyToken, copyRef).
// A folder of its own because output names collide across instances (every
// instance writes ComfyUI_00001_.png): a copy under the original name would
// overwrite the target's own file, which another client's /view names.
const copiesDir = "comfygate-copies"

// EnsureInputs makes every input file the prompt loads that was uploaded
// through comfygate (pinned with type input on another instance) present
// on inst, copying it over when needed.
//
// Any string input value of any node may name a file: "x.png", "sub/x.png"
// or "x.png [input]" (LoadImage, LoadImageMask and custom loaders alike).
// Only values that match an input pin are copied, so text is never taken
// for a file. Values annotated " [output]" or " [temp]" are not copied by
// name: output names collide across instances, so a pin does not say whose
// file the client means, and overwriting the target's own file of that
// name would be wrong. The outputs of another instance that a prompt loads
// come named by SubmitRequest.Files instead; Submit copies those into the
// target's output or temp folder under copiesDir/<instance>/, where no
// file of the target's own lives, and sends the values naming the copies
// (prepareGraph). The error lists the files that could not be copied; the
// prompt would fail validation on inst without them.
func (fs *fileStore) EnsureInputs(ctx context.Context, inst *upstream.Instance, prompt json.RawMessage) error {
	if inst == nil || len(prompt) == 0 {
		return nil
	}
	graph, err := comfyapi.ParseGraph(prompt)
	if err != nil {
		return fmt.Errorf("ensure inputs: parse prompt: %w", err)
	}
	var refs []FileRef
	for _, node := range graph {
		// A node that is not one has no inputs: upstream validation
		// answers for it.
		for _, v := range node.Inputs {
			if len(v) < 2 || v[0] != '"' || len(v) > maxInputValue {
				continue
			}
			s, ok := comfyapi.String(v)
			if !ok {
				continue
			}
			if ref, ok := inputRef(s); ok && !containsRef(refs, ref) {
				refs = append(refs, ref)
			}
		}
	}
	var errs []error
	for _, ref := range refs {
		if len(fs.pins.owners(ref)) == 0 && !fs.sharedInput(ctx, ref) {
			continue // not uploaded through comfygate: the instance may have it itself
		}
		err := fs.ensureFile(ctx, inst, ref, func() error {
			owners := fs.pins.owners(ref)
			if len(owners) == 0 {
				return nil
			}
			return fs.copyFromOwners(ctx, inst, ref, owners)
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sharedInput looks ref up in the replicas' shared pins when this replica
// has none (an upload another replica took) and pins the holder here;
// true when one was found. Only names with a file extension are looked
// up: most string inputs are text, sampler or model names, and each
// lookup is a round trip to the state store.
func (fs *fileStore) sharedInput(ctx context.Context, ref FileRef) bool {
	sh := fs.sharer.Load()
	if sh == nil {
		return false
	}
	ext := path.Ext(ref.Filename)
	if len(ext) < 2 || len(ext) > 6 || strings.ContainsAny(ext, " ()[]") {
		return false
	}
	in := sh.fileOwner(ctx, ref)
	if in == nil {
		return false
	}
	fs.pins.add(ref, in.Endpoint())
	return true
}

// prepareGraph makes the files a prompt graph loads present on inst and
// returns the graph to send there. Input uploads are copied as
// EnsureInputs does. Values in files (the outputs of one instance the
// client loads) become the file's own name when inst holds it; otherwise
// the file is copied from its instance into inst's copiesDir and the value
// names the copy: also when the copy failed, so that the prompt fails
// validation on a missing file rather than load a file of the same name
// that inst wrote itself.
func (fs *fileStore) prepareGraph(ctx context.Context, inst *upstream.Instance, graph json.RawMessage, files map[string]InstanceFile) (json.RawMessage, error) {
	err := fs.EnsureInputs(ctx, inst, graph)
	if len(files) == 0 {
		return graph, err
	}
	errs := []error{err}
	seen := map[string]string{}
	out, _ := rewriteInputs(graph, func(v string) (string, bool) {
		f, ok := files[v]
		if !ok || f.Instance == nil {
			return "", false
		}
		if f.Instance == inst {
			return f.Value, true
		}
		if w, ok := seen[v]; ok {
			return w, true
		}
		from, ok := annotatedRef(f.Value)
		if !ok {
			return f.Value, true // not a file comfygate can copy: as its instance names it
		}
		to := copyRef(f.Instance, from)
		err := fs.ensureFile(ctx, inst, to, func() error {
			if !f.Instance.State().Healthy() {
				// Asking a hung instance would hold the prompt for the call timeout.
				return fmt.Errorf("copy %s %q from %s: the instance is down", from.Type, path.Join(from.Subfolder, from.Filename), f.Instance.Name)
			}
			return fs.copyFrom(ctx, f.Instance, inst, from, to)
		})
		if err != nil {
			errs = append(errs, err)
		}
		w := refValue(to)
		seen[v] = w
		return w, true
	})
	return out, errors.Join(errs...)
}

func containsRef(refs []FileRef, r FileRef) bool {
	for _, x := range refs {
		if x == r {
			return true
		}
	}
	return false
}

// inputRef reads an input value as a file in the input folder, as LoadImage
// does: an optional " [input]" suffix, subfolders before the last slash.
func inputRef(s string) (FileRef, bool) {
	if s == "" || strings.ContainsAny(s, "\n\r\x00") {
		return FileRef{}, false
	}
	s = strings.TrimSuffix(s, " [input]")
	if strings.HasSuffix(s, " [output]") || strings.HasSuffix(s, " [temp]") {
		return FileRef{}, false
	}
	return splitRef(s, "input")
}

// annotatedRef reads a value annotated " [output]" or " [temp]" as the
// file LoadImage loads from that folder.
func annotatedRef(s string) (FileRef, bool) {
	if s == "" || strings.ContainsAny(s, "\n\r\x00") {
		return FileRef{}, false
	}
	for _, typ := range [...]string{"output", "temp"} {
		if rest, ok := strings.CutSuffix(s, " ["+typ+"]"); ok {
			return splitRef(rest, typ)
		}
	}
	return FileRef{}, false
}

// splitRef splits "sub/dir/x.png" into subfolder and name.
func splitRef(s, typ string) (FileRef, bool) {
	s = strings.ReplaceAll(s, `\`, "/")
	dir, name := path.Split(s)
	if name == "" || name == "." || name == ".." {
		return FileRef{}, false
	}
	return FileRef{Filename: name, Subfolder: cleanSubfolder(dir), Type: typ}, true
}

// copyRef is where a copy of src's file ref lives on another instance:
// under src's name and machine ID, so that a copy made from the machine a
// name had before a reload is not taken for a copy from the one it has now.
func copyRef(src *upstream.Instance, ref FileRef) FileRef {
	return FileRef{Filename: ref.Filename, Subfolder: path.Join(copiesDir, copyToken(src.Name)+"~"+src.ID(), ref.Subfolder), Type: ref.Type}
}

// copyToken is an instance's name as a folder name: every byte outside
// [A-Za-z0-9._-] becomes '-', as in the proxy's output references, and a
// name of dots only is "-".
func copyToken(name string) string {
	b := []byte(name)
	dots := true
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '-'
		}
		dots = dots && b[i] == '.'
	}
	if dots {
		return "-"
	}
	return string(b)
}

// refValue names ref as a LoadImage value: "sub/x.png [output]".
func refValue(ref FileRef) string {
	return path.Join(ref.Subfolder, ref.Filename) + " [" + ref.Type + "]"
}

// ensureFile makes inst hold ref, running copy unless it does already
// (pinned). Concurrent calls for one file on one instance copy it once:
// the others wait, then look again (the copy may have failed).
func (fs *fileStore) ensureFile(ctx context.Context, inst *upstream.Instance, ref FileRef, copy func() error) error {
	ref = normalizeRef(ref)
	key := copyKey{ref: ref, inst: inst.Endpoint()}
	for {
		if fs.pins.has(ref, inst.Endpoint()) {
			return nil
		}
		fs.copiesMu.Lock()
		wait, busy := fs.copies[key]
		if !busy {
			wait = make(chan struct{})
			fs.copies[key] = wait
		}
		fs.copiesMu.Unlock()
		if busy {
			select {
			case <-wait:
				continue // look again: the other copy may have failed
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		err := copy()
		fs.copiesMu.Lock()
		delete(fs.copies, key)
		fs.copiesMu.Unlock()
		close(wait)
		return err
	}
}

// copyFromOwners copies an input to inst from its holders, available ones
// first, most recent first.
func (fs *fileStore) copyFromOwners(ctx context.Context, inst *upstream.Instance, ref FileRef, owners []string) error {
	var srcs, later []*upstream.Instance
	insts := fs.p.Instances()
	for _, endpoint := range owners {
		src := upstream.ByEndpoint(insts, endpoint)
		switch {
		case src == nil || upstream.SameMachine(src, inst):
		case src.Available():
			srcs = append(srcs, src)
		default:
			later = append(later, src)
		}
	}
	srcs = append(srcs, later...)
	if len(srcs) == 0 {
		return fmt.Errorf("copy input %q to %s: no instance that holds it is known", path.Join(ref.Subfolder, ref.Filename), inst.Name)
	}
	var errs []error
	for _, src := range srcs {
		err := fs.copyFrom(ctx, src, inst, ref, ref)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
}

// copyFrom copies src's file from to dst's file to and pins it there,
// unless the file changed meanwhile (FileChanged): then the copy may be of
// the old file, and the next prompt copies again.
func (fs *fileStore) copyFrom(ctx context.Context, src, dst *upstream.Instance, from, to FileRef) error {
	start := time.Now()
	since := fs.pins.stamp()
	n, err := fs.copyFile(ctx, src, dst, from, to)
	if err != nil {
		return err
	}
	pinned := fs.pins.addSince(normalizeRef(to), dst.Endpoint(), since)
	fs.log.Info("prompts: file copied", "type", from.Type, "from", src.Name, "to", dst.Name,
		"bytes", n, "duration", time.Since(start), "pinned", pinned)
	return nil
}

// countingReader counts what it reads and keeps the first read error, so a
// failed copy blames the side that failed.
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// copyFile streams the file from from src's /view into an /upload/image
// of to on dst with overwrite=true (same name; to's type and subfolder);
// the body flows through a pipe and is never held whole. Both requests go
// through Do, so the configured timeout bounds each instance's silence,
// not the length of the copy. A failure reading src's file is not blamed
// on dst. It returns the bytes copied.
func (fs *fileStore) copyFile(ctx context.Context, src, dst *upstream.Instance, from, to FileRef) (int64, error) {
	what := from.Type + " " + strconv.Quote(path.Join(from.Subfolder, from.Filename))

	get := fasthttp.AcquireRequest()
	get.Header.SetMethod(fasthttp.MethodGet)
	get.SetRequestURI(viewURI(from))
	got, err := src.Transport().Do(ctx, get, upstream.DoOpts{})
	if err != nil {
		return 0, fmt.Errorf("copy %s from %s: %w", what, src.Name, err)
	}
	defer got.Close()
	if code := got.StatusCode(); code != fasthttp.StatusOK {
		return 0, fmt.Errorf("copy %s from %s: /view answered %d", what, src.Name, code)
	}
	var body io.Reader = got.Response().BodyStream()
	if body == nil {
		body = bytes.NewReader(got.Response().Body())
	}
	cr := &countingReader{r: body}

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	written := make(chan error, 1)
	go func() {
		err := writeUpload(mw, to, cr)
		pw.CloseWithError(err)
		written <- err
	}()
	up := fasthttp.AcquireRequest()
	up.Header.SetMethod(fasthttp.MethodPost)
	up.SetRequestURI("/upload/image")
	up.Header.SetContentType(mw.FormDataContentType())
	// chunked: the size is not known up front. A read error of the pipe is
	// src's file failing, not dst (ErrClientBody, excluded for dst).
	ans, upErr := dst.Transport().Do(ctx, up, upstream.DoOpts{Body: pr, BodySize: -1})
	pr.CloseWithError(errors.New("upload ended")) // unblocks the writer if the upload stopped early
	werr := <-written

	if upErr != nil {
		if cr.err != nil {
			return 0, fmt.Errorf("copy %s from %s: read: %w", what, src.Name, cr.err)
		}
		return 0, fmt.Errorf("copy %s to %s: %w", what, dst.Name, upErr)
	}
	code := ans.StatusCode()
	answer, rerr := ans.ReadAll(64 << 10)
	switch {
	case cr.err != nil:
		return 0, fmt.Errorf("copy %s from %s: read: %w", what, src.Name, cr.err)
	case werr != nil:
		return 0, fmt.Errorf("copy %s to %s: %w", what, dst.Name, werr)
	case rerr != nil:
		return 0, fmt.Errorf("copy %s to %s: read answer: %w", what, dst.Name, rerr)
	case code != fasthttp.StatusOK:
		return 0, fmt.Errorf("copy %s to %s: /upload/image answered %d", what, dst.Name, code)
	}
	if res, err := comfyapi.ParseUploadAnswer(answer); err == nil && res.Filename != to.Filename {
		// overwrite=true keeps the name; another name would not be what the prompt loads.
		return 0, fmt.Errorf("copy %s to %s: stored as %q", what, dst.Name, res.Filename)
	}
	return cr.n, nil
}

// writeUpload writes the /upload/image form of ref: overwrite, type and
// subfolder first, then the file.
func writeUpload(mw *multipart.Writer, ref FileRef, file io.Reader) error {
	typ := ref.Type
	if typ == "" {
		typ = "input"
	}
	for _, f := range [][2]string{{"overwrite", "true"}, {"type", typ}, {"subfolder", ref.Subfolder}} {
		if err := mw.WriteField(f[0], f[1]); err != nil {
			return err
		}
	}
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="image"; filename="%s"`, escapeQuotes(ref.Filename)))
	ct := mime.TypeByExtension(path.Ext(ref.Filename))
	if ct == "" {
		ct = "application/octet-stream"
	}
	h.Set("Content-Type", ct)
	part, err := mw.CreatePart(h)
	if err != nil {
		return err
	}
	if _, err := io.Copy(part, file); err != nil {
		return err
	}
	return mw.Close()
}

var quoteEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`)

func escapeQuotes(s string) string { return quoteEscaper.Replace(s) }
