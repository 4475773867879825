package prompts

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
)

// The shared index (state.url set): what another replica needs to route a
// read for a prompt this replica submitted, and the pins of the files its
// instances hold. The replica that steps a prompt records it: step hands
// each change of its routing (instance, upstream id, number, end) to one
// writer goroutine, which writes what has gathered in one pipeline. No
// step waits for Redis, and no event writes anything unless it moved the
// prompt. Other replicas only read the records (SharedPrompt, and
// FileOwner on a miss): they never step or own those prompts.

const (
	// sharedQueue bounds the records waiting for the writer: a burst
	// beyond it while Redis is slow or down is dropped (and counted),
	// never waited for.
	sharedQueue = 4096
	// sharedBatch is the most records one pipeline writes.
	sharedBatch = 256
	// sharedWriteTimeout bounds one pipeline.
	sharedWriteTimeout = 2 * time.Second
	// recordedWait bounds how long a submission's answer waits for its
	// record: clients resend a POST they got no answer to, and a resend
	// runs twice.
	recordedWait = 500 * time.Millisecond
	// sharedReadTimeout bounds a lookup on a miss: a read that misses
	// the local table waits at most this long for the others' record.
	sharedReadTimeout = 500 * time.Millisecond
	// sharedReadPause is how long lookups are not tried after one failed:
	// a request that looks up many ids (a list, a delete) waits for an
	// unanswering Redis once, not once per id.
	sharedReadPause = time.Second
)

// sharedIndex is the table's side of the replicas' shared index.
type sharedIndex struct {
	idx      state.PromptIndex
	p        fleet            // the instances a record's endpoint names
	m        *metrics.Metrics // its errors
	log      *slog.Logger
	run      *run // the writer runs in the table's run
	queue    chan sharedWrite
	running  atomic.Bool   // the writer goroutine runs
	wrote    chan struct{} // closed when the writer has written its last batch and returned
	failedAt atomic.Int64  // unix nanoseconds of the last failed lookup
	failing  atomic.Bool   // the last write failed: answers do not wait for records (recorded)
	// With leases (lease.go), every record is fenced by the replica's
	// liveness lease as it was when its step queued it: guard is the
	// current one, nil while the replica holds none.
	fenced atomic.Bool
	guard  atomic.Pointer[incarnation]
}

// readable reports whether a lookup may be tried (none failed within
// sharedReadPause); a lookup not tried counts as a failed one.
func (sh *sharedIndex) readable() bool {
	if f := sh.failedAt.Load(); f != 0 && time.Since(time.Unix(0, f)) < sharedReadPause {
		sh.m.StateIndexError("read")
		return false
	}
	return true
}

// readFailed notes a failed lookup: logged, counted, and the next ones
// paused.
func (sh *sharedIndex) readFailed(what string, err error) {
	sh.failedAt.Store(time.Now().UnixNano())
	sh.m.StateIndexError("read")
	sh.log.Warn("shared prompt index: lookup failed", "of", what, "err", err)
}

// sharedWrite is one record or file pin for the writer.
type sharedWrite struct {
	rec   *state.PromptRecord
	pr    *Prompt // rec's prompt: marked recorded once rec is written
	pin   *state.FilePin
	owner *[2]string    // prompt id, API key name
	ack   chan struct{} // closed once what was queued before it is written (or given up)
}

// ShareIndex makes the table record its prompts' routing and its file
// pins in idx, and consult idx for files it does not know (FileOwner).
// A nil idx (memory) leaves the table to itself. Call it before Start.
func (t *Table) ShareIndex(idx state.PromptIndex) {
	if idx == nil {
		return
	}
	sh := &sharedIndex{idx: idx, p: t.p, m: t.m, log: t.log, run: t.run, queue: make(chan sharedWrite, sharedQueue),
		wrote: make(chan struct{})}
	t.shared.Store(sh)
	t.fileStore.sharer.Store(sh)
}

// ShareUploadNow writes the shared pin of an upload (ref, on holder)
// before it returns, bounded by sharedWriteTimeout, so that a prompt
// loading it that reaches another replica as soon as the upload is
// answered finds where it is. FileChanged queues the same pin for the
// writer; this one does not wait for the queue. A failed write is logged
// and counted as the writer's are. Nothing without a shared index.
func (t *Table) ShareUploadNow(ref FileRef, holder *upstream.Instance) {
	sh := t.shared.Load()
	if sh == nil || holder == nil {
		return
	}
	ref = normalizeRef(ref)
	if ref.Filename == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), sharedWriteTimeout)
	defer cancel()
	if err := sh.idx.PinFiles(ctx, []state.FilePin{{File: sharedFileName(ref), Endpoint: holder.Endpoint()}}); err != nil {
		sh.m.StateIndexError("write")
		sh.log.Warn("shared prompt index: write failed", "files", 1, "err", err)
	}
}

// SharesIndex reports whether the table has a shared index (state.url).
func (t *Table) SharesIndex() bool { return t.shared.Load() != nil }

// SharedPrompt is another replica's record of a prompt this table does
// not hold: where to route a read for it. Instance is nil when its machine
// is not in this replica's pool.
type SharedPrompt struct {
	ID         string
	Instance   *upstream.Instance
	UpstreamID string
	ClientID   string
	Owner      string // the API key's name that submitted it ("": unknown)
	Numbered   bool   // Number is its fleet queue number
	Number     int64
	Done       bool
	Running    bool
	Accepted   bool   // an instance accepted it once
	Refused    bool   // never accepted and given up (lifecycle.Dropped)
	Submission string // the Fingerprint of its client's body ("": none)
}

// SharedPrompt looks id up in the replicas' shared index, for a prompt
// this table does not know: found false without a shared index, when no
// replica recorded it, or when the lookup failed (logged and counted, and
// answered as a prompt nobody knows). The owner is returned even without
// a record, for authorization. It reads only: the prompt stays the other
// replica's.
func (t *Table) SharedPrompt(ctx context.Context, id string) (sp SharedPrompt, found bool) {
	sh := t.shared.Load()
	if sh == nil || id == "" || !sh.readable() {
		return SharedPrompt{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, sharedReadTimeout)
	defer cancel()
	rec, owner, ok, err := sh.idx.Prompt(ctx, id)
	if err != nil {
		sh.readFailed("a prompt", err)
		return SharedPrompt{}, false
	}
	sp = SharedPrompt{ID: id, Owner: owner}
	if !ok {
		return sp, false
	}
	sp.UpstreamID, sp.Done = rec.UpstreamID, rec.Done
	if sp.UpstreamID == "" {
		sp.UpstreamID = id
	}
	var life sharedLife
	if json.Unmarshal(rec.Life, &life) == nil {
		sp.Running = life.Phase == lifecycle.Running
		sp.Accepted, sp.Refused = life.Accepted, life.Phase == lifecycle.Dropped
		sp.Submission = life.Submission
		sp.ClientID = life.ClientID
		sp.Numbered, sp.Number = life.Numbered && !life.OwnNumber, life.Number
	}
	sp.Instance = upstream.ByEndpoint(sh.p.Instances(), rec.Endpoint)
	return sp, true
}

// sharedExtra is what a record's Life carries beside lifecycle.State:
// the client's own client_id, for rewriting what the instance says.
type sharedExtra struct {
	ClientID string `json:",omitempty"`
	// OwnNumber: the client sees the instance's number, not the fleet's.
	OwnNumber bool `json:",omitempty"`
	// Submission is the prompt's Fingerprint: a repeat of its POST on
	// any replica is answered as this prompt.
	Submission string `json:",omitempty"`
	// Socket is the client_id its last send carried (the socket id of the
	// replica that sent it): an adopter listens under it (borrow.go).
	Socket string `json:",omitempty"`
}

// sharedLife is the Life of a record: the prompt's lifecycle.State, the
// client_id it was submitted with and the one its last send carried.
type sharedLife struct {
	lifecycle.State
	sharedExtra
}

// shareStep records pr's routing when a step changed it. In pr's step.
func (sh *sharedIndex) shareStep(pr *Prompt, prev lifecycle.State, prevInst *upstream.Instance, next lifecycle.State, inst *upstream.Instance) {
	if next.Adopted || inst == nil {
		return
	}
	if inst == prevInst && prev.UpstreamID == next.UpstreamID && prev.Numbered == next.Numbered &&
		prev.Attempts == next.Attempts && prev.Posting == next.Posting &&
		prev.Phase.Done() == next.Phase.Done() && (prev.Phase == lifecycle.Running) == (next.Phase == lifecycle.Running) {
		return
	}
	var g *incarnation
	if sh.fenced.Load() {
		if g = sh.guard.Load(); g == nil {
			// No liveness lease: a record now could claim a prompt
			// another replica adopts.
			sh.m.StateIndexError("dropped")
			return
		}
	}
	life, err := json.Marshal(sharedLife{State: next, sharedExtra: sharedExtra{ClientID: pr.ClientID, OwnNumber: pr.ownNumber,
		Submission: pr.submission, Socket: pr.sentSocket()}})
	if err != nil {
		return
	}
	rec := &state.PromptRecord{ID: pr.ID, Endpoint: inst.Endpoint(), Instance: inst.Name, UpstreamID: next.UpstreamID,
		Done: next.Phase.Done(), Life: life, Owner: pr.owner}
	if next.Numbered && !pr.ownNumber {
		rec.Number = next.Number
	}
	if g != nil {
		rec.Guard, rec.Token = g.lease, g.token
		if next.Attempts != prev.Attempts {
			// A send: its body, for another replica to send it again.
			rec.Body = pr.lastBody()
		}
	}
	sh.write(sharedWrite{rec: rec, pr: pr})
}

// recorded waits, with leases, until the records queued so far are
// written (at most recordedWait), pr's among them: a prompt is recorded
// before its client's answer, so that another replica can adopt it.
// Nothing for a nil pr, without leases, or while writes fail (the prompt
// was sent: its answer is not held for a Redis that does not answer).
func (sh *sharedIndex) recorded(pr *Prompt) {
	if pr == nil || sh == nil || !sh.fenced.Load() || sh.failing.Load() {
		return
	}
	ack := make(chan struct{})
	sh.write(sharedWrite{ack: ack})
	timer := time.NewTimer(recordedWait)
	defer timer.Stop()
	select {
	case <-ack:
	case <-timer.C:
	}
}

// ShareOwner records, for the other replicas, the API key name that owns
// prompt id (written with the table's other records, off the request's
// path). Nothing without a shared index.
func (t *Table) ShareOwner(id, owner string) {
	sh := t.shared.Load()
	if sh == nil || id == "" || owner == "" {
		return
	}
	sh.write(sharedWrite{owner: &[2]string{id, owner}})
}

// sharePin records a file pin (an empty endpoint forgets the file).
func (sh *sharedIndex) sharePin(ref FileRef, endpoint string) {
	sh.write(sharedWrite{pin: &state.FilePin{File: sharedFileName(ref), Endpoint: endpoint}})
}

// sharedFileName is a normalized ref as one string for the shared pins.
func sharedFileName(ref FileRef) string {
	return ref.Type + "\x00" + ref.Subfolder + "\x00" + ref.Filename
}

// write queues w for the writer, starting it if need be; a full
// queue or a table not running drops w (counted).
func (sh *sharedIndex) write(w sharedWrite) {
	select {
	case sh.queue <- w:
	default:
		sh.m.StateIndexError("dropped")
		return
	}
	if sh.running.Load() || !sh.running.CompareAndSwap(false, true) {
		return
	}
	if !sh.run.goBackground(sh.writer) {
		sh.running.Store(false)
	}
}

// writer writes what the queue holds, a batch per pipeline, until
// the table closes; then it writes what is left once, within the timeout.
func (sh *sharedIndex) writer(ctx context.Context) {
	defer close(sh.wrote)
	var recs []state.PromptRecord
	var recPrs []*Prompt // recs' prompts, in step
	var pins []state.FilePin
	var acks []chan struct{}
	owners := map[string]string{}
	add := func(w sharedWrite) {
		if w.ack != nil {
			acks = append(acks, w.ack)
		}
		if w.owner != nil {
			owners[w.owner[0]] = w.owner[1]
		}
		if w.rec != nil {
			recs, recPrs = append(recs, *w.rec), append(recPrs, w.pr)
		}
		if w.pin != nil {
			pins = append(pins, *w.pin)
		}
	}
	flush := func() {
		defer func() {
			for _, a := range acks {
				close(a)
			}
			acks = acks[:0]
		}()
		recs, recPrs = sh.current(recs, recPrs)
		if len(recs) == 0 && len(pins) == 0 && len(owners) == 0 {
			return
		}
		wctx, cancel := context.WithTimeout(context.Background(), sharedWriteTimeout)
		err := sh.idx.PutPrompts(wctx, recs)
		if err == nil {
			err = sh.idx.SetPromptOwners(wctx, owners)
		}
		if err == nil {
			err = sh.idx.PinFiles(wctx, pins)
		}
		cancel()
		sh.failing.Store(err != nil)
		if err == nil {
			for _, pr := range recPrs {
				if pr != nil {
					pr.recorded.Store(true)
				}
			}
		}
		switch {
		case errors.Is(err, state.ErrStaleToken):
			sh.m.StateIndexError("stale")
			sh.log.Warn("shared prompt index: records refused, the replica's liveness lease is gone", "err", err)
		case err != nil:
			sh.m.StateIndexError("write")
			sh.log.Warn("shared prompt index: write failed", "prompts", len(recs), "owners", len(owners), "files", len(pins), "err", err)
		}
		clear(recPrs)
		recs, recPrs, pins = recs[:0], recPrs[:0], pins[:0]
		clear(owners)
	}
	for {
		select {
		case <-ctx.Done():
		rest:
			for range sharedQueue {
				select {
				case w := <-sh.queue:
					add(w)
				default:
					break rest
				}
			}
			flush()
			return
		case w := <-sh.queue:
			add(w)
		gather:
			for n := 1; n < sharedBatch; n++ {
				select {
				case w := <-sh.queue:
					add(w)
				default:
					break gather
				}
			}
			flush()
		}
	}
}

// fileOwner is the instance the shared pins say holds ref (nil when
// none, or the lookup failed: logged and counted).
func (sh *sharedIndex) fileOwner(ctx context.Context, ref FileRef) *upstream.Instance {
	if !sh.readable() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, sharedReadTimeout)
	defer cancel()
	endpoint, err := sh.idx.FileHolder(ctx, sharedFileName(ref))
	if err != nil {
		sh.readFailed("a file", err)
		return nil
	}
	if endpoint == "" {
		return nil
	}
	return upstream.ByEndpoint(sh.p.Instances(), endpoint)
}

// current keeps the records fenced by the replica's current liveness
// lease: one queued under a lease the replica lost since is not written
// (its prompt was abandoned: another replica may hold it now).
func (sh *sharedIndex) current(recs []state.PromptRecord, prs []*Prompt) ([]state.PromptRecord, []*Prompt) {
	if !sh.fenced.Load() {
		return recs, prs
	}
	g := sh.guard.Load()
	kept, keptPrs := recs[:0], prs[:0]
	for i, r := range recs {
		if g != nil && r.Guard == g.lease && r.Token == g.token {
			kept, keptPrs = append(kept, r), append(keptPrs, prs[i])
		} else {
			sh.m.StateIndexError("dropped")
		}
	}
	clear(prs[len(keptPrs):])
	return kept, keptPrs
}

// lastWritten waits, at most d, until the writer wrote what was queued
// when the table closed (nothing to wait for when it never ran).
func (sh *sharedIndex) lastWritten(d time.Duration) {
	if !sh.running.Load() {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-sh.wrote:
	case <-timer.C:
	}
}
