package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/ids"
	sharedstate "github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// Shared-line tuning that configuration does not expose.
const (
	// claimLease is how long a replica's claim of a job lasts without
	// renewal: a job whose replica died is claimed again after it.
	claimLease = 10 * time.Second
	// sharedEvery paces the shared loop: claim renewals, cancels asked on
	// other replicas, mirrors of other replicas' jobs, and claims.
	sharedEvery = 200 * time.Millisecond
	// sharedTimeout bounds one call to the shared store.
	sharedTimeout = 2 * time.Second
	// lookupTimeout bounds the read of a job this replica does not hold.
	lookupTimeout = 500 * time.Millisecond
	// lookupPause is how long lookups are not tried after one failed.
	lookupPause = time.Second
	// gaugeEvery paces the reads of the shared line's length for the
	// wait line gauge.
	gaugeEvery = time.Second
	// warnEvery spaces warnings about the shared store not answering.
	warnEvery = 10 * time.Second
	// cancelRouteWait bounds how long a cancel of a job another replica
	// holds waits for that replica to end it.
	cancelRouteWait = 5 * time.Second
)

// sharedJobs runs a replica's side of the job line the replicas share
// (state.url set): an accepted job goes into the shared line, not this
// replica's; every replica claims jobs from its head while it has free
// slots, runs them as its own, and writes each change to the job's
// record; the jobs it does not hold it mirrors from their records, so
// that every route answers for any job on any replica. nil in memory.
type sharedJobs struct {
	eng     *engine
	line    sharedstate.Jobs
	results sharedstate.ResultIndex // the result cache's index (cache.go: fillFromFleet)
	replica string                  // this replica's id in claims
	lease   time.Duration           // claimLease; tests shorten it
	every   time.Duration           // sharedEvery
	log     *slog.Logger
	wake    chan struct{} // a claim may be due
	// readsOffUntil (unix ns): after a lookup Redis did not answer, none
	// is tried until then (lookup).
	readsOffUntil atomic.Int64
	// warnedAt (unix ns) is the last warning about the shared store: while
	// Redis is away the loops would warn every round; they warn every
	// warnEvery at most.
	warnedAt atomic.Int64

	gaugedAt  time.Time  // the last gauge read (the shared loop's own)
	pendingMu sync.Mutex // guards pending
	pending   map[string]*sharedstate.JobWrite
	writeMu   sync.Mutex // one flush at a time, so a job's writes stay in order
	written   chan struct{}
}

func newSharedJobs(eng *engine, line sharedstate.Jobs, results sharedstate.ResultIndex, log *slog.Logger) *sharedJobs {
	return &sharedJobs{eng: eng, line: line, results: results, replica: ids.UUID(), lease: claimLease, every: sharedEvery, log: log,
		wake: make(chan struct{}, 1), written: make(chan struct{}, 1), pending: map[string]*sharedstate.JobWrite{}}
}

// warn logs a failure of the shared store, at most once per warnEvery.
func (s *sharedJobs) warn(msg string, err error) {
	now := time.Now().UnixNano()
	last := s.warnedAt.Load()
	if now-last < int64(warnEvery) || !s.warnedAt.CompareAndSwap(last, now) {
		s.log.Debug(msg, "err", err)
		return
	}
	s.log.Warn(msg, "err", err)
}

// kick wakes the shared loop: a slot is free, or a job joined the line.
func (s *sharedJobs) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// sharedLive is the part of a job's record that changes as it runs.
type sharedLive struct {
	Progress     int            `json:"progress"`
	Instance     string         `json:"instance,omitempty"`
	Submitted    bool           `json:"submitted,omitempty"` // its prompt may be at an instance under the job's id
	Dispatched   time.Time      `json:"dispatched,omitzero"`
	Started      time.Time      `json:"started,omitzero"`
	Finished     time.Time      `json:"finished,omitzero"`
	Error        string         `json:"error,omitempty"`
	ErrorDetails *errorDetails  `json:"error_details,omitempty"`
	Cached       bool           `json:"cached,omitempty"`
	Outputs      []sharedOutput `json:"outputs,omitempty"`
}

// sharedOutput is one output of a completed job: where a replica that
// did not fetch it finds it, and its S3 object as the holder saw it.
type sharedOutput struct {
	cacheOutput
	S3URL   string `json:"s3_url,omitempty"`
	S3Error string `json:"s3_error,omitempty"`
}

// sharedEvent is one entry of a job's shared event log; its id is its
// 1-based place in the log, as on one process.
type sharedEvent struct {
	Type string          `json:"t"`
	Data json.RawMessage `json:"d"`
	At   time.Time       `json:"at"`
}

// stateName names a job's state in its shared record.
func stateName(st state) string {
	if st.terminal() {
		return st.public()
	}
	return stateNames[st]
}

// parseState is stateName's inverse; ok is false for a name it never gives.
func parseState(name string) (state, bool) {
	for st := stWaiting; st <= stCancelled; st++ {
		if stateName(st) == name {
			return st, true
		}
	}
	return 0, false
}

// liveLocked is j's changing part for its record.
func (s *sharedJobs) liveLocked(j *job) []byte {
	l := sharedLive{Progress: j.prog.reported, Instance: j.instance, Submitted: j.submitted, Dispatched: j.dispatched,
		Started: j.started, Finished: j.finished, Error: j.errMsg, ErrorDetails: j.errDetail, Cached: j.cached}
	if j.state == stCompleted {
		for _, f := range j.files {
			l.Outputs = append(l.Outputs, sharedOutput{cacheOutput: outputOf(f), S3URL: f.s3URL, S3Error: f.s3Err})
		}
	}
	b, _ := json.Marshal(l)
	return b
}

// staticLocked is what j runs, for its record: the state directory's
// record shape without its changing fields.
func staticLocked(j *job) []byte {
	rec := record{ID: j.id, Workflow: j.wf.name, Seq: j.seq, Created: j.created, Inputs: j.inputs, Params: j.params,
		Prompt: j.prompt, Owner: j.meta.owner}
	for _, im := range j.images {
		rec.Images = append(rec.Images, recordImage{Param: im.param, Name: im.name, Size: im.size})
	}
	if j.webhook != nil {
		rec.Webhook, rec.Progress = j.webhook.url, j.webhook.progress
	}
	b, _ := json.Marshal(rec)
	return b
}

func eventJSON(ev jobEvent) []byte {
	b, _ := json.Marshal(sharedEvent{Type: ev.typ, Data: ev.data, At: ev.at})
	return b
}

// add puts j, accepted here with its images kept, at the end of its API
// key's jobs in the shared line. Its first event, queued, carries its
// place there, which the store knows only as it adds it: the event goes
// in two halves.
func (s *sharedJobs) add(j *job) *apiError {
	s.eng.lock()
	static, live, sum := staticLocked(j), s.liveLocked(j), summaryLocked(j)
	queued := queuedHalves(j.id, s.eng.timeNow())
	s.eng.unlock()
	var imgs [][]byte
	for _, im := range j.images {
		b, err := readImage(im)
		if err != nil {
			s.log.Error("job image not read back", "job_id", j.id, "err", err)
			return &apiError{status: fasthttp.StatusServiceUnavailable, typ: errNoUpstream, msg: "comfygate cannot store the image now", retryAfter: 5}
		}
		imgs = append(imgs, b)
	}
	ctx, cancel := context.WithTimeout(s.eng.runCtx, sharedTimeout)
	defer cancel()
	err := s.line.Add(ctx, sharedstate.JobAdd{ID: j.id, JobSummary: sum, Static: static, Live: live, Queued: queued, Images: imgs,
		MaxWaiting: s.eng.cfg.MaxWaiting, MaxBytes: s.eng.cfg.MaxWaitingBytes})
	switch {
	case errors.Is(err, sharedstate.ErrLineFull), errors.Is(err, sharedstate.ErrLineBytes):
		wait := retryAfterSeconds(s.eng.line.runEstimate(j.wf.name))
		msg := "the wait line is full; retry later"
		if errors.Is(err, sharedstate.ErrLineBytes) {
			msg = "the wait line holds its maximum of image bytes (jobs.max_waiting_bytes); retry later"
		}
		return &apiError{status: fasthttp.StatusTooManyRequests, typ: errQueueFull, msg: msg, retryAfter: wait}
	case err != nil:
		s.log.Warn("job not added to the shared wait line", "job_id", j.id, "err", err)
		return &apiError{status: fasthttp.StatusServiceUnavailable, typ: errStateUnavailable,
			msg: "comfygate cannot reach its shared state now", retryAfter: 1}
	}
	return nil
}

// create records j, which needs no wait line (completed from the
// result cache), as this replica's.
func (s *sharedJobs) create(j *job) error {
	ctx, cancel := context.WithTimeout(s.eng.runCtx, sharedTimeout)
	defer cancel()
	return s.line.Create(ctx, j.id, s.replica, staticLocked(j), summaryLocked(j))
}

// summaryLocked is what the fleet's job list shows of j besides its state.
func summaryLocked(j *job) sharedstate.JobSummary {
	return sharedstate.JobSummary{Key: j.meta.owner, Workflow: j.wf.name, Created: j.created}
}

// queuedHalves is a new job's queued event, as it goes to the shared
// log, cut where its place in the line goes.
func queuedHalves(id string, now time.Time) [2][]byte {
	const marker = math.MaxInt32
	pos := marker
	data, _ := json.Marshal(eventView{JobID: id, Status: statusPending, QueuePosition: &pos, Timestamp: now.UTC()})
	b := eventJSON(jobEvent{typ: evQueued, data: data, at: now})
	pre, suf, _ := bytes.Cut(b, []byte(`"queue_position":`+strconv.Itoa(marker)))
	return [2][]byte{append(pre, `"queue_position":`...), suf}
}

func readImage(im *jobImage) ([]byte, error) {
	r, err := im.open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// queueLocked queues j's newest state and the events it has not handed
// over yet for the writer. The engine's lock is held.
func (s *sharedJobs) queueLocked(j *job) {
	if j.remote {
		return
	}
	w := sharedstate.JobWrite{ID: j.id, State: stateName(j.state), Live: s.liveLocked(j), From: j.shared, TTL: sharedstate.JobTTL}
	if j.state.terminal() {
		w.TTL = max(s.eng.cfg.Timeout, time.Second)
	}
	for _, ev := range j.events[min(j.shared, len(j.events)):] {
		w.Events = append(w.Events, eventJSON(ev))
	}
	j.shared = len(j.events)
	s.pendingMu.Lock()
	if old := s.pending[j.id]; old != nil {
		w.From, w.Events = old.From, append(old.Events, w.Events...)
	}
	s.pending[j.id] = &w
	s.pendingMu.Unlock()
	select {
	case s.written <- struct{}{}:
	default:
	}
}

// writer writes what queueLocked gathered until the service stops.
func (s *sharedJobs) writer() {
	for {
		select {
		case <-s.eng.runCtx.Done():
			s.flush(context.Background()) // the last changes, as the state directory's
			return
		case <-s.written:
		}
		if err := s.flush(s.eng.runCtx); err != nil {
			s.warn("job records not written to the shared state; retrying", err)
			t := time.NewTimer(s.every)
			select {
			case <-s.eng.runCtx.Done():
			case <-t.C:
			}
			t.Stop()
			select {
			case s.written <- struct{}{}:
			default:
			}
		}
	}
}

// flush writes every queued change. Changes Redis did not take go back
// in the queue ahead of newer ones; jobs whose claim another replica
// holds now are given up here.
func (s *sharedJobs) flush(ctx context.Context) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.pendingMu.Lock()
	batch := s.pending
	s.pending = map[string]*sharedstate.JobWrite{}
	s.pendingMu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	ws := make([]sharedstate.JobWrite, 0, len(batch))
	for _, w := range batch {
		ws = append(ws, *w)
	}
	cctx, cancel := context.WithTimeout(ctx, sharedTimeout)
	lost, err := s.line.Write(cctx, s.replica, ws)
	cancel()
	if err != nil {
		s.pendingMu.Lock()
		for id, w := range batch {
			if newer := s.pending[id]; newer != nil {
				newer.From, newer.Events = w.From, append(w.Events, newer.Events...)
				continue
			}
			s.pending[id] = w
		}
		s.pendingMu.Unlock()
		return err
	}
	for _, id := range lost {
		s.lose(id)
	}
	return nil
}

// sendable records, before j's prompt goes to an instance, that it may be
// there: a replica that claims j after this one died then looks for it
// at the instances before it sends it again. It fails when the record
// could not be written (the caller puts j back in line) or the claim
// passed to another replica (errClaimLost: j is given up here).
func (s *sharedJobs) sendable(j *job) error {
	s.eng.lock()
	s.queueLocked(j)
	s.eng.unlock()
	if err := s.flush(s.eng.runCtx); err != nil {
		return err
	}
	s.eng.lock()
	defer s.eng.unlock()
	if j.remote {
		return errClaimLost
	}
	return nil
}

// errClaimLost: another replica holds the job now.
var errClaimLost = errors.New("the job's claim passed to another replica")

// lose gives up job id, which another replica claimed (this one was too
// slow to renew its claim): it becomes a mirror here.
func (s *sharedJobs) lose(id string) {
	s.eng.lock()
	defer s.eng.unlock()
	j := s.eng.jobs[id]
	if j == nil || j.remote {
		return
	}
	s.log.Warn("job claimed by another replica: given up here", "job_id", id)
	s.eng.releaseLocked(j)
	if j.state == stWaiting {
		s.eng.line.remove(j)
	}
	s.eng.line.done(j)
	for _, im := range j.images {
		s.eng.inputs.release(im)
	}
	j.images = nil
	j.remote = true
	j.notifyLocked()
}

// loop is one round of the shared loop: claims renewed (and cancels
// asked elsewhere started), mirrors refreshed, and jobs claimed while
// slots are free.
func (s *sharedJobs) loop() {
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		s.eng.run.safely("shared jobs", s.once)
		select {
		case <-s.eng.runCtx.Done():
			return
		case <-t.C:
		case <-s.wake:
		}
	}
}

func (s *sharedJobs) once() {
	ctx, cancel := context.WithTimeout(s.eng.runCtx, sharedTimeout)
	defer cancel()
	s.renew(ctx)
	s.refresh(ctx)
	s.claim(ctx)
	if now := time.Now(); now.Sub(s.gaugedAt) >= gaugeEvery {
		s.gaugedAt = now
		s.gauge(ctx)
	}
}

// held is the ids of the jobs this replica runs and that have not ended.
func (s *sharedJobs) held() []string {
	s.eng.lock()
	defer s.eng.unlock()
	var ids []string
	for id, j := range s.eng.jobs {
		if !j.remote && !j.state.terminal() {
			ids = append(ids, id)
		}
	}
	return ids
}

// renew renews the claims of the jobs this replica runs, and cancels
// those another replica asked to cancel.
func (s *sharedJobs) renew(ctx context.Context) {
	held := s.held()
	if len(held) == 0 {
		return
	}
	still, err := s.line.Renew(ctx, s.replica, held, s.lease)
	if err != nil {
		s.warn("job claims not renewed", err)
		return
	}
	for _, id := range held {
		cancelAsked, ok := still[id]
		switch {
		case !ok:
			s.eng.lock()
			j := s.eng.jobs[id]
			gone := j != nil && !j.remote && !j.state.terminal()
			s.eng.unlock()
			if gone {
				s.lose(id)
			}
		case cancelAsked:
			s.eng.lock()
			j := s.eng.jobs[id]
			first := j != nil && !j.sharedCancel
			if first {
				j.sharedCancel = true
			}
			s.eng.unlock()
			if first {
				s.eng.spawn("cancel", func() { s.eng.cancel(s.eng.runCtx, id, "") })
			}
		}
	}
}

// refresh reads the records of the jobs this replica mirrors and has not
// seen end, and applies them.
func (s *sharedJobs) refresh(ctx context.Context) {
	s.eng.lock()
	var ids []string
	var from []int
	for id, j := range s.eng.jobs {
		if j.remote && !j.state.terminal() && !j.mirrorFetching && !j.adding {
			ids = append(ids, id)
			from = append(from, j.mirrored)
		}
	}
	s.eng.unlock()
	if len(ids) == 0 {
		return
	}
	recs, err := s.line.Read(ctx, ids, from)
	if err != nil {
		s.log.Debug("mirrored jobs not read", "err", err)
		return
	}
	s.eng.lock()
	defer s.eng.unlock()
	for i, rec := range recs {
		j := s.eng.jobs[ids[i]]
		if j == nil || !j.remote || j.mirrored != from[i] {
			continue
		}
		if rec == nil {
			// Expired, or lost by Redis: as a job this replica never saw.
			delete(s.eng.jobs, ids[i])
			j.notifyLocked()
			continue
		}
		s.applyLocked(j, rec)
	}
}

// claim claims from the shared line as many jobs as this replica has
// free slots for, and runs them.
func (s *sharedJobs) claim(ctx context.Context) {
	s.eng.lock()
	free := s.eng.cfg.MaxConcurrent - s.eng.inFlight - s.eng.line.len()
	hold := s.eng.now().Before(s.eng.holdUntil) || s.eng.closed
	s.eng.unlock()
	if free <= 0 || hold {
		return
	}
	recs, err := s.line.Claim(ctx, s.replica, free, s.lease)
	if err != nil {
		s.warn("jobs not claimed from the shared wait line", err)
		return
	}
	for i := range recs {
		s.adopt(&recs[i])
	}
}

// adopt runs a job this replica claimed: it waits in this replica's line
// for a slot, or, when a replica that held it before may have sent its
// prompt, it is looked for at the instances first (as after a restart).
func (s *sharedJobs) adopt(rec *sharedstate.JobRecord) {
	s.eng.lock()
	defer s.eng.unlock()
	j := s.eng.jobs[rec.ID]
	if j != nil && !j.remote {
		return // this replica's already: the claim is its again
	}
	if j == nil || j.images == nil {
		nj, err := s.jobFromRecord(rec)
		if err != nil {
			s.log.Warn("claimed job not readable: failed", "job_id", rec.ID, "err", err)
			if nj == nil {
				return // its claim runs out; no replica can read it either
			}
			if j == nil {
				j = nj
				s.eng.jobs[j.id] = j
			}
			j.remote = false
			s.eng.finishLocked(j, stFailed, "comfygate could not read the job's record")
			return
		}
		if j == nil {
			j = nj
			s.eng.jobs[j.id] = j
		} else {
			// The mirror becomes the job, so that whoever waits on it sees it go on.
			j.wf, j.seq, j.created, j.inputs, j.params, j.prompt, j.meta = nj.wf, nj.seq, nj.created, nj.inputs, nj.params, nj.prompt, nj.meta
			j.images, j.webhook, j.prog = nj.images, nj.webhook, nj.prog
		}
	}
	j.events = nil
	j.remote = false
	s.applyEventsLocked(j, rec.Events)
	j.shared = len(j.events)
	j.mirrored = len(j.events)
	var live sharedLive
	_ = json.Unmarshal(rec.Live, &live)
	j.prog.reported = max(j.prog.reported, live.Progress) // never goes down
	st, _ := parseState(rec.State)
	if live.Submitted || st >= stQueued {
		// A replica that held it before may have sent it: the instances
		// say whether it is there (reconcile), as after a restart.
		j.instance, j.dispatched, j.started = live.Instance, live.Dispatched, live.Started
		j.state, j.submitted, j.restored = stQueued, true, true
		s.eng.adoptLocked(j)
		s.eng.goLocked("reconcile", func() { s.eng.st.reconcile(j) })
	} else {
		j.state = stWaiting
		s.eng.adoptLocked(j)
		s.eng.positionsLocked()
		s.eng.gaugesLocked()
		s.eng.run.kick()
	}
	if j.webhook != nil && j.webhook.progress {
		s.eng.goLocked("webhook", func() { s.eng.del.streamHook(j) })
	}
	s.queueLocked(j)
	j.notifyLocked()
}

// jobFromRecord builds a job from its shared record, its images kept
// here.
func (s *sharedJobs) jobFromRecord(rec *sharedstate.JobRecord) (*job, error) {
	var r record
	if err := json.Unmarshal(rec.Static, &r); err != nil {
		return nil, err
	}
	j := &job{s: s.eng, id: rec.ID, seq: r.Seq, created: r.Created, inputs: r.Inputs, params: r.Params, prompt: r.Prompt,
		meta: jobMeta{owner: r.Owner}, remote: true}
	j.wf = s.eng.cat.workflows()[r.Workflow]
	if j.wf == nil {
		j.wf = &workflow{name: r.Workflow}
	}
	j.prog = newProgress(j.wf.nodes)
	if r.Webhook != "" {
		j.webhook = &webhookState{url: r.Webhook, progress: r.Progress}
	}
	if len(rec.Images) > 0 && len(rec.Images) != len(r.Images) {
		return j, errors.New("the job's images are not all stored")
	}
	for i, ri := range r.Images {
		im := &jobImage{param: ri.Param, name: ri.Name, size: ri.Size}
		if i < len(rec.Images) {
			if err := s.eng.inputs.keep(im, j.id, rec.Images[i]); err != nil {
				return j, err
			}
		}
		j.images = append(j.images, im)
	}
	return j, nil
}

// mirror makes job id, unknown here, a mirror of its shared record if
// it has one. Routes call it before they look a job up.
func (s *engine) mirror(id string) {
	if s.sh == nil || !ids.IsCanonicalUUID(id) {
		return
	}
	s.jobsMu.Lock()
	_, known := s.jobs[id]
	s.jobsMu.Unlock()
	if known {
		return
	}
	var recs []*sharedstate.JobRecord
	err := s.sh.lookup(func(ctx context.Context) (err error) {
		recs, err = s.sh.line.Read(ctx, []string{id}, []int{0})
		return err
	})
	if err != nil {
		// Answered as a job this replica never saw; logged at debug, as
		// every request naming a job would log it while Redis is away.
		if !errors.Is(err, errReadsOff) {
			s.log.Debug("job record not read", "job_id", id, "err", err)
		}
		return
	}
	if recs[0] == nil {
		return
	}
	s.jobsMu.Lock()
	defer s.jobsMu.Unlock()
	if s.jobs[id] != nil || s.closed {
		return
	}
	j, err := s.sh.jobFromRecord(&sharedstate.JobRecord{ID: id, Static: recs[0].Static})
	if err != nil {
		s.log.Warn("job record not understood", "job_id", id, "err", err)
		return
	}
	j.images = nil // a mirror runs nothing
	s.jobs[id] = j
	s.sh.applyLocked(j, recs[0])
}

// applyLocked brings mirror j to its record. A completed job's outputs
// are fetched here from its instance before it shows completed here, so
// that its result is served at once.
func (s *sharedJobs) applyLocked(j *job, rec *sharedstate.JobRecord) {
	var live sharedLive
	_ = json.Unmarshal(rec.Live, &live)
	st, ok := parseState(rec.State)
	if !ok {
		return
	}
	j.prog.reported = max(j.prog.reported, live.Progress)
	j.instance, j.dispatched, j.started, j.finished = live.Instance, live.Dispatched, live.Started, live.Finished
	j.errMsg, j.errDetail, j.submitted = live.Error, live.ErrorDetails, live.Submitted
	if live.Cached && !j.cached {
		j.cached = true // set once, before any route reads it
	}
	j.remotePos = rec.Position
	if j.images != nil && st != stWaiting {
		// Accepted here, claimed by another replica: the images are its.
		for _, im := range j.images {
			s.eng.inputs.release(im)
		}
		j.images = nil
	}
	events := rec.Events
	if st == stCompleted && j.files == nil {
		// Outputs first: the completed event waits for them.
		st = stFetching
		if n := len(events); n > 0 {
			var last sharedEvent
			if json.Unmarshal(events[n-1], &last) == nil && last.Type == evCompleted {
				events = events[:n-1]
			}
		}
		j.mirrorFetching = true
		outs := live.Outputs
		if !s.eng.goLocked("mirror outputs", func() { s.fetchOutputs(j, outs) }) {
			j.mirrorFetching = false
		}
	}
	s.applyEventsLocked(j, events)
	j.mirrored += len(events)
	if st != j.state || len(events) > 0 {
		j.state = st
		j.notifyLocked()
	}
}

// applyEventsLocked appends shared events to j's log.
func (s *sharedJobs) applyEventsLocked(j *job, events [][]byte) {
	for _, raw := range events {
		var ev sharedEvent
		if json.Unmarshal(raw, &ev) != nil {
			ev = sharedEvent{Type: evProgress, Data: json.RawMessage(`{}`)}
		}
		j.events = append(j.events, jobEvent{id: len(j.events) + 1, typ: ev.Type, data: ev.Data, at: ev.At})
	}
}

// fetchOutputs downloads a mirrored completed job's outputs from the
// instances that hold them, then shows it completed. An output no
// instance serves any more is listed, and answered 410.
func (s *sharedJobs) fetchOutputs(j *job, outs []sharedOutput) {
	insts := map[string]*upstream.Instance{}
	for _, inst := range s.eng.be.Instances() {
		insts[inst.Name] = inst
	}
	files := make([]*outputFile, 0, len(outs))
	for _, o := range outs {
		r := o.outRef()
		f, err := s.eng.del.download(s.eng.runCtx, j, insts[o.Instance], r)
		if err != nil {
			s.log.Warn("output of a job another replica ran not fetched", "job_id", j.id, "err", err)
			f = &outputFile{outRef: r, instance: o.Instance, gone: true}
		}
		f.contentType, f.size, f.s3Key, f.s3URL, f.s3Err = o.ContentType, o.Size, o.S3Key, o.S3URL, o.S3Error
		files = append(files, f)
	}
	s.eng.lock()
	defer s.eng.unlock()
	j.mirrorFetching = false
	if j.remote {
		// The next refresh reads the completed record again and, the
		// outputs here, shows it.
		j.files = files
		s.kick()
	}
}

// cancelRemote cancels job id, which another replica holds or which waits
// in the shared line. A waiting one is taken from the line and cancelled
// here; a held one is flagged for its replica, which cancels it, and the
// answer waits (cancelRouteWait at most) to see it end.
func (s *engine) cancelRemote(ctx context.Context, id string) (known, cancelled, handled bool) {
	cctx, cancel := context.WithTimeout(s.runCtx, sharedTimeout)
	rec, taken, err := s.sh.line.Take(cctx, id, s.sh.replica, s.sh.lease)
	cancel()
	if err != nil {
		s.log.Warn("cancel: job not taken from the shared line", "job_id", id, "err", err)
		return true, false, true
	}
	if taken {
		s.sh.adopt(&rec)
		return false, false, false // this replica's now: cancelled as its own
	}
	cctx, cancel = context.WithTimeout(s.runCtx, sharedTimeout)
	asked, err := s.sh.line.AskCancel(cctx, id)
	cancel()
	if err != nil {
		s.log.Warn("cancel: not asked of the replica that holds the job", "job_id", id, "err", err)
	}
	deadline := time.NewTimer(cancelRouteWait)
	defer deadline.Stop()
	for asked {
		s.jobsMu.Lock()
		j := s.jobs[id]
		if j == nil || !j.remote || j.state.terminal() {
			s.jobsMu.Unlock()
			break
		}
		if j.changed == nil {
			j.changed = make(chan struct{})
		}
		ch := j.changed
		s.jobsMu.Unlock()
		s.sh.kick()
		select {
		case <-ch:
		case <-deadline.C:
			asked = false
		case <-ctx.Done():
			asked = false
		case <-s.runCtx.Done():
			asked = false
		}
	}
	s.jobsMu.Lock()
	defer s.jobsMu.Unlock()
	j := s.jobs[id]
	if j == nil {
		return false, false, true
	}
	return true, j.state == stCancelled, true
}

// spawn is goLocked for a caller that does not hold the lock.
func (s *engine) spawn(what string, fn func()) {
	s.jobsMu.Lock()
	s.goLocked(what, fn)
	s.jobsMu.Unlock()
}

// release hands the jobs this replica still runs to the next replica
// that claims (it shuts down): their claims end now rather than when
// their lease runs out. Jobs at an instance are followed there by their
// next holder, as after a replica's death; the others wait for its slots.
func (s *sharedJobs) release() {
	held := s.held()
	if len(held) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedTimeout)
	defer cancel()
	if err := s.line.Release(ctx, s.replica, held); err != nil {
		s.log.Warn("job claims not released: other replicas take the jobs when the claims run out", "jobs", len(held), "err", err)
	}
}

// heldIDs lists the jobs this replica runs (mirrors left out), sorted.
func (s *engine) heldIDs() []string {
	s.jobsMu.Lock()
	defer s.jobsMu.Unlock()
	var out []string
	for id, j := range s.jobs {
		if !j.remote {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// errReadsOff is a lookup not tried: the shared store did not answer one
// less than lookupPause ago.
var errReadsOff = errors.New("the shared store did not answer a moment ago")

// lookup runs read, one call to the shared store on a request's path,
// bounded by lookupTimeout. After one the store did not answer, none is
// tried for lookupPause (errReadsOff), so that requests naming many jobs,
// or a proxy route asking about each prompt, wait for Redis once.
func (s *sharedJobs) lookup(read func(ctx context.Context) error) error {
	if time.Now().UnixNano() < s.readsOffUntil.Load() {
		return errReadsOff
	}
	ctx, cancel := context.WithTimeout(s.eng.runCtx, lookupTimeout)
	defer cancel()
	if err := read(ctx); err != nil {
		s.readsOffUntil.Store(time.Now().Add(lookupPause).UnixNano())
		return err
	}
	return nil
}

// maxListed bounds how many jobs one list reads from the shared store:
// the newest.
const maxListed = 10_000

// list reads the fleet's jobs of scope ("": every key's) from the shared
// store; ok is false when it did not answer within lookupTimeout.
func (s *sharedJobs) list(scope string) (jobs []sharedstate.JobListed, ok bool) {
	err := s.lookup(func(ctx context.Context) (err error) {
		jobs, err = s.line.List(ctx, scope, maxListed)
		return err
	})
	if err != nil && !errors.Is(err, errReadsOff) {
		s.warn("the fleet's job list not read; listing this replica's jobs", err)
	}
	return jobs, err == nil
}

// lineView is the fleet's job line for the operator's view: the shared
// wait line's head and the jobs every replica holds, those this replica
// holds as it knows them; ok is false when the store did not answer.
func (s *sharedJobs) lineView(max int) (Line, bool) {
	var fleet sharedstate.JobLine
	err := s.lookup(func(ctx context.Context) (err error) {
		fleet, err = s.line.Line(ctx, max)
		return err
	})
	if err != nil {
		if !errors.Is(err, errReadsOff) {
			s.warn("the fleet's job line not read; showing this replica's", err)
		}
		return Line{}, false
	}
	s.eng.lock()
	defer s.eng.unlock()
	now := s.eng.timeNow()
	item := func(r sharedstate.JobListed) LineJob {
		if j := s.eng.jobs[r.ID]; j != nil && !j.remote && stateNames[j.state] != "" {
			return lineJobOf(j, now)
		}
		var live sharedLive
		_ = json.Unmarshal(r.Live, &live)
		return LineJob{ID: r.ID, Workflow: r.Workflow, State: r.State, Progress: live.Progress, Instance: live.Instance,
			AgeSeconds: float64(now.Sub(r.Created).Milliseconds()) / 1000}
	}
	l := Line{Waiting: make([]LineJob, 0, len(fleet.Waiting)), Active: make([]LineJob, 0, len(fleet.Held)),
		WaitingTotal: fleet.WaitingTotal, ActiveTotal: fleet.HeldTotal}
	for _, r := range fleet.Waiting {
		l.Waiting = append(l.Waiting, item(r))
	}
	for _, r := range fleet.Held {
		l.Active = append(l.Active, item(r))
	}
	return l, true
}

// gauge sets comfygate_wait_line_length to the shared line's length,
// every replica the same: the jobs wait in the fleet's line, not in a
// replica's.
func (s *sharedJobs) gauge(ctx context.Context) {
	l, err := s.line.Line(ctx, 0)
	if err != nil {
		s.log.Debug("the shared wait line's length not read", "err", err)
		return
	}
	s.eng.m.SetWaitLine(l.WaitingTotal)
}
