package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"path"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// copyKey names one copy of a file to an instance, so concurrent prompts
// that need the same file on the same instance copy it once.
type copyKey struct {
	ref  FileRef
	inst string
}

// maxInputValue bounds the strings EnsureInputs treats as possible file
// names; longer ones are prompts' text.
const maxInputValue = 1024

// EnsureInputs makes every input file the prompt loads that was uploaded
// through comfygate (pinned with type input on another instance) present
// on inst, copying it over when needed.
//
// Any string input value of any node may name a file: "x.png", "sub/x.png"
// or "x.png [input]" (LoadImage, LoadImageMask and custom loaders alike).
// Only values that match an input pin are copied, so text is never taken
// for a file. Values annotated " [output]" or " [temp]" are left alone:
// output names collide across instances, and overwriting the target's own
// file of that name would be wrong. The error lists the files that could
// not be copied; the prompt would fail validation on inst without them.
func (p *Pool) EnsureInputs(ctx context.Context, inst *Instance, prompt json.RawMessage) error {
	if inst == nil || len(prompt) == 0 {
		return nil
	}
	var graph map[string]json.RawMessage
	if err := json.Unmarshal(prompt, &graph); err != nil {
		return fmt.Errorf("ensure inputs: parse prompt: %w", err)
	}
	var refs []FileRef
	for _, raw := range graph {
		var node struct {
			Inputs map[string]json.RawMessage `json:"inputs"`
		}
		if json.Unmarshal(raw, &node) != nil {
			continue // not a node: upstream validation answers for it
		}
		for _, v := range node.Inputs {
			if len(v) < 2 || v[0] != '"' || len(v) > maxInputValue {
				continue
			}
			var s string
			if json.Unmarshal(v, &s) != nil {
				continue
			}
			if ref, ok := inputRef(s); ok && !containsRef(refs, ref) {
				refs = append(refs, ref)
			}
		}
	}
	var errs []error
	for _, ref := range refs {
		if err := p.ensureFile(ctx, inst, ref); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
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
	s = strings.ReplaceAll(s, `\`, "/")
	dir, name := path.Split(s)
	if name == "" || name == "." || name == ".." {
		return FileRef{}, false
	}
	return FileRef{Filename: name, Subfolder: cleanSubfolder(dir), Type: "input"}, true
}

// ensureFile copies ref to inst unless inst holds it or nobody pinned it.
func (p *Pool) ensureFile(ctx context.Context, inst *Instance, ref FileRef) error {
	key := copyKey{ref: ref, inst: inst.Name}
	for {
		if p.pins.has(ref, inst.Name) {
			return nil
		}
		owners := p.pins.owners(ref)
		if len(owners) == 0 {
			return nil // not uploaded through comfygate: the instance may have it itself
		}
		p.copiesMu.Lock()
		wait, busy := p.copies[key]
		if !busy {
			wait = make(chan struct{})
			p.copies[key] = wait
		}
		p.copiesMu.Unlock()
		if busy {
			select {
			case <-wait:
				continue // look again: the other copy may have failed
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		err := p.copyFromOwners(ctx, inst, ref, owners)
		p.copiesMu.Lock()
		delete(p.copies, key)
		p.copiesMu.Unlock()
		close(wait)
		return err
	}
}

// copyFromOwners tries the holders, available ones first, most recent first.
func (p *Pool) copyFromOwners(ctx context.Context, inst *Instance, ref FileRef, owners []string) error {
	var srcs, later []*Instance
	for _, name := range owners {
		src := p.instanceByName(name)
		switch {
		case src == nil || src == inst:
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
		start := time.Now()
		n, err := p.copyFile(ctx, src, inst, ref)
		if err == nil {
			p.PinFile(ref, inst)
			p.log.Info("upstream: input copied", "from", src.Name, "to", inst.Name,
				"bytes", n, "duration", time.Since(start))
			return nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
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

// copyFile streams ref from src's /view into an /upload/image on dst with
// overwrite=true, same subfolder and name; the body flows through a pipe
// and is never held whole. It returns the bytes copied.
func (p *Pool) copyFile(ctx context.Context, src, dst *Instance, ref FileRef) (int64, error) {
	what := path.Join(ref.Subfolder, ref.Filename)
	timeout := p.cfg.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}

	srcDone, err := src.Allow()
	if err != nil {
		return 0, fmt.Errorf("copy input %q from %s: %w", what, src.Name, err)
	}
	get := fasthttp.AcquireRequest()
	got := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(get)
	defer fasthttp.ReleaseResponse(got)
	get.Header.SetMethod(fasthttp.MethodGet)
	get.SetRequestURI(viewURI(ref))
	get.Header.SetHost(src.Addr)
	if err := src.client.DoDeadline(get, got, deadline); err != nil {
		srcDone(true)
		return 0, fmt.Errorf("copy input %q from %s: %w", what, src.Name, err)
	}
	if code := got.StatusCode(); code != fasthttp.StatusOK {
		_, _ = readBody(got, 4096)
		srcDone(code >= 500)
		return 0, fmt.Errorf("copy input %q from %s: /view answered %d", what, src.Name, code)
	}
	body := got.BodyStream()
	if body == nil {
		body = strings.NewReader(string(got.Body()))
	}
	cr := &countingReader{r: body}

	dstDone, err := dst.Allow()
	if err != nil {
		_ = got.CloseBodyStream()
		srcDone(false)
		return 0, fmt.Errorf("copy input %q to %s: %w", what, dst.Name, err)
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	written := make(chan error, 1)
	go func() {
		err := writeUpload(mw, ref, cr)
		pw.CloseWithError(err)
		written <- err
	}()

	up := fasthttp.AcquireRequest()
	upResp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(up)
	defer fasthttp.ReleaseResponse(upResp)
	up.Header.SetMethod(fasthttp.MethodPost)
	up.SetRequestURI("/upload/image")
	up.Header.SetHost(dst.Addr)
	up.Header.SetContentType(mw.FormDataContentType())
	up.SetBodyStream(pr, -1) // chunked: the size is not known up front
	upErr := dst.client.DoDeadline(up, upResp, deadline)
	pr.CloseWithError(errors.New("upload ended")) // unblocks the writer if the upload stopped early
	werr := <-written
	_ = got.CloseBodyStream()
	srcDone(cr.err != nil)

	if upErr != nil {
		dstDone(cr.err == nil)
		if cr.err != nil {
			return 0, fmt.Errorf("copy input %q from %s: read: %w", what, src.Name, cr.err)
		}
		return 0, fmt.Errorf("copy input %q to %s: %w", what, dst.Name, upErr)
	}
	answer, rerr := readBody(upResp, 64<<10)
	code := upResp.StatusCode()
	dstDone(code >= 500 || rerr != nil)
	switch {
	case cr.err != nil:
		return 0, fmt.Errorf("copy input %q from %s: read: %w", what, src.Name, cr.err)
	case werr != nil:
		return 0, fmt.Errorf("copy input %q to %s: %w", what, dst.Name, werr)
	case rerr != nil:
		return 0, fmt.Errorf("copy input %q to %s: read answer: %w", what, dst.Name, rerr)
	case code != fasthttp.StatusOK:
		return 0, fmt.Errorf("copy input %q to %s: /upload/image answered %d", what, dst.Name, code)
	}
	var res struct {
		Name      string `json:"name"`
		Subfolder string `json:"subfolder"`
	}
	if json.Unmarshal(answer, &res) == nil && res.Name != "" && res.Name != ref.Filename {
		// overwrite=true keeps the name; another name would not be what the prompt loads.
		return 0, fmt.Errorf("copy input %q to %s: stored as %q", what, dst.Name, res.Name)
	}
	return cr.n, nil
}

// writeUpload writes the /upload/image form: overwrite, type and subfolder
// first, then the file.
func writeUpload(mw *multipart.Writer, ref FileRef, file io.Reader) error {
	for _, f := range [][2]string{{"overwrite", "true"}, {"type", "input"}, {"subfolder", ref.Subfolder}} {
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
