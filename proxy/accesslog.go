package proxy

import (
	"context"
	"log/slog"
	"time"

	"github.com/valyala/fasthttp"
)

// logRequest writes the access log line and the request metric of one
// request. The duration is until the handler returned: for a streamed
// answer, until its headers were ready and the body started to flow.
// The path is logged without its query (which may carry file names and
// ids); bodies are never logged. client is the client's address, behind a
// trusted proxy the one it names (clientaddr.go).
func (s *edge) logRequest(ctx *fasthttp.RequestCtx, route string, start time.Time) {
	d := time.Since(start)
	inst := answeringInstance(ctx)
	code := ctx.Response.StatusCode()
	method := methodString(ctx.Method())
	s.m.ObserveRequest(route, method, code, inst, d)
	level := slog.LevelInfo
	if route == routeHealth || route == routeMetrics {
		level = slog.LevelDebug // probes every few seconds would drown the log
	}
	if !s.log.Enabled(context.Background(), level) {
		return
	}
	s.log.LogAttrs(context.Background(), level, "request",
		slog.String("client", requestClient(ctx).String()),
		slog.String("method", method),
		slog.String("path", string(splitPath(rawRequestURI(ctx)))),
		slog.Int("status", code),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.String("instance", inst),
		slog.String("user_agent", string(ctx.UserAgent())),
		slog.String("route", route),
	)
}

// methodString is the request method as a string, without an allocation
// for the standard methods.
func methodString(m []byte) string {
	for _, std := range stdMethods {
		if string(m) == std {
			return std
		}
	}
	return string(m)
}

var stdMethods = [...]string{
	fasthttp.MethodGet, fasthttp.MethodPost, fasthttp.MethodHead, fasthttp.MethodPut,
	fasthttp.MethodDelete, fasthttp.MethodPatch, fasthttp.MethodOptions,
}
