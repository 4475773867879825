// Package catalogue owns what each ComfyUI instance can run: its node
// classes (GET /object_info) and model files (GET /models and
// /models/{folder}), read when the instance joins or comes back and every
// routing.catalogue_interval after (a re-read that finds the same
// /object_info body, by hash, does not parse it again). From them it
// decides which instances can run a prompt (every node class and every
// model file it names), remembers which models each instance ran last
// (affinity), and answers /object_info and /models for the whole fleet.
package catalogue

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/url"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/jsonobj"
	"github.com/comfygate/comfygate/upstream"
)

// Pool is what the catalogue needs of the instance pool.
type Pool interface {
	Instances() []*upstream.Instance
}

// Catalogue is one instance's catalogue.
type Catalogue struct {
	// hash of the /object_info body it was parsed from.
	hash [32]byte
	// classes are the node classes in the instance's order, with their
	// definitions as the instance sent them.
	classes []jsonobj.Member
	nodes   map[string]bool
	// folders are the model folders /models lists, in its order; models
	// maps each to its files (normalized). nil: the instance has no
	// /models (older than mid-2024), so models are not judged.
	folders []string
	models  map[string]map[string]bool
	files   map[string][]string // folder -> files as the instance lists them
}

// entry is an instance's catalogue and its refresh bookkeeping.
type entry struct {
	cat       *Catalogue // nil until the first successful read
	comebacks uint64     // the instance's Comebacks at the last read
	read      time.Time  // last read attempt
	err       string     // last read error, "" after a success
	running   bool       // a read is under way
	lastModel string     // ModelKey of the last prompt sent to it
}

// Store holds every instance's catalogue. Its methods are safe for
// concurrent use.
type Store struct {
	pool     Pool
	interval atomic.Int64 // time.Duration; SetInterval changes it
	log      *slog.Logger

	mu      sync.RWMutex // guards byInst
	byInst  map[*upstream.Instance]*entry
	version atomic.Uint64 // bumped whenever a catalogue changes

	unionMu sync.Mutex // guards union
	union   *union     // built for one version
}

// New returns a store for pool's instances, re-read every interval
// (routing.catalogue_interval).
func New(pool Pool, interval time.Duration, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{pool: pool, log: log, byInst: map[*upstream.Instance]*entry{}}
	s.interval.Store(int64(interval))
	return s
}

// SetInterval changes how often catalogues are re-read (a reload).
func (s *Store) SetInterval(d time.Duration) {
	if d > 0 {
		s.interval.Store(int64(d))
	}
}

// tick is how often Run looks for instances to read: a comeback is noticed
// within it.
const tick = 500 * time.Millisecond

// Run reads the catalogues until ctx ends: an instance that is healthy
// and was never read, came back since (Instance.State().Comebacks changed), or was
// read longer than the interval ago, is read (each in a goroutine of its
// own, joined before Run returns). Instances that left the pool are
// forgotten.
func (s *Store) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		for _, inst := range s.due() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer s.recover()
				_ = s.Refresh(ctx, inst)
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Store) recover() {
	if r := recover(); r != nil {
		s.log.Error("catalogue: panic recovered", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	}
}

// due returns the instances to read now, marking them running, and drops
// the entries of instances no longer in the pool.
func (s *Store) due() []*upstream.Instance {
	insts := s.pool.Instances()
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*upstream.Instance
	for _, inst := range insts {
		e := s.byInst[inst]
		if e == nil {
			e = &entry{}
			s.byInst[inst] = e
		}
		if e.running || !inst.State().Healthy() {
			continue
		}
		if e.cat == nil && !e.read.IsZero() && now.Sub(e.read) < 5*tick {
			continue // failed just now: do not hammer it
		}
		if e.cat == nil || e.comebacks != inst.State().Comebacks() || now.Sub(e.read) >= time.Duration(s.interval.Load()) {
			e.running = true
			out = append(out, inst)
		}
	}
	for inst := range s.byInst {
		if !slices.Contains(insts, inst) {
			delete(s.byInst, inst)
			s.version.Add(1)
		}
	}
	return out
}

// Refresh reads inst's catalogue now. /object_info is parsed only when its
// body's hash differs from the last one.
func (s *Store) Refresh(ctx context.Context, inst *upstream.Instance) error {
	s.mu.Lock()
	e := s.byInst[inst]
	if e == nil {
		e = &entry{}
		s.byInst[inst] = e
	}
	e.running = true
	prev := e.cat
	comebacks := inst.State().Comebacks()
	s.mu.Unlock()

	cat, err := read(ctx, inst, prev)

	s.mu.Lock()
	defer s.mu.Unlock()
	e.running, e.read = false, time.Now()
	if s.byInst[inst] != e {
		return err // left the pool meanwhile
	}
	if err != nil {
		if msg := err.Error(); msg != e.err {
			e.err = msg
			s.log.Warn("catalogue: could not read the instance's catalogue", "instance", inst.Name, "error", err)
		}
		return err
	}
	e.err, e.comebacks = "", comebacks
	if cat != prev {
		e.cat = cat
		s.version.Add(1)
		s.log.Info("catalogue: read", "instance", inst.Name, "node_classes", len(cat.classes), "model_folders", len(cat.folders))
	}
	return nil
}

// read fetches inst's catalogue; it returns prev itself when nothing changed.
func read(ctx context.Context, inst *upstream.Instance, prev *Catalogue) (*Catalogue, error) {
	body, err := get(ctx, inst, "/object_info")
	if err != nil {
		return nil, err
	}
	cat := &Catalogue{hash: sha256.Sum256(body)}
	if prev != nil && prev.hash == cat.hash {
		cat.classes, cat.nodes = prev.classes, prev.nodes
	} else {
		ms, err := comfyapi.ObjectInfoClasses(body)
		if err != nil {
			return nil, fmt.Errorf("object_info of %s: %w", inst.Name, err)
		}
		cat.classes = ms
		cat.nodes = make(map[string]bool, len(ms))
		for _, m := range ms {
			cat.nodes[m.Key] = true
		}
	}
	if err := readModels(ctx, inst, cat); err != nil {
		return nil, err
	}
	if prev != nil && prev.hash == cat.hash && slices.Equal(prev.folders, cat.folders) && sameFiles(prev.files, cat.files) {
		return prev, nil
	}
	return cat, nil
}

// readModels fills cat's folders and files from /models and /models/{folder}.
// Models that cannot be read are not judged rather than failing the read:
// an instance without /models (404, older than mid-2024) or whose /models
// fails leaves them nil; a folder whose list fails is left out (and so
// not judged). Only a cancelled ctx fails it.
func readModels(ctx context.Context, inst *upstream.Instance, cat *Catalogue) error {
	status, body, err := inst.Transport().Call(ctx, "GET", "/models", nil, nil)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil || status != 200 {
		return nil
	}
	folders, err := comfyapi.ParseModelList(body)
	if err != nil {
		return nil
	}
	cat.models = make(map[string]map[string]bool, len(folders))
	cat.files = make(map[string][]string, len(folders))
	for _, f := range folders {
		b, err := get(ctx, inst, "/models/"+url.PathEscape(f))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			continue
		}
		files, err := comfyapi.ParseModelList(b)
		if err != nil {
			continue
		}
		set := make(map[string]bool, len(files))
		for _, x := range files {
			set[normalize(x)] = true
		}
		cat.folders = append(cat.folders, f)
		cat.models[f], cat.files[f] = set, files
	}
	return nil
}

func sameFiles(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

// get does one GET that must answer 200.
func get(ctx context.Context, inst *upstream.Instance, path string) ([]byte, error) {
	status, body, err := inst.Transport().Call(ctx, "GET", path, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("%s of %s: %w", strings.TrimPrefix(path, "/"), inst.Name, err)
	}
	if status != 200 {
		return nil, fmt.Errorf("%s of %s: status %d", strings.TrimPrefix(path, "/"), inst.Name, status)
	}
	return body, nil
}

// Status is an instance's catalogue state for /health.
type Status struct {
	Known       bool   `json:"known"`
	NodeClasses int    `json:"node_classes"`
	ModelFiles  int    `json:"model_files"`
	Error       string `json:"error,omitempty"`
}

// Status returns inst's catalogue state.
func (s *Store) Status(inst *upstream.Instance) Status {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e := s.byInst[inst]
	if e == nil {
		return Status{}
	}
	st := Status{Error: e.err}
	if e.cat != nil {
		st.Known, st.NodeClasses = true, len(e.cat.classes)
		for _, f := range e.cat.files {
			st.ModelFiles += len(f)
		}
	}
	return st
}

// missing lists what cat lacks of n, in words for an error message.
func (c *Catalogue) missing(n Needs) []string {
	var out []string
	for _, nd := range n.Nodes {
		if !c.nodes[nd.Class] {
			out = append(out, fmt.Sprintf("node class %q (node #%s)", nd.Class, nd.NodeID))
		}
	}
	if c.models == nil {
		return out
	}
	for _, m := range n.Models {
		judged, found := false, false
		v := normalize(m.Value)
		for _, f := range m.Folders {
			if files, ok := c.models[f]; ok {
				judged = true
				found = found || files[v]
			}
		}
		if judged && !found {
			out = append(out, fmt.Sprintf("model %s/%s (node #%s %s)", m.Folders[0], m.Value, m.NodeID, m.Input))
		}
	}
	return out
}

// Verdict is where a prompt can run.
type Verdict struct {
	// Eligible accepts the instances that can run it; nil when any can.
	Eligible func(*upstream.Instance) bool
	// Runnable is false when no instance can run it.
	Runnable bool
	// Missing says, per instance (config order), what it lacks.
	Missing []InstanceMissing
	// Nowhere are the node classes and model values no instance has.
	Nowhere []string
	// NowhereModels are the model needs no instance has (for node_errors).
	NowhereModels []ModelNeed
}

// InstanceMissing is what one instance lacks.
type InstanceMissing struct {
	Instance string
	Lacks    []string
}

// Decide says where a prompt with needs n can run, among the instances
// among accepts (nil: all): on those whose catalogue has all of it. Instances whose catalogue is not known yet
// (just joined, or unreadable) are used only when no known one can run it:
// a prompt never goes to an instance known to lack what it needs, nor, in
// a fleet that can run it, to one not yet read. Instances leaving the pool
// are not counted.
func (s *Store) Decide(n Needs, among func(*upstream.Instance) bool) Verdict {
	if n.Empty() {
		return Verdict{Runnable: true, Eligible: among}
	}
	insts := s.pool.Instances()
	if among != nil {
		insts = slices.DeleteFunc(insts, func(inst *upstream.Instance) bool { return !among(inst) })
	}
	var known, unknown []*upstream.Instance
	var v Verdict
	s.mu.RLock()
	for _, inst := range insts {
		if inst.State().Leaving() {
			continue
		}
		e := s.byInst[inst]
		if e == nil || e.cat == nil {
			unknown = append(unknown, inst)
			continue
		}
		if lacks := e.cat.missing(n); len(lacks) > 0 {
			v.Missing = append(v.Missing, InstanceMissing{Instance: inst.Name, Lacks: lacks})
			continue
		}
		known = append(known, inst)
	}
	s.mu.RUnlock()
	set := known
	if len(set) == 0 {
		set = unknown
	}
	if len(set) == 0 {
		v.Nowhere, v.NowhereModels = s.nowhere(n)
		return v
	}
	v.Runnable = true
	if len(v.Missing) == 0 && len(unknown) == 0 {
		v.Eligible = among // every instance can: no filter beyond among
		return v
	}
	v.Eligible = func(inst *upstream.Instance) bool { return slices.Contains(set, inst) }
	return v
}

// nowhere returns the needs no known instance has.
func (s *Store) nowhere(n Needs) (words []string, models []ModelNeed) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, nd := range n.Nodes {
		found := false
		for _, e := range s.byInst {
			found = found || (e.cat != nil && e.cat.nodes[nd.Class])
		}
		if !found {
			words = append(words, fmt.Sprintf("node class %q (node #%s)", nd.Class, nd.NodeID))
		}
	}
	for _, m := range n.Models {
		found := false
		for _, e := range s.byInst {
			if e.cat == nil || e.cat.models == nil {
				continue
			}
			for _, f := range m.Folders {
				found = found || e.cat.models[f][normalize(m.Value)]
			}
		}
		if !found {
			words = append(words, fmt.Sprintf("model %s/%s (node #%s %s)", m.Folders[0], m.Value, m.NodeID, m.Input))
			models = append(models, m)
		}
	}
	return words, models
}

// Ran records that inst was sent a prompt loading the models of key.
func (s *Store) Ran(inst *upstream.Instance, key string) {
	if key == "" || inst == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.byInst[inst]; e != nil {
		e.lastModel = key
	} else {
		s.byInst[inst] = &entry{lastModel: key}
	}
}

// LastModels returns the model files of the last prompt sent to inst
// (what affinity prefers it for), sorted; nil when none.
func (s *Store) LastModels(inst *upstream.Instance) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if e := s.byInst[inst]; e != nil && e.lastModel != "" {
		return strings.Split(e.lastModel, "\n")
	}
	return nil
}

// Affine returns the instance to prefer for a prompt loading the models of
// key: among the Available instances ok accepts (nil: all), one whose last
// prompt loaded the same models, unless its outstanding work exceeds the
// least busy one's by more than margin. nil when none (or margin < 0).
func (s *Store) Affine(key string, ok func(*upstream.Instance) bool, margin int) *upstream.Instance {
	if key == "" || margin < 0 {
		return nil
	}
	var least int64 = -1
	var best *upstream.Instance
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, inst := range s.pool.Instances() {
		if !inst.Available() || (ok != nil && !ok(inst)) {
			continue
		}
		w := inst.Workload().Total()
		if least < 0 || w < least {
			least = w
		}
		if e := s.byInst[inst]; e != nil && e.lastModel == key && (best == nil || w < best.Workload().Total()) {
			best = inst
		}
	}
	if best == nil || best.Workload().Total() > least+int64(margin) {
		return nil
	}
	return best
}

// sortedUnion returns the union of lists, sorted.
func sortedUnion(lists ...[]string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range lists {
		for _, x := range l {
			if !seen[x] {
				seen[x] = true
				out = append(out, x)
			}
		}
	}
	sort.Strings(out)
	return out
}
