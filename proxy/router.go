package proxy

// Routing of ComfyUI's API over the instances.
//
// Every ComfyUI route is served under both /x and /api/x (ComfyUI mirrors
// its routes; the jobs API exists only as /api/jobs). Routes are matched on
// the raw, still percent-encoded request path, so a %2F inside a
// /userdata/{file} segment stays one segment, and ids taken from the path
// are unescaped only for looking them up. Only canonical paths get this
// far (canon.go): every reader of the raw path sees the same segments.
//
// Where a request goes:
//   - comfygate's own: /health, /metrics, /stats, /dashboard and
//     /dashboard/events (root only, never forwarded),
//     and the admin routes under /admin/ (fleet.go);
//   - the job facade's routes (JobRoutes.ServeJobs) before anything else under /api/;
//   - POST /prompt: the prompt table (prompts.Table.Submit) picks the instance;
//   - routes naming a prompt (/history/{id}, /interrupt {prompt_id}, /queue
//     and /history deletes, /api/jobs/{id}...): the instance the prompt is
//     pinned to, with the instance's id for it;
//   - views of the whole queue (GET /queue, /history, /prompt, /api/jobs):
//     merged over every instance (merge.go);
//   - fleet-wide actions (POST /free, /interrupt without id, /queue and
//     /history clear): every instance;
//   - /view: the instance holding that file; uploads: see files.go;
//   - /object_info and /models (with their per-class and per-folder
//     forms): the fleet's catalogue, the union of every instance's
//     (catalogue package), once it is read;
//   - the other instance-neutral catalogue GETs (/system_stats,
//     /embeddings, /features, /experiment/models, /view_metadata,
//     /i18n, /workflow_templates): any available instance, least busy first
//     (Selector.Select), another one if the first cannot be reached;
//   - everything else goes to the "home" instance, the first available one
//     in configuration order. That covers:
//       * user data (/settings*, /userdata*, /v2/userdata, /users,
//         /internal/*): settings and saved workflows live in each instance's
//         user directory, so they must all go to one place or a workflow
//         saved now would be missing on the next load. With API keys
//         and isolation on, a non-admin key's user data is its own
//         directory there, and /internal and POST /users are refused
//         (scopeUserData, userdata.go);
//       * the frontend's static files (/, /assets/*, /extensions/*,
//         /templates/*, /docs/*): one page load must come from one frontend
//         build. Instances of different ComfyUI versions serve different
//         builds whose index.html names hashed assets that the others do not
//         have, and ETags differ per instance so revalidation would miss;
//       * unknown routes (custom nodes add their own), so a custom node's
//         state also lives in one place.
//     When the home instance cannot be reached, the next available one in
//     configuration order is tried (and becomes home while the first is
//     out).

import (
	"bytes"
	"net/url"
	"time"

	"github.com/comfygate/comfygate/jobs"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// Route templates: the fixed set that labels metrics and access logs.
const (
	routeHealth       = "/health"
	routeMetrics      = "/metrics"
	routeStats        = "/stats"
	routeForbidden    = "forbidden"
	routeRefused      = "refused"
	routeJobsFacade   = "jobs_facade"
	routeWS           = "/ws"
	routePrompt       = "/prompt"
	routeQueue        = "/queue"
	routeHistory      = "/history"
	routeHistoryID    = "/history/{id}"
	routeInterrupt    = "/interrupt"
	routeFree         = "/free"
	routeView         = "/view"
	routeUploadImage  = "/upload/image"
	routeUploadMask   = "/upload/mask"
	routeJobs         = "/api/jobs"
	routeJobID        = "/api/jobs/{id}"
	routeJobCancel    = "/api/jobs/{id}/cancel"
	routeJobsCancel   = "/api/jobs/cancel"
	routeObjectInfo   = "/object_info"
	routeSystemStats  = "/system_stats"
	routeCatalogue    = "catalogue"
	routeUserData     = "userdata"
	routeStatic       = "static"
	routeOther        = "other"
	userValueInstance = "comfygate.instance"
	userValueHeldBody = "comfygate.held_body"
)

var apiPrefix = []byte("/api/")

// handle is the server's request handler.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	s.edge.noteClient(ctx)
	route := s.dispatch(ctx)
	s.edge.logRequest(ctx, route, start)
}

// splitPath returns the raw path of the request URI (before '?').
func splitPath(uri []byte) []byte {
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		return uri[:i]
	}
	return uri
}

// dispatch serves one request and returns its route template.
func (s *Server) dispatch(ctx *fasthttp.RequestCtx) string {
	if !normalizeTarget(ctx) || !s.edge.bodyWithinLimit(ctx) {
		return routeRefused
	}
	raw := splitPath(rawRequestURI(ctx))
	if !requireCanonicalPath(ctx, raw) {
		s.edge.refused("non_canonical_path")
		return routeRefused
	}
	if route, ok := s.authn.admit(ctx, raw); !ok {
		return route
	}
	raw = splitPath(rawRequestURI(ctx)) // admit may have taken the key out of the query
	switch string(raw) {
	case "/health":
		s.ops.serveHealth(ctx)
		return routeHealth
	case "/metrics", "/stats":
		if s.cfg.MetricsListen != "" {
			// Served on metrics_listen only.
			writeJSONError(ctx, fasthttp.StatusNotFound, "not_found", "served on metrics_listen")
			return routeOther
		}
		if string(raw) == "/metrics" {
			s.ops.serveMetrics(ctx)
			return routeMetrics
		}
		s.ops.serveStats(ctx)
		return routeStats
	}
	if isDashboard(raw) {
		if s.cfg.MetricsListen != "" {
			// Served on metrics_listen only, as /stats is.
			writeJSONError(ctx, fasthttp.StatusNotFound, "not_found", "served on metrics_listen")
			return routeOther
		}
		return s.dash.serveDashboard(ctx, raw, false)
	}
	if !originAllowed(&ctx.Request.Header) {
		// ComfyUI's own answer to a refused origin: 403, empty body.
		// Before the admin routes too: with keys off, another site's page
		// must not drain an instance or reload the configuration through
		// a browser on the operator's machine.
		ctx.SetStatusCode(fasthttp.StatusForbidden)
		return routeForbidden
	}
	if bytes.HasPrefix(raw, adminPrefix) {
		// Every admin route enters here and only here (fleet.go), which
		// requires the admin key when keys are on.
		return s.fleet.serveAdmin(ctx, raw)
	}
	api := bytes.HasPrefix(raw, apiPrefix)
	p := raw
	if api {
		p = raw[len(apiPrefix)-1:]
	}
	after, ok := s.keys.guard(ctx, p, api)
	if !ok {
		return routeAuth
	}
	if after != nil {
		defer after()
	}
	if namespacedAnswer(p, api) {
		if ns := s.files.keyNamespace(ctx); ns != "" {
			// The key's own names in what it receives (keyfiles.go).
			defer unnamespaceAnswer(ctx, ns)
		}
	}
	if api && s.jobs != nil && s.jobs.ServeJobs(ctx, s.jobRequest(ctx, raw)) {
		return routeJobsFacade
	}
	get := ctx.IsGet() || ctx.IsHead()
	post := ctx.IsPost()

	switch string(p) {
	case "/ws":
		s.hub.ServeWS(ctx)
		return routeWS
	case "/prompt":
		switch {
		case post:
			s.submit.postPrompt(ctx)
			return routePrompt
		case get:
			s.submit.getPrompt(ctx)
			return routePrompt
		}
	case "/queue":
		switch {
		case get:
			s.merged.getQueue(ctx)
			return routeQueue
		case post:
			s.pinned.postQueue(ctx)
			return routeQueue
		}
	case "/history":
		switch {
		case get:
			s.merged.getHistory(ctx)
			return routeHistory
		case post:
			s.pinned.postHistory(ctx)
			return routeHistory
		}
	case "/interrupt":
		if post {
			s.pinned.postInterrupt(ctx)
			return routeInterrupt
		}
	case "/free":
		if post {
			s.pinned.fanOut(ctx, "/free")
			return routeFree
		}
	case "/view":
		if get {
			s.files.view(ctx)
			return routeView
		}
	case "/upload/image":
		if post {
			s.files.uploadImage(ctx)
			return routeUploadImage
		}
	case "/upload/mask":
		if post {
			s.files.uploadMask(ctx)
			return routeUploadMask
		}
	}
	if get {
		if id, ok := pathParam(p, "/history/"); ok {
			s.pinned.getHistoryByID(ctx, id)
			return routeHistoryID
		}
	}
	if api {
		switch {
		case get && string(p) == "/jobs":
			s.merged.getJobs(ctx)
			return routeJobs
		case post && string(p) == "/jobs/cancel":
			s.pinned.cancelJobs(ctx)
			return routeJobsCancel
		}
		if rest, ok := bytes.CutPrefix(p, []byte("/jobs/")); ok {
			if id, ok := bytes.CutSuffix(rest, []byte("/cancel")); ok && post {
				if sid, ok := unescapeSegment(id); ok {
					s.pinned.cancelJob(ctx, sid)
					return routeJobCancel
				}
			}
			if get {
				if sid, ok := unescapeSegment(rest); ok {
					s.pinned.getJobByID(ctx, sid)
					return routeJobID
				}
			}
		}
	}
	if get {
		if tmpl, ok := neutralRoute(p); ok {
			if !s.fleet.serveUnion(ctx, p) {
				s.fwd.forwardPicked(ctx, s.pool.Selector().Select, nil)
			}
			return tmpl
		}
	}
	if s.userData.scopeUserData(ctx, requestKey(ctx), p) {
		return routeUserData
	}
	s.fwd.forwardPicked(ctx, s.fwd.home, nil)
	return homeRoute(p)
}

// jobRequest is what the job facade is told about a request: the raw path
// routed on, and the key asking (isolated keys see only their own jobs).
func (s *Server) jobRequest(ctx *fasthttp.RequestCtx, raw []byte) jobs.Request {
	r := jobs.Request{Path: string(raw)}
	if k := requestKey(ctx); k != nil {
		r.Owner = k.Name
		r.Scope = s.keys.jobScope(k)
	}
	return r
}

// pathParam returns the single unescaped path segment after prefix.
func pathParam(p []byte, prefix string) (string, bool) {
	rest, ok := bytes.CutPrefix(p, []byte(prefix))
	if !ok {
		return "", false
	}
	return unescapeSegment(rest)
}

// unescapeSegment unescapes one non-empty path segment (no raw '/').
func unescapeSegment(seg []byte) (string, bool) {
	if len(seg) == 0 || bytes.IndexByte(seg, '/') >= 0 {
		return "", false
	}
	s, err := url.PathUnescape(string(seg))
	if err != nil || s == "" {
		return "", false
	}
	return s, true
}

// neutralRoutes are ComfyUI's catalogue GETs: any instance answers them
// the same way in a uniform fleet.
var neutralExact = map[string]string{
	"/object_info":        routeObjectInfo,
	"/system_stats":       routeSystemStats,
	"/embeddings":         routeCatalogue,
	"/models":             routeCatalogue,
	"/extensions":         routeCatalogue,
	"/features":           routeCatalogue,
	"/experiment/models":  routeCatalogue,
	"/i18n":               routeCatalogue,
	"/workflow_templates": routeCatalogue,
}

var neutralPrefixes = []struct {
	prefix []byte
	route  string
}{
	{[]byte("/object_info/"), routeObjectInfo},
	{[]byte("/models/"), routeCatalogue},
	{[]byte("/experiment/models/"), routeCatalogue},
	{[]byte("/view_metadata/"), routeCatalogue},
	{[]byte("/workflow_templates/"), routeCatalogue},
}

// neutralRoute reports whether p is an instance-neutral route and its template.
func neutralRoute(p []byte) (string, bool) {
	if r, ok := neutralExact[string(p)]; ok {
		return r, true
	}
	for _, np := range neutralPrefixes {
		if bytes.HasPrefix(p, np.prefix) {
			return np.route, true
		}
	}
	return "", false
}

// homeRoute is the template of a route served by the home instance.
func homeRoute(p []byte) string {
	for _, u := range [][]byte{[]byte("/settings"), []byte("/userdata"), []byte("/v2/userdata"), []byte("/users"), []byte("/internal/")} {
		if bytes.HasPrefix(p, u) {
			return routeUserData
		}
	}
	if len(p) <= 1 || bytes.HasPrefix(p, []byte("/assets/")) || bytes.HasPrefix(p, []byte("/extensions/")) ||
		bytes.HasPrefix(p, []byte("/templates/")) || bytes.HasPrefix(p, []byte("/docs/")) ||
		bytes.HasSuffix(p, []byte(".js")) || bytes.HasSuffix(p, []byte(".css")) || bytes.HasSuffix(p, []byte(".html")) {
		return routeStatic
	}
	return routeOther
}

// setInstance records which instance answers the request, for the log.
// The pointer is kept, not its name: a pointer in an interface costs no
// allocation.
func setInstance(ctx *fasthttp.RequestCtx, inst *upstream.Instance) {
	ctx.SetUserValue(userValueInstance, inst)
}

// answeringInstance is the name of the instance setInstance recorded ("" if none).
func answeringInstance(ctx *fasthttp.RequestCtx) string {
	if inst, ok := ctx.UserValue(userValueInstance).(*upstream.Instance); ok {
		return inst.Name
	}
	return ""
}
