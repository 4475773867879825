package upstream

import (
	"context"
	"encoding/json"
	"time"
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

// tomb is one prompt moved off an instance: the id it has there.
type tomb struct {
	uid string
	at  time.Time
}

// tombstone records that the prompt with upstream id uid left inst (moved
// elsewhere, or dropped after its client was told it failed): if inst
// still has it, or gets it later (a held POST), it must not run there.
func (t *promptTable) tombstone(inst *Instance, uid string) {
	if inst == nil || uid == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tombs == nil {
		t.tombs = map[*Instance][]tomb{}
	}
	list := t.pruneTombsLocked(inst, time.Now())
	for _, tb := range list {
		if tb.uid == uid {
			return
		}
	}
	if len(list) >= maxTombstones {
		list = list[1:]
	}
	t.tombs[inst] = append(list, tomb{uid: uid, at: time.Now()})
}

// pruneTombsLocked drops inst's expired tombstones and returns the rest.
// t.mu held.
func (t *promptTable) pruneTombsLocked(inst *Instance, now time.Time) []tomb {
	list := t.tombs[inst]
	cut := 0
	for cut < len(list) && now.Sub(list[cut].at) > tombstoneTTL {
		cut++
	}
	if cut > 0 {
		list = append(list[:0:0], list[cut:]...)
		if len(list) == 0 {
			delete(t.tombs, inst)
		} else {
			t.tombs[inst] = list
		}
	}
	return list
}

// tombstoned reports whether uid moved off inst.
func (t *promptTable) tombstoned(inst *Instance, uid string) bool {
	if uid == "" {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tb := range t.pruneTombsLocked(inst, time.Now()) {
		if tb.uid == uid {
			return true
		}
	}
	return false
}

// tombstonesAt returns the upstream ids moved off inst.
func (t *promptTable) tombstonesAt(inst *Instance) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.pruneTombsLocked(inst, time.Now())
	out := make([]string, len(list))
	for k, tb := range list {
		out[k] = tb.uid
	}
	return out
}

// cleanUp removes from inst what moved off it: tombstoned prompts pending
// in its queue are deleted (POST /queue {"delete": [...]}), a running one
// is interrupted (POST /interrupt {"prompt_id": ...}). It runs before an
// instance that was down gets new work again, and whenever a tombstoned
// prompt shows up there later. It reports false when inst did not answer:
// then it must not get work yet.
func (t *promptTable) cleanUp(ctx context.Context, inst *Instance) bool {
	uids := t.tombstonesAt(inst)
	if len(uids) == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout(t.cfg.HealthCheck.Timeout))
	defer cancel()
	running, pending, err := t.queueIDs(ctx, inst)
	if err != nil {
		t.log.Warn("upstream: could not clean up an instance's moved prompts", "instance", inst.Name, "error", err)
		return false
	}
	var del []string
	var interrupt []string
	for _, uid := range uids {
		if pending[uid] {
			del = append(del, uid)
		}
		if running[uid] {
			interrupt = append(interrupt, uid)
		}
	}
	hdr := map[string]string{"Content-Type": "application/json"}
	if len(del) > 0 {
		body, _ := json.Marshal(map[string][]string{"delete": del})
		if status, _, err := inst.Call(ctx, "POST", "/queue", hdr, body); err != nil || status != 200 {
			t.log.Warn("upstream: could not delete moved prompts from an instance's queue", "instance", inst.Name, "status", status, "error", err)
			return false
		}
	}
	for _, uid := range interrupt {
		body, _ := json.Marshal(map[string]string{"prompt_id": uid})
		if status, _, err := inst.Call(ctx, "POST", "/interrupt", hdr, body); err != nil || status != 200 {
			t.log.Warn("upstream: could not interrupt a moved prompt", "instance", inst.Name, "status", status, "error", err)
			return false
		}
	}
	if len(del)+len(interrupt) > 0 {
		t.log.Info("upstream: removed moved prompts from an instance", "instance", inst.Name,
			"deleted", len(del), "interrupted", len(interrupt))
	}
	return true
}

// cleanUpLater runs cleanUp in the background, one pass at a time per
// instance; a request during a pass runs another after it, so a prompt that
// showed up after the pass looked at the queue is not missed.
func (t *promptTable) cleanUpLater(s *instSocket) {
	s.cleanAgain.Store(true)
	if !s.cleaning.CompareAndSwap(false, true) {
		return
	}
	if !t.goBackground(func(ctx context.Context) {
		for {
			for s.cleanAgain.Swap(false) && ctx.Err() == nil {
				t.cleanUp(ctx, s.inst)
			}
			s.cleaning.Store(false)
			if !s.cleanAgain.Load() || !s.cleaning.CompareAndSwap(false, true) {
				return
			}
		}
	}) {
		s.cleaning.Store(false)
	}
}

// hasTombstones reports whether anything moved off inst.
func (t *promptTable) hasTombstones(inst *Instance) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.tombs[inst]) > 0
}
