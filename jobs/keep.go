package jobs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// inputSubfolder is the subfolder of every instance's input folder that
// holds the images comfygate uploads for jobs, each named after its job
// (<job id>.<ext>, <job id>-<parameter>.<ext>). ComfyUI has no API that
// deletes an input file, so comfygate cannot remove them itself; operators
// expire them there (for example: find input/comfygate -mmin +60 -delete).
const inputSubfolder = "comfygate"

// jobImage is one image a job uploads to the instance that runs it.
// comfygate keeps it until the job ends (in memory while the store's
// budget allows, in a file otherwise or as well, when jobs are persisted)
// so that it can upload it again wherever a failover or a restart sends
// the job. Immutable once kept, except through the store.
type jobImage struct {
	param string // the parameter it fills; "" for the workflow's image_node
	name  string // its file name on the instances (under inputSubfolder)
	size  int64
	mem   []byte // its bytes, while counted in the store's memory budget
	file  string // its file ("" when in memory only)
}

// value is the image's name as LoadImage takes it: subfolder/name.
func (im *jobImage) value() string { return inputSubfolder + "/" + im.name }

// ref is the image as an instance's input file.
func (im *jobImage) ref() prompts.FileRef {
	return prompts.FileRef{Filename: im.name, Subfolder: inputSubfolder, Type: "input"}
}

// open returns a reader over the image's bytes.
func (im *jobImage) open() (io.ReadCloser, error) {
	if im.mem != nil {
		return io.NopCloser(bytes.NewReader(im.mem)), nil
	}
	if im.file == "" {
		return nil, errors.New("the job's image is no longer kept")
	}
	return os.Open(im.file)
}

// inputStore keeps the images of unfinished jobs: up to budget bytes in
// memory, the rest (or, with a state directory, all of them) in files
// under dir.
type inputStore struct {
	budget  int64
	durable bool // dir is the state directory: every image also goes to a file
	inMem   atomic.Int64
	// saver writes and removes the files of images also held in memory,
	// off the request's path (the state directory's writer); nil: at once.
	saver interface {
		putFile(path string, data []byte)
		removeFile(path string)
	}

	dirOnce sync.Once
	dir     string
	temp    bool // dir was made here under the system's temp dir (removed by close)
	dirErr  error
}

func newInputStore(budget int64, stateDir string) *inputStore {
	st := &inputStore{budget: budget}
	if stateDir != "" {
		st.durable = true
		st.dir = filepath.Join(stateDir, "inputs")
	}
	return st
}

// directory returns the directory of image files, creating it on first use.
func (st *inputStore) directory() (string, error) {
	st.dirOnce.Do(func() {
		if st.dir != "" {
			st.dirErr = os.MkdirAll(st.dir, 0o700)
			return
		}
		st.dir, st.dirErr = os.MkdirTemp("", "comfygate-inputs-")
		st.temp = st.dirErr == nil
	})
	return st.dir, st.dirErr
}

// keep stores data as im's bytes.
func (st *inputStore) keep(im *jobImage, jobID string, data []byte) error {
	im.size = int64(len(data))
	inMem := st.inMem.Add(im.size) <= st.budget
	if !inMem {
		st.inMem.Add(-im.size)
	}
	if st.durable || !inMem {
		dir, err := st.directory()
		if err == nil {
			im.file = filepath.Join(dir, jobID+"-"+im.name)
			if inMem && st.saver != nil {
				st.saver.putFile(im.file, data) // served from memory meanwhile
			} else {
				err = writeAtomic(im.file, data)
			}
		}
		if err != nil {
			if inMem {
				st.inMem.Add(-im.size)
			}
			im.file = ""
			return fmt.Errorf("keep the job's image: %w", err)
		}
	}
	if inMem {
		im.mem = data
	}
	return nil
}

// release forgets im's bytes: its memory leaves the budget, its file is
// removed (an upload that has it open still reads it to the end).
func (st *inputStore) release(im *jobImage) {
	if im.mem != nil {
		st.inMem.Add(-im.size)
		im.mem = nil
	}
	if im.file != "" {
		if st.saver != nil {
			st.saver.removeFile(im.file)
		} else {
			_ = os.Remove(im.file)
		}
		im.file = ""
	}
}

// close removes a temporary directory of image files.
func (st *inputStore) close() {
	if st.temp {
		_ = os.RemoveAll(st.dir)
	}
}

// writeAtomic writes data to path through a temporary file in the same
// directory and a rename, so a reader (a restarted comfygate) sees the
// old file or the new one, never a part.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}

// placeImages uploads the job's images to inst, the instance its prompt is
// about to be sent to (the first time, or after a failover), from
// comfygate's kept copies. It is the job's prompts.SubmitRequest.Prepare.
func (s *delivery) placeImages(ctx context.Context, j *job, inst *upstream.Instance) error {
	s.eng.lock()
	imgs := make([]jobImage, 0, len(j.images))
	for _, im := range j.images {
		imgs = append(imgs, *im)
	}
	s.eng.unlock()
	var errs []error
	for i := range imgs {
		im := &imgs[i]
		r, err := im.open()
		if err == nil {
			err = s.be.Upload(ctx, inst, im.ref(), r, im.size)
			_ = r.Close()
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.be.PinFile(im.ref(), inst)
	}
	err := errors.Join(errs...)
	s.eng.lock()
	if err != nil {
		if j.uploadFailed == nil {
			j.uploadFailed = map[string]bool{}
		}
		j.uploadFailed[inst.Name] = true
	} else {
		delete(j.uploadFailed, inst.Name)
	}
	s.eng.unlock()
	if err != nil {
		s.log.Warn("job image upload failed", "job_id", j.id, "instance", inst.Name, "err", err)
	}
	return err
}

// uploadImage sends one kept image of size bytes into inst's POST
// /upload/image as ref (overwriting). The form's head and tail are built
// around the image, which is read as it goes (never held whole), and the
// length is known up front: no chunked framing, no pipe.
func uploadImage(ctx context.Context, inst *upstream.Instance, ref prompts.FileRef, img io.Reader, size int64) error {
	var head bytes.Buffer
	mw := multipart.NewWriter(&head)
	if err := writeUploadHead(mw, ref); err != nil {
		return fmt.Errorf("upload image to %s: %w", inst.Name, err)
	}
	tail := "\r\n--" + mw.Boundary() + "--\r\n" // what mw.Close writes
	body := io.MultiReader(bytes.NewReader(head.Bytes()), io.LimitReader(img, size), strings.NewReader(tail))
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetRequestURI("/upload/image")
	req.Header.SetContentType(mw.FormDataContentType())
	ans, err := inst.Transport().Do(ctx, req, upstream.DoOpts{Body: body, BodySize: head.Len() + int(size) + len(tail)})
	if err != nil {
		return fmt.Errorf("upload image to %s: %w", inst.Name, err)
	}
	defer ans.Close()
	code := ans.StatusCode()
	answer, rerr := ans.ReadAll(64 << 10)
	switch {
	case rerr != nil:
		return fmt.Errorf("upload image to %s: read answer: %w", inst.Name, rerr)
	case code != 200:
		return fmt.Errorf("upload image to %s: status %d", inst.Name, code)
	}
	return checkUploadAnswer(inst.Name, ref, answer)
}

// checkUploadAnswer checks that the instance stored the image under the
// name the prompt loads (overwrite=true keeps it).
func checkUploadAnswer(inst string, ref prompts.FileRef, answer []byte) error {
	r, err := comfyapi.ParseUploadAnswer(answer)
	if err != nil {
		return fmt.Errorf("upload image to %s: unexpected answer", inst)
	}
	if r.Filename != ref.Filename || path.Clean(r.Subfolder) != path.Clean(ref.Subfolder) {
		return fmt.Errorf("upload image to %s: stored as %q in %q, not %q in %q", inst, r.Filename, r.Subfolder, ref.Filename, ref.Subfolder)
	}
	return nil
}

// writeUploadHead writes the /upload/image form of ref up to the image's
// bytes: overwrite, type and subfolder, then the image part's header.
func writeUploadHead(mw *multipart.Writer, ref prompts.FileRef) error {
	for _, f := range [][2]string{{"overwrite", "true"}, {"type", ref.Type}, {"subfolder", ref.Subfolder}} {
		if err := mw.WriteField(f[0], f[1]); err != nil {
			return err
		}
	}
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="image"; filename=%q`, ref.Filename))
	ct := mime.TypeByExtension(path.Ext(ref.Filename))
	if ct == "" {
		ct = "application/octet-stream"
	}
	h.Set("Content-Type", ct)
	_, err := mw.CreatePart(h)
	return err
}

// spoolThreshold is the size from which a raw image body (image/* or
// application/octet-stream) or a multipart image part goes straight to a
// file as it arrives instead of into memory: a 45 MB upload then costs
// comfygate a copy buffer, not its size. (Base64 text, in JSON or in a
// multipart field, is decoded into a file whatever its size: spoolBase64.)
const spoolThreshold = 1 << 20

// spooledImage is a raw image body written to a file of the input store.
type spooledImage struct {
	path  string
	size  int64
	sum   []byte // SHA-256 of its bytes, taken as they were written (the result cache's key)
	taken bool   // moved into a job's kept image
}

// spoolRawImage reads a raw image body into a file and checks it is an
// image of at most maxBytes. ok is false when the request is not such a
// body (the caller parses it as usual).
func (s *api) spoolRawImage(ctx *fasthttp.RequestCtx, wf *workflow, maxBytes int64) (sub *submission, aerr *apiError, ok bool) {
	mt, _, _ := mime.ParseMediaType(string(ctx.Request.Header.ContentType()))
	body := ctx.RequestBodyStream()
	n := ctx.Request.Header.ContentLength()
	if !wf.needsImage() || wf.imageParams() > 0 || body == nil || (n >= 0 && n <= spoolThreshold) ||
		!(strings.HasPrefix(mt, "image/") || mt == "application/octet-stream") {
		return nil, nil, false
	}
	if n > 0 && int64(n) > maxBytes {
		// Read (and drop) a body up to twice the limit, so that a client
		// that sends it whole before it reads the answer gets it; a larger
		// one is cut off.
		if int64(n) <= 2*maxBytes {
			_, _ = io.Copy(io.Discard, body)
		}
		return nil, tooLarge(int64(n), maxBytes), true
	}
	dir, err := s.inputs.directory()
	var f *os.File
	if err == nil {
		f, err = os.CreateTemp(dir, ".upload-*")
	}
	if err != nil {
		s.log.Error("job image not spooled", "err", err)
		return nil, &apiError{status: fasthttp.StatusServiceUnavailable, typ: errNoUpstream, msg: "comfygate cannot store the image now", retryAfter: 5}, true
	}
	sp := &spooledImage{path: f.Name()}
	fail := func(e *apiError) (*submission, *apiError, bool) {
		_ = f.Close()
		_ = os.Remove(sp.path)
		return nil, e, true
	}
	sum := sha256.New()
	sp.size, err = io.Copy(io.MultiWriter(f, sum), io.LimitReader(body, maxBytes+1))
	sp.sum = sum.Sum(nil)
	switch {
	case err != nil:
		return fail(badRequest(errInvalidRequest, "cannot read the request body"))
	case sp.size > maxBytes:
		_, _ = io.Copy(io.Discard, io.LimitReader(body, maxBytes)) // as above
		return fail(badRequest(errImageTooLarge, "image too large: more than %d bytes, the limit", maxBytes))
	case sp.size == 0:
		return fail(badRequest(errMissingImage, "no image: send multipart/form-data with a file field \"image\", or JSON {\"image_base64\": \"...\"}"))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(&apiError{status: fasthttp.StatusServiceUnavailable, typ: errNoUpstream, msg: "comfygate cannot store the image now", retryAfter: 5})
	}
	format, w, h, err := sniffImageReader(f)
	if err != nil {
		return fail(badRequest(errInvalidImage, "not an image: want PNG, JPEG, WebP or GIF"))
	}
	if w <= 0 || h <= 0 {
		return fail(badRequest(errInvalidImage, "the image has no pixels (%dx%d)", w, h))
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(sp.path)
		return nil, &apiError{status: fasthttp.StatusServiceUnavailable, typ: errNoUpstream, msg: "comfygate cannot store the image now", retryAfter: 5}, true
	}
	return &submission{params: map[string]json.RawMessage{}, files: map[string][]byte{}, format: format, width: w, height: h, spool: sp}, nil, true
}

// spoolPart reads a multipart image part of at most maxBytes: up to
// spoolThreshold into memory, a larger one into a file of the input store
// as it arrives (parseSubmissionN's spoolFunc).
func (s *api) spoolPart(r io.Reader, maxBytes int64) (*spooledImage, []byte, *apiError) {
	head, err := io.ReadAll(io.LimitReader(r, min(spoolThreshold, maxBytes)+1))
	switch {
	case errors.Is(err, errBodyTooLarge):
		return nil, nil, badRequest(errImageTooLarge, "request body too large (images up to %d bytes)", maxBytes)
	case err != nil:
		return nil, nil, badRequest(errInvalidRequest, "malformed multipart/form-data body")
	case int64(len(head)) <= min(spoolThreshold, maxBytes):
		return nil, head, nil
	}
	sp, aerr := s.spoolRest(io.MultiReader(bytes.NewReader(head), r), maxBytes)
	return sp, nil, aerr
}

// spoolRest copies r, at most maxBytes, to a file of the input store.
func (s *api) spoolRest(r io.Reader, maxBytes int64) (*spooledImage, *apiError) {
	unavailable := &apiError{status: fasthttp.StatusServiceUnavailable, typ: errNoUpstream, msg: "comfygate cannot store the image now", retryAfter: 5}
	dir, err := s.inputs.directory()
	var f *os.File
	if err == nil {
		f, err = os.CreateTemp(dir, ".upload-*")
	}
	if err != nil {
		s.log.Error("job image not spooled", "err", err)
		return nil, unavailable
	}
	sp := &spooledImage{path: f.Name()}
	sum := sha256.New()
	sp.size, err = io.Copy(io.MultiWriter(f, sum), io.LimitReader(r, maxBytes+1))
	sp.sum = sum.Sum(nil)
	if cerr := f.Close(); err == nil && cerr != nil {
		s.log.Error("job image not spooled", "err", cerr)
		sp.discard()
		return nil, unavailable
	}
	switch {
	case errors.Is(err, errBodyTooLarge):
		sp.discard()
		return nil, badRequest(errImageTooLarge, "request body too large (images up to %d bytes)", maxBytes)
	case err != nil:
		sp.discard()
		return nil, badRequest(errInvalidRequest, "malformed multipart/form-data body")
	case sp.size > maxBytes:
		sp.discard()
		if _, err := io.Copy(io.Discard, r); errors.Is(err, errBodyTooLarge) {
			return nil, badRequest(errImageTooLarge, "request body too large (images up to %d bytes)", maxBytes)
		}
		return nil, badRequest(errImageTooLarge, "image too large: more than %d bytes, the limit", maxBytes)
	}
	return sp, nil
}

// spoolBase64 decodes base64 text (an image_base64 value), at most
// maxBytes decoded, into a file of the input store as it arrives: a 46 MB
// value costs comfygate its read and decode buffers, not its size.
func (s *api) spoolBase64(r io.Reader, maxBytes int64) (*spooledImage, int64, *apiError) {
	unavailable := &apiError{status: fasthttp.StatusServiceUnavailable, typ: errNoUpstream, msg: "comfygate cannot store the image now", retryAfter: 5}
	dir, err := s.inputs.directory()
	var f *os.File
	if err == nil {
		f, err = os.CreateTemp(dir, ".upload-*")
	}
	if err != nil {
		s.log.Error("job image not spooled", "err", err)
		return nil, 0, unavailable
	}
	sp := &spooledImage{path: f.Name()}
	w := bufio.NewWriterSize(f, 32<<10)
	sum := sha256.New() // the result cache's digest, taken as the image is written
	n, raw, aerr := decodeBase64Stream(io.MultiWriter(w, sum), r, maxBytes)
	if aerr == nil {
		if err := w.Flush(); err != nil {
			aerr = unavailable
		}
	}
	if err := f.Close(); err != nil && aerr == nil {
		aerr = unavailable
	}
	if aerr != nil {
		if aerr == unavailable || aerr.status >= 500 {
			s.log.Error("job image not spooled", "err", aerr.msg)
		}
		sp.discard()
		return nil, raw, aerr
	}
	sp.size, sp.sum = n, sum.Sum(nil)
	return sp, raw, nil
}

// checkSpooled checks that a spooled image is an image and records its
// format and size in sub.
func checkSpooled(sub *submission) *apiError {
	if sub.spool.size == 0 {
		return badRequest(errMissingImage, "no image: send multipart/form-data with a file field \"image\", or JSON {\"image_base64\": \"...\"}")
	}
	f, err := os.Open(sub.spool.path)
	if err != nil {
		return &apiError{status: fasthttp.StatusServiceUnavailable, typ: errNoUpstream, msg: "comfygate cannot store the image now", retryAfter: 5}
	}
	defer f.Close()
	format, w, h, err := sniffImageReader(f)
	if err != nil {
		return badRequest(errInvalidImage, "not an image: want PNG, JPEG, WebP or GIF")
	}
	if w <= 0 || h <= 0 {
		return badRequest(errInvalidImage, "the image has no pixels (%dx%d)", w, h)
	}
	sub.format, sub.width, sub.height = format, w, h
	return nil
}

// discard removes a spooled body no job took.
func (sp *spooledImage) discard() {
	if sp != nil && !sp.taken {
		_ = os.Remove(sp.path)
	}
}

// keepSpooled makes a spooled body im's kept image: the file is renamed
// into place, never read into memory.
func (st *inputStore) keepSpooled(im *jobImage, jobID string, sp *spooledImage) error {
	dir, err := st.directory()
	if err != nil {
		return fmt.Errorf("keep the job's image: %w", err)
	}
	path := filepath.Join(dir, jobID+"-"+im.name)
	if err := os.Rename(sp.path, path); err != nil {
		return fmt.Errorf("keep the job's image: %w", err)
	}
	sp.taken = true
	im.size, im.file = sp.size, path
	return nil
}

// sniffImageReader is sniffImage over a reader: it reads only the header.
func sniffImageReader(r io.Reader) (format string, w, h int, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	if head, _ := br.Peek(30); len(head) >= 30 {
		if w, h, ok := webpSize(head); ok {
			return "webp", w, h, nil
		}
	}
	cfg, format, err := image.DecodeConfig(br)
	if err != nil {
		return "", 0, 0, err
	}
	return format, cfg.Width, cfg.Height, nil
}
