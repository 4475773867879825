package proxy

// Request guards that run before routing: the request target must be one
// comfygate can route on its path alone, the body must be within
// limits.max_body_bytes, and errors the HTTP server meets before a handler
// runs get comfygate's JSON error shape.

import (
	"bytes"
	"errors"
	"net"

	"github.com/comfygate/comfygate/limits"
	"github.com/valyala/fasthttp"
)

// normalizeTarget makes the request target origin-form, the only form
// comfygate routes and forwards. An absolute-form http(s) target (RFC 9112
// section 3.2.2) is cut to its path and query; every other form is refused:
//   - another scheme (evil.com://attacker.internal/secret): fasthttp would
//     parse it as an absolute URI, take its authority for the Host sent to
//     the instance and its path for routing, so the instance would see a
//     Host the client chose and /prompt would skip comfygate's prompt
//     handling;
//   - a path starting with "//": fasthttp reads "//host/...://..." as an
//     authority too;
//   - "*" and authority-form (CONNECT): ComfyUI serves neither.
//
// It reports false after answering 400.
func normalizeTarget(ctx *fasthttp.RequestCtx) bool {
	t := ctx.Request.Header.RequestURI()
	if len(t) > 0 && t[0] == '/' && (len(t) == 1 || t[1] != '/') {
		return true
	}
	if of := originForm(t); len(of) > 0 && of[0] == '/' && (len(of) == 1 || of[1] != '/') && hasHTTPScheme(t) {
		ctx.Request.SetRequestURIBytes(append([]byte(nil), of...))
		return true
	}
	ctx.SetConnectionClose()
	writeJSONError(ctx, fasthttp.StatusBadRequest, "bad_request_target",
		"the request target must be a path (/...) or an http(s):// URL")
	return false
}

func hasHTTPScheme(t []byte) bool {
	for _, p := range []string{"http://", "https://"} {
		if len(t) > len(p) && equalFoldASCII(t[:len(p)], []byte(p)) {
			return true
		}
	}
	return false
}

// bodyWithinLimit refuses a request whose declared body is over
// limits.max_body_bytes with 413 before any of it is read. (A chunked body
// of unknown length streams to the instance, which applies its own
// --max-upload-size; the routes comfygate reads whole have their own caps.)
func (s *edge) bodyWithinLimit(ctx *fasthttp.RequestCtx) bool {
	max := s.cfg.Limits.MaxBodyBytes
	if cl := ctx.Request.Header.ContentLength(); max > 0 && int64(cl) > max {
		s.refused("body_too_large")
		ctx.SetConnectionClose() // the body is not read
		writeJSONError(ctx, fasthttp.StatusRequestEntityTooLarge, "body_too_large",
			"the request body is larger than comfygate accepts (limits.max_body_bytes)")
		return false
	}
	return true
}

// refused counts a request or connection refused by one of comfygate's
// own limits, by reason (a fixed set).
func (s *edge) refused(reason string) {
	if s.m != nil {
		s.m.LimitRefused(reason)
	}
}

// serverError is the HTTP server's ErrorHandler: the answer to a request
// the server could not read, in comfygate's error shape.
func (s *edge) serverError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	switch {
	case errors.As(err, &small):
		s.refused("header_too_large")
		writeJSONError(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, "header_too_large",
			"the request header is larger than comfygate accepts (limits.max_header_bytes)")
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		s.refused("body_too_large")
		writeJSONError(ctx, fasthttp.StatusRequestEntityTooLarge, "body_too_large",
			"the request body is larger than comfygate accepts (limits.max_body_bytes)")
	case errors.As(err, &ne) && ne.Timeout():
		s.refused("read_timeout")
		writeJSONError(ctx, fasthttp.StatusRequestTimeout, "request_timeout",
			"the request did not arrive in time (limits.header_timeout, limits.body_timeout)")
	case limits.IsBareLF(err):
		writeJSONError(ctx, fasthttp.StatusBadRequest, "bad_request",
			"request lines must end with CRLF")
	default:
		writeJSONError(ctx, fasthttp.StatusBadRequest, "bad_request", "the request could not be parsed")
	}
}

var _ = bytes.Equal
