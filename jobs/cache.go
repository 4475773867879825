package jobs

import (
	"bytes"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// The result cache keeps the outputs of completed jobs of workflows that
// declare themselves deterministic (workflows.<name>.cache; the built-in
// ones by default), so that the same job again completes at once from
// them, without an instance. A result is found by its key: the SHA-256 of
// the owner's scope, the workflow's output node and the canonical JSON of
// the graph the job would run, parameters and overrides applied, with each
// image's place holding the SHA-256 of its bytes. Entries live in
// directories under jobs.state_dir/cache, one per key (its outputs and an
// entry.json), bounded by jobs.cache_max_bytes, least recently used first
// out; a restart finds them again by scanning that directory.

// cacheEntryFile describes an entry, in its directory beside the outputs.
const cacheEntryFile = "entry.json"

// cacheScope is the owner scope of a submission's cached results: one
// API key's results are never another's, so a key cannot learn from a
// hit (its speed, its outputs) what another key processed. With keys off
// (owner "") every caller shares one scope, "".
func cacheScope(owner string) string {
	if owner != "" {
		return "key:" + owner
	}
	return ""
}

// resultCache holds cached results in files under dir.
type resultCache struct {
	dir  string
	temp bool // dir was made under the temporary directory (no state_dir): removed by close
	max  int64
	m    *metrics.Metrics
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex // guards entries, lru and size
	entries map[string]*cacheEntry
	lru     list.List // of *cacheEntry, most recently used at the front
	size    int64     // bytes of the entries' outputs
}

// cacheEntry is one cached result, as entry.json holds it. Immutable once
// in the cache, except elem (guarded by resultCache.mu).
type cacheEntry struct {
	Key      string        `json:"key"`
	Workflow string        `json:"workflow"`
	Expires  time.Time     `json:"expires"`
	Outputs  []cacheOutput `json:"outputs"`

	size int64
	elem *list.Element
}

// cacheOutput is one output of a cached result; its bytes are the file
// named by its index in the entry's directory. The shared job records
// describe outputs in the same shape (sharedOutput).
type cacheOutput struct {
	Node        string `json:"node"`
	Kind        string `json:"kind"`
	Filename    string `json:"filename"`
	Subfolder   string `json:"subfolder,omitempty"`
	Type        string `json:"type,omitempty"`
	Instance    string `json:"instance"`
	ContentType string `json:"content_type"`
	Size        int64  `json:"size"`
	S3Key       string `json:"s3_key,omitempty"`
}

// outputOf describes f.
func outputOf(f *outputFile) cacheOutput {
	return cacheOutput{Node: f.node, Kind: f.kind, Filename: f.ref.Filename, Subfolder: f.ref.Subfolder, Type: f.ref.Type,
		Instance: f.instance, ContentType: f.contentType, Size: f.size, S3Key: f.s3Key}
}

// outRef names the output o describes.
func (o cacheOutput) outRef() outRef {
	return outRef{node: o.Node, kind: o.Kind, ref: prompts.FileRef{Filename: o.Filename, Subfolder: o.Subfolder, Type: o.Type}}
}

// openResultCache opens the cache of cfg (nil when cache_max_bytes is 0):
// under state_dir/cache, or a new temporary directory without state_dir.
// Entries found there are kept unless expired, incomplete or past the
// bound, in the order they were last used.
func openResultCache(cfg config.Jobs, m *metrics.Metrics, log *slog.Logger) (*resultCache, error) {
	if cfg.CacheMaxBytes <= 0 {
		return nil, nil
	}
	c := &resultCache{max: cfg.CacheMaxBytes, m: m, log: log, now: time.Now, entries: map[string]*cacheEntry{}}
	if cfg.StateDir == "" {
		base := cfg.OutputDir
		if base != "" {
			if err := os.MkdirAll(base, 0o700); err != nil {
				return nil, fmt.Errorf("jobs.output_dir: result cache: %w", err)
			}
		}
		dir, err := os.MkdirTemp(base, "comfygate-cache-")
		if err != nil {
			return nil, fmt.Errorf("jobs.cache_max_bytes: result cache: %w", err)
		}
		c.dir, c.temp = dir, true
		return c, nil
	}
	c.dir = filepath.Join(cfg.StateDir, "cache")
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, fmt.Errorf("jobs.state_dir: result cache: %w", err)
	}
	c.scan()
	return c, nil
}

// scan indexes the entries in the directory.
func (c *resultCache) scan() {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		c.log.Warn("jobs: result cache not read", "dir", c.dir, "err", err)
		return
	}
	type found struct {
		e    *cacheEntry
		used time.Time
	}
	var all []found
	now := c.now()
	for _, de := range des {
		name := de.Name()
		dir := filepath.Join(c.dir, name)
		if strings.HasPrefix(name, ".") { // an entry being written or removed when the last process stopped
			_ = os.RemoveAll(dir)
			continue
		}
		e, used, err := readCacheEntry(dir, name)
		if err != nil || !now.Before(e.Expires) {
			if err != nil {
				c.log.Warn("jobs: unreadable result cache entry removed", "dir", dir, "err", err)
			}
			_ = os.RemoveAll(dir)
			continue
		}
		all = append(all, found{e, used})
	}
	slices.SortFunc(all, func(a, b found) int { return b.used.Compare(a.used) })
	var victims []string
	c.mu.Lock()
	for _, f := range all {
		f.e.elem = c.lru.PushBack(f.e)
		c.entries[f.e.Key] = f.e
		c.size += f.e.size
	}
	victims = c.evictLocked()
	size := c.size
	c.mu.Unlock()
	c.removeDirs(victims)
	c.m.SetJobCacheBytes(size)
	if len(all) > 0 {
		c.log.Info("jobs: result cache found", "entries", len(all)-len(victims), "bytes", size)
	}
}

// readCacheEntry reads the entry in dir, whose name must be its key, and
// checks that its outputs are there. used is when it was last used (the
// modification time of its entry.json).
func readCacheEntry(dir, name string) (*cacheEntry, time.Time, error) {
	p := filepath.Join(dir, cacheEntryFile)
	info, err := os.Stat(p)
	if err != nil {
		return nil, time.Time{}, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, time.Time{}, err
	}
	var e cacheEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, time.Time{}, err
	}
	if e.Key != name || len(e.Outputs) == 0 {
		return nil, time.Time{}, errors.New("not a result cache entry")
	}
	for n, o := range e.Outputs {
		fi, err := os.Stat(filepath.Join(dir, strconv.Itoa(n)))
		if err != nil {
			return nil, time.Time{}, err
		}
		if fi.Size() != o.Size {
			return nil, time.Time{}, fmt.Errorf("output %d: %d bytes, want %d", n, fi.Size(), o.Size)
		}
		e.size += o.Size
	}
	return &e, info.ModTime(), nil
}

func (c *resultCache) entryDir(key string) string { return filepath.Join(c.dir, key) }

// lookup returns the live entry of key, now the most recently used; nil
// when there is none (an expired one is dropped).
func (c *resultCache) lookup(key string) *cacheEntry {
	c.mu.Lock()
	e := c.entries[key]
	if e == nil {
		c.mu.Unlock()
		return nil
	}
	now := c.now()
	if !now.Before(e.Expires) {
		dir := c.unlinkLocked(e)
		size := c.size
		c.mu.Unlock()
		c.removeDirs([]string{dir})
		c.m.SetJobCacheBytes(size)
		return nil
	}
	c.lru.MoveToFront(e.elem)
	c.mu.Unlock()
	// Its order survives a restart: the scan sorts by this time.
	_ = os.Chtimes(filepath.Join(c.entryDir(key), cacheEntryFile), now, now)
	return e
}

// drop removes key's entry (its files turned out unusable).
func (c *resultCache) drop(key string) {
	c.mu.Lock()
	e := c.entries[key]
	if e == nil {
		c.mu.Unlock()
		return
	}
	dir := c.unlinkLocked(e)
	size := c.size
	c.mu.Unlock()
	c.removeDirs([]string{dir})
	c.m.SetJobCacheBytes(size)
}

// put keeps files, the outputs of a completed job of workflow wf, as
// key's result for ttl. The outputs are hard-linked into the cache where
// the file system allows, else copied; an error leaves nothing behind.
func (c *resultCache) put(key, wf string, ttl time.Duration, files []*outputFile) error {
	var size int64
	for _, f := range files {
		size += f.size
	}
	if len(files) == 0 || size > c.max || ttl <= 0 {
		return nil
	}
	c.mu.Lock()
	_, had := c.entries[key]
	c.mu.Unlock()
	if had {
		return nil // an identical job completed first
	}
	tmp, err := os.MkdirTemp(c.dir, ".tmp-")
	if err != nil {
		return err
	}
	e := &cacheEntry{Key: key, Workflow: wf, Expires: c.now().Add(ttl), size: size}
	for n, f := range files {
		dst := filepath.Join(tmp, strconv.Itoa(n))
		if f.path != "" {
			err = linkOrCopy(f.path, dst)
		} else {
			err = os.WriteFile(dst, f.data, 0o600)
		}
		if err != nil {
			_ = os.RemoveAll(tmp)
			return err
		}
		o := outputOf(f)
		if f.s3Err != "" {
			o.S3Key = ""
		}
		e.Outputs = append(e.Outputs, o)
	}
	b, err := json.Marshal(e)
	if err == nil {
		err = os.WriteFile(filepath.Join(tmp, cacheEntryFile), b, 0o600)
	}
	if err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	c.mu.Lock()
	if _, had := c.entries[key]; had {
		c.mu.Unlock()
		_ = os.RemoveAll(tmp)
		return nil
	}
	// Renamed under the lock: an entry of this key being evicted was
	// renamed away first (unlinkLocked), so the name is free.
	if err := os.Rename(tmp, c.entryDir(key)); err != nil {
		c.mu.Unlock()
		_ = os.RemoveAll(tmp)
		return err
	}
	e.elem = c.lru.PushFront(e)
	c.entries[key] = e
	c.size += size
	victims := append(c.expireLocked(), c.evictLocked()...)
	total := c.size
	c.mu.Unlock()
	c.removeDirs(victims)
	c.m.SetJobCacheBytes(total)
	return nil
}

// expireLocked drops the entries past their ttl (each put looks, so
// expired results do not hold the bound's bytes until the least recently
// used rule reaches them), and returns their directories for removeDirs.
func (c *resultCache) expireLocked() []string {
	now := c.now()
	var dirs []string
	for _, e := range c.entries {
		if !now.Before(e.Expires) {
			dirs = append(dirs, c.unlinkLocked(e))
		}
	}
	return dirs
}

// evictLocked drops least recently used entries until the cache fits its
// bound, and returns their directories for removeDirs.
func (c *resultCache) evictLocked() []string {
	var dirs []string
	for c.size > c.max {
		back := c.lru.Back()
		if back == nil {
			break
		}
		dirs = append(dirs, c.unlinkLocked(back.Value.(*cacheEntry)))
	}
	return dirs
}

// unlinkLocked takes e out of the index and renames its directory out of
// the way (a hidden name, which the scan at start removes too), so its
// key's name is free at once; the caller removes the returned directory
// without the lock. Outputs already handed to jobs are links or copies
// of their own and stay.
func (c *resultCache) unlinkLocked(e *cacheEntry) string {
	delete(c.entries, e.Key)
	c.lru.Remove(e.elem)
	c.size -= e.size
	dir := c.entryDir(e.Key)
	gone := filepath.Join(c.dir, ".gone-"+e.Key+"-"+strconv.FormatInt(c.now().UnixNano(), 36))
	if err := os.Rename(dir, gone); err == nil {
		return gone
	}
	return dir
}

func (c *resultCache) removeDirs(dirs []string) {
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			c.log.Warn("jobs: result cache entry not removed", "dir", d, "err", err)
		}
	}
}

// bytes is the size of the cached outputs.
func (c *resultCache) bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// has reports whether key has a live entry, without using it.
func (c *resultCache) has(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[key]
	return e != nil && c.now().Before(e.Expires)
}

// close removes a temporary cache directory.
func (c *resultCache) close() {
	if c != nil && c.temp {
		_ = os.RemoveAll(c.dir)
	}
}

// linkOrCopy makes dst hold src's bytes: a hard link, or a copy when the
// two are on different file systems.
func linkOrCopy(src, dst string) error {
	if os.Link(src, dst) == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
	}
	return err
}

// cacheTTL is how long the workflow's results are reused; 0: never.
func (wf *workflow) cacheTTL() time.Duration {
	if wf.cfg.Cache == nil {
		return 0
	}
	return wf.cfg.Cache.TTL
}

// cacheKey is the result cache key of a submission in scope, and the
// graph it hashed (the job's prompt with each image's name standing for
// its bytes' SHA-256); "" when the workflow's results are not cached.
func (s *store) cacheKey(scope string, wf *workflow, sub *submission, values map[string]json.RawMessage, images map[string][]byte) (string, json.RawMessage) {
	if s.cache == nil || wf.cacheTTL() <= 0 {
		return "", nil
	}
	names := map[string]string{}
	if wf.needsImage() {
		sum, err := imageDigest(sub)
		if err != nil {
			s.log.Warn("job image not hashed: no result cache for it", "err", err)
			return "", nil
		}
		names[""] = "sha256:" + hex.EncodeToString(sum)
	}
	for _, name := range slices.Sorted(maps.Keys(images)) {
		sum := sha256.Sum256(images[name])
		names[name] = "sha256:" + hex.EncodeToString(sum[:])
	}
	graph, err := wf.buildWith(names, sub.inputs, values)
	if err != nil {
		return "", nil
	}
	canon, err := canonicalJSON(graph)
	if err != nil {
		return "", nil
	}
	h := sha256.New()
	field := func(h hash.Hash, b []byte) {
		_ = binary.Write(h, binary.BigEndian, uint64(len(b)))
		h.Write(b)
	}
	field(h, []byte("comfygate result cache 1"))
	field(h, []byte(scope))
	field(h, []byte(wf.cfg.OutputNode))
	field(h, canon)
	return hex.EncodeToString(h.Sum(nil)), graph
}

// imageDigest is the SHA-256 of the submission's image: taken while a
// spooled one was written, else of the bytes in memory.
func imageDigest(sub *submission) ([]byte, error) {
	if sub.spool == nil {
		sum := sha256.Sum256(sub.image)
		return sum[:], nil
	}
	if sub.spool.sum != nil {
		return sub.spool.sum, nil
	}
	f, err := os.Open(sub.spool.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// canonicalJSON re-encodes a JSON value with object keys sorted and no
// insignificant space, numbers kept as written.
func canonicalJSON(b []byte) ([]byte, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// acceptOrReuse is accept for a workflow whose results are cached: a
// submission whose result the cache holds (same scope, graph, parameters
// and image bytes) becomes a job completed at once from it; any other is
// accepted and, once completed, its outputs are cached (keepResult).
func (s *store) acceptOrReuse(wf *workflow, sub *submission, values map[string]json.RawMessage, images map[string][]byte, hook string, meta jobMeta) (*job, *apiError) {
	key, graph := s.cacheKey(cacheScope(meta.owner), wf, sub, values, images)
	if key != "" {
		j := s.reuse(wf, key, graph, sub, values, hook, meta)
		s.m.JobCacheLookup(wf.name, j != nil)
		if j != nil {
			return j, nil
		}
	}
	j, aerr := s.eng.accept(wf, sub, values, images, hook, meta)
	if aerr == nil && key != "" {
		s.eng.lock()
		j.cacheKey = key
		s.eng.unlock()
	}
	return j, aerr
}

// reuse makes a job completed from key's cached result; nil when the
// cache has none usable.
func (s *store) reuse(wf *workflow, key string, graph json.RawMessage, sub *submission, values map[string]json.RawMessage, hook string, meta jobMeta) *job {
	e := s.cache.lookup(key)
	if e == nil {
		e = s.fillFromFleet(wf, key)
	}
	if e == nil {
		return nil
	}
	j := &job{s: s.eng, id: newJobID(), wf: wf, inputs: sub.inputs, params: values, cached: true, meta: meta}
	files, err := s.del.cachedOutputs(e, s.cache.entryDir(e.Key), j.id)
	if err != nil {
		s.log.Warn("result cache entry unusable: the job runs", "workflow", wf.name, "err", err)
		s.cache.drop(key)
		return nil
	}
	if s.eng.sh != nil {
		j.prompt = graph
		if err := s.eng.sh.create(j); err != nil {
			s.log.Warn("job completed from the cache not recorded: the job runs", "err", err)
			s.del.dropOutputsLocked(&job{files: files})
			return nil
		}
	}
	s.eng.lock()
	defer s.eng.unlock()
	j.prompt = graph
	j.cacheKey = key
	j.prog = newProgress(wf.nodes)
	j.files = files
	j.state = stFetching
	if hook != "" {
		j.webhook = &webhookState{url: hook, progress: sub.webhookProgress}
	}
	if !s.eng.addCompletedLocked(j) {
		s.del.dropOutputsLocked(&job{files: files})
		return nil // accept answers that comfygate is shutting down
	}
	return j
}

// cachedOutputs gives job id its own links (or copies) of a cached
// entry's outputs (the files in entryDir) in the output directory: the
// job keeps them until it expires, whatever the cache evicts meanwhile.
func (s *delivery) cachedOutputs(e *cacheEntry, entryDir, id string) ([]*outputFile, error) {
	dir, err := s.outputDir()
	if err != nil {
		return nil, err
	}
	files := make([]*outputFile, 0, len(e.Outputs))
	fail := func(err error) ([]*outputFile, error) {
		for _, f := range files {
			_ = os.Remove(f.path)
			s.outDisk.Add(-f.size)
		}
		s.outputGauges()
		return nil, err
	}
	for n, o := range e.Outputs {
		dst := filepath.Join(dir, id+"-cached-"+strconv.Itoa(n))
		if err := linkOrCopy(filepath.Join(entryDir, strconv.Itoa(n)), dst); err != nil {
			return fail(err)
		}
		f := &outputFile{
			outRef:      o.outRef(),
			instance:    o.Instance,
			contentType: o.ContentType,
			size:        o.Size,
			path:        dst,
		}
		if o.S3Key != "" && s.s3 != nil {
			f.s3Key = o.S3Key
			if f.s3URL, err = s.s3.presign(s.ctx, o.S3Key); err != nil {
				f.s3URL, f.s3Err = "", "comfygate could not presign this output's S3 URL"
			}
		}
		s.outDisk.Add(f.size)
		files = append(files, f)
	}
	s.outputGauges()
	return files, nil
}

// keepResult caches the outputs of a job that completed by running, when
// its workflow's results are cached. It runs before the job is reported
// completed, so a job submitted after that finds the result.
func (s *store) keepResult(j *job, files []*outputFile) {
	s.eng.lock()
	key := j.cacheKey
	s.eng.unlock()
	if key == "" || s.cache == nil {
		return
	}
	if err := s.cache.put(key, j.wf.name, j.wf.cacheTTL(), files); err != nil {
		s.log.Warn("job result not cached", "job_id", j.id, "err", err)
		return
	}
	s.shareResult(key)
}

// fleetFillTimeout bounds how long a submission waits for the outputs of
// a result another replica cached, downloaded from their instances.
const fleetFillTimeout = 10 * time.Second

// shareResult records key's cached result in the fleet's index (with
// state.url), so that the same job on another replica completes from it.
func (s *store) shareResult(key string) {
	sh := s.eng.sh
	if sh == nil || sh.results == nil {
		return
	}
	e := s.cache.lookup(key)
	if e == nil {
		return
	}
	b, err := json.Marshal(e)
	ttl := e.Expires.Sub(s.cache.now())
	if err != nil || ttl <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
	defer cancel()
	if err := sh.results.Put(ctx, key, b, ttl); err != nil {
		sh.warn("cached result not recorded for the other replicas", err)
	}
}

// fillFromFleet fills this replica's cache with key's result from the
// fleet's index: the outputs of the job that made it, downloaded from the
// instances that hold them. nil when the index has none, or when a file
// is no longer there (the entry is then dropped, and the job runs).
func (s *store) fillFromFleet(wf *workflow, key string) *cacheEntry {
	sh := s.eng.sh
	if sh == nil || sh.results == nil {
		return nil
	}
	var b []byte
	var ok bool
	err := sh.lookup(func(ctx context.Context) (err error) {
		b, ok, err = sh.results.Get(ctx, key)
		return err
	})
	if err != nil {
		if !errors.Is(err, errReadsOff) {
			s.log.Debug("the fleet's result cache not read", "err", err)
		}
		return nil
	}
	var e cacheEntry
	if !ok || json.Unmarshal(b, &e) != nil || e.Key != key || len(e.Outputs) == 0 {
		return nil
	}
	ttl := e.Expires.Sub(s.cache.now())
	if ttl <= 0 {
		return nil
	}
	insts := map[string]*upstream.Instance{}
	for _, inst := range s.be.Instances() {
		insts[inst.Name] = inst
	}
	dctx, cancel := context.WithTimeout(s.ctx, fleetFillTimeout)
	defer cancel()
	fetched := &job{s: s.eng, id: newJobID(), wf: wf}
	defer s.del.dropOutputsLocked(fetched) // the cache keeps its own links or copies
	gone := false
	for _, o := range e.Outputs {
		inst := insts[o.Instance]
		if inst == nil {
			err, gone = fmt.Errorf("instance %q is not in the pool", o.Instance), true
			break
		}
		// One try: a job that runs instead is better than a wait.
		f, status, ferr := s.del.downloadOnce(dctx, fetched, inst, o.outRef())
		if ferr != nil {
			err, gone = ferr, status == fasthttp.StatusNotFound
			break
		}
		f.s3Key = o.S3Key
		fetched.files = append(fetched.files, f)
	}
	if err == nil {
		err = s.cache.put(key, wf.name, ttl, fetched.files)
	}
	if err != nil {
		s.log.Warn("a result another replica cached is not usable: the job runs", "workflow", wf.name, "err", err)
		if gone {
			ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
			_ = sh.results.Drop(ctx, key)
			cancel()
		}
		return nil
	}
	return s.cache.lookup(key)
}

// restoreCachedLocked takes back a job that had completed from the cache
// before a restart: its outputs are linked from the cache again, and it
// completes (or fails, when the cache no longer holds them) as soon as
// the service runs. the engine's lock held.
func (s *store) restoreCachedLocked(j *job, key string) {
	j.cached, j.cacheKey = true, key
	j.state, j.dispatched = stFetching, j.created
	s.eng.goLocked("cache", func() {
		var files []*outputFile
		err := errors.New("the result cache is off")
		if s.cache != nil {
			err = errors.New("the result cache no longer holds it")
			if e := s.cache.lookup(key); e != nil {
				files, err = s.del.cachedOutputs(e, s.cache.entryDir(e.Key), j.id)
			}
		}
		s.eng.lock()
		defer s.eng.unlock()
		if err != nil {
			s.log.Warn("restored cached job without its result", "job_id", j.id, "err", err)
			s.eng.finishLocked(j, stFailed, "comfygate restarted and the job's cached result is no longer stored")
			return
		}
		j.files = files
		s.eng.finishLocked(j, stCompleted, "")
	})
}

// presign makes a new GET URL for an uploaded object.
func (st *s3Store) presign(ctx context.Context, key string) (string, error) {
	u, err := st.client.PresignedGetObject(ctx, st.cfg.Bucket, key, st.cfg.PresignExpiry, nil)
	if err != nil {
		return "", fmt.Errorf("presign %s: %w", key, err)
	}
	return u.String(), nil
}
