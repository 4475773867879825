package prompts

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/upstream"
)

const (
	// tombstoneTTL is how long comfygate remembers a prompt it moved off an
	// instance. A stopped process can hold a prompt (in its queue, or a POST
	// still in its socket buffer) for as long as it is stopped; ten minutes
	// covers a stop long enough for every prompt to have moved.
	tombstoneTTL = 10 * time.Minute
	// maxTombstones bounds the tombstones kept per instance (oldest dropped).
	maxTombstones = 10000
)

// tomb is one prompt moved off an instance: the id it has there, and the
// prompt (nil when unknown) so that a run there can still be claimed for it.
type tomb struct {
	uid string
	at  time.Time
	pr  *Prompt
	// settled: the instance was asked for the prompt's history once it was
	// in neither its queue nor its table; it can no longer end it there.
	settled bool
}

// tombstone records that the prompt with upstream id uid left inst (moved
// elsewhere, or dropped after its client was told it failed): if inst
// still has it, or gets it later (a held POST), it must not run there.
// The tombstones are inst's owner's: the record is a message to it,
// queued before any frame the instance sends after the step that made it.
func (t *mover) tombstone(inst *upstream.Instance, uid string, pr *Prompt) {
	if inst == nil || uid == "" {
		return
	}
	s := t.owners.socketFor(inst)
	s.tombsPosted.Add(1)
	if !s.box.post(func() { s.addTomb(uid, pr); s.tombsPosted.Add(-1) }) {
		s.tombsPosted.Add(-1)
	}
}

// addTomb records the tombstone of uid. On the owner.
func (s *instSocket) addTomb(uid string, pr *Prompt) {
	list := s.pruneTombs(time.Now())
	for _, tb := range list {
		if tb.uid == uid {
			return
		}
	}
	if len(list) >= maxTombstones {
		list = list[1:]
	}
	s.tombs = append(list, tomb{uid: uid, at: time.Now(), pr: pr})
	s.ntombs.Store(int64(len(s.tombs)))
}

// pruneTombs drops the expired tombstones and returns the rest. On the owner.
func (s *instSocket) pruneTombs(now time.Time) []tomb {
	cut := 0
	for cut < len(s.tombs) && now.Sub(s.tombs[cut].at) > tombstoneTTL {
		cut++
	}
	if cut > 0 {
		s.tombs = append(s.tombs[:0:0], s.tombs[cut:]...)
		s.ntombs.Store(int64(len(s.tombs)))
	}
	return s.tombs
}

// mayHaveTombs reports whether the instance has tombstones or one is on
// its way to the owner. Anyone: false means none without asking the owner.
func (s *instSocket) mayHaveTombs() bool {
	// Posted first: addTomb stores ntombs before it counts itself done.
	return s.tombsPosted.Load() != 0 || s.ntombs.Load() != 0
}

// isTombstoned reports whether uid moved off the instance. On the owner.
func (s *instSocket) isTombstoned(uid string) bool {
	if uid == "" {
		return false
	}
	for _, tb := range s.pruneTombs(time.Now()) {
		if tb.uid == uid {
			return true
		}
	}
	return false
}

// endedElsewhere reports whether the prompt tombstoned here under upstream
// id uid has already ended where it moved to. On the owner.
func (s *instSocket) endedElsewhere(uid string) bool {
	for _, tb := range s.pruneTombs(time.Now()) {
		if tb.uid == uid {
			return tb.pr != nil && !tb.pr.Life().Live()
		}
	}
	return false
}

// tombstoned reports whether uid moved off inst. Not on an owner.
func (t *mover) tombstoned(inst *upstream.Instance, uid string) bool {
	if uid == "" {
		return false
	}
	s, found := t.owners.socketFor(inst), false
	if !s.mayHaveTombs() {
		return false // the common case, without a hand-over to the owner
	}
	s.box.do(func() { found = s.isTombstoned(uid) })
	return found
}

// tombstonesAt returns the prompts moved off inst. Not on an owner.
func (t *mover) tombstonesAt(inst *upstream.Instance) []tomb {
	s := t.owners.socketFor(inst)
	var out []tomb
	s.box.do(func() { out = slices.Clone(s.pruneTombs(time.Now())) })
	return out
}

// CleanUp removes from inst what moved off it: tombstoned prompts pending
// in its queue are deleted (POST /queue {"delete": [...]}), a running one
// is interrupted (POST /interrupt {"prompt_id": ...}). It runs before an
// instance that was down gets new work again, and whenever a tombstoned
// prompt shows up there later. It reports false when inst did not answer:
// then it must not get work yet.
//
// A prompt that is in neither list may have run to its end there while
// comfygate could not see it (the instance was alive, only unreachable,
// when the prompt moved): if inst's history has it as a success and the
// copy elsewhere has not ended yet, the prompt ends with inst's run and the
// copy is removed (reclaim), so that it runs once.
func (t *Table) CleanUp(ctx context.Context, inst *upstream.Instance) bool {
	tombs := t.moves.tombstonesAt(inst)
	if len(tombs) == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout(t.cfg.HealthCheck.Timeout))
	defer cancel()
	running, pending, err := queueIDs(ctx, inst)
	if err != nil {
		t.log.Warn("prompts: could not clean up an instance's moved prompts", "instance", inst.Name, "error", err)
		return false
	}
	var del, interrupt []string
	var ranMaybe []tomb
	for _, tb := range tombs {
		switch {
		case pending[tb.uid]:
			del = append(del, tb.uid)
		case running[tb.uid]:
			interrupt = append(interrupt, tb.uid)
		case !tb.settled && tb.pr != nil && tb.pr.Life().Live():
			ranMaybe = append(ranMaybe, tb)
		}
	}
	// The deletion and the interruption go out together: a resumed
	// instance runs its queue at once, and each round trip spent is time
	// it works on a prompt that already runs elsewhere.
	hdr := map[string]string{"Content-Type": "application/json"}
	delErr := make(chan error, 1)
	go func() {
		if len(del) == 0 {
			delErr <- nil
			return
		}
		body, _ := json.Marshal(map[string][]string{"delete": del})
		status, _, err := inst.Transport().Call(ctx, "POST", "/queue", hdr, body)
		if err == nil && status != 200 {
			err = fmt.Errorf("status %d", status)
		}
		delErr <- err
	}()
	ok := true
	for _, uid := range interrupt {
		body, _ := json.Marshal(map[string]string{"prompt_id": uid})
		if status, _, err := inst.Transport().Call(ctx, "POST", "/interrupt", hdr, body); err != nil || status != 200 {
			t.log.Warn("prompts: could not interrupt a moved prompt", "instance", inst.Name, "status", status, "error", err)
			ok = false
			break
		}
	}
	if err := <-delErr; err != nil {
		t.log.Warn("prompts: could not delete moved prompts from an instance's queue", "instance", inst.Name, "error", err)
		ok = false
	}
	if !ok {
		return false
	}
	if len(del)+len(interrupt) > 0 {
		t.log.Info("prompts: removed moved prompts from an instance", "instance", inst.Name,
			"deleted", len(del), "interrupted", len(interrupt))
	}
	// Asked after the queue: a prompt leaves the queue for the history in
	// one step, so one in neither is not there (see probeAt).
	for _, tb := range ranMaybe {
		t.moves.reclaimIfRan(ctx, inst, tb)
	}
	return true
}

// reclaimIfRan asks from's history (in this worker) whether tb's prompt,
// moved off from and not yet ended where it is now, ran to success at
// from after all; from's owner settles the tombstone and decides, and if
// so the prompt is reclaimed (reclaim). It returns when that is over. Not
// on an owner.
func (t *mover) reclaimIfRan(ctx context.Context, from *upstream.Instance, tb tomb) {
	entry, ok := historyEntry(ctx, from, tb.uid)
	if !ok {
		return // asked again on the next pass
	}
	fl := newFollow(ctx, t.owners, t.run, t.log, tb.pr, "a reclaim")
	s := t.owners.socketFor(from)
	if !s.box.post(guarded(t.log, func() { t.ranAt(fl, s, tb.uid, entry) }, fl.end)) {
		return
	}
	fl.wait()
}

// ranAt acts on from's history entry of uid: the tombstone is settled
// (from can no longer end the prompt there), and a successful run there
// ends the prompt (reclaim). On from's owner.
func (t *mover) ranAt(fl *follow, s *instSocket, uid string, entry json.RawMessage) {
	for k := range s.tombs {
		if s.tombs[k].uid == uid {
			s.tombs[k].settled = true
		}
	}
	if entry == nil {
		fl.end()
		return
	}
	if h, err := comfyapi.ParseHistoryEntry(entry); err != nil || h.Status.StatusStr != comfyapi.StatusSuccess {
		fl.end() // it failed or was interrupted there: the copy is its retry
		return
	}
	from := s.inst
	fl.post(func(cur *upstream.Instance) { t.reclaim(fl, from, uid, entry, cur) })
}

// reclaim ends fl's prompt with the successful run of from, an instance
// it had moved off (upstream id uid there, entry its history): the copy at
// cur, where it is now, leaves there, tombstoned, so it is deleted from
// that queue or interrupted; then it is at from again, where its sink
// gets from's ending. Nothing changes when it ended meanwhile or a send
// of it is under way. On cur's owner, the one it leaves (the step rule).
func (t *mover) reclaim(fl *follow, from *upstream.Instance, uid string, entry json.RawMessage, cur *upstream.Instance) {
	pr := fl.pr
	if cur == from {
		fl.end()
		return
	}
	if _, ok := t.steps.step(pr, lifecycle.Event{Kind: lifecycle.MoveBegin, Instance: cur.Name}, nil); !ok {
		fl.end()
		return
	}
	if _, ok := t.steps.step(pr, lifecycle.Event{Kind: lifecycle.Leave, Tombstone: true}, nil); !ok {
		t.steps.step(pr, lifecycle.Event{Kind: lifecycle.MoveAbort}, nil)
		fl.end()
		return
	}
	end := t.historyEnd(from, uid, entry)
	_, ok := t.steps.step(pr, lifecycle.Event{Kind: lifecycle.Reclaim, UpstreamID: uid}, from)
	t.log.Info("prompts: a moved prompt ran where it was after all; its copy is removed",
		"prompt_id", pr.ID, "ran_at", from.Name, "copy_at", cur.Name)
	t.cleanUpLater(t.owners.socketFor(cur))
	if !ok {
		fl.end()
		return
	}
	// Its ending, delivered on from's owner, where it is now.
	fl.post(func(at *upstream.Instance) {
		if at == from {
			t.steps.apply(pr, from, end)
			t.steps.apply(pr, from, frame{typ: comfyapi.TypeExecuting, uid: uid, nodeNull: true, data: comfyapi.ExecutingNull(uid), at: time.Now()})
		}
		fl.end()
	})
}

// cleanUpLater runs CleanUp in the background, one pass at a time per
// instance; a request during a pass runs another after it, so a prompt that
// showed up after the pass looked at the queue is not missed.
func (t *mover) cleanUpLater(s *instSocket) {
	s.box.post(func() { s.passes.wantCleanUp() })
}

// wantCleanUp starts a CleanUp pass of s's instance, or asks for another
// after the one running. On the owner.
func (s *passes) wantCleanUp() {
	t := s.t
	if s.cleaning {
		s.cleanAgain = true
		return
	}
	s.cleanAgain = false
	s.cleaning = t.run.goBackground(func(ctx context.Context) {
		defer s.box.post(func() { // its end, even after a panic
			s.cleaning = false
			if s.cleanAgain && ctx.Err() == nil {
				s.wantCleanUp()
			}
		})
		t.CleanUp(ctx, s.inst)
	})
}

// hasTombstones reports whether anything moved off inst. Not on an owner.
func (t *mover) hasTombstones(inst *upstream.Instance) bool {
	s, has := t.owners.socketFor(inst), false
	if !s.mayHaveTombs() {
		return false
	}
	s.box.do(func() { has = len(s.pruneTombs(time.Now())) > 0 })
	return has
}
