package jobs

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	sharedstate "github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/workflows"
	"github.com/valyala/fasthttp"
)

// Routes of the job API. GET /api/jobs (without source=comfygate),
// GET /api/jobs/{id} and POST /api/jobs/{id}/cancel are ComfyUI's own and
// are left to the proxy.
const (
	routeRemoveBackground = "/api/remove-background"
	routeUpscaleImage     = "/api/upscale-image"
	routeWorkflows        = "/api/workflows/"
	routeJobs             = "/api/jobs"
	routeWorkflowList     = "/api/workflows"
	routeOpenAPI          = "/api/openapi.json"
	routeValidatePrompt   = "/api/prompt/validate"
	listSource            = "comfygate"
)

// Request is what the proxy tells ServeJobs about a request, decided
// once before routing: the path to route on and who is asking.
type Request struct {
	// Path is the canonical, still percent-encoded request path with its
	// /api prefix ("/api/jobs/abc/result"), the one the proxy routed and
	// authorised on. Routes are matched on it segment by segment; an id
	// is one segment, unescaped alone.
	Path string
	// Owner is the name of the API key that asks ("" with keys off). A
	// job it submits belongs to it, and its Idempotency-Keys are its own.
	Owner string
	// Scope, when not "", limits the request to the jobs whose owner is
	// Scope: another owner's job answers exactly as an unknown id (404).
	Scope string
}

// ServeJobs serves the job API's routes and reports whether the request
// was one of them:
//
//	POST   /api/remove-background, /api/upscale-image, /api/workflows/{name}
//	       (Prefer: wait=N or ?wait=Ns, Idempotency-Key, ?dry_run=1)
//	GET    /api/workflows              (the workflows, parameters as JSON Schema)
//	GET    /api/openapi.json           (OpenAPI 3.1 description of these routes)
//	POST   /api/prompt/validate        (a POST /prompt body checked against /object_info)
//	GET    /api/jobs/{id}/status       (?wait=Ns long-polls for a status change)
//	GET    /api/jobs/{id}/events       (Server-Sent Events)
//	GET    /api/jobs/{id}/result       (JSON; raw bytes with Accept: image/* or ?format=raw)
//	GET    /api/jobs/{id}/outputs/{n}  (one output file, Range supported)
//	DELETE /api/jobs/{id}
//	GET    /api/jobs?source=comfygate
//
// GET /api/jobs/{id}?wait=Ns of a facade job waits here for a status
// change, then reports false so that ComfyUI's own answer follows.
//
// Routing reads r.Path only, never the request's own (decoded, cleaned)
// path: a path under /api/jobs/ with an empty, "." or ".." segment names
// no job and is answered 404 here.
func (s *Service) ServeJobs(ctx *fasthttp.RequestCtx, r Request) bool { return s.api.ServeJobs(ctx, r) }

// ServeJobs is Service.ServeJobs.
func (s *api) ServeJobs(ctx *fasthttp.RequestCtx, r Request) bool {
	path := r.Path
	switch {
	case path == routeRemoveBackground:
		s.serveSubmit(ctx, r, workflows.RemoveBackground, true)
	case path == routeUpscaleImage:
		s.serveSubmit(ctx, r, workflows.UpscaleImage, true)
	case path == routeWorkflowList:
		if !allow(ctx, "GET", "HEAD") {
			return true
		}
		s.serveWorkflows(ctx)
	case path == routeValidatePrompt:
		if !allow(ctx, "POST") {
			return true
		}
		s.serveValidatePrompt(ctx)
	case path == routeOpenAPI:
		if !allow(ctx, "GET", "HEAD") {
			return true
		}
		ctx.SetStatusCode(fasthttp.StatusOK)
		ctx.SetContentType("application/json; charset=utf-8")
		ctx.SetBody(openAPIDocument)
	case strings.HasPrefix(path, routeWorkflows):
		name, ok := pathSegment(path[len(routeWorkflows):])
		if !ok {
			return false
		}
		s.serveSubmit(ctx, r, name, false)
	case path == routeJobs:
		if !ctx.IsGet() && !ctx.IsHead() || string(ctx.QueryArgs().Peek("source")) != listSource {
			return false // ComfyUI's job list
		}
		s.serveList(ctx, r.Scope)
	case strings.HasPrefix(path, routeJobs+"/"):
		segs := strings.Split(path[len(routeJobs)+1:], "/")
		for _, seg := range segs {
			if seg == "" || seg == "." || seg == ".." {
				// Names no job: not passed on either, where another
				// reading of the path could resolve it to one.
				writeError(ctx, &apiError{status: fasthttp.StatusNotFound, typ: errNotFound, msg: "no such job route"})
				return true
			}
		}
		id, ok := pathSegment(segs[0])
		if !ok {
			writeError(ctx, &apiError{status: fasthttp.StatusNotFound, typ: errNotFound, msg: "no such job route"})
			return true
		}
		sub, arg := "", ""
		if len(segs) > 1 {
			sub = segs[1]
		}
		if len(segs) > 2 {
			arg = segs[2]
		}
		if len(segs) > 3 || (arg != "" && sub != "outputs") {
			return false
		}
		switch sub {
		case "status":
			if !allow(ctx, "GET", "HEAD") {
				return true
			}
			s.serveStatus(ctx, id, r.Scope)
		case "result":
			if !allow(ctx, "GET", "HEAD") {
				return true
			}
			s.serveResult(ctx, id, r.Scope)
		case "events":
			if !allow(ctx, "GET") {
				return true
			}
			s.del.serveEvents(ctx, id, r.Scope)
		case "outputs":
			if !allow(ctx, "GET", "HEAD") {
				return true
			}
			if arg == "" {
				s.serveOutputList(ctx, id, r.Scope)
			} else {
				s.serveOutput(ctx, id, r.Scope, arg)
			}
		case "":
			if ctx.IsGet() && ctx.QueryArgs().Has("wait") {
				s.longPoll(ctx, id, r.Scope, false)
				return false // ComfyUI's GET /api/jobs/{id} answers
			}
			if !ctx.IsDelete() {
				return false // GET /api/jobs/{id} is ComfyUI's
			}
			s.serveDelete(ctx, id, r.Scope)
		default:
			return false // POST /api/jobs/{id}/cancel and anything else: ComfyUI's
		}
	default:
		return false
	}
	return true
}

// pathSegment unescapes one raw path segment: ok is false for an empty
// one, one holding a '/', or a bad escape.
func pathSegment(seg string) (string, bool) {
	if seg == "" || strings.Contains(seg, "/") {
		return "", false
	}
	v, err := url.PathUnescape(seg)
	if err != nil || v == "" {
		return "", false
	}
	return v, true
}

// allow answers 405 unless the method is one of methods.
func allow(ctx *fasthttp.RequestCtx, methods ...string) bool {
	if slices.Contains(methods, string(ctx.Method())) {
		return true
	}
	ctx.Response.Header.Set("Allow", strings.Join(methods, ", "))
	writeError(ctx, &apiError{status: fasthttp.StatusMethodNotAllowed, typ: errMethodNotAllowed,
		msg: fmt.Sprintf("use %s", strings.Join(methods, " or "))})
	return false
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = fasthttp.StatusInternalServerError, []byte(`{"error":{"type":"internal","message":"cannot encode the answer"}}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json; charset=utf-8")
	ctx.SetBody(b)
}

func writeError(ctx *fasthttp.RequestCtx, e *apiError) {
	if e.retryAfter > 0 {
		ctx.Response.Header.Set("Retry-After", itoa(e.retryAfter))
	}
	type body struct {
		Type    string       `json:"type"`
		Message string       `json:"message"`
		Details []fieldError `json:"details,omitempty"`
	}
	writeJSON(ctx, e.status, map[string]body{"error": {Type: e.typ, Message: e.msg, Details: e.details}})
}

// acceptedView is the 202 answer to a job submission.
type acceptedView struct {
	JobID     string  `json:"job_id"`
	Status    string  `json:"status"`
	Workflow  string  `json:"workflow"`
	Estimated float64 `json:"estimated_completion_seconds"`
	StatusURL string  `json:"status_url"`
	ResultURL string  `json:"result_url"`
	EventsURL string  `json:"events_url,omitempty"`
	Cached    bool    `json:"cached,omitempty"` // completed from the result cache
}

// serveSubmit accepts a job for the named workflow. builtIn marks the
// two fixed endpoints, whose one-request answer carries image_base64.
func (s *api) serveSubmit(ctx *fasthttp.RequestCtx, r Request, name string, builtIn bool) {
	if !allow(ctx, "POST") {
		return
	}
	wfs := s.cat.workflows()
	wf := wfs[name]
	if wf == nil {
		writeError(ctx, badRequest(errUnknownWorkflow, "unknown workflow %q (known: %s)", name, strings.Join(slices.Sorted(maps.Keys(wfs)), ", ")))
		return
	}
	wait, aerr := requestedWait(ctx, s.cfg.MaxWait)
	if aerr != nil {
		writeError(ctx, aerr)
		return
	}
	withData, aerr := finishedWithData(ctx, builtIn)
	if aerr != nil {
		writeError(ctx, aerr)
		return
	}
	p, named := wf.param("image")
	mem := s.newBodyMem()
	defer mem.release() // once answered: an accepted job's images are the input store's
	sub, aerr, spooled := s.spoolRawImage(ctx, wf, s.cfg.MaxImageBytes)
	if !spooled {
		sub, aerr = parseSubmissionN(ctx, s.cfg.MaxImageBytes, wf.needsImage(), wf.imageParams(), named && p.Type == ptImage && !wf.needsImage(),
			&bodyIO{mem: mem, spool: s.spoolPart, spoolBase64: s.spoolBase64})
	}
	if aerr != nil {
		writeError(ctx, aerr)
		return
	}
	defer sub.spool.discard() // unless a job took it
	if err := wf.checkOverrides(sub.inputs); err != nil {
		writeError(ctx, badRequest(errInvalidOverride, "%s", err.Error()))
		return
	}
	var values map[string]json.RawMessage
	var images map[string][]byte
	if len(wf.cfg.Parameters) > 0 {
		var errs []fieldError
		fetch := func(u string) ([]byte, error) { return s.imageURLs.get(ctx, u, s.cfg.MaxImageBytes) }
		values, images, errs = wf.checkParams(sub, s.cfg.MaxImageBytes, fetch)
		if len(errs) > 0 {
			writeError(ctx, invalidParams(errs))
			return
		}
	}
	hook := sub.webhookURL
	if hook == "" {
		hook = string(ctx.QueryArgs().Peek(keyWebhookURL))
	}
	if isTrue(ctx.QueryArgs().Peek(keyWebhookProg)) {
		sub.webhookProgress = true
	}
	if hook == "" {
		hook = s.hooks.defaultURL
	}
	if hook != "" {
		if err := s.hooks.check(hook); err != nil {
			writeError(ctx, badRequest(errWebhook, "webhook_url: %v", err))
			return
		}
	}
	if isTrue(ctx.QueryArgs().Peek("dry_run")) {
		s.serveDryRun(ctx, wf, sub, values, images)
		return
	}
	// An Idempotency-Key is the owner's own: another key's same value
	// never replays this owner's job.
	meta := jobMeta{owner: r.Owner}
	key := idemKey{owner: r.Owner, key: string(ctx.Request.Header.Peek("Idempotency-Key"))}
	var j *job
	replayed := false
	if key.key != "" {
		meta.idem = key.key
		meta.idemFP = fingerprint(wf.name, sub, values, images, hook)
		id, aerr := s.st.idemBegin(key, meta.idemFP)
		if aerr != nil {
			writeError(ctx, aerr)
			return
		}
		if id != "" {
			s.eng.mirror(id)
			s.eng.lock()
			j = s.eng.lookupLocked(id, r.Scope)
			s.eng.unlock()
			if j == nil {
				writeJSON(ctx, fasthttp.StatusOK, acceptedView{JobID: id, Status: statusExpired, Workflow: wf.name,
					StatusURL: routeJobs + "/" + id + "/status", ResultURL: routeJobs + "/" + id + "/result"})
				return
			}
			replayed = true
			ctx.Response.Header.Set("Idempotent-Replayed", "true")
		}
	}
	if j == nil {
		j, aerr = s.st.acceptOrReuse(wf, sub, values, images, hook, meta)
		if key.key != "" {
			if aerr != nil {
				s.st.idemAbort(key, meta.idemFP)
			} else {
				s.st.idemDone(key, meta.idemFP, j.id)
			}
		}
		if aerr != nil {
			writeError(ctx, aerr)
			return
		}
	}
	if wait > 0 && s.del.waitJob(ctx, j, wait, func(j *job) bool { return j.state.terminal() }) {
		s.writeFinished(ctx, j, withData)
		return
	}
	parallel := s.parallelism()
	s.eng.lock()
	est := s.line.estimate(j, parallel)
	st := j.state.public()
	s.eng.unlock()
	if !replayed && !j.cached {
		st = statusPending
	}
	ctx.Response.Header.Set("Location", routeJobs+"/"+j.id+"/status")
	writeJSON(ctx, fasthttp.StatusAccepted, acceptedView{
		JobID:     j.id,
		Status:    st,
		Workflow:  wf.name,
		Estimated: estimateSeconds(est),
		StatusURL: routeJobs + "/" + j.id + "/status",
		ResultURL: routeJobs + "/" + j.id + "/result",
		EventsURL: routeJobs + "/" + j.id + "/events",
		Cached:    j.cached,
	})
}

func invalidParams(errs []fieldError) *apiError {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Field + ": " + e.Message
	}
	return &apiError{status: fasthttp.StatusBadRequest, typ: errInvalidParams, msg: strings.Join(msgs, "; "), details: errs}
}

// isTrue reads a boolean query flag: present and not 0/false/no.
func isTrue(v []byte) bool {
	switch strings.ToLower(string(v)) {
	case "", "0", "false", "no", "off":
		return false
	}
	return true
}

// wantsBase64 reports whether a finished job's JSON carries its bytes:
// ?base64=1, or by default on the two built-in endpoints.
func wantsBase64(ctx *fasthttp.RequestCtx, def bool) bool {
	if !ctx.QueryArgs().Has("base64") {
		return def
	}
	return isTrue(ctx.QueryArgs().Peek("base64"))
}

// includeBase64 is the ?include= value that asks a finished answer to
// carry its first output inline (image_base64), whatever the route.
const includeBase64 = "base64"

// finishedWithData reports whether a submission's finished answer
// carries its first output inline: ?include=base64 asks for it on any
// route; otherwise ?base64=, or by default on the two built-in routes.
// include takes a comma-separated list of known values.
func finishedWithData(ctx *fasthttp.RequestCtx, builtIn bool) (bool, *apiError) {
	include := false
	for _, v := range ctx.QueryArgs().PeekMulti("include") {
		for _, item := range strings.Split(string(v), ",") {
			switch strings.TrimSpace(item) {
			case includeBase64:
				include = true
			default:
				return false, badRequest(errInvalidRequest, "include %q: want %s", item, includeBase64)
			}
		}
	}
	if !include {
		return wantsBase64(ctx, builtIn), nil
	}
	if ctx.QueryArgs().Has("base64") && !isTrue(ctx.QueryArgs().Peek("base64")) {
		return false, badRequest(errInvalidRequest, "include=base64 asks for the image inline, base64=%s leaves it out: send one", ctx.QueryArgs().Peek("base64"))
	}
	return true, nil
}

// requestedWait reads how long the caller waits for the job: ?wait=10s (a
// Go duration, or seconds) or Prefer: wait=10 (RFC 7240, seconds), capped
// at maxWait. 0 means no wait.
func requestedWait(ctx *fasthttp.RequestCtx, maxWait time.Duration) (time.Duration, *apiError) {
	v := string(ctx.QueryArgs().Peek("wait"))
	if v == "" {
		for _, pref := range strings.FieldsFunc(string(ctx.Request.Header.Peek("Prefer")), func(r rune) bool { return r == ',' || r == ';' }) {
			k, val, _ := strings.Cut(strings.TrimSpace(pref), "=")
			if strings.EqualFold(strings.TrimSpace(k), "wait") {
				v = strings.Trim(strings.TrimSpace(val), `"`)
			}
		}
	}
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		f, ferr := strconv.ParseFloat(v, 64)
		if ferr != nil {
			return 0, badRequest(errInvalidRequest, "wait %q: want seconds (10) or a duration (10s, 500ms)", v)
		}
		d = time.Duration(f * float64(time.Second))
	}
	if d < 0 {
		return 0, badRequest(errInvalidRequest, "wait %q: want a positive duration", v)
	}
	if ctx.QueryArgs().Has("wait") || ctx.Request.Header.Peek("Prefer") != nil {
		ctx.Response.Header.Set("Vary", "Prefer")
	}
	return min(d, maxWait), nil
}

// waitedView is a finished job as the one-request submission and the
// long poll answer it: its status, outputs and (when asked) its bytes.
type waitedView struct {
	statusView
	ImageBase64 string `json:"image_base64,omitempty"`
	ContentType string `json:"content_type,omitempty"`
}

// writeFinished answers with a finished job.
func (s *api) writeFinished(ctx *fasthttp.RequestCtx, j *job, withData bool) {
	parallel := s.parallelism()
	s.eng.lock()
	v := waitedView{statusView: s.statusLocked(j, parallel)}
	if withData && len(j.files) > 0 {
		v.Outputs = s.del.outputViewsLocked(j, ctx.QueryArgs().Has("base64"))
		f := j.files[0]
		if b, err := f.bytes(); err == nil {
			v.ImageBase64, v.ContentType = dataURL(f.contentType, b), f.contentType
		}
	}
	s.eng.unlock()
	writeJSON(ctx, fasthttp.StatusOK, v)
}

// imageParams counts a workflow's image parameters.
func (wf *workflow) imageParams() int {
	n := 0
	for _, p := range wf.cfg.Parameters {
		if p.Type == ptImage {
			n++
		}
	}
	return n
}

// statusView is GET /api/jobs/{id}/status.
type statusView struct {
	JobID            string        `json:"job_id"`
	Workflow         string        `json:"workflow"`
	Status           string        `json:"status"`
	Progress         int           `json:"progress"`
	Instance         *string       `json:"comfyui_instance"`
	ProcessingTimeMS int64         `json:"processing_time_ms"`
	QueuePosition    *int          `json:"queue_position,omitempty"`
	Estimated        *float64      `json:"estimated_completion_seconds,omitempty"`
	Error            *string       `json:"error,omitempty"`
	ErrorDetails     *errorDetails `json:"error_details,omitempty"`
	CreatedAt        time.Time     `json:"created_at"`
	FinishedAt       *time.Time    `json:"finished_at,omitempty"`
	Outputs          []outputView  `json:"outputs,omitempty"`
	Webhook          *webhookView  `json:"webhook,omitempty"`
	Cached           bool          `json:"cached,omitempty"` // completed from the result cache
}

// statusLocked renders a job's status.
func (s *api) statusLocked(j *job, parallel int) statusView {
	now := s.eng.timeNow()
	v := statusView{
		JobID:     j.id,
		Workflow:  j.wf.name,
		Status:    j.state.public(),
		Progress:  j.prog.percent(),
		CreatedAt: j.created.UTC(),
		Webhook:   j.webhook.view(),
		Cached:    j.cached && j.state == stCompleted,
	}
	if j.instance != "" {
		inst := j.instance
		v.Instance = &inst
	}
	if !j.dispatched.IsZero() {
		end := now
		if j.state.terminal() {
			end = j.finished
		}
		v.ProcessingTimeMS = end.Sub(j.dispatched).Milliseconds()
	}
	switch {
	case j.state.terminal():
		f := j.finished.UTC()
		v.FinishedAt = &f
		if j.state == stFailed {
			msg := j.errMsg
			v.Error = &msg
			v.ErrorDetails = j.errDetail
		}
		v.Outputs = s.del.outputViewsLocked(j, false)
	default:
		if v.Status == statusPending {
			pos := s.line.position(j)
			v.QueuePosition = &pos
		}
		est := estimateSeconds(s.line.estimate(j, parallel))
		v.Estimated = &est
	}
	return v
}

func (s *api) serveStatus(ctx *fasthttp.RequestCtx, id, scope string) {
	if ctx.QueryArgs().Has("wait") && !s.longPoll(ctx, id, scope, true) {
		return
	}
	s.eng.mirror(id)
	parallel := s.parallelism()
	s.eng.lock()
	j := s.eng.lookupLocked(id, scope)
	if j == nil {
		s.eng.unlock()
		notFound(ctx, id)
		return
	}
	v := s.statusLocked(j, parallel)
	s.eng.unlock()
	writeJSON(ctx, fasthttp.StatusOK, v)
}

func notFound(ctx *fasthttp.RequestCtx, id string) {
	writeError(ctx, &apiError{status: fasthttp.StatusNotFound, typ: errNotFound, msg: fmt.Sprintf("no job %q (unknown, or expired)", id)})
}

// resultView is GET /api/jobs/{id}/result as JSON.
type resultView struct {
	JobID            string       `json:"job_id"`
	Workflow         string       `json:"workflow"`
	Status           string       `json:"status"`
	ImageBase64      string       `json:"image_base64,omitempty"`
	ContentType      string       `json:"content_type"`
	ProcessingTimeMS int64        `json:"processing_time_ms"`
	Instance         string       `json:"comfyui_instance"`
	Outputs          []outputView `json:"outputs"`
	Cached           bool         `json:"cached,omitempty"` // completed from the result cache
}

func (s *api) serveResult(ctx *fasthttp.RequestCtx, id, scope string) {
	s.eng.mirror(id)
	parallel := s.parallelism()
	s.eng.lock()
	j := s.eng.lookupLocked(id, scope)
	if j == nil {
		s.eng.unlock()
		notFound(ctx, id)
		return
	}
	if j.state != stCompleted {
		v := s.statusLocked(j, parallel)
		s.eng.unlock()
		writeJSON(ctx, fasthttp.StatusConflict, v)
		return
	}
	f := j.files[0]
	v := resultView{
		JobID:            j.id,
		Workflow:         j.wf.name,
		Status:           statusCompleted,
		ContentType:      f.contentType,
		ProcessingTimeMS: j.finished.Sub(j.dispatched).Milliseconds(),
		Instance:         j.instance,
		Outputs:          s.del.outputViewsLocked(j, isTrue(ctx.QueryArgs().Peek("base64"))),
		Cached:           j.cached,
	}
	s.eng.unlock()
	if wantsRaw(ctx) {
		serveFile(ctx, f)
		ctx.Response.Header.Set("Content-Disposition", fmt.Sprintf("inline; filename=\"%s%s\"", id, extensionForType(f.contentType)))
		return
	}
	// The result's bytes in base64 stay the default (the first API's
	// shape); ?base64=0 leaves them out.
	if wantsBase64(ctx, true) {
		data, err := f.bytes()
		if err != nil {
			writeError(ctx, &apiError{status: fasthttp.StatusGone, typ: errNotFound, msg: "the result is no longer stored"})
			return
		}
		v.ImageBase64 = dataURL(f.contentType, data)
	}
	writeJSON(ctx, fasthttp.StatusOK, v)
}

// wantsRaw reports whether the caller asked for the image bytes:
// ?format=raw, or an Accept naming an image type and not JSON.
func wantsRaw(ctx *fasthttp.RequestCtx) bool {
	switch string(ctx.QueryArgs().Peek("format")) {
	case "raw":
		return true
	case "json":
		return false
	}
	accept := string(ctx.Request.Header.Peek("Accept"))
	return strings.Contains(accept, "image/") && !strings.Contains(accept, "application/json")
}

func extensionForType(ct string) string {
	switch ct {
	case "image/png":
		return ".png"
	case "image/jpeg":
		return ".jpg"
	case "image/webp":
		return ".webp"
	case "image/gif":
		return ".gif"
	}
	return ""
}

// deleteView answers DELETE /api/jobs/{id}.
type deleteView struct {
	JobID     string `json:"job_id"`
	Cancelled bool   `json:"cancelled"`
	Status    string `json:"status"`
}

func (s *api) serveDelete(ctx *fasthttp.RequestCtx, id, scope string) {
	s.eng.mirror(id)
	s.eng.lock()
	visible := s.eng.lookupLocked(id, scope) != nil
	s.eng.unlock()
	if !visible {
		notFound(ctx, id)
		return
	}
	known, cancelled := s.eng.cancel(ctx, id, scope)
	if !known {
		notFound(ctx, id)
		return
	}
	st := statusCompleted // expired the moment it was looked at: it had finished
	if cancelled {
		st = statusCancelled
	}
	s.eng.lock()
	if j := s.eng.jobLocked(id); j != nil {
		st = j.state.public()
	}
	s.eng.unlock()
	writeJSON(ctx, fasthttp.StatusOK, deleteView{JobID: id, Cancelled: cancelled, Status: st})
}

// listItem is one job in GET /api/jobs?source=comfygate.
type listItem struct {
	JobID      string  `json:"job_id"`
	Workflow   string  `json:"workflow"`
	Status     string  `json:"status"`
	Progress   int     `json:"progress"`
	AgeSeconds float64 `json:"age_seconds"`
	Instance   *string `json:"comfyui_instance"`

	created time.Time
	state   state
}

// listView is GET /api/jobs?source=comfygate: every facade job, oldest first.
type listView struct {
	Jobs     []listItem `json:"jobs"`
	Total    int        `json:"total"`
	Waiting  int        `json:"waiting"`
	InFlight int        `json:"in_flight"`
}

// serveList lists the jobs of scope: with the shared job line, the
// fleet's (each job as its record says, those this replica runs as it
// knows them, which is never older); in memory, or while the shared
// store does not answer, this replica's.
func (s *api) serveList(ctx *fasthttp.RequestCtx, scope string) {
	var filter []string
	if f := string(ctx.QueryArgs().Peek("status")); f != "" {
		filter = strings.Split(f, ",")
	}
	var fleet []sharedstate.JobListed
	listed := false
	if s.eng.sh != nil {
		fleet, listed = s.eng.sh.list(scope)
	}
	s.eng.lock()
	now := s.eng.timeNow()
	js, waiting, inFlight := s.eng.jobsLocked(scope, func(j *job) bool { return !listed || !j.remote })
	slices.SortFunc(js, func(a, b *job) int { return cmp.Compare(a.seq, b.seq) })
	items := make([]listItem, 0, len(js)+len(fleet))
	own := make(map[string]bool, len(js))
	for _, j := range js {
		own[j.id] = true
		items = append(items, listItem{JobID: j.id, Workflow: j.wf.name, Status: j.state.public(), Progress: j.prog.percent(),
			Instance: optional(j.instance), created: j.created, state: j.state})
	}
	s.eng.unlock()
	if listed {
		for _, r := range fleet {
			st, ok := parseState(r.State)
			if own[r.ID] || !ok {
				continue
			}
			var live sharedLive
			_ = json.Unmarshal(r.Live, &live)
			items = append(items, listItem{JobID: r.ID, Workflow: r.Workflow, Status: st.public(), Progress: live.Progress,
				Instance: optional(live.Instance), created: r.Created, state: st})
		}
		slices.SortStableFunc(items, func(a, b listItem) int { return a.created.Compare(b.created) })
		waiting, inFlight = 0, 0
		for _, it := range items {
			switch {
			case it.state == stWaiting:
				waiting++
			case !it.state.terminal():
				inFlight++
			}
		}
	}
	v := listView{Jobs: make([]listItem, 0, len(items)), Waiting: waiting, InFlight: inFlight}
	for _, it := range items {
		if filter == nil || slices.Contains(filter, it.Status) {
			it.AgeSeconds = float64(now.Sub(it.created).Milliseconds()) / 1000
			v.Jobs = append(v.Jobs, it)
		}
	}
	v.Total = len(v.Jobs)
	writeJSON(ctx, fasthttp.StatusOK, v)
}

// optional is s as an optional JSON string: null when empty.
func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// waitingJobView is ComfyUI's GET /api/jobs/{id} shape for a pending job
// (comfy_execution/jobs.py normalize_queue_item with include_workflow).
type waitingJobView struct {
	ID                      string          `json:"id"`
	Status                  string          `json:"status"`
	Priority                uint64          `json:"priority"`
	CreateTime              int64           `json:"create_time"`
	OutputsCount            int             `json:"outputs_count"`
	PreviewableOutputsCount int             `json:"previewable_outputs_count"`
	Workflow                waitingWorkflow `json:"workflow"`
}

type waitingWorkflow struct {
	Prompt    json.RawMessage `json:"prompt"`
	ExtraData map[string]any  `json:"extra_data"`
}

// WaitingJob returns ComfyUI's GET /api/jobs/{id} shape for a facade job
// that has not reached an instance yet (in the wait line, or being
// uploaded and submitted); ok is false otherwise, and for a job outside
// scope (when scope is not "").
func (s *Service) WaitingJob(id, scope string) ([]byte, bool) { return s.api.WaitingJob(id, scope) }

// WaitingJob is Service.WaitingJob.
func (s *api) WaitingJob(id, scope string) ([]byte, bool) {
	s.eng.mirror(id)
	s.eng.lock()
	j := s.eng.lookupLocked(id, scope)
	if j == nil || !(j.state == stWaiting || (j.state == stSubmitting && !j.submitted)) {
		s.eng.unlock()
		return nil, false
	}
	created := j.created.UnixMilli()
	v := waitingJobView{
		ID:         j.id,
		Status:     "pending",
		Priority:   j.seq,
		CreateTime: created,
		Workflow: waitingWorkflow{
			Prompt:    j.prompt,
			ExtraData: map[string]any{"create_time": created, "comfygate_job": map[string]string{"workflow": j.wf.name}},
		},
	}
	s.eng.unlock()
	b, err := json.Marshal(v)
	if err != nil {
		return nil, false
	}
	return b, true
}
