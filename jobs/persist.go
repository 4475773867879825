package jobs

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/prompts"
	sharedstate "github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
)

// A job's record in the state directory: what a restarted comfygate needs
// to carry on with it. One file per job, <id>.json, replaced atomically.
type record struct {
	ID       string                     `json:"id"` // also its prompt id
	Workflow string                     `json:"workflow"`
	Seq      uint64                     `json:"seq"`
	Created  time.Time                  `json:"created"`
	Inputs   map[string]json.RawMessage `json:"inputs,omitempty"`
	Params   map[string]json.RawMessage `json:"params,omitempty"`
	Prompt   json.RawMessage            `json:"prompt"`
	Images   []recordImage              `json:"images,omitempty"`
	// State is waiting (in comfygate's line), submitted (sent to
	// Instance under the job's id), completed, failed or cancelled.
	State    string    `json:"state"`
	Instance string    `json:"instance,omitempty"`
	Finished time.Time `json:"finished,omitzero"`
	Error    string    `json:"error,omitempty"`
	Webhook  string    `json:"webhook_url,omitempty"`
	Progress bool      `json:"webhook_progress,omitempty"`
	// Cache is the result cache key of a job completed from the cache.
	Cache string `json:"cache,omitempty"`
	// Owner is the API key (its name) that submitted the job; "" with
	// keys off. A record without one is a job no key owns.
	Owner string `json:"owner,omitempty"`
	// IdempotencyKey and IdempotencyFP are the Idempotency-Key the job
	// came with and the fingerprint of its submission (hex SHA-256): a
	// replay after a restart finds the same job.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	IdempotencyFP  string `json:"idempotency_fp,omitempty"`
}

// recordImage is where a kept image of the job is.
type recordImage struct {
	Param string `json:"param,omitempty"`
	Name  string `json:"name"`
	Size  int64  `json:"size"`
	File  string `json:"file"`
}

const (
	recWaiting   = "waiting"
	recSubmitted = "submitted"
)

// stateDir writes job records. Snapshots are taken under engine.jobsMu
// (saveLocked) and written by whoever flushes next, the background writer
// or a caller that needs its record on disk before it answers; writeMu
// orders the flushes, so the newest snapshot of a job is the last written.
type stateDir struct {
	dir string

	pendingMu sync.Mutex             // guards pending and files
	pending   map[string]*record     // id -> newest snapshot; nil: remove the record
	files     map[string]pendingFile // kept images to write or remove, by path
	writeMu   sync.Mutex             // one flush at a time
	wake      chan struct{}
	log       func(msg string, args ...any)
}

func openStateDir(dir string, warn func(string, ...any)) (*stateDir, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("jobs.state_dir: %w", err)
	}
	return &stateDir{dir: dir, pending: map[string]*record{}, files: map[string]pendingFile{}, wake: make(chan struct{}, 1), log: warn}, nil
}

// pendingFile is a kept image's file to write (data) or remove.
type pendingFile struct {
	data   []byte
	remove bool
}

// putFile queues the writing of a kept image's file.
func (d *stateDir) putFile(path string, data []byte) {
	d.pendingMu.Lock()
	d.files[path] = pendingFile{data: data}
	d.pendingMu.Unlock()
	d.signal()
}

// removeFile queues the removal of a kept image's file (a write of it
// still queued is dropped).
func (d *stateDir) removeFile(path string) {
	d.pendingMu.Lock()
	if f, ok := d.files[path]; ok && !f.remove {
		delete(d.files, path) // never written: nothing to remove
		d.pendingMu.Unlock()
		return
	}
	d.files[path] = pendingFile{remove: true}
	d.pendingMu.Unlock()
	d.signal()
}

func (d *stateDir) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *stateDir) path(id string) string { return filepath.Join(d.dir, id+".json") }

// put queues rec (nil: the record's removal) for the next flush.
func (d *stateDir) put(id string, rec *record) {
	d.pendingMu.Lock()
	d.pending[id] = rec
	d.pendingMu.Unlock()
	d.signal()
}

// flush writes every queued record.
func (d *stateDir) flush() {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	d.pendingMu.Lock()
	batch, files := d.pending, d.files
	d.pending, d.files = map[string]*record{}, map[string]pendingFile{}
	d.pendingMu.Unlock()
	// Images first: a record written in this flush may name them.
	for path, f := range files {
		var err error
		if f.remove {
			if err = os.Remove(path); errors.Is(err, os.ErrNotExist) {
				err = nil
			}
		} else {
			err = writeAtomic(path, f.data)
		}
		if err != nil {
			d.log("jobs: kept image file", "file", path, "err", err)
		}
	}
	for id, rec := range batch {
		if rec == nil {
			if err := os.Remove(d.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
				d.log("jobs: remove job record", "job_id", id, "err", err)
			}
			continue
		}
		b, err := json.Marshal(rec)
		if err == nil {
			err = writeAtomic(d.path(id), b)
		}
		if err != nil {
			d.log("jobs: write job record", "job_id", id, "err", err)
		}
	}
}

// load reads every record in the directory; unreadable ones are logged
// and skipped.
func (d *stateDir) load() []*record {
	names, err := filepath.Glob(filepath.Join(d.dir, "*.json"))
	if err != nil {
		return nil
	}
	var out []*record
	for _, name := range names {
		b, err := os.ReadFile(name)
		var rec record
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err == nil && rec.ID+".json" != filepath.Base(name) {
			err = errors.New("the record's id is not its file name")
		}
		if err != nil {
			d.log("jobs: unreadable job record skipped", "file", name, "err", err)
			continue
		}
		out = append(out, &rec)
	}
	slices.SortFunc(out, func(a, b *record) int { return cmp.Compare(a.Seq, b.Seq) })
	return out
}

// saveLocked queues a snapshot of j for the state directory. A failure
// that comfygate's own shutdown caused is not recorded: the restarted
// process carries on with the job instead. the engine's lock held.
func (s *store) saveLocked(j *job) {
	if s.eng.sh != nil {
		s.eng.sh.queueLocked(j)
	}
	if s.state == nil || (s.ctx.Err() != nil && j.state == stFailed) {
		return
	}
	rec := &record{
		ID: j.id, Workflow: j.wf.name, Seq: j.seq, Created: j.created,
		Inputs: j.inputs, Params: j.params, Prompt: j.prompt,
		Instance: j.instance, Finished: j.finished, Error: j.errMsg,
		Owner: j.meta.owner,
	}
	if j.meta.idem != "" {
		rec.IdempotencyKey, rec.IdempotencyFP = j.meta.idem, hex.EncodeToString(j.meta.idemFP[:])
	}
	if j.cached {
		rec.Cache = j.cacheKey
	}
	for _, im := range j.images {
		rec.Images = append(rec.Images, recordImage{Param: im.param, Name: im.name, Size: im.size, File: im.file})
	}
	if j.webhook != nil && !j.state.terminal() {
		rec.Webhook, rec.Progress = j.webhook.url, j.webhook.progress
	}
	switch {
	case j.state.terminal():
		rec.State = j.state.public()
	case j.state == stFetching:
		rec.State = statusCompleted // its outputs are fetched again after a restart
		rec.Instance = instName(j.outInst)
		if rec.Instance == "" {
			rec.Instance = j.instance
		}
	case j.submitted:
		rec.State = recSubmitted
	default:
		rec.State = recWaiting
	}
	s.state.put(j.id, rec)
}

// persist queues j's record (accepted, or about to be sent). The writer
// goroutine writes it within moments, off the request's path.
func (s *store) persist(j *job) {
	if s.state == nil {
		return
	}
	s.eng.lock()
	s.saveLocked(j)
	s.eng.unlock()
}

// forgetLocked queues the removal of j's record (it expired).
func (s *store) forgetLocked(j *job) {
	if s.state != nil {
		s.state.put(j.id, nil)
	}
}

// flushDelay is how long the writer gathers changes before it writes
// them: a job's changes within it cost one write of its newest record, and
// a job that ends within it leaves no image file behind. It is also how
// long a change may take to reach the disk (Close writes what is queued).
const flushDelay = 100 * time.Millisecond

// writer flushes queued records until the service stops.
func (s *store) writer() {
	if s.state == nil {
		return // jobs are not persisted
	}
	t := time.NewTimer(flushDelay)
	t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.state.wake:
		}
		t.Reset(flushDelay)
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.run.safely("state", s.state.flush)
	}
}

// restore rebuilds the jobs of the state directory: waiting ones go back
// in line in their order, finished ones are kept until they expire, and
// those that were at an instance (or completed, whose outputs were in
// this process) are reconciled against the instances once the service
// starts (reconcile).
func (s *store) restore() {
	recs := s.records()
	s.eng.lock()
	defer s.eng.unlock()
	waiting, atInstances := 0, 0
	for _, rec := range recs {
		j := &job{s: s.eng, id: rec.ID, seq: rec.Seq, created: rec.Created, inputs: rec.Inputs, params: rec.Params,
			prompt: rec.Prompt, instance: rec.Instance, finished: rec.Finished, errMsg: rec.Error,
			meta: jobMeta{owner: rec.Owner}}
		s.restoreIdemLocked(j, rec)
		j.wf = s.cat.workflows()[rec.Workflow]
		if j.wf == nil {
			j.wf = &workflow{name: rec.Workflow}
			if rec.State == recWaiting || rec.State == recSubmitted || rec.State == statusCompleted {
				rec.State, rec.Error = statusFailed, fmt.Sprintf("the workflow %q is no longer configured", rec.Workflow)
				rec.Finished = s.eng.timeNow()
			}
		}
		j.prog = newProgress(j.wf.nodes)
		for _, ri := range rec.Images {
			if !relPath(s.inputs.dir, ri.File) {
				ri.File = "" // not one of comfygate's kept images: never read
			}
			im := &jobImage{param: ri.Param, name: ri.Name, size: ri.Size, file: ri.File}
			j.images = append(j.images, im)
		}
		if rec.Webhook != "" {
			j.webhook = &webhookState{url: rec.Webhook, progress: rec.Progress}
		}
		switch rec.State {
		case recWaiting:
			j.state = stWaiting
			waiting++
		case recSubmitted:
			j.state, j.submitted, j.restored = stQueued, true, true
			atInstances++
		case statusCompleted:
			if rec.Cache != "" {
				s.restoreCachedLocked(j, rec.Cache)
				break
			}
			j.state, j.restored = stFetching, true
		default:
			j.state = stFailed
			if rec.State == statusCancelled {
				j.state = stCancelled
			}
			j.errMsg, j.finished = rec.Error, rec.Finished
			if j.finished.IsZero() {
				j.finished = s.eng.timeNow()
			}
			for _, im := range j.images {
				s.inputs.release(im)
			}
			j.images = nil
		}
		s.eng.adoptLocked(j)
		if j.restored {
			s.restored = append(s.restored, j)
		}
		s.del.emitLocked(j, evQueued, "")
	}
	slices.SortFunc(s.restored, func(a, b *job) int { return cmp.Compare(a.id, b.id) })
	if n := len(recs); n > 0 {
		s.log.Info("jobs restored from the state directory", "jobs", n, "waiting", waiting, "at_instances", atInstances)
	}
}

// open opens the result cache and the state directory, and restores the
// jobs recorded there.
func (s *store) open() error {
	var err error
	if s.cache, err = openResultCache(s.cfg, s.m, s.log); err != nil {
		return err
	}
	// With the shared line the replicas' records take the place of the
	// state directory's: a restarted replica finds its jobs there.
	if dir := s.cfg.StateDir; dir != "" && s.eng.sh == nil {
		if s.state, err = openStateDir(dir, s.log.Warn); err != nil {
			return err
		}
		s.inputs.saver = s.state
		s.restore()
		s.rememberRestoredIdem()
	}
	return nil
}

// records reads the state directory's records, oldest first, once its
// leftovers are removed.
func (s *store) records() []*record {
	// Bodies being received and records being written when the last
	// process stopped are incomplete: no record names them.
	for _, pattern := range []string{filepath.Join(s.state.dir, ".tmp-*"), filepath.Join(s.state.dir, "inputs", ".*")} {
		leftovers, _ := filepath.Glob(pattern)
		for _, name := range leftovers {
			_ = os.Remove(name)
		}
	}
	return s.state.load()
}

// restoreIdemLocked remembers again the Idempotency-Key a restored job
// came with, while its TTL lasts (counted from the job's creation). A
// record whose fingerprint cannot be read keeps no key: a replay then
// makes a new job rather than one that may not match.
func (s *store) restoreIdemLocked(j *job, rec *record) {
	if rec.IdempotencyKey == "" || s.eng.timeNow().Sub(rec.Created) >= s.cfg.IdempotencyTTL {
		return
	}
	fp, err := hex.DecodeString(rec.IdempotencyFP)
	if err != nil || len(fp) != sha256.Size {
		return
	}
	j.meta.idem = rec.IdempotencyKey
	copy(j.meta.idemFP[:], fp)
	s.restoredIdem = append(s.restoredIdem, restoredIdem{key: idemKey{owner: rec.Owner, key: rec.IdempotencyKey},
		e: sharedstate.IdemEntry{FP: hex.EncodeToString(fp), JobID: j.id}, created: rec.Created})
}

// restoredIdem is the Idempotency-Key of a restored job.
type restoredIdem struct {
	key     idemKey
	e       sharedstate.IdemEntry
	created time.Time
}

// rememberRestoredIdem puts the restored jobs' keys back in the state
// store. A key another replica (or a later request) holds stays its.
func (s *store) rememberRestoredIdem() {
	for _, r := range s.restoredIdem {
		ctx, cancel := context.WithTimeout(s.ctx, idemTimeout)
		err := s.idem.Restore(ctx, r.key.stateKey(), r.e, r.created, s.cfg.IdempotencyTTL)
		cancel()
		if err != nil {
			s.log.Warn("idempotency key of a restored job not remembered", slog.String("job", r.e.JobID), slog.Any("error", err))
		}
	}
	s.restoredIdem = nil
}

// Reconcile pacing: how often a restored job's instance is asked again
// while the prompt is still queued or running there, and how long it may
// go unanswered before the job fails.
const (
	reconcileFirst  = 100 * time.Millisecond
	reconcileMax    = 2 * time.Second
	reconcileGiveUp = 10 * time.Minute
)

// reconcile settles a job that was at an instance (or completed) when
// comfygate stopped. Its prompt id is the job's id: the instance's queue
// and history say where it is. Done there: the history's outcome ends the
// job (a success's outputs are fetched). Queued or running: asked again
// until it is done (this process gets no events of a prompt it did not
// submit). Known nowhere, every instance answering (an instance that
// restarted, or a submission that never arrived): submitted again from
// the kept images.
func (s *store) reconcile(j *job) {
	ctx := s.ctx
	delay := reconcileFirst
	start := time.Now()
	for ctx.Err() == nil {
		s.eng.lock()
		if !j.restored || j.state.terminal() {
			s.eng.unlock()
			return
		}
		instName := j.instance
		s.eng.unlock()

		inst, entry, where := s.findPrompt(ctx, j.id, instName)
		switch where {
		case promptDone:
			s.settleRestored(j, inst, entry)
			return
		case promptNowhere:
			if p, ok := s.be.Prompt(j.id); ok && p.State() != prompts.PromptDone {
				// This replica's prompt table has the prompt (it adopted it
				// from the replica that died) and is sending it again:
				// followed, not sent a second time.
				start = time.Now()
				break
			}
			s.eng.lock()
			if j.restored && !j.state.terminal() {
				s.resubmitRestoredLocked(j)
			}
			s.eng.unlock()
			return
		case promptRunning:
			s.eng.lock()
			if j.state == stQueued {
				j.state = stRunning
				j.started = s.eng.timeNow()
				s.del.emitLocked(j, evStarted, "")
			}
			if inst != nil {
				j.instance = inst.Name
			}
			s.eng.unlock()
			start = time.Now()
		case promptQueued:
			start = time.Now()
		}
		if time.Since(start) > reconcileGiveUp {
			s.eng.lock()
			s.eng.finishLocked(j, stFailed, "comfygate restarted and the instance that had the job no longer answers")
			s.eng.releaseLocked(j)
			s.eng.unlock()
			return
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, reconcileMax)
	}
}

// Where findPrompt found a prompt.
const (
	promptUnanswered = iota // an instance that may have it did not answer
	promptNowhere           // every instance answered: none has it
	promptQueued
	promptRunning
	promptDone
)

// findPrompt asks the instances (the recorded one first) where prompt id
// is: each one's /queue, then its /history (a prompt moves from the one to
// the other, so asked in this order it is never missed in between).
func (s *store) findPrompt(ctx context.Context, id, recorded string) (*upstream.Instance, *comfyapi.HistoryEntry, int) {
	insts := s.be.Instances()
	slices.SortStableFunc(insts, func(a, b *upstream.Instance) int {
		return boolRank(b.Name == recorded) - boolRank(a.Name == recorded)
	})
	unanswered := false
	for _, inst := range insts {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		running, pending, qerr := s.queueIDs(cctx, inst)
		var entry *comfyapi.HistoryEntry
		answered := false
		if qerr == nil {
			entry, answered = s.del.readHistory(cctx, inst, id)
		}
		cancel()
		switch {
		case qerr != nil || !answered:
			unanswered = true
		case running[id]:
			return inst, nil, promptRunning
		case pending[id]:
			return inst, nil, promptQueued
		case entry != nil:
			return inst, entry, promptDone
		}
	}
	if unanswered {
		return nil, nil, promptUnanswered
	}
	return nil, nil, promptNowhere
}

// queueIDs returns the prompt ids inst reports running and pending.
func (s *store) queueIDs(ctx context.Context, inst *upstream.Instance) (running, pending map[string]bool, err error) {
	status, body, err := s.be.Call(ctx, inst, "GET", "/queue", nil, nil)
	if err != nil {
		return nil, nil, err
	}
	if status != 200 {
		return nil, nil, fmt.Errorf("queue of %s: status %d", inst.Name, status)
	}
	q, err := comfyapi.ParseQueue(body)
	if err != nil {
		return nil, nil, err
	}
	running, pending = q.IDSets()
	return running, pending, nil
}

// settleRestored ends a restored job as its instance's history says.
func (s *store) settleRestored(j *job, inst *upstream.Instance, entry *comfyapi.HistoryEntry) {
	refs := historyRefs(entry)
	s.eng.lock()
	defer s.eng.unlock()
	if !j.restored || j.state.terminal() {
		return
	}
	j.restored = false
	j.instance = inst.Name
	j.state = stRunning
	s.wd.endFromHistoryLocked(j, nil, inst, entry, refs)
}

// historyError is the message of a failed history entry.
func historyError(entry *comfyapi.HistoryEntry) string {
	msg := "the workflow failed on ComfyUI"
	if m, ok := entry.Status.Terminal(); ok && m.Type == comfyapi.TypeExecutionError {
		if em := m.ExceptionMessage(); em != "" {
			msg = em
		}
	}
	return msg
}

// resubmitRestoredLocked puts a restored job whose prompt no instance has
// back at the head of the line, to run from its kept images.
func (s *store) resubmitRestoredLocked(j *job) {
	j.restored = false
	for _, im := range j.images {
		if im.mem != nil {
			continue
		}
		if _, err := os.Stat(im.file); err != nil {
			s.eng.finishLocked(j, stFailed, "comfygate restarted and the job's image is no longer stored")
			s.eng.releaseLocked(j)
			return
		}
	}
	if j.state == stFetching {
		// Completed before the restart, but its outputs went with that
		// process and its instance has no history of it any more.
		s.eng.finishLocked(j, stFailed, "comfygate restarted and the instance that ran the job no longer has its outputs")
		return
	}
	s.log.Info("restored job known to no instance: submitted again", "job_id", j.id)
	s.eng.releaseLocked(j)
	j.submitted = false
	j.instance = ""
	j.state = stWaiting
	s.eng.backInLineLocked(j)
}

// startReconcilingLocked starts reconcile for every restored job.
func (s *store) startReconcilingLocked() {
	for _, j := range s.restored {
		if j.restored {
			s.eng.goLocked("reconcile", func() { s.reconcile(j) })
		}
	}
}

// relPath reports whether p is inside dir (a record's image file must be).
func relPath(dir, p string) bool {
	r, err := filepath.Rel(dir, p)
	return err == nil && r != ".." && !strings.HasPrefix(r, ".."+string(filepath.Separator))
}
