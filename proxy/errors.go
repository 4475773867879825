package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"syscall"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// errBodyTooLarge is returned when a body comfygate must read whole (a
// prompt, a mask upload, a small JSON answer) is over its cap.
var errBodyTooLarge = errors.New("body too large")

// errBodiesBusy is returned when the bodies held in memory over every
// request (limits.max_buffered_body_bytes) leave no room for this one.
var errBodiesBusy = errors.New("too many request bodies held in memory")

// isDialError reports whether err means nothing reached the instance.
func isDialError(err error) bool {
	return upstream.NotSent(err) && !errors.Is(err, fasthttp.ErrNoFreeConns)
}

// isTimeout reports a deadline that passed: ours, fasthttp's or the network's.
func isTimeout(err error) bool { return upstream.IsTimeout(err) }

// Statuses for a client whose own request body failed while it was being
// forwarded. 499 (nginx's "client closed request") is never seen by the
// client, which is gone; it keeps the access log and the request metric
// from calling it an upstream failure.
const (
	statusClientClosed = 499
)

// clientGone reports a client connection that closed or reset.
func clientGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// statusFor is the one place an error becomes a status code: no instance
// available (or all of comfygate's connections to it busy) 503, a deadline
// 504, anything else from an upstream 502; a failure of the client's own
// body is the client's: 400 for a body that is not valid chunked encoding,
// 408 for a client that stopped sending it, 499 for one that went away.
func statusFor(err error) int {
	switch {
	case err == nil:
		return fasthttp.StatusOK
	case errors.Is(err, upstream.ErrClientBody):
		switch {
		case clientGone(err):
			return statusClientClosed
		case isTimeout(err):
			return fasthttp.StatusRequestTimeout
		default: // the body could not be parsed (chunked encoding)
			return fasthttp.StatusBadRequest
		}
	case errors.Is(err, upstream.ErrNoUpstream), errors.Is(err, breaker.ErrOpen),
		errors.Is(err, fasthttp.ErrNoFreeConns), errors.Is(err, prompts.ErrLeaseLost):
		return fasthttp.StatusServiceUnavailable
	case errors.Is(err, errBodyTooLarge):
		return fasthttp.StatusRequestEntityTooLarge
	case errors.Is(err, errBodiesBusy):
		return fasthttp.StatusTooManyRequests
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
func (s *forwarder) writeError(ctx *fasthttp.RequestCtx, err error) {
	code := statusFor(err)
	typ, msg := "bad_gateway", "the ComfyUI instance could not be reached or answered badly"
	switch code {
	case fasthttp.StatusServiceUnavailable:
		typ, msg = "no_upstream", "no healthy ComfyUI instance: "+s.fleetSummary()
		if errors.Is(err, fasthttp.ErrNoFreeConns) {
			typ, msg = "upstream_busy", "comfygate's connection limit to the ComfyUI instance is reached"
		}
		if errors.Is(err, prompts.ErrLeaseLost) {
			typ, msg = "lease_lost", "this comfygate replica lost its hold on the shared state while the request waited; another replica takes the prompt over: send the same request again"
		}
	case fasthttp.StatusGatewayTimeout:
		typ, msg = "upstream_timeout", "the ComfyUI instance did not answer in time"
	case fasthttp.StatusRequestEntityTooLarge:
		typ, msg = "body_too_large", "the request body is larger than comfygate accepts for this route"
	case fasthttp.StatusTooManyRequests:
		typ, msg = "too_many_buffered_bodies", "comfygate holds as many request bodies in memory as it may (limits.max_buffered_body_bytes); retry after the time in Retry-After"
	case fasthttp.StatusBadRequest:
		typ, msg = "bad_request", "the request body could not be read: it is not valid chunked encoding"
	case fasthttp.StatusRequestTimeout:
		typ, msg = "request_timeout", "the request body stopped arriving"
	case statusClientClosed:
		typ, msg = "client_closed_request", "the client went away while sending the request body"
	}
	switch code {
	case fasthttp.StatusServiceUnavailable, fasthttp.StatusRequestEntityTooLarge, fasthttp.StatusTooManyRequests:
	case fasthttp.StatusBadRequest, fasthttp.StatusRequestTimeout, statusClientClosed:
		s.log.Info("client request body failed", "path", string(ctx.Path()), "status", code, "err", err)
	default:
		s.log.Warn("upstream request failed", "path", string(ctx.Path()), "status", code, "err", err)
	}
	writeJSONError(ctx, code, typ, msg)
	if code == fasthttp.StatusBadRequest || code == fasthttp.StatusRequestTimeout || code == statusClientClosed {
		// The rest of the body is not worth reading: close after answering.
		ctx.SetConnectionClose()
	}
	switch {
	case errors.Is(err, prompts.ErrLeaseLost):
		ctx.Response.Header.Set("Retry-After", "1")
	case code == fasthttp.StatusServiceUnavailable:
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	}
	if code == fasthttp.StatusTooManyRequests {
		ctx.Response.Header.Set("Retry-After", "1")
	}
}

// fleetSummary says why no instance could take the request, for 503 bodies.
func (s *forwarder) fleetSummary() string {
	insts := s.pool.Instances()
	healthy, open := 0, 0
	for _, inst := range insts {
		if inst.State().Healthy() {
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
