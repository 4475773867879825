package jobs

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// maxOutputs bounds the files one job keeps.
const maxOutputs = 256

// outRef is one file a node of the job's prompt reported: in its executed
// event's output (or its history entry) under kind, the key ComfyUI used
// ("images" for SaveImage, SaveAnimatedWEBP and SaveVideo, "audio" for
// SaveAudio, "gifs" for VideoHelperSuite's video combine, ...).
type outRef struct {
	node string
	kind string
	ref  prompts.FileRef
}

// outputFile is one fetched output of a completed job: in memory, or in a
// file under the output directory past the memory budget. Immutable once
// the job completed.
type outputFile struct {
	outRef
	instance    string
	contentType string
	size        int64
	data        []byte // in memory; nil when on disk
	path        string // on disk; "" when in memory
	s3Key       string // uploaded to S3 under this key
	s3URL       string // presigned GET URL of the upload
	s3Err       string // why the upload failed
	gone        bool   // listed from another replica's record; no instance served it here
}

// open returns a reader over the output's bytes.
func (f *outputFile) open() (io.ReadSeekCloser, error) {
	if f.gone {
		return nil, errors.New("the output is not stored here")
	}
	if f.path != "" {
		return os.Open(f.path)
	}
	return nopCloser{bytes.NewReader(f.data)}, nil
}

// bytes returns the whole output.
func (f *outputFile) bytes() ([]byte, error) {
	if f.path != "" {
		return os.ReadFile(f.path)
	}
	return f.data, nil
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// outputRefs reads every file list of an executed event's output (or a
// history entry's outputs[node]), by kind in name order, "images" first:
// the result of the two built-in workflows is the first image.
func outputRefs(node string, out json.RawMessage) []outRef {
	kinds := comfyapi.NodeOutputFilesByKind(out)
	order := slices.Sorted(maps.Keys(kinds))
	slices.SortStableFunc(order, func(a, b string) int { return boolRank(b == "images") - boolRank(a == "images") })
	var refs []outRef
	for _, kind := range order {
		for _, f := range kinds[kind] {
			refs = append(refs, outRef{node: node, kind: kind, ref: f})
		}
	}
	return refs
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// addOutputsLocked records the files node reported; the output node's
// come first.
func (j *job) addOutputsLocked(refs []outRef) {
	for _, r := range refs {
		if len(j.outRefs) >= maxOutputs || slices.ContainsFunc(j.outRefs, func(x outRef) bool { return x.ref == r.ref }) {
			continue
		}
		j.outRefs = append(j.outRefs, r)
	}
	slices.SortStableFunc(j.outRefs, func(a, b outRef) int {
		return boolRank(b.node == j.wf.cfg.OutputNode) - boolRank(a.node == j.wf.cfg.OutputNode)
	})
}

// outputContentType names an output's media type: by its file
// extension, else by its bytes.
func outputContentType(r outRef, head []byte) string {
	ext := strings.ToLower(path.Ext(r.ref.Filename))
	if ct, ok := outputTypes[ext]; ok {
		return ct
	}
	if ct := mime.TypeByExtension(ext); ct != "" {
		return ct
	}
	return contentType(head)
}

// outputTypes are the media types of the files ComfyUI nodes write, fixed
// here because the system's MIME table varies by machine.
var outputTypes = map[string]string{
	".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
	".gif": "image/gif", ".apng": "image/apng", ".mp4": "video/mp4", ".webm": "video/webm",
	".mov": "video/quicktime", ".mkv": "video/x-matroska", ".wav": "audio/wav", ".flac": "audio/flac",
	".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".opus": "audio/opus", ".glb": "model/gltf-binary",
	".json": "application/json", ".txt": "text/plain; charset=utf-8",
}

// spill receives one download: in memory while the output budget
// (jobs.output_memory_bytes, shared by all jobs) allows, then in a file
// under the output directory.
type spill struct {
	s     *delivery
	jobID string
	buf   []byte   // in memory, counted in s.outMem
	f     *os.File // on disk once past the budget
	n     int64
	head  []byte // the first bytes, to sniff the type by
	err   error
}

func (s *delivery) newSpill(jobID string) *spill { return &spill{s: s, jobID: jobID} }

func (w *spill) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if len(w.head) < 512 {
		w.head = append(w.head, p[:min(len(p), 512-len(w.head))]...)
	}
	w.n += int64(len(p))
	if w.f == nil {
		if w.s.outMem.Add(int64(len(p))) <= w.s.cfg.OutputMemoryBytes {
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		w.s.outMem.Add(-int64(len(p)))
		dir, err := w.s.outputDir()
		if err == nil {
			w.f, err = os.CreateTemp(dir, w.jobID+"-*")
		}
		if err == nil {
			_, err = w.f.Write(w.buf)
		}
		if err != nil {
			w.err = fmt.Errorf("store output: %w", err)
			return 0, w.err
		}
		w.s.outMem.Add(-int64(len(w.buf)))
		w.buf = nil
	}
	if _, err := w.f.Write(p); err != nil {
		w.err = fmt.Errorf("store output: %w", err)
		return 0, w.err
	}
	return len(p), nil
}

// outputGauges publishes the output store's size.
func (s *delivery) outputGauges() { s.m.SetOutputBytes(s.outMem.Load(), s.outDisk.Load()) }

// discard drops what a failed download stored.
func (w *spill) discard() {
	w.s.outMem.Add(-int64(len(w.buf)))
	w.buf = nil
	if w.f != nil {
		_ = w.f.Close()
		_ = os.Remove(w.f.Name())
		w.f = nil
	}
}

// file returns the stored download as the output r from instance inst.
func (w *spill) file(r outRef, inst string) (*outputFile, error) {
	f := &outputFile{outRef: r, instance: inst, size: w.n, contentType: outputContentType(r, w.head), data: w.buf}
	if w.f != nil {
		if err := w.f.Close(); err != nil {
			_ = os.Remove(w.f.Name())
			return nil, fmt.Errorf("store output: %w", err)
		}
		f.path = w.f.Name()
		w.s.outDisk.Add(f.size)
	} else if f.data == nil {
		f.data = []byte{}
	}
	w.s.outputGauges()
	return f, nil
}

// outputDir returns the directory for outputs past the memory budget,
// creating it on first use.
func (s *delivery) outputDir() (string, error) {
	s.outDirOnce.Do(func() {
		base := s.cfg.OutputDir
		if base != "" {
			if err := os.MkdirAll(base, 0o700); err != nil {
				s.outDirErr = err
				return
			}
		}
		s.outDirPath, s.outDirErr = os.MkdirTemp(base, "comfygate-outputs-")
	})
	return s.outDirPath, s.outDirErr
}

// dropOutputsLocked frees a job's outputs (it expired).
func (s *delivery) dropOutputsLocked(j *job) {
	for _, f := range j.files {
		if f.gone {
			continue // never stored here
		}
		if f.path != "" {
			_ = os.Remove(f.path)
			s.outDisk.Add(-f.size)
		} else {
			s.outMem.Add(-f.size)
		}
	}
	j.files = nil
	s.outputGauges()
}

// outputView is one output in a job's status, result and events.
type outputView struct {
	Index       int    `json:"index"`
	Node        string `json:"node"`
	Kind        string `json:"kind"`
	Filename    string `json:"filename"`
	ContentType string `json:"content_type"`
	Size        int64  `json:"size"`
	Instance    string `json:"comfyui_instance"`
	URL         string `json:"url"`
	S3Key       string `json:"s3_key,omitempty"`
	S3URL       string `json:"s3_url,omitempty"`
	S3Error     string `json:"s3_error,omitempty"`
	Base64      string `json:"base64,omitempty"`
}

// outputViewsLocked lists a completed job's outputs, with their bytes in
// base64 when withData.
func (s *delivery) outputViewsLocked(j *job, withData bool) []outputView {
	if len(j.files) == 0 {
		return nil
	}
	vs := make([]outputView, len(j.files))
	for i, f := range j.files {
		vs[i] = outputView{Index: i, Node: f.node, Kind: f.kind, Filename: f.ref.Filename, ContentType: f.contentType,
			Size: f.size, Instance: f.instance, URL: routeJobs + "/" + j.id + "/outputs/" + strconv.Itoa(i),
			S3Key: f.s3Key, S3URL: f.s3URL, S3Error: f.s3Err}
		if withData {
			if b, err := f.bytes(); err == nil {
				vs[i].Base64 = dataURL(f.contentType, b)
			}
		}
	}
	return vs
}

func dataURL(ct string, b []byte) string {
	return "data:" + ct + ";base64," + base64.StdEncoding.EncodeToString(b)
}

// lockCompleted takes the engine's lock and returns job id when it has completed,
// with the lock still held. Otherwise it answers (404 unknown, 409 with the
// job's status while it is not completed), releases the lock and returns nil.
func (s *api) lockCompleted(ctx *fasthttp.RequestCtx, id, scope string) *job {
	s.eng.mirror(id)
	s.eng.lock()
	j := s.eng.lookupLocked(id, scope)
	if j == nil {
		s.eng.unlock()
		notFound(ctx, id)
		return nil
	}
	if j.state != stCompleted {
		v := s.statusLocked(j, 1)
		s.eng.unlock()
		writeJSON(ctx, fasthttp.StatusConflict, v)
		return nil
	}
	return j
}

// serveOutput serves GET /api/jobs/{id}/outputs/{n}: the file as
// comfygate fetched it, with its media type and Range support.
func (s *api) serveOutput(ctx *fasthttp.RequestCtx, id, scope, n string) {
	j := s.lockCompleted(ctx, id, scope)
	if j == nil {
		return
	}
	i, err := strconv.Atoi(n)
	if err != nil || i < 0 || i >= len(j.files) {
		count := len(j.files)
		s.eng.unlock()
		writeError(ctx, &apiError{status: fasthttp.StatusNotFound, typ: errNotFound, msg: fmt.Sprintf("job %q has %d outputs (0 to %d)", id, count, count-1)})
		return
	}
	f := j.files[i]
	s.eng.unlock()
	serveFile(ctx, f)
}

// serveFile answers with f's bytes, honouring one Range.
func serveFile(ctx *fasthttp.RequestCtx, f *outputFile) {
	r, err := f.open()
	if err != nil {
		writeError(ctx, &apiError{status: fasthttp.StatusGone, typ: errNotFound, msg: "the output is no longer stored"})
		return
	}
	ctx.Response.Header.Set("Accept-Ranges", "bytes")
	ctx.SetContentType(f.contentType)
	ctx.Response.Header.Set("Content-Disposition", fmt.Sprintf("inline; filename=%q", path.Base(f.ref.Filename)))
	start, end, partial, ok := parseRange(string(ctx.Request.Header.Peek("Range")), f.size)
	if !ok {
		_ = r.Close()
		ctx.Response.Header.Set("Content-Range", fmt.Sprintf("bytes */%d", f.size))
		ctx.SetStatusCode(fasthttp.StatusRequestedRangeNotSatisfiable)
		return
	}
	status := fasthttp.StatusOK
	if partial {
		status = fasthttp.StatusPartialContent
		ctx.Response.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, f.size))
	}
	ctx.SetStatusCode(status)
	if ctx.IsHead() {
		_ = r.Close()
		ctx.Response.Header.SetContentLength(int(end - start))
		ctx.Response.SkipBody = true
		return
	}
	if _, err := r.Seek(start, io.SeekStart); err != nil {
		_ = r.Close()
		ctx.SetStatusCode(fasthttp.StatusInternalServerError)
		return
	}
	// fasthttp closes the body stream (the file) once it is written.
	ctx.SetBodyStream(readCloser{io.LimitReader(r, end-start), r}, int(end-start))
}

type readCloser struct {
	io.Reader
	io.Closer
}

// parseRange reads a single-range "bytes=a-b", "bytes=a-" or "bytes=-n"
// header against size. No header (or one comfygate does not support, such
// as several ranges) means the whole file; ok is false for a range
// outside the file.
func parseRange(h string, size int64) (start, end int64, partial, ok bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, size, false, true
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, size, false, true
	}
	if a == "" {
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false, false
		}
		return max(0, size-n), size, true, size > 0
	}
	s, err := strconv.ParseInt(a, 10, 64)
	if err != nil || s < 0 || s >= size {
		return 0, 0, false, false
	}
	e := size - 1
	if b != "" {
		if e, err = strconv.ParseInt(b, 10, 64); err != nil || e < s {
			return 0, 0, false, false
		}
		e = min(e, size-1)
	}
	return s, e + 1, true, true
}

// fetch downloads every output of a finished job (the output node's
// first) and completes the job.
func (s *delivery) fetch(j *job, inst *upstream.Instance, refs []outRef, upstreamID string) {
	ctx := s.ctx
	out := j.wf.cfg.OutputNode
	if !hasNode(refs, out) && inst != nil {
		// No executed event for the output node (older instances skip it for
		// cached outputs): the instance's history has the outputs.
		if _, entry := s.historyOutputs(ctx, inst, upstreamID); entry != nil {
			s.eng.lock()
			j.addOutputsLocked(historyRefs(entry))
			refs = slices.Clone(j.outRefs)
			s.eng.unlock()
		}
	}
	if !hasNode(refs, out) {
		s.eng.lock()
		s.eng.finishLocked(j, stFailed, fmt.Sprintf("the workflow finished without an output at its output node %q", out))
		s.eng.unlock()
		return
	}
	files := make([]*outputFile, 0, len(refs))
	var err error
	for _, r := range refs {
		var f *outputFile
		if f, err = s.download(ctx, j, inst, r); err != nil {
			break
		}
		files = append(files, f)
	}
	if err == nil && s.s3 != nil {
		// A failed upload leaves the output served by comfygate and says why.
		for n, f := range files {
			if f.s3Key, f.s3URL, err = s.s3.put(ctx, j.id, n, f); err != nil {
				s.log.Warn("job output upload failed", "job_id", j.id, "err", err)
				f.s3Err, err = "comfygate could not upload this output to S3", nil
			}
		}
	}
	if err == nil {
		s.st.keepResult(j, files)
	}
	s.eng.lock()
	defer s.eng.unlock()
	j.files = files // counted in s.outMem: dropped with the job
	if err != nil {
		s.log.Warn("job result download failed", "job_id", j.id, "instance", instName(inst), "err", err)
		s.eng.finishLocked(j, stFailed, "the workflow finished but comfygate could not fetch its result from ComfyUI")
		return
	}
	s.eng.finishLocked(j, stCompleted, "")
}

func hasNode(refs []outRef, node string) bool {
	return slices.ContainsFunc(refs, func(r outRef) bool { return r.node == node })
}

// historyRefs lists the files of a history entry's outputs, by node id.
func historyRefs(e *comfyapi.HistoryEntry) []outRef {
	var refs []outRef
	for _, node := range slices.Sorted(maps.Keys(e.Outputs)) {
		refs = append(refs, outputRefs(node, e.Outputs[node])...)
	}
	return refs
}

// historyOutputs reads a prompt's outputs from /history/{id}; entry is
// nil when the instance has none (or did not answer).
func (s *delivery) historyOutputs(ctx context.Context, inst *upstream.Instance, upstreamID string) (refs []outRef, entry *comfyapi.HistoryEntry) {
	e, _ := s.readHistory(ctx, inst, upstreamID)
	if e == nil {
		return nil, nil
	}
	return historyRefs(e), e
}

// readHistory reads /history/{id} of inst: entry is nil when it has none;
// answered is false when the instance did not answer.
func (s *delivery) readHistory(ctx context.Context, inst *upstream.Instance, upstreamID string) (entry *comfyapi.HistoryEntry, answered bool) {
	status, body, err := s.be.Call(ctx, inst, "GET", "/history/"+url.PathEscape(upstreamID), nil, nil)
	if err != nil || status != 200 {
		return nil, false
	}
	h, err := comfyapi.ParseHistory(body)
	if err != nil {
		return nil, false
	}
	raw, ok := h[upstreamID]
	if !ok {
		return nil, true
	}
	e, err := comfyapi.ParseHistoryEntry(raw)
	if err != nil {
		return nil, true
	}
	return &e, true
}

// downloadOnce is one GET /view of output r at inst into comfygate's
// store: the file, or the instance's status (0 when it gave none) and an
// error.
func (s *delivery) downloadOnce(ctx context.Context, j *job, inst *upstream.Instance, r outRef) (*outputFile, int, error) {
	q := url.Values{"filename": {r.ref.Filename}, "subfolder": {r.ref.Subfolder}, "type": {r.ref.Type}}
	if r.ref.Type == "" {
		q.Set("type", "output")
	}
	w := s.newSpill(j.id)
	status, err := s.be.Fetch(ctx, inst, "/view?"+q.Encode(), w)
	if err == nil && status == 200 {
		f, err := w.file(r, inst.Name)
		return f, status, err
	}
	w.discard()
	if err != nil {
		return nil, status, fmt.Errorf("get result from %s: %w", inst.Name, err)
	}
	return nil, status, fmt.Errorf("get result from %s: status %d", inst.Name, status)
}

// download fetches one output from inst's /view, falling back to
// whichever instance the prompt table finds holding it, into comfygate's store.
func (s *delivery) download(ctx context.Context, j *job, inst *upstream.Instance, r outRef) (*outputFile, error) {
	ref := r.ref
	var lastErr error
	// Failures of an instance in the fleet count (up to fetchAttempts);
	// while the instance is out (down, answering 5xx, its breaker open)
	// the download waits for it, up to fetchPatience: the output is
	// nowhere else.
	deadline := time.Now().Add(fetchPatience)
	delay := s.retryDelay
	for failures := 0; ; {
		if inst == nil || !inst.Available() {
			if owner, ok := s.be.FileOwner(ctx, ref); ok {
				inst = owner
			}
		}
		if inst == nil {
			lastErr = errors.New("no instance holds the result")
			failures++
		} else {
			counts := inst.Available()
			f, _, err := s.downloadOnce(ctx, j, inst, r)
			if err == nil {
				return f, nil
			}
			lastErr = err
			if counts && inst.Available() {
				failures++
			}
		}
		if failures >= fetchAttempts || !time.Now().Before(deadline) {
			return nil, lastErr
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}
