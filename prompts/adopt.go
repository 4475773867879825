package prompts

// Adoption (state.url set): the prompts of a replica whose liveness lease
// ran out go on at the replica holding their instance's lease (lease.go).
// The adopter claims each in the store, then takes it into its table with
// a TakeOver step from the lifecycle.State it was recorded with, and goes
// on as with a prompt of its own in that state:
//
//   - one whose POST had no settled answer (Sending, or recorded while it
//     moved) is unconfirmed: the instance is asked whether it has it
//     (confirmLater) and it moves elsewhere if not;
//   - one queued or running at its instance stays there. Its events go to
//     the client_id of the replica that sent it, whose socket is gone: the
//     adopter borrows that id (borrow.go) and gets them on a socket of its
//     own under it. It also asks the instance every adoptFollowEvery: when
//     the prompt ended and the borrowed socket did not deliver its end,
//     the end is delivered from the instance's history, as for a prompt
//     that ended while comfygate's socket was down; when the instance lost
//     it or is down, it fails over, and from then on its events come on
//     the adopter's own socket.
//
// Its sink is the hub's for the API key that submitted it, so its events
// reach its client's socket on whichever replica it is.

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
)

// adoptFollowEvery is how often an adopted prompt that stays at its
// instance is looked for there.
const adoptFollowEvery = 500 * time.Millisecond

// adoptAt adopts the prompts recorded at the instance named name whose
// guarding liveness lease is gone, while this replica holds name's lease
// (h) under inc. On the keeper's loop.
func (k *leaseKeeper) adoptAt(ctx context.Context, inc *incarnation, name string, h *instLease) {
	cctx, cancel := context.WithTimeout(ctx, k.ttl/3)
	defer cancel()
	recs, err := k.idx.LivePrompts(cctx, name)
	if err != nil || len(recs) == 0 {
		return
	}
	var guards []string
	seen := map[string]bool{}
	for _, r := range recs {
		if r.Token != 0 && r.Guard != inc.lease && !seen[r.Guard] {
			seen[r.Guard] = true
			guards = append(guards, r.Guard)
		}
	}
	if len(guards) == 0 {
		return
	}
	tokens, err := k.l.Tokens(cctx, guards)
	if err != nil {
		return
	}
	for _, r := range recs {
		if r.Token == 0 || r.Guard == inc.lease || tokens[r.Guard] == r.Token {
			continue // unfenced, this replica's, or its replica is alive
		}
		if !time.Now().Before(h.until) || k.self.Load() != inc {
			return // the lease that lets this replica adopt here is gone
		}
		if pr, ok := k.t.idx.get(r.ID); ok && !pr.Life().Adopted {
			continue // a prompt of the same id is this replica's
		}
		inst, life, ok := k.adoptable(r)
		if !ok {
			continue
		}
		body, _, err := k.idx.PromptBody(cctx, r.ID)
		if err != nil {
			return
		}
		ok, err = k.idx.Claim(cctx, r, name, inc.id, h.token, inc.lease, inc.token)
		if err != nil {
			return
		}
		if ok {
			k.takeOver(r, inst, life, body)
		}
	}
}

// adoptable returns the instance and the recorded life of rec's prompt;
// false (logged) when this replica cannot go on with it: its instance is
// not in the pool, or its state is not one a TakeOver starts from.
func (k *leaseKeeper) adoptable(rec state.PromptRecord) (*upstream.Instance, sharedLife, bool) {
	t := k.t
	// By name, as its lease: replicas may reach one instance at different
	// addresses.
	inst := t.p.Instance(rec.Instance)
	if inst == nil {
		inst = upstream.ByEndpoint(t.p.Instances(), rec.Endpoint)
	}
	var life sharedLife
	ok := inst != nil && json.Unmarshal(rec.Life, &life) == nil
	if ok {
		_, _, ok = lifecycle.Step(lifecycle.State{}, lifecycle.Event{Kind: lifecycle.TakeOver, Recorded: &life.State})
	}
	if !ok {
		t.log.Debug("prompts: a stopped replica's prompt cannot be adopted", "prompt_id", rec.ID, "instance", rec.Instance)
	}
	return inst, life, ok
}

// takeOver takes rec's prompt, claimed for this replica, into the table
// (at inst, from life) and goes on with it.
func (k *leaseKeeper) takeOver(rec state.PromptRecord, inst *upstream.Instance, life sharedLife, body []byte) {
	t := k.t
	pr := &Prompt{ID: rec.ID, ClientID: life.ClientID, Created: time.Now(), ownNumber: life.OwnNumber, owner: rec.Owner,
		submission: life.Submission}
	if k.sinkFor != nil {
		pr.Sink = k.sinkFor(rec.Owner)
	}
	if len(body) > 0 {
		pr.body.Store(&body)
	}
	sock := life.Socket
	if sock == "" {
		// A record without it: the body sent carries it.
		if r, err := comfyapi.ParsePromptRequest(body); err == nil {
			_ = json.Unmarshal(r.ClientID, &sock)
		}
	}
	pr.socket.Store(&sock)
	pr.view.Store(&promptView{instance: inst})
	pr.recorded.Store(true) // the claim made its record this replica's
	var st lifecycle.State
	ok := false
	t.owners.socketFor(inst).box.do(func() {
		if !t.idx.claimAdopted(pr) {
			return
		}
		if st, ok = t.steps.step(pr, lifecycle.Event{Kind: lifecycle.TakeOver, Recorded: &life.State}, nil); !ok {
			t.idx.dropID(pr)
		}
	})
	if !ok {
		// A prompt of this replica's took the id meanwhile.
		t.log.Warn("prompts: a claimed prompt was not adopted: its id is in use here", "prompt_id", pr.ID)
		return
	}
	t.m.PromptAdopted()
	t.log.Info("prompts: prompt adopted from a stopped replica", "prompt_id", pr.ID, "instance", inst.Name, "phase", st.Phase.String())
	switch {
	case st.Phase == lifecycle.Unconfirmed && st.UpstreamID != "":
		t.submits.confirmLater(pr, inst, st.UpstreamID)
	case st.Phase == lifecycle.Unconfirmed:
		// It had left its instance: nothing to find there.
		t.run.goBackground(func(ctx context.Context) {
			t.moves.failover(ctx, pr, inst, "the replica that held the prompt stopped", true)
		})
	}
	t.run.goBackground(func(ctx context.Context) { k.follow(ctx, pr, inst, st.Attempts, sock, true) })
}

// follow watches pr, which stays at inst as sent there (attempt attempts)
// under client_id sock, not this replica's socket id there (adopted from
// a stopped replica, or sent under this replica's id before it lost its
// liveness lease), until it ends there or is sent again. Its events go to
// sock: while the instance has it, follow borrows a socket under sock
// (borrow.go; with leased, only while this replica holds inst's lease).
// It also asks the instance every adoptFollowEvery: when the prompt ended
// there and its end did not come on the borrowed socket, the end is
// delivered from the history (with the borrowed socket up, on the second
// look that finds it ended: the frames the instance sent before it wrote
// the history had the time to come); when the instance lost it or is
// down, it fails over. While it is unconfirmed, confirmLater decides
// about it.
func (k *leaseKeeper) follow(ctx context.Context, pr *Prompt, inst *upstream.Instance, attempts int, sock string, leased bool) {
	t := k.t
	s := t.owners.socketFor(inst)
	var b *borrowed
	defer func() { s.giveBack(b) }()
	endSeen := false
	for {
		v := pr.snap()
		if pr.abandoned.Load() || v.instance != inst || v.life.Attempts != attempts || v.life.Phase.Done() {
			return
		}
		there := v.life.Phase == lifecycle.Queued || v.life.Phase == lifecycle.Running ||
			(v.life.Phase == lifecycle.Unconfirmed && v.life.UpstreamID != "")
		may := sock != "" && sock != inst.SocketClientID() && (!leased || k.holdsLease(inst.Name))
		switch {
		case b != nil && !may:
			s.giveBack(b)
			b = nil
		case b == nil && may && there:
			b = s.borrow(sock)
		}
		if v.life.Phase != lifecycle.Queued && v.life.Phase != lifecycle.Running {
			if !sleepCtx(ctx, t.p.Clock(), adoptFollowEvery) {
				return
			}
			continue
		}
		uid := v.life.UpstreamID
		if inst.ConfirmedDown() {
			t.moves.failover(ctx, pr, inst, fmt.Sprintf("instance %s died", inst.Name), false)
			return
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout(t.cfg.HealthCheck.Timeout))
		st, found, answered := probeAt(pctx, inst, uid)
		if found && st == PromptDone && b != nil && b.live.Load() && !endSeen {
			// Its end may be on its way on the borrowed socket.
			endSeen = true
			cancel()
		} else if found && st == PromptDone {
			entry, ok := historyEntry(pctx, inst, uid)
			cancel()
			if ok && entry != nil {
				t.moves.completeFromHistory(inst, pr, uid, entry)
				return
			}
		} else {
			cancel()
		}
		if answered && !found {
			// The instance lost it (a restart): it goes again.
			t.moves.failover(ctx, pr, inst, fmt.Sprintf("instance %s lost the prompt", inst.Name), true)
			return
		}
		if !sleepCtx(ctx, t.p.Clock(), adoptFollowEvery) {
			return
		}
	}
}

// claimAdopted gives pr.ID to pr, an adopted prompt, unless a prompt of
// this replica's that is not done holds it; an entry that only notes where
// a prompt is (LocatePrompt) or a done one gives way. In pr's step.
func (x *index) claimAdopted(pr *Prompt) bool {
	for {
		v, loaded := x.byID.LoadOrStore(pr.ID, pr)
		if !loaded {
			return true
		}
		old := v.(*Prompt)
		if !old.Life().Adopted && old.State() != PromptDone {
			return false
		}
		if x.byID.CompareAndSwap(pr.ID, old, pr) {
			return true
		}
	}
}
