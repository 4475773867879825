package proxy

// API keys, per-key isolation, redaction and rate limits around routing.
// With no key configured, only redaction of credentials in queue and
// history views and the per-IP rate limits apply; with keys on, every
// route needs a key (see the auth package), each key sees and acts on only
// its own prompts, and fleet-wide actions need an admin key.

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/comfygate/comfygate/auth"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/limits"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/state"
	"github.com/valyala/fasthttp"
)

const (
	userValueKey = "comfygate.key"
	routeAuth    = "auth"
	routeLimited = "rate_limited"
)

// keyGuard decides what the key a request was admitted with may do:
// isolation of each key's prompts and jobs, the rate limits and the cap
// on prompts outstanding, before the handler runs (guard), and the
// handlers' own decisions on the one parse of their bodies
// (authorizeInterrupt, scopeDeleteOrClear, claimClientID).
type keyGuard struct {
	cfg     *config.Config
	m       *metrics.Metrics // may be nil
	jobs    JobRoutes        // may be nil: job owners come from the owner table only
	prompts *prompts.Table
	sec     security
	log     *slog.Logger
}

// security is the API keys, owner table and rate limits.
type security struct {
	keys     *auth.Keys
	sessions *auth.Sessions
	owners   *auth.Owners
	// clients decides which key holds each clientId: owners itself in
	// memory, or the state replicas share (state.url).
	clients     state.ClientOwners
	promptRate  *rateLimit
	jobRate     *rateLimit
	outstanding *limits.Outstanding
}

// newKeyGuard loads the API keys of cfg and sets up the owner table and
// the rate limits.
func newKeyGuard(cfg *config.Config, m *metrics.Metrics, jobs JobRoutes, pt *prompts.Table, shared *state.Store, log *slog.Logger) (*keyGuard, error) {
	s := &keyGuard{cfg: cfg, m: m, jobs: jobs, prompts: pt, log: log}
	keys, err := auth.Load(s.cfg)
	if err != nil {
		return nil, err
	}
	rl := s.cfg.RateLimit
	s.sec = security{
		keys:        keys,
		sessions:    auth.NewSessions(s.cfg.Auth.SessionSecret),
		owners:      auth.NewOwners(s.cfg.Auth.MaxOwners),
		promptRate:  newRateLimit("prompt", rl.PromptsPerSecond, rl.PromptBurst, shared.RateLimits(), log),
		jobRate:     newRateLimit("job", rl.JobsPerSecond, rl.JobBurst, shared.RateLimits(), log),
		outstanding: limits.NewOutstanding(rl.MaxConcurrentPrompts),
	}
	s.sec.clients = shared.ClientOwners(s.sec.owners)
	return s, nil
}

// clientClaimTimeout bounds one claim of a clientId in the state store.
const clientClaimTimeout = 5 * time.Second

// claimClient gives clientID to key unless another key holds it, and
// reports whether key may use it. When the state store does not answer it
// answers 503 with Retry-After itself (isolation fails closed) and
// reports false; when another key holds it, the caller answers.
func (s *keyGuard) claimClient(ctx *fasthttp.RequestCtx, clientID, key string) (mine, answered bool) {
	c, cancel := context.WithTimeout(context.Background(), clientClaimTimeout)
	defer cancel()
	ok, err := s.sec.clients.ClaimClient(c, clientID, key)
	if err != nil {
		s.log.Warn("clientId owner not checked", slog.Any("error", err))
		writeJSONError(ctx, fasthttp.StatusServiceUnavailable, "state_unavailable",
			"comfygate cannot check who holds this clientId now; retry after the time in Retry-After")
		ctx.Response.Header.Set("Retry-After", "1")
		return false, true
	}
	return ok, false
}

// requestKey is the key the request was admitted with (nil: keys off).
func requestKey(ctx *fasthttp.RequestCtx) *auth.Key {
	k, _ := ctx.UserValue(userValueKey).(*auth.Key)
	return k
}

// authRefused counts a request refused by the API keys, by reason (a
// fixed set); m may be nil.
func authRefused(m *metrics.Metrics, reason string) {
	if m != nil {
		m.AuthRefused(reason)
	}
}

// isolated reports whether the request's key sees only its own prompts.
func (s *keyGuard) isolated(k *auth.Key) bool { return k != nil && !k.Admin && s.cfg.Auth.Isolation }

// jobScope is the owner a key's requests are limited to ("": every job).
func (s *keyGuard) jobScope(k *auth.Key) string {
	if s.isolated(k) {
		return k.Name
	}
	return ""
}

// owns reports whether k may act on prompt id: the owner this replica
// knows, else (state.url) the one another replica recorded.
func (s *keyGuard) owns(k *auth.Key, id string) bool {
	if !s.isolated(k) {
		return true
	}
	if o := s.ownerOf(id); o != "" {
		return o == k.Name
	}
	return s.sharedOwner(id) == k.Name
}

// ownerOf is the key that submitted prompt or job id ("" when unknown):
// the owner table's, or for a job restored after a restart (which the
// table, kept in memory, no longer knows) the job's own record.
func (s *keyGuard) ownerOf(id string) string {
	if o := s.sec.owners.PromptOwner(id); o != "" {
		return o
	}
	if s.jobs != nil {
		if o, ok := s.jobs.JobOwner(id); ok {
			return o
		}
	}
	return ""
}

// rateName is the rate limits' bucket name: the key, or the client IP
// (behind a trusted proxy, the client it names: clientaddr.go).
func rateName(ctx *fasthttp.RequestCtx) string {
	if k := requestKey(ctx); k != nil {
		return k.Name
	}
	return "ip:" + requestClient(ctx).String()
}

// rateLimited answers 429 when r has no token for the request's key.
func (s *keyGuard) rateLimited(ctx *fasthttp.RequestCtx, r *rateLimit) bool {
	ok, wait := r.take(rateName(ctx))
	if ok {
		return false
	}
	if s.m != nil {
		s.m.RateLimited(r.kind)
	}
	writeJSONError(ctx, fasthttp.StatusTooManyRequests, "rate_limited",
		"too many "+r.kind+" submissions for this key; retry after the time in Retry-After (rate_limit)")
	ctx.Response.Header.Set("Retry-After", strconv.Itoa(int(math.Ceil(max(wait.Seconds(), 1)))))
	return true
}

// guard applies isolation and rate limits to a routed request before its
// handler runs (p is the canonical path without /api). It decides on the
// path, the method and the headers only: a route whose effect depends on
// its body is decided by its handler, on the same parse the handler acts
// on. It answers and returns false when the request is refused; after,
// when not nil, runs once the handler has answered.
func (s *keyGuard) guard(ctx *fasthttp.RequestCtx, p []byte, api bool) (after func(), ok bool) {
	k := requestKey(ctx)
	get, post := ctx.IsGet() || ctx.IsHead(), ctx.IsPost()
	path := string(p)
	admin := k == nil || k.Admin
	forbid := func(msg string) (func(), bool) {
		authRefused(s.m, "forbidden")
		writeJSONError(ctx, fasthttp.StatusForbidden, "forbidden", msg)
		return nil, false
	}
	switch {
	case path == "/ws":
		if k == nil {
			return nil, true
		}
		id := string(ctx.QueryArgs().Peek("clientId"))
		if id == "" {
			id = newClientID() // minted here so that it is claimed for this key
			ctx.QueryArgs().Set("clientId", id)
		}
		if s.isolated(k) {
			if mine, answered := s.claimClient(ctx, id, k.Name); answered {
				return nil, false
			} else if !mine {
				return forbid("this clientId belongs to another key")
			}
		}
		return nil, true
	case path == "/prompt" && post:
		if s.rateLimited(ctx, s.sec.promptRate) {
			return nil, false
		}
		if k == nil {
			// Keys off: no cap on prompts outstanding. One ComfyUI has
			// none, and clients behind one reverse proxy share an address.
			return nil, true
		}
		name := k.Name
		if !s.sec.outstanding.Reserve(name, s.promptDone) {
			if s.m != nil {
				s.m.RateLimited("concurrent")
			}
			writeJSONError(ctx, fasthttp.StatusTooManyRequests, "too_many_prompts",
				"this key has rate_limit.max_concurrent_prompts prompts queued or running; retry when one finishes")
			ctx.Response.Header.Set("Retry-After", "1")
			return nil, false
		}
		// The body's client_id is claimed by postPrompt, on its own parse.
		return func() {
			id := answerID(ctx, "prompt_id")
			s.sec.outstanding.Commit(name, id)
			s.recordOwnerID(k, id)
		}, true
	case api && post && (path == "/remove-background" || path == "/upscale-image" || strings.HasPrefix(path, "/workflows/")):
		if s.rateLimited(ctx, s.sec.jobRate) {
			return nil, false
		}
		if k == nil {
			return nil, true
		}
		return func() { s.recordOwner(ctx, k, "job_id") }, true
	case post && path == "/free":
		if !admin {
			return forbid("POST /free acts on the whole fleet and needs an admin key")
		}
	case post && api && path == "/jobs/cancel":
		// Decided by its handler on the one parse of its body (ownedOnly),
		// like POST /interrupt (authorizeInterrupt) and POST /queue and
		// /history (scopeDeleteOrClear).
		return nil, true
	case api && strings.HasPrefix(path, "/jobs/"):
		id, _, _ := strings.Cut(path[len("/jobs/"):], "/")
		if uid, ok := unescapeSegment([]byte(id)); ok && !s.owns(k, uid) {
			writeJSONError(ctx, fasthttp.StatusNotFound, "not_found", "no such job")
			return nil, false
		}
		if get {
			return func() { s.filterAnswer(ctx, k, "job") }, true
		}
	case get && strings.HasPrefix(path, "/history/"):
		if id, ok := pathParam(p, "/history/"); ok && !s.owns(k, id) {
			writeJSON(ctx, fasthttp.StatusOK, []byte("{}"))
			return nil, false
		}
		return func() { s.filterAnswer(ctx, k, "history") }, true
	case get && path == "/history":
		return func() { s.filterAnswer(ctx, k, "history") }, true
	case get && path == "/queue":
		return func() { s.filterAnswer(ctx, k, "queue") }, true
	case get && api && path == "/jobs":
		return func() { s.filterAnswer(ctx, k, "jobs") }, true
	}
	return nil, true
}

// answerID is the id field of a successful submission's answer ("" for
// any other answer): the prompt_id of ComfyUI's POST /prompt answer, or
// the job_id of comfygate's own job answers.
func answerID(ctx *fasthttp.RequestCtx, field string) string {
	if st := ctx.Response.StatusCode(); st != fasthttp.StatusOK && st != fasthttp.StatusAccepted || ctx.Response.IsBodyStream() {
		return ""
	}
	if field == comfyapi.FieldPromptID {
		a, _ := comfyapi.ParsePromptAnswer(ctx.Response.Body())
		return a.ID()
	}
	var a map[string]json.RawMessage
	if json.Unmarshal(ctx.Response.Body(), &a) != nil {
		return ""
	}
	return comfyapi.IDText(a[field])
}

// promptDone reports whether prompt id has finished (or is no longer
// known), for the concurrent-prompt cap.
func (s *keyGuard) promptDone(id string) bool {
	p, ok := s.prompts.Prompt(id)
	return !ok || p.State() == prompts.PromptDone
}

// recordOwner remembers k as the owner of the prompt or job a successful
// submission answered with.
func (s *keyGuard) recordOwner(ctx *fasthttp.RequestCtx, k *auth.Key, field string) {
	s.recordOwnerID(k, answerID(ctx, field))
}

// recordOwnerID remembers k as the owner of prompt or job id ("": none).
func (s *keyGuard) recordOwnerID(k *auth.Key, id string) {
	if id != "" {
		s.sec.owners.SetPrompt(id, k.Name)
		s.prompts.ShareOwner(id, k.Name)
	}
}

// promptView is what k may see of prompts.
func (s *keyGuard) promptView(k *auth.Key) auth.View {
	v := auth.View{Redact: s.cfg.Redact.ExtraData}
	if k == nil {
		return v // keys off: credentials are hidden from everyone
	}
	v.Own = s.ownFunc(k)
	if s.isolated(k) {
		v.Visible = v.Own
	}
	return v
}

// filterAnswer rewrites a queue, history or jobs answer the handler set
// for what k may see (isolation and redaction).
func (s *keyGuard) filterAnswer(ctx *fasthttp.RequestCtx, k *auth.Key, kind string) {
	if ctx.Response.StatusCode() != fasthttp.StatusOK || ctx.Response.IsBodyStream() {
		return
	}
	v := s.promptView(k)
	body := ctx.Response.Body()
	var out []byte
	switch kind {
	case "queue":
		out = v.Queue(body)
	case "history":
		out = v.History(body)
	case "jobs":
		out = v.Jobs(body)
	case "job":
		if bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) {
			j, ok := v.Job(body)
			if !ok {
				j = body
			}
			out = j
		} else {
			out = body
		}
	}
	if !bytes.Equal(out, body) {
		ctx.Response.SetBody(out)
	}
}

// forbid answers 403 for an action k may not take.
func (s *keyGuard) forbid(ctx *fasthttp.RequestCtx, msg string) {
	authRefused(s.m, "forbidden")
	writeJSONError(ctx, fasthttp.StatusForbidden, "forbidden", msg)
}

// refuseBody answers 400 for a body that cannot be read the way ComfyUI
// reads it, with keys on: what cannot be parsed is never decided on. With
// keys off it reports false, and the handler answers as ComfyUI does.
func (s *keyGuard) refuseBody(ctx *fasthttp.RequestCtx, msg string) bool {
	if !s.sec.keys.On() {
		return false
	}
	authRefused(s.m, "bad_body")
	writeJSONError(ctx, fasthttp.StatusBadRequest, "bad_body", msg)
	return true
}

// authorizeInterrupt decides a POST /interrupt on its parsed body: an
// interrupt of whatever runs acts on the whole fleet and needs an admin
// key; a targeted one needs k to own the prompt. It answers 403 and
// reports false when refused.
func (s *keyGuard) authorizeInterrupt(ctx *fasthttp.RequestCtx, r comfyapi.InterruptRequest) bool {
	k := requestKey(ctx)
	switch {
	case k == nil || k.Admin:
		return true
	case r.Global():
		s.forbid(ctx, "an interrupt without a prompt_id acts on the whole fleet and needs an admin key")
		return false
	case r.PromptID != "" && !s.owns(k, r.PromptID):
		s.forbid(ctx, "this prompt belongs to another key")
		return false
	}
	// A truthy prompt_id that is no string names no prompt: a no-op.
	return true
}

// scopeDeleteOrClear decides a POST /queue or /history body: a clear acts
// on the whole fleet and needs an admin key (403); an isolated key's
// deletes keep only its own prompts, as if the others' ids were unknown.
func (s *keyGuard) scopeDeleteOrClear(ctx *fasthttp.RequestCtx, q *comfyapi.DeleteOrClear) bool {
	k := requestKey(ctx)
	if k == nil {
		return true
	}
	if q.Clear && !k.Admin {
		s.forbid(ctx, "clear acts on the whole fleet and needs an admin key")
		return false
	}
	q.Delete = s.ownedOnly(k, q.Delete)
	return true
}

// ownedOnly keeps the ids of ids that k may act on (all of them unless k
// is isolated).
func (s *keyGuard) ownedOnly(k *auth.Key, ids []string) []string {
	if !s.isolated(k) {
		return ids
	}
	own := s.ownFunc(k)
	kept := make([]string, 0, len(ids))
	for _, id := range ids {
		if own(id) {
			kept = append(kept, id)
		}
	}
	return kept
}

// claimClientID decides the client_id of a POST /prompt body for an
// isolated key: a clientId another key holds is refused with 403.
func (s *keyGuard) claimClientID(ctx *fasthttp.RequestCtx, clientID string) bool {
	k := requestKey(ctx)
	if clientID == "" || !s.isolated(k) {
		return true
	}
	mine, answered := s.claimClient(ctx, clientID, k.Name)
	if mine || answered {
		return mine
	}
	s.forbid(ctx, "this client_id belongs to another key")
	return false
}
