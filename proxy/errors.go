package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// errBodyTooLarge is returned when a body comfygate must read whole (a
// prompt, a mask upload, a small JSON answer) is over its cap.
var errBodyTooLarge = errors.New("body too large")

// dialError marks a failure to open a connection to an instance: nothing
// was sent, so the request may go to another instance.
type dialError struct {
	addr string
	err  error
}

func (e *dialError) Error() string { return fmt.Sprintf("dial upstream %s: %v", e.addr, e.err) }
func (e *dialError) Unwrap() error { return e.err }

// isDialError reports whether err means nothing reached the instance.
func isDialError(err error) bool {
	var d *dialError
	return errors.As(err, &d) || errors.Is(err, breaker.ErrOpen)
}

// isTimeout reports a deadline that passed: ours, fasthttp's or the network's.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, fasthttp.ErrTimeout) ||
		errors.Is(err, fasthttp.ErrDialTimeout) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// statusFor is the one place an error becomes a status code: no instance
// available (or all of comfygate's connections to it busy) 503, a deadline 504, anything else from an upstream 502.
func statusFor(err error) int {
	switch {
	case err == nil:
		return fasthttp.StatusOK
	case errors.Is(err, upstream.ErrNoUpstream), errors.Is(err, breaker.ErrOpen),
		errors.Is(err, fasthttp.ErrNoFreeConns):
		return fasthttp.StatusServiceUnavailable
	case errors.Is(err, errBodyTooLarge):
		return fasthttp.StatusRequestEntityTooLarge
	case isTimeout(err):
		return fasthttp.StatusGatewayTimeout
	default:
		return fasthttp.StatusBadGateway
	}
}

// retryAfterSeconds is the Retry-After comfygate sends with a 503: about
// when a health check or a half-open probe may have brought an instance back.
const retryAfterSeconds = 5

// writeError answers the client for err in comfygate's own error shape
// {"error": {"type", "message"}}. The message is comfygate's, never the
// error's text (which may name internal addresses); the cause goes to the log.
func (s *Server) writeError(ctx *fasthttp.RequestCtx, err error) {
	code := statusFor(err)
	typ, msg := "bad_gateway", "the ComfyUI instance could not be reached or answered badly"
	switch code {
	case fasthttp.StatusServiceUnavailable:
		typ, msg = "no_upstream", "no healthy ComfyUI instance: "+s.fleetSummary()
		if errors.Is(err, fasthttp.ErrNoFreeConns) {
			typ, msg = "upstream_busy", "comfygate's connection limit to the ComfyUI instance is reached"
		}
	case fasthttp.StatusGatewayTimeout:
		typ, msg = "upstream_timeout", "the ComfyUI instance did not answer in time"
	case fasthttp.StatusRequestEntityTooLarge:
		typ, msg = "body_too_large", "the request body is larger than comfygate accepts for this route"
	}
	if code != fasthttp.StatusServiceUnavailable && code != fasthttp.StatusRequestEntityTooLarge {
		s.log.Warn("upstream request failed", "path", string(ctx.Path()), "status", code, "err", err)
	}
	writeJSONError(ctx, code, typ, msg)
	if code == fasthttp.StatusServiceUnavailable {
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	}
}

// fleetSummary says why no instance could take the request, for 503 bodies.
func (s *Server) fleetSummary() string {
	insts := s.pool.Instances()
	healthy, open := 0, 0
	for _, inst := range insts {
		if inst.Healthy() {
			healthy++
			if !inst.Available() {
				open++
			}
		}
	}
	msg := fmt.Sprintf("%d of %d instances healthy", healthy, len(insts))
	if open > 0 {
		msg += fmt.Sprintf(", %d of them with an open circuit breaker", open)
	}
	return msg
}

// writeJSONError writes {"error": {"type": typ, "message": msg}} with code.
func writeJSONError(ctx *fasthttp.RequestCtx, code int, typ, msg string) {
	ctx.Response.Reset()
	ctx.SetStatusCode(code)
	ctx.SetContentType(jsonContentType)
	b := append([]byte(`{"error":{"type":`), quoteJSON(typ)...)
	b = append(b, `,"message":`...)
	b = append(b, quoteJSON(msg)...)
	b = append(b, "}}"...)
	ctx.SetBody(b)
}

// jsonContentType is what aiohttp's json_response sends.
const jsonContentType = "application/json; charset=utf-8"

// comfyInternalError is aiohttp's answer to an unhandled exception, which is
// what ComfyUI sends for malformed JSON on /queue, /history and /free.
func writeComfyInternalError(ctx *fasthttp.RequestCtx) {
	ctx.Response.Reset()
	ctx.SetStatusCode(fasthttp.StatusInternalServerError)
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString("500 Internal Server Error\n\nServer got itself in trouble")
}
