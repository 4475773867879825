package prompts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// Submit forwards one prompt: selects an instance, ensures its inputs,
// pins the prompt before dispatch, injects comfygate's client_id for that
// instance, and retries on another instance if the connection is refused.
// A 400 from the instance is returned as-is (nothing pinned).
//
// When the instance took the request but gave no answer in time, the
// prompt may have been accepted: Submit returns the error and keeps the
// prompt pinned while it asks the instance (its events, /queue, /history)
// whether it did. It sends it elsewhere (under the same id, events to the
// same sink) only once the instance is confirmed dead, which cannot run it
// then, or when the instance shows it never took it.
//
// If req.PromptID belongs to a prompt that is not done (two submissions of
// one id at once), Submit mints a fresh UUID for this prompt instead; the
// returned Prompt and answer carry it.
func (t *Table) Submit(ctx context.Context, req SubmitRequest) (SubmitResult, error) {
	res, err := t.submits.submit(ctx, req)
	t.shared.Load().recorded(res.Prompt) // shared.go: its record is written before its answer
	return res, err
}

// submitter is the table's submission of prompts: it picks an instance,
// pins the prompt there before its POST leaves, sends it and settles the
// answer (or follows an unanswered one, confirmLater). Failovers send
// through it too.
type submitter struct {
	p      fleet
	cfg    *config.Config
	log    *slog.Logger
	run    *run
	idx    *index
	owners *owners
	steps  *steps
	moves  *mover     // tombstones at the target; an unanswered send's failover
	files  *fileStore // the files a prompt loads, copied to its instance
	// numbers draws the fleet numbers from the replicas' counter
	// (numbers.go); nil in memory, where the step numbers a prompt itself.
	numbers atomic.Pointer[sharedNumbers]
	// leases are the table's (lease.go): a recorded prompt is sent only
	// while the liveness lease lasts.
	leases *atomic.Pointer[leaseKeeper]
}

// ErrLeaseLost is a send given up because this replica's liveness lease
// ran out (it was paused or cut from Redis): the prompt's record lets
// another replica adopt it, which sends it once. A client that sends its
// request again is answered as that prompt (Table.Resubmission).
var ErrLeaseLost = errors.New("this replica's liveness lease ran out: the prompt is left to the other replicas")

// ErrRepeated is a submission not sent because the same submission (the
// same prompt_id, API key and body fingerprint) is in the table already:
// its client sent the request again before the first was answered. The
// proxy answers it as that prompt (Table.Resubmission).
var ErrRepeated = errors.New("the same submission is on its way to an instance")

// sendOutcome is what one POST /prompt to one instance came to.
type sendOutcome int

const (
	sentAnswered  sendOutcome = iota // the instance answered (any status)
	sentRefused                      // nothing reached the instance: try another
	sentAmbiguous                    // sent, no answer: it may have been accepted
)

func (t *submitter) submit(ctx context.Context, req SubmitRequest) (SubmitResult, error) {
	id := req.PromptID
	if id == "" {
		id = newUUID()
	}
	pr := &Prompt{ID: id, ClientID: req.ClientID, Sink: req.Sink, Created: time.Now(), header: req.Header, owner: req.Owner, submission: req.Submission,
		lease: req.Lease.inc}
	// ComfyUI: "number" in the body sets the priority and leaves the
	// counter alone; otherwise a truthy "front" negates the counter.
	if body := comfyapi.PromptRequestOf(req.Body); body.HasNumber() {
		pr.ownNumber = true
	} else {
		pr.front = body.IsFront()
	}
	pr.prefer, pr.eligible, pr.prepare = req.Prefer, req.Eligible, req.Prepare
	if len(req.Files) > 0 {
		pr.files, pr.graph = req.Files, req.Body["prompt"]
	}
	var tried []*upstream.Instance
	var lastErr error
	defer t.unreserve(pr)
	for {
		// Before each try: a refused try forgot pr, freeing its id.
		if err := t.reserve(pr); err != nil {
			return SubmitResult{}, err
		}
		inst, err := t.pick(pr, tried)
		if err != nil {
			t.idx.forget(pr)
			if lastErr != nil {
				return SubmitResult{}, fmt.Errorf("%w (last: %w)", upstream.ErrNoUpstream, lastErr)
			}
			return SubmitResult{}, upstream.ErrNoUpstream
		}
		tried = append(tried, inst)
		res, outcome, err := t.send(ctx, pr, inst, t.bodyFor(ctx, pr, inst, req.Body), false)
		switch outcome {
		case sentRefused:
			lastErr = err
			t.log.Debug("prompts: instance refused a prompt, trying another", "instance", inst.Name, "error", err)
			continue
		case sentAmbiguous:
			return SubmitResult{Instance: inst}, err
		}
		return res, err
	}
}

// reserve claims pr.ID in the table in one step with the check that no
// other prompt not done holds it, so two concurrent submissions of one
// client id cannot both take it (the second would orphan the first, live
// forever). When the id is taken, pr gets a fresh UUID instead, which its
// answer and events carry: what the proxy does for an id it sees in use.
// pr must not be in the table yet (new, or forgotten after a refused try).
//
// A prompt of the same submission holding the id (the client's request
// sent again while the first was on its way, past the proxy's
// Table.Resubmission) gives ErrRepeated: pr is not sent.
func (t *submitter) reserve(pr *Prompt) error {
	renamed, same := t.idx.claim(pr, newUUID)
	if same != nil {
		t.log.Debug("prompts: the same submission is on its way; not sent again", "prompt_id", pr.ID)
		return ErrRepeated
	}
	if renamed {
		t.log.Debug("prompts: prompt id in use, minted another", "prompt_id", pr.ID)
	}
	return nil
}

// pick returns the instance for pr's next try (upstream.Pool.Reserve:
// pr.prefer when it can take it, else the least loaded of the instances
// pr may run on, not tried yet), where pr is counted at once
// (Prompt.reserved; its send takes the count over): the picks of a burst
// each see the prompts picked before them, however long their sends take
// to start. A reservation of an earlier try is given back first.
func (t *submitter) pick(pr *Prompt, tried []*upstream.Instance) (*upstream.Instance, error) {
	t.unreserve(pr)
	inst, err := t.p.Reserve(pr.prefer, pr.eligible, tried...)
	if err != nil {
		return nil, err
	}
	pr.reserved.Store(inst)
	return inst, nil
}

// unreserve gives back pr's count from pick if its send did not take it
// over (the try was given up before it was sent).
func (t *submitter) unreserve(pr *Prompt) {
	if inst := pr.reserved.Swap(nil); inst != nil {
		inst.Workload().CountInflight(-1)
		inst.Workload().InflightChanged()
	}
}

// bodyFor returns base made ready for inst: the submitter's own files
// placed there (SubmitRequest.Prepare), the files its prompt loads copied
// there (prepareGraph), and the prompt graph with pr's file values for
// inst. base is not modified.
func (t *submitter) bodyFor(ctx context.Context, pr *Prompt, inst *upstream.Instance, base map[string]json.RawMessage) map[string]json.RawMessage {
	if pr.prepare != nil {
		if err := pr.prepare(ctx, inst); err != nil {
			t.log.Warn("prompts: could not place a prompt's files", "instance", inst.Name, "prompt_id", pr.ID, "error", err)
		}
	}
	graph := base["prompt"]
	if pr.graph != nil {
		graph = pr.graph
	}
	out, err := t.files.prepareGraph(ctx, inst, graph, pr.files)
	if err != nil {
		// The instance's own validation answers in ComfyUI's shape if a
		// file is really missing; if it is down, the POST fails too.
		t.log.Warn("prompts: could not copy a prompt's files", "instance", inst.Name, "prompt_id", pr.ID, "error", err)
	}
	if bytes.Equal(out, base["prompt"]) {
		return base
	}
	m := make(map[string]json.RawMessage, len(base))
	for k, v := range base {
		m[k] = v
	}
	m["prompt"] = out
	return m
}

// send POSTs pr to inst, pinned there before the request leaves. base is
// the body the client sent (or the one sent last time); resubmit marks a
// failover, where pr is already accepted and live.
func (t *submitter) send(ctx context.Context, pr *Prompt, inst *upstream.Instance, base map[string]json.RawMessage, resubmit bool) (SubmitResult, sendOutcome, error) {
	known := inst.SupportsClientPromptID()
	uid := ""
	if known {
		uid = pr.ID
		// A prompt that moved off inst keeps a tombstone there under its
		// old id: sent back, it needs another.
		if !isCanonicalUUID(uid) || t.moves.tombstoned(inst, uid) {
			uid = newUUID()
		}
	}
	sock := inst.SocketClientID()
	body, err := buildBody(base, sock, uid)
	if err != nil {
		return SubmitResult{}, sentAnswered, fmt.Errorf("submit prompt %s: %w", pr.ID, err)
	}
	if sn := t.numbers.Load(); sn != nil {
		sn.draw(ctx, pr) // its first send's step gives it
	}
	s := t.owners.socketFor(inst)
	// Pinned before the request leaves: its events can come first. Until
	// the POST is settled (answered, refused, no answer) no failover takes
	// it: this send's own outcome decides.
	st, ok, renewed := t.beginSend(pr, s, uid, body, sock, !known, false)
	if renewed {
		// The replica lost its liveness lease meanwhile, and with it the
		// socket id the body carries (renewSocketIDs).
		sock = inst.SocketClientID()
		if body, err = buildBody(base, sock, uid); err != nil {
			return SubmitResult{}, sentAnswered, fmt.Errorf("submit prompt %s: %w", pr.ID, err)
		}
		st, ok, _ = t.beginSend(pr, s, uid, body, sock, !known, true)
	}
	if !ok {
		return SubmitResult{}, sentRefused, fmt.Errorf("submit prompt %s: it is %s", pr.ID, st.Phase)
	}
	attempt := st.Attempts
	settle := func(e lifecycle.Event) lifecycle.State {
		e.Attempt = attempt
		st, _ := t.stepVia(pr, e, nil)
		return st
	}

	hdr := make(map[string]string, len(pr.header)+1)
	for k, v := range pr.header {
		hdr[k] = v
	}
	hdr["Content-Type"] = "application/json"
	conns, wasUp := s.conns.Load(), inst.State().SocketUp()
	if k := t.leases.Load(); k != nil && !k.mayStillSend(pr, resubmit) {
		if !known {
			s.endAwait(pr, "", 0)
		}
		err := fmt.Errorf("submit prompt %s: %w", pr.ID, ErrLeaseLost)
		t.log.Warn("prompts: a send given up: the liveness lease it needs ran out", "prompt_id", pr.ID, "instance", inst.Name, "resubmit", resubmit)
		if resubmit {
			// Its record lets another replica adopt it: that one sends it.
			k.abandon(pr)
			return SubmitResult{}, sentAmbiguous, err
		}
		// Its client may have sent it again elsewhere meanwhile: it is
		// not sent, and its record says so.
		settle(lifecycle.Event{Kind: lifecycle.Refused, NotSent: true})
		return SubmitResult{}, sentAnswered, err
	}
	status, resp, err := inst.Transport().Call(ctx, "POST", "/prompt", hdr, body)
	if err != nil {
		err = fmt.Errorf("submit prompt to %s: %w", inst.Name, err)
		outcome, number := t.afterSendError(ctx, inst, uid, err)
		switch {
		case outcome == sentAnswered:
			// The instance has it: answer as it would have.
			status, resp = 200, fmt.Appendf(nil, `{"prompt_id": %s, "number": %s, "node_errors": {}}`, quoteJSON(uid), number)
		case outcome == sentRefused || !known:
			// Nothing to wait for: never accepted, or (without an id) not
			// findable.
			if !known {
				s.endAwait(pr, "", 0)
			}
			if st := settle(lifecycle.Event{Kind: lifecycle.Refused, NotSent: true, Resubmit: resubmit}); !st.Phase.Done() || !known {
				return SubmitResult{}, outcome, err
			}
			// It ran there before the connection broke (its events said
			// so): answer as the instance would have.
			status, resp = 200, fmt.Appendf(nil, `{"prompt_id": %s, "number": 0, "node_errors": {}}`, quoteJSON(pr.UpstreamID()))
		default:
			settle(lifecycle.Event{Kind: lifecycle.NoAnswer})
			t.confirmLater(pr, inst, uid)
			return SubmitResult{}, sentAmbiguous, err
		}
	}
	if status != 200 {
		if !known {
			s.endAwait(pr, "", 0)
		}
		settle(lifecycle.Event{Kind: lifecycle.Refused, Resubmit: resubmit})
		return SubmitResult{Instance: inst, Status: status, Body: resp}, sentAnswered, nil
	}
	// Any JSON value: Oct-2025 turns whatever id it got into a string.
	ans, _ := comfyapi.ParsePromptAnswer(resp)
	got := ans.ID()
	if got == "" {
		got = uid
	}
	switch {
	case !known:
		s.endAwait(pr, got, attempt)
	case got != uid:
		// The instance ignored our id (its version claim was wrong).
		settle(lifecycle.Event{Kind: lifecycle.Answered, UpstreamID: got})
	default:
		// The answer is the client's as soon as it came: its number was
		// taken at the send, and the owner may still be applying the
		// frames of a prompt that ran at once.
		t.stepLater(pr, lifecycle.Event{Kind: lifecycle.Answered, Attempt: attempt})
	}
	if inst.ConfirmedDown() {
		// InstanceDown passed pr over while this POST was under way and is
		// not told again: move pr unless inst shows it has it.
		t.run.goBackground(func(ctx context.Context) { t.recheckDown(ctx, pr, inst, got) })
	}
	if !wasUp || s.conns.Load() != conns {
		// Sent while the socket was down or reconnecting: its events may
		// have reached nobody, and reconcile skipped it (unanswered then).
		t.run.goBackground(func(ctx context.Context) { t.settleFromHistory(ctx, pr, inst, got) })
	}
	if got != pr.ID {
		resp = ans.WithID(resp, pr.ID)
	}
	return SubmitResult{Prompt: pr, Instance: inst, Status: status, Body: resp}, sentAnswered, nil
}

// beginSend pins pr at s's instance under uid before body is sent there,
// in one hand-over to the instance's owner (it is on every prompt's way to
// its answer): body becomes pr's last body (and sock, the client_id it
// carries, pr's socket), pr takes its Send step, and a send whose
// upstream id only its answer will tell (awaited) is counted in s.awaiting
// with that step, so that no frame of that id can come between them
// unkept. ok is false, changing nothing, when pr cannot be sent (or
// the table closed). Unless anyID, renewed is true, changing nothing,
// when sock is no longer the instance's socket id: the ids are renewed on
// the owner (renewSocketIDs), so a prompt sent under an old one is pinned
// before the renewal, and found by it.
func (t *submitter) beginSend(pr *Prompt, s *instSocket, uid string, body []byte, sock string, awaited, anyID bool) (st lifecycle.State, ok, renewed bool) {
	ran := false
	s.box.do(func() {
		ran = true
		if !anyID && sock != s.inst.SocketClientID() {
			renewed = true
			return
		}
		pr.body.Store(&body)
		pr.socket.Store(&sock)
		if st, ok = t.steps.step(pr, lifecycle.Event{Kind: lifecycle.Send, UpstreamID: uid}, s.inst); ok && awaited {
			s.awaiting++
		}
	})
	if !ran || renewed {
		return pr.Life(), false, renewed
	}
	return st, ok, false
}

// recheckDown settles pr, just accepted by inst that is confirmed down:
// it stays if inst, asked, has it queued, running or done; otherwise it
// fails over like the prompts InstanceDown moved.
func (t *submitter) recheckDown(ctx context.Context, pr *Prompt, inst *upstream.Instance, uid string) {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout(t.cfg.HealthCheck.Timeout))
	_, found, _ := probeAt(pctx, inst, uid)
	cancel()
	if found {
		return
	}
	t.moves.failover(ctx, pr, inst, fmt.Sprintf("instance %s died", inst.Name), false)
}

// buildBody returns the JSON forwarded to an instance (see
// comfyapi.ForwardBody).
func buildBody(base map[string]json.RawMessage, clientID, uid string) ([]byte, error) {
	return comfyapi.ForwardBody(base, clientID, uid)
}

// parseBody reads a body built by buildBody back, one level deep.
func parseBody(body []byte) (map[string]json.RawMessage, error) {
	r, err := comfyapi.ParsePromptRequest(body)
	return r.Fields, err
}

// marshalNoEscape is json.Marshal without HTML escaping (prompts carry
// text a user wrote; keep it as sent).
func marshalNoEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// afterSendError decides what a failed POST /prompt came to. A dial error
// or an open breaker sent nothing. A timeout may hide an accepted prompt on
// a hung instance: ambiguous. A connection that broke (a stale keep-alive
// connection to an instance that just died, a reset) is settled by asking
// the instance: unreachable now means it died, and a prompt it took died
// with it, so another instance may run it; reachable, it either has the
// prompt (answered: number is its queue number) or never took it (refused).
func (t *submitter) afterSendError(ctx context.Context, inst *upstream.Instance, uid string, err error) (outcome sendOutcome, number []byte) {
	if isNotSent(err) {
		return sentRefused, nil
	}
	if errorsIsAny(err, context.DeadlineExceeded, context.Canceled) || upstream.IsTimeout(err) || ctx.Err() != nil {
		return sentAmbiguous, nil
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout(t.cfg.HealthCheck.Timeout))
	defer cancel()
	status, body, qerr := inst.Transport().Call(pctx, "GET", "/queue", nil, nil)
	if qerr != nil {
		if isNotSent(qerr) {
			return sentRefused, nil
		}
		return sentAmbiguous, nil
	}
	if status != 200 || uid == "" {
		return sentAmbiguous, nil
	}
	if q, err := comfyapi.ParseQueue(body); err == nil {
		if n, _, ok := q.Find(uid); ok {
			return sentAnswered, n
		}
	}
	if entry, ok := historyEntry(pctx, inst, uid); !ok {
		return sentAmbiguous, nil
	} else if entry != nil {
		return sentAnswered, []byte("0")
	}
	return sentRefused, nil
}

// maxProbeTimeout caps a quick question to an instance, however long
// health_check.timeout is: a prompt's submission or failover waits on it.
const maxProbeTimeout = 5 * time.Second

// probeTimeout bounds a quick question to an instance: d
// (health_check.timeout), at most maxProbeTimeout.
func probeTimeout(d time.Duration) time.Duration { return min(d, maxProbeTimeout) }

// isNotSent reports an error that means the request never reached the
// instance: the breaker refused it, or the connection could not be made.
func isNotSent(err error) bool {
	if errorsIsAny(err, breaker.ErrOpen, fasthttp.ErrDialTimeout, fasthttp.ErrNoFreeConns,
		fasthttp.ErrTLSHandshakeTimeout, syscall.ECONNREFUSED, syscall.EHOSTUNREACH, syscall.ENETUNREACH) {
		return true
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}

// settleFromHistory ends pr from inst's history if it already finished
// there (its live events may have gone to no socket).
func (t *submitter) settleFromHistory(ctx context.Context, pr *Prompt, inst *upstream.Instance, uid string) {
	if entry, ok := historyEntry(ctx, inst, uid); ok && entry != nil {
		t.moves.completeFromHistory(inst, pr, uid, entry)
	}
}
