package proxy

// Routes that name a prompt go to the instance it is pinned to, with the
// instance's id for it; without an id they act on the whole fleet, as one
// ComfyUI would act on its whole queue.

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/comfygate/comfygate/config"
	"log/slog"
	"net/url"
	"strconv"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// pinnedRoutes serves the routes that name a prompt (or job), on the
// instance it is pinned to, and their fleet-wide forms.
type pinnedRoutes struct {
	cfg     *config.Config
	pool    *upstream.Pool
	prompts *prompts.Table
	jobs    JobRoutes // may be nil
	log     *slog.Logger
	fwd     *forwarder
	bodies  *clientBodies
	keys    *keyGuard
	rw      *rewriter
}

// locate finds the instance holding prompt id and the id it has there.
func (s *pinnedRoutes) locate(id string) (*upstream.Instance, string, error) {
	cctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	inst, err := s.prompts.LocatePrompt(cctx, id)
	if err != nil {
		return nil, "", err
	}
	upID := id
	if p, ok := s.prompts.Prompt(id); ok && upstream.SameMachine(p.Instance(), inst) {
		if u := p.UpstreamID(); u != "" {
			upID = u
		}
	}
	return inst, upID, nil
}

// getHistoryByID serves GET /history/{id} from the prompt's instance,
// rewritten to the client's ids. Unknown ids get ComfyUI's answer: {}.
//
// The read follows its prompt: it waits for the instance's first byte at
// most health_check.timeout while the instance might be hung, and when no
// answer came, goes to wherever the prompt is now (failover moved it) or,
// if it is still pinned there, answers {} as ComfyUI does for a prompt not
// done yet, so a polling client asks again instead of getting a 504.
func (s *pinnedRoutes) getHistoryByID(ctx *fasthttp.RequestCtx, id string) {
	inst, upID, err := s.locate(id)
	if errors.Is(err, prompts.ErrUnknownPrompt) {
		ctx.SetContentType(jsonContentType)
		ctx.SetBodyString("{}")
		return
	}
	if err != nil {
		s.fwd.writeError(ctx, err)
		return
	}
	opts := func(upID string, timeout time.Duration) *forwardOpts {
		return &forwardOpts{
			uri:     []byte("/history/" + url.PathEscape(upID)),
			pinned:  true,
			timeout: timeout,
			rewrite: func(inst *upstream.Instance, status int, body []byte) []byte {
				if status != fasthttp.StatusOK {
					return body
				}
				return s.rw.rewriteHistoryObject(inst, body)
			},
		}
	}
	err = s.fwd.forward(ctx, inst, opts(upID, s.pinnedReadTimeout(inst)))
	if err == nil {
		return
	}
	if upstream.NoAnswer(err) {
		if now, nowID, ok := s.movedFrom(id, inst); ok {
			s.log.Info("history read follows its moved prompt", "prompt_id", id, "from", inst.Name, "to", now.Name)
			if err = s.fwd.forward(ctx, now, opts(nowID, 0)); err == nil {
				return
			}
		}
	}
	// The instance is gone or silent. A prompt comfygate still holds is
	// being moved to another instance (failover): to the client it is
	// still queued or running, which ComfyUI answers with {}. A finished
	// prompt's history went with its instance, or waits for it to wake:
	// {} too, as after ComfyUI evicts an entry.
	p, known := s.prompts.Prompt(id)
	if isDialError(err) || upstream.NoAnswer(err) || (known && p.State() != prompts.PromptDone) {
		s.log.Info("history of a prompt on an unreachable instance", "prompt_id", id, "instance", inst.Name, "err", err)
		ctx.Response.Reset()
		ctx.SetContentType(jsonContentType)
		ctx.SetBodyString("{}")
		return
	}
	s.fwd.writeError(ctx, err)
}

// pinnedReadTimeout bounds a read pinned to a prompt's instance:
// readTimeout while another instance is healthy (the prompt may move
// there), else COMFYUI_TIMEOUT (0: the default).
func (s *pinnedRoutes) pinnedReadTimeout(inst *upstream.Instance) time.Duration {
	if s.fwd.othersLeft(inst, nil) {
		return s.fwd.readTimeout()
	}
	return 0
}

// movedFrom reports where prompt id is now, with its id there, when that
// is no longer inst.
func (s *pinnedRoutes) movedFrom(id string, inst *upstream.Instance) (*upstream.Instance, string, bool) {
	p, known := s.prompts.Prompt(id)
	if !known {
		return nil, "", false
	}
	now := p.Instance()
	if now == nil || now == inst {
		return nil, "", false
	}
	upID := id
	if u := p.UpstreamID(); u != "" {
		upID = u
	}
	return now, upID, true
}

// callHeader is the header of comfygate's own calls on behalf of a client.
func callHeader(ctx *fasthttp.RequestCtx) map[string]string {
	h := map[string]string{"Content-Type": "application/json"}
	if v := ctx.Request.Header.Peek("Comfy-User"); v != nil {
		h["Comfy-User"] = string(v)
	}
	return h
}

// relayFirst answers with the first instance's answer that came back (in
// configuration order); 502/504 when none did.
func (s *pinnedRoutes) relayFirst(ctx *fasthttp.RequestCtx, results []callResult) {
	var firstErr error
	for _, r := range results {
		if r.err == nil {
			setInstance(ctx, r.inst)
			ctx.SetStatusCode(r.status)
			if len(r.body) > 0 {
				ctx.SetBody(r.body)
			}
			return
		}
		if firstErr == nil {
			firstErr = r.err
		}
	}
	if firstErr == nil {
		firstErr = upstream.ErrNoUpstream
	}
	s.fwd.writeError(ctx, firstErr)
}

// readSmallBody reads a small JSON body; on failure it answers and reports false.
func (s *pinnedRoutes) readSmallBody(ctx *fasthttp.RequestCtx) ([]byte, bool) {
	body, err := s.bodies.readClientBody(ctx, maxSmallBody)
	if err != nil {
		if errors.Is(err, errBodyTooLarge) || errors.Is(err, errBodiesBusy) {
			s.fwd.writeError(ctx, err)
		} else {
			ctx.SetStatusCode(fasthttp.StatusBadRequest)
		}
		return nil, false
	}
	return body, true
}

// fanOut sends the client's POST to every available instance (POST /free,
// and the global /interrupt) and relays the first answer.
func (s *pinnedRoutes) fanOut(ctx *fasthttp.RequestCtx, path string) {
	body, ok := s.readSmallBody(ctx)
	if !ok {
		return
	}
	insts := s.pool.Healthy()
	if len(insts) == 0 {
		s.fwd.writeError(ctx, upstream.ErrNoUpstream)
		return
	}
	s.relayFirst(ctx, s.fwd.callAll(insts, "POST", path, callHeader(ctx), body))
}

// postInterrupt serves POST /interrupt. With a prompt_id it goes to that
// prompt's instance with the instance's id; an instance older than v0.3.57
// ignores the id and stops whatever runs, so there it is sent only while
// comfygate knows the prompt to be the one running (otherwise a no-op, as
// ComfyUI's targeted interrupt of a prompt not running is). Without a
// prompt_id it interrupts what runs on every instance. As in ComfyUI an
// empty or non-JSON body counts as {}.
func (s *pinnedRoutes) postInterrupt(ctx *fasthttp.RequestCtx) {
	body, ok := s.readSmallBody(ctx)
	if !ok {
		return
	}
	req, err := comfyapi.ParseInterrupt(body)
	if err != nil {
		if !s.keys.refuseBody(ctx, "the body of POST /interrupt must be a JSON object") {
			writeComfyInternalError(ctx)
		}
		return
	}
	if !s.keys.authorizeInterrupt(ctx, req) {
		return
	}
	if req.Global() {
		insts := s.pool.Healthy()
		if len(insts) == 0 {
			s.fwd.writeError(ctx, upstream.ErrNoUpstream)
			return
		}
		s.relayFirst(ctx, s.fwd.callAll(insts, "POST", "/interrupt", callHeader(ctx), []byte("{}")))
		return
	}
	if req.PromptID == "" {
		return // 200, empty: a prompt_id that is no string matches no prompt in ComfyUI
	}
	id := req.PromptID
	inst, upID, err := s.locate(id)
	if errors.Is(err, prompts.ErrUnknownPrompt) {
		return // 200, empty: nothing of that id runs anywhere
	}
	if err != nil {
		s.fwd.writeError(ctx, err)
		return
	}
	if !comfyapi.SupportsTargetedInterrupt(inst.Version()) {
		p, known := s.prompts.Prompt(id)
		if !known || p.State() != prompts.PromptRunning {
			setInstance(ctx, inst)
			return
		}
	}
	req.Fields[comfyapi.FieldPromptID] = quoteJSON(upID)
	nb, _ := json.Marshal(req.Fields)
	s.fwd.forwardTo(ctx, inst, &forwardOpts{uri: []byte("/interrupt"), body: nb, setBody: true})
}

// postQueue serves POST /queue ({"delete": [ids]} and/or {"clear": true}).
func (s *pinnedRoutes) postQueue(ctx *fasthttp.RequestCtx) { s.deleteOrClear(ctx, "/queue") }

// postHistory serves POST /history ({"delete": [ids]} and/or {"clear": true}).
func (s *pinnedRoutes) postHistory(ctx *fasthttp.RequestCtx) { s.deleteOrClear(ctx, "/history") }

// deleteOrClear applies a /queue or /history delete to the instances
// holding those prompts (grouped, with their ids there) and a clear to
// every available instance. Ids are resolved in the pin table only, never
// by asking the instances (LocatePrompt costs a fan-out per id: a 4 MiB
// delete list took hours): ids the table does not know go as they are to
// every healthy instance, in one request each; ComfyUI skips ids it does
// not have.
// A body that is not a JSON object gets ComfyUI's own plain-text 500.
func (s *pinnedRoutes) deleteOrClear(ctx *fasthttp.RequestCtx, path string) {
	body, ok := s.readSmallBody(ctx)
	if !ok {
		return
	}
	q, err := comfyapi.ParseDeleteOrClear(body)
	if err != nil {
		if !s.keys.refuseBody(ctx, "the body of POST "+path+" must be a JSON object") {
			writeComfyInternalError(ctx)
		}
		return
	}
	if !s.keys.scopeDeleteOrClear(ctx, &q) {
		return
	}
	insts := s.pool.Healthy()
	if len(insts) == 0 {
		s.fwd.writeError(ctx, upstream.ErrNoUpstream)
		return
	}
	hdr := callHeader(ctx)
	var results []callResult
	if q.Clear {
		results = append(results, s.fwd.callAll(insts, "POST", path, hdr, []byte(`{"clear": true}`))...)
	}
	if q.HasDelete {
		groups := map[*upstream.Instance][]string{}
		var order []*upstream.Instance
		var unknown []string
		for _, id := range q.Delete {
			var inst *upstream.Instance
			upID := id
			if p, known := s.prompts.Prompt(id); known {
				inst = p.Instance()
				if u := p.UpstreamID(); u != "" {
					upID = u
				}
			}
			if inst == nil {
				unknown = append(unknown, id)
				continue
			}
			if _, seen := groups[inst]; !seen {
				order = append(order, inst)
			}
			groups[inst] = append(groups[inst], upID)
		}
		for _, inst := range order {
			b, _ := json.Marshal(map[string][]string{"delete": groups[inst]})
			results = append(results, s.fwd.callAll([]*upstream.Instance{inst}, "POST", path, hdr, b)...)
		}
		if len(unknown) > 0 {
			b, _ := json.Marshal(map[string][]string{"delete": unknown})
			results = append(results, s.fwd.callAll(insts, "POST", path, hdr, b)...)
		}
	}
	for _, r := range results {
		if r.err != nil {
			s.log.Warn("fleet-wide call failed", "path", path, "instance", r.inst.Name, "err", r.err)
		}
	}
	// ComfyUI answers these with an empty 200.
}

// writeJSON answers 200 with a JSON body.
func writeJSON(ctx *fasthttp.RequestCtx, code int, body []byte) {
	ctx.SetStatusCode(code)
	ctx.SetContentType(jsonContentType)
	ctx.SetBody(body)
}

// getJobByID serves GET /api/jobs/{id}: a facade job still in comfygate's
// wait line first, else the prompt's instance with the instance's id,
// rewritten back.
func (s *pinnedRoutes) getJobByID(ctx *fasthttp.RequestCtx, id string) {
	if s.jobs != nil {
		if body, ok := s.jobs.WaitingJob(id, s.keys.jobScope(requestKey(ctx))); ok {
			writeJSON(ctx, fasthttp.StatusOK, body)
			return
		}
	}
	inst, upID, err := s.locate(id)
	if errors.Is(err, prompts.ErrUnknownPrompt) {
		writeJSON(ctx, fasthttp.StatusNotFound, []byte(`{"error": "Job not found"}`))
		return
	}
	if err != nil {
		s.fwd.writeError(ctx, err)
		return
	}
	opts := func(upID string, timeout time.Duration) *forwardOpts {
		return &forwardOpts{
			uri:     []byte("/api/jobs/" + url.PathEscape(upID)),
			pinned:  true,
			timeout: timeout,
			rewrite: func(inst *upstream.Instance, status int, body []byte) []byte {
				if status != fasthttp.StatusOK {
					return body
				}
				_, out := s.rw.rewriteJob(inst, body)
				return out
			},
		}
	}
	// Like /history/{id}, the read follows its prompt off a silent instance.
	err = s.fwd.forward(ctx, inst, opts(upID, s.pinnedReadTimeout(inst)))
	if err != nil && upstream.NoAnswer(err) {
		if now, nowID, ok := s.movedFrom(id, inst); ok {
			err = s.fwd.forward(ctx, now, opts(nowID, 0))
		}
	}
	if err != nil {
		s.fwd.writeError(ctx, err)
	}
}

// cancelOne cancels a facade job or a prompt, wherever it is; scope is
// the requesting key's job scope (jobScope).
func (s *pinnedRoutes) cancelOne(id, scope string) (bool, error) {
	return s.cancelOneBudget(id, scope, nil)
}

// maxCancelLookups caps, per POST /api/jobs/cancel, the ids neither the job
// facade nor the pin table knows that are looked up at the instances (a
// fan-out each); further unknown ids are answered as not cancelled.
const maxCancelLookups = 16

// cancelOneBudget is cancelOne; when lookups is not nil, an id comfygate
// does not know is looked up at the instances only while *lookups > 0
// (and counts against it), else it is not cancelled.
func (s *pinnedRoutes) cancelOneBudget(id, scope string, lookups *int) (bool, error) {
	cctx, cancel := context.WithTimeout(context.Background(), 2*s.cfg.Timeout)
	defer cancel()
	if s.jobs != nil {
		if known, cancelled := s.jobs.CancelJob(cctx, id, scope); known {
			return cancelled, nil
		}
	}
	if lookups != nil {
		if _, known := s.prompts.Prompt(id); !known {
			if *lookups <= 0 {
				return false, nil
			}
			*lookups--
		}
	}
	ok, err := s.prompts.Cancel(cctx, id)
	if errors.Is(err, prompts.ErrUnknownPrompt) {
		return false, nil
	}
	return ok, err
}

// cancelJob serves POST /api/jobs/{id}/cancel: {"cancelled": bool}, on any
// instance version (comfygate dequeues or interrupts itself).
func (s *pinnedRoutes) cancelJob(ctx *fasthttp.RequestCtx, id string) {
	ok, err := s.cancelOne(id, s.keys.jobScope(requestKey(ctx)))
	if err != nil {
		s.fwd.writeError(ctx, err)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, []byte(`{"cancelled": `+strconv.FormatBool(ok)+`}`))
}

// cancelJobs serves POST /api/jobs/cancel {"job_ids": [...]}, with
// ComfyUI's 400 answers for a bad body. Ids need not be UUIDs here (the
// client-facing ids comfygate accepts need not be). At most
// maxCancelLookups ids comfygate does not know are looked up at the
// instances; the rest count as not cancelled (a long list of unknown ids
// would otherwise cost a fleet-wide fan-out each).
func (s *pinnedRoutes) cancelJobs(ctx *fasthttp.RequestCtx) {
	body, ok := s.readSmallBody(ctx)
	if !ok {
		return
	}
	req, err := comfyapi.ParseJobCancel(body)
	switch {
	case errors.Is(err, comfyapi.ErrNotJSON):
		writeJSON(ctx, fasthttp.StatusBadRequest, []byte(`{"error": "Request body must be valid JSON"}`))
		return
	case errors.Is(err, comfyapi.ErrJobIDsNotList):
		writeJSON(ctx, fasthttp.StatusBadRequest, []byte(`{"error": "job_ids must be a list"}`))
		return
	case err != nil:
		b, _ := json.Marshal(map[string]any{"error": "job_ids contains invalid id(s)", "invalid_ids": req.Invalid})
		writeJSON(ctx, fasthttp.StatusBadRequest, b)
		return
	}
	// An isolated key cancels only its own jobs and prompts; the others'
	// ids count as unknown.
	ids := s.keys.ownedOnly(requestKey(ctx), req.IDs)
	cancelled := false
	lookups := maxCancelLookups
	scope := s.keys.jobScope(requestKey(ctx))
	for _, id := range ids {
		ok, err := s.cancelOneBudget(id, scope, &lookups)
		if err != nil {
			s.log.Warn("cancel failed", "job_id", id, "err", err)
		}
		cancelled = cancelled || ok
	}
	writeJSON(ctx, fasthttp.StatusOK, []byte(`{"cancelled": `+strconv.FormatBool(cancelled)+`}`))
}
