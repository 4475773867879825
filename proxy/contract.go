package proxy

// What the HTTP code (server.go, router.go, ...) uses of the WebSocket hub
// (ws*.go) and of the jobs package.

import (
	"context"

	"github.com/comfygate/comfygate/jobs"
	"github.com/valyala/fasthttp"
)

// JobRoutes is what the proxy needs from the async job facade (jobs.Service).
type JobRoutes interface {
	// ServeJobs serves the facade's own routes (POST /api/remove-background,
	// /api/upscale-image, /api/workflows/{name}, GET /api/jobs/{id}/status,
	// /api/jobs/{id}/result, DELETE /api/jobs/{id}, GET /api/jobs?source=comfygate)
	// and reports whether the request was one of them. r carries the raw
	// path the proxy routed on and the requesting key (jobs.Request).
	ServeJobs(ctx *fasthttp.RequestCtx, r jobs.Request) bool
	// CancelJob cancels a facade job wherever it is (comfygate's wait line,
	// an instance's queue, running). known=false when id is no facade job;
	// with scope not "", another owner's job is never cancelled.
	CancelJob(ctx context.Context, id, scope string) (known, cancelled bool)
	// WaitingJob returns ComfyUI's GET /api/jobs/{id} shape for a facade job
	// that is still in comfygate's wait line (not yet at an instance) and,
	// with scope not "", owned by scope.
	WaitingJob(id, scope string) (body []byte, ok bool)
	// JobOwner is the key that submitted facade job id ("" with keys
	// off), from the job's own record: it survives a restart.
	JobOwner(id string) (owner string, known bool)
}

// The WebSocket side provides, in ws*.go:
//
//	type Hub struct{ ... }           // implements prompts.Sink and prompts.Listener
//	func newHub(cfg *config.Config, pool *upstream.Pool, m *metrics.Metrics, log *slog.Logger) *Hub
//	func (h *Hub) ServeWS(ctx *fasthttp.RequestCtx)  // GET /ws and /api/ws (upgrade)
//	func (h *Hub) Close()                            // close every client socket (shutdown)
//	func (h *Hub) Clients() int
//
// The HTTP side creates it in New, calls prompts.SetListener(hub), with
// isolation on calls hub.isolate(owners), passes hub.sinkFor(key name) as
// the Sink of every prompt submitted through POST /prompt (the hub itself
// with keys off), and routes /ws and /api/ws to ServeWS.
