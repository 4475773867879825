package prompts

import (
	"container/list"
	"context"
	"io"
	"log/slog"
	"net/url"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// maxPins bounds the file pin table; the least recently pinned file is
// evicted first. A miss is not fatal: FileOwner asks the instances.
const maxPins = 100_000

// fileStore knows which instance holds which file (the pins) and copies
// files between instances, so that a prompt finds the files it loads on
// the instance that runs it. The Table embeds it: its exported methods
// (PinFile, FileChanged, FileOwner, EnsureInputs) are the Table's.
type fileStore struct {
	p    fleet
	cfg  *config.Config
	log  *slog.Logger
	pins *pinTable

	copiesMu sync.Mutex // guards copies
	copies   map[copyKey]chan struct{}

	// sharer, once the table shares its index (state.url), records the
	// pins for other replicas and looks up the files it misses (shared.go).
	sharer atomic.Pointer[sharedIndex]
}

func newFileStore(p fleet, cfg *config.Config, log *slog.Logger) *fileStore {
	return &fileStore{p: p, cfg: cfg, log: log, pins: newPinTable(maxPins), copies: map[copyKey]chan struct{}{}}
}

// pinTable maps a file to the machines that hold it, by endpoint
// (upstream.Instance.Endpoint). Not pointers: an instance that is
// rediscovered is a new Instance at the same machine and keeps its files.
// Not names: a reload may give a name to another address, whose files of
// the same names are other files; and an address that a reload renames
// keeps its files.
type pinTable struct {
	max int

	mu    sync.Mutex // guards byRef, order, seq
	byRef map[FileRef]*list.Element
	order *list.List // of *pinEntry, least recently pinned first
	seq   uint64     // counts changes (changed, invalidate)

	inputs atomic.Int64 // entries of type "input": none, and a prompt loads no upload to copy
}

type pinEntry struct {
	ref     FileRef
	holders []string // endpoints of the holders, most recently pinned last
	changed uint64   // seq of its last change; 0 = never changed
}

func newPinTable(max int) *pinTable {
	return &pinTable{max: max, byRef: map[FileRef]*list.Element{}, order: list.New()}
}

// add records that the machine at endpoint holds ref (ref normalized).
func (t *pinTable) add(ref FileRef, endpoint string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entryLocked(ref)
	e.holders = append(slicesDelete(e.holders, endpoint), endpoint)
}

// addSince is add unless ref changed after stamp since: a copy that
// started before the change may hold the old file.
func (t *pinTable) addSince(ref FileRef, endpoint string, since uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if el, ok := t.byRef[ref]; ok && el.Value.(*pinEntry).changed > since {
		return false
	}
	e := t.entryLocked(ref)
	e.holders = append(slicesDelete(e.holders, endpoint), endpoint)
	return true
}

// stamp returns the change count now, for addSince.
func (t *pinTable) stamp() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.seq
}

// changed records that ref was rewritten on the machine at endpoint: it
// becomes ref's most recent holder and, unless keepOthers, its only one.
func (t *pinTable) changed(ref FileRef, endpoint string, keepOthers bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entryLocked(ref)
	t.seq++
	e.changed = t.seq
	if !keepOthers {
		e.holders = e.holders[:0]
	}
	e.holders = append(slicesDelete(e.holders, endpoint), endpoint)
}

// invalidate forgets every holder of ref (copies of a file that changed).
func (t *pinTable) invalidate(ref FileRef) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entryLocked(ref)
	t.seq++
	e.changed = t.seq
	e.holders = nil
}

// entryLocked returns ref's entry, created if needed, as the most recent
// one; the least recent beyond max are evicted. t.mu held.
func (t *pinTable) entryLocked(ref FileRef) *pinEntry {
	if el, ok := t.byRef[ref]; ok {
		t.order.MoveToBack(el)
		return el.Value.(*pinEntry)
	}
	e := &pinEntry{ref: ref}
	t.byRef[ref] = t.order.PushBack(e)
	if ref.Type == "input" {
		t.inputs.Add(1)
	}
	for t.max > 0 && t.order.Len() > t.max {
		oldest := t.order.Front()
		t.order.Remove(oldest)
		gone := oldest.Value.(*pinEntry).ref
		delete(t.byRef, gone)
		if gone.Type == "input" {
			t.inputs.Add(-1)
		}
	}
	return e
}

// owners returns the endpoints of ref's holders, most recently pinned first.
func (t *pinTable) owners(ref FileRef) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	el, ok := t.byRef[ref]
	if !ok {
		return nil
	}
	holders := el.Value.(*pinEntry).holders
	out := make([]string, len(holders))
	for k, n := range holders {
		out[len(holders)-1-k] = n
	}
	return out
}

// has reports whether the machine at endpoint holds ref.
func (t *pinTable) has(ref FileRef, endpoint string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	el, ok := t.byRef[ref]
	return ok && containsString(el.Value.(*pinEntry).holders, endpoint)
}

// len returns the number of pinned files.
func (t *pinTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.order.Len()
}

func slicesDelete(s []string, v string) []string {
	out := s[:0]
	for _, x := range s {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}

func containsString(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// normalizeRef makes the ways ComfyUI names one file compare equal: an empty
// type is "output" (as /view reads it), a " [input]"/" [output]"/" [temp]"
// suffix on the name sets the type (as /view and LoadImage read it), only the
// base name counts (/view drops the rest), and the subfolder has no leading
// or trailing slash.
func normalizeRef(ref FileRef) FileRef {
	name := ref.Filename
	for _, t := range [...]string{"input", "output", "temp"} {
		if n, ok := strings.CutSuffix(name, " ["+t+"]"); ok {
			name, ref.Type = n, t
			break
		}
	}
	if ref.Type == "" {
		ref.Type = "output"
	}
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	ref.Filename = name
	ref.Subfolder = cleanSubfolder(ref.Subfolder)
	return ref
}

func cleanSubfolder(s string) string {
	s = strings.ReplaceAll(s, `\`, "/")
	s = strings.Trim(s, "/")
	if s == "" {
		return ""
	}
	return path.Clean(s)
}

// PinFile records that inst holds ref (learned from outputs and uploads).
// A file may be held by several instances (inputs copied by EnsureInputs);
// the most recent pin is preferred.
func (fs *fileStore) PinFile(ref FileRef, inst *upstream.Instance) {
	if inst == nil {
		return
	}
	ref = normalizeRef(ref)
	if ref.Filename == "" {
		return
	}
	fs.pins.add(ref, inst.Endpoint())
	if sh := fs.sharer.Load(); sh != nil {
		sh.sharePin(ref, inst.Endpoint())
	}
}

// FileChanged records that ref was just written on holder (an upload, an
// overwrite, a mask): holder holds the current file, and the copies of it
// that other instances got for earlier prompts are stale. Their pins are
// dropped, so the next prompt that needs ref there copies it again (a
// copy overwrites); a copy under way now is not pinned when it ends.
//
// For inputs every other holder of ref is such a copy (uploads land in one
// place). For outputs and temp files, another instance's file of that name
// is its own and keeps its pin; the copies dropped are those of holder's
// file (comfygate-copies/<holder>~<id>/..., see copyRef). Cheap (no I/O)
// and safe to call after any upload, also when nothing changed.
func (fs *fileStore) FileChanged(ref FileRef, holder *upstream.Instance) {
	if holder == nil {
		return
	}
	ref = normalizeRef(ref)
	if ref.Filename == "" {
		return
	}
	sh := fs.sharer.Load()
	if sh != nil {
		sh.sharePin(ref, holder.Endpoint())
	}
	if ref.Type == "input" {
		fs.pins.changed(ref, holder.Endpoint(), false)
		return
	}
	fs.pins.changed(ref, holder.Endpoint(), true)
	stale := normalizeRef(copyRef(holder, ref))
	fs.pins.invalidate(stale)
	if sh != nil {
		sh.sharePin(stale, "")
	}
}

// FilePinned reports whether some instance is known to hold ref, without
// asking the instances: a cheap test for names that may be text.
func (fs *fileStore) FilePinned(ref FileRef) bool {
	ref = normalizeRef(ref)
	return ref.Filename != "" && len(fs.pins.owners(ref)) > 0
}

// FileOwner returns the instance that holds ref; on a miss it asks the
// instances (GET /view with Range: bytes=0-0, so no file is downloaded) and
// pins the answer. ok=false when none has it.
//
// A pinned holder always wins over asking: when two instances both wrote
// ComfyUI_00001_.png, only the pin learned from the prompt's outputs tells
// them apart. Among several holders the most recent pin that is available
// wins; when none is available the most recent holder is returned anyway
// (never a different instance that merely has a file of that name). A
// holder is the machine the file was pinned at: an instance whose address
// a reload changed no longer holds the files of its old address, and an
// address that moved to another name keeps them. A file whose holders all
// left the pool is not found (ok=false): the instances are not asked.
func (fs *fileStore) FileOwner(ctx context.Context, ref FileRef) (inst *upstream.Instance, ok bool) {
	ref = normalizeRef(ref)
	if ref.Filename == "" {
		return nil, false
	}
	var fallback *upstream.Instance
	insts := fs.p.Instances()
	holders := fs.pins.owners(ref)
	for _, endpoint := range holders {
		in := upstream.ByEndpoint(insts, endpoint)
		if in == nil {
			continue
		}
		if in.Available() {
			return in, true
		}
		if fallback == nil {
			fallback = in
		}
	}
	if fallback != nil {
		return fallback, true
	}
	if len(holders) > 0 {
		// Every machine known to hold the file left the pool (a reload
		// removed it or moved its name to another address): asking would
		// find another machine's file of that name.
		return nil, false
	}
	if sh := fs.sharer.Load(); sh != nil {
		// Another replica may have pinned it (its prompt's output): that
		// pin tells two instances' files of one name apart.
		if in := sh.fileOwner(ctx, ref); in != nil {
			fs.pins.add(ref, in.Endpoint())
			return in, true
		}
	}
	return fs.probeOwner(ctx, ref)
}

// probeOwner asks every healthy instance in parallel whether it has ref and
// pins the first that answers 200 or 206.
func (fs *fileStore) probeOwner(ctx context.Context, ref FileRef) (*upstream.Instance, bool) {
	cands := fs.p.Healthy()
	if len(cands) == 0 {
		return nil, false
	}
	deadline := time.Now().Add(fs.cfg.HealthCheck.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	uri := viewURI(ref)
	found := make(chan *upstream.Instance, len(cands))
	for _, inst := range cands {
		go func() {
			if hasFile(inst, uri, deadline) {
				found <- inst
			} else {
				found <- nil
			}
		}()
	}
	for range cands {
		select {
		case inst := <-found:
			if inst != nil {
				fs.PinFile(ref, inst)
				return inst, true
			}
		case <-ctx.Done():
			return nil, false
		}
	}
	return nil, false
}

// viewURI is the /view request for ref.
func viewURI(ref FileRef) string {
	q := url.Values{}
	q.Set("filename", ref.Filename)
	q.Set("subfolder", ref.Subfolder)
	q.Set("type", ref.Type)
	return "/view?" + q.Encode()
}

// hasFile asks inst for the first byte of the file at uri (a probe).
func hasFile(inst *upstream.Instance, uri string, deadline time.Time) bool {
	if time.Until(deadline) <= 0 {
		return false
	}
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(fasthttp.MethodGet)
	req.SetRequestURI(uri)
	// aiohttp's FileResponse honours Range: one byte, not the whole image.
	req.Header.Set("Range", "bytes=0-0")
	a, err := inst.Transport().Do(context.Background(), req, upstream.DoOpts{Probe: true, Timeout: time.Until(deadline)})
	if err != nil {
		return false
	}
	code := a.StatusCode()
	// Drain a little so a small answer keeps its connection; a server that
	// ignored Range gets its connection closed instead of a full download.
	if bs := a.Response().BodyStream(); bs != nil {
		_, _ = io.CopyN(io.Discard, bs, 4096)
	}
	_ = a.Close()
	return code == fasthttp.StatusOK || code == fasthttp.StatusPartialContent
}
