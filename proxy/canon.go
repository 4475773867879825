package proxy

// The one form of a request path that comfygate routes on.
//
// Routing, authorisation, the handlers (the job API's included) and the
// access log all read the raw, still percent-encoded path. That is safe
// only when the raw path has exactly one reading: ComfyUI (aiohttp) and
// fasthttp's own ctx.Path() decode and clean a path, so "/api/jobs//x",
// "/api/./jobs/x", "/api/jobs/a/../x" or "/hist%6Fry/x" would mean one
// route to a prefix check on the raw bytes and another to whoever decodes
// them. A path is canonical when:
//   - it has no empty segment before its last ("//"); a trailing "/" is kept;
//   - no segment is "." or "..", spelled plainly or percent-encoded;
//   - no unreserved character (ALPHA, DIGIT, "-", ".", "_", "~") is
//     percent-encoded: encodeURIComponent and Python's quote never do;
//   - every "%" starts a valid escape;
//   - "/" is never percent-encoded, except in the {file} segments of
//     /userdata/{file} and /userdata/{file}/move/{dest} (and their /api/
//     twins), where ComfyUI's web UI sends it as %2F on purpose;
//   - a route comfygate decides on (decidedRoute) has no trailing "/":
//     "/history/" is not "/history" to comfygate's router, but an
//     instance, or a custom node's route, could serve it as the whole
//     history, to any key.
//
// A GET or HEAD whose path is not canonical, but cleans to one, is
// redirected there with 308, as Go's ServeMux does; any other request is
// refused with 400 and never routed on another reading.

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// pathForm is what canonicalPath found.
type pathForm int

const (
	pathCanonical pathForm = iota
	pathCleanable          // cleanPath gives its canonical form
	pathInvalid            // no canonical form: a bad escape, or an encoded "/" outside /userdata
)

// canonicalPath classifies raw, a request path without its query. It
// costs no allocation.
func canonicalPath(raw []byte) pathForm {
	if len(raw) == 0 || raw[0] != '/' {
		return pathInvalid
	}
	form := pathCanonical
	encodedSlash := false
	rest := raw[1:]
	for {
		s, after, more := bytes.Cut(rest, []byte("/"))
		if len(s) == 0 && more {
			form = pathCleanable
		}
		onlyDots, dots := true, 0
		for j := 0; j < len(s); j++ {
			c := s[j]
			if c == '%' {
				if j+2 >= len(s) {
					return pathInvalid
				}
				d, valid := unhex2(s[j+1], s[j+2])
				if !valid {
					return pathInvalid
				}
				switch {
				case d == '/':
					encodedSlash = true
				case unreserved(d):
					form = pathCleanable
				}
				c = d
				j += 2
			}
			if c == '.' {
				dots++
			} else {
				onlyDots = false
			}
		}
		if onlyDots && (dots == 1 || dots == 2) {
			form = pathCleanable
		}
		if !more {
			break
		}
		rest = after
	}
	if encodedSlash && !slashEncodedAllowed(raw) {
		return pathInvalid
	}
	if form == pathCanonical && len(raw) > 1 && raw[len(raw)-1] == '/' && decidedRoute(raw[:len(raw)-1]) {
		return pathCleanable
	}
	return form
}

// decidedRoute reports whether p (without a trailing "/") is, or is under,
// a route whose answer or effect comfygate decides per key.
func decidedRoute(p []byte) bool {
	if bytes.HasPrefix(p, apiPrefix) {
		p = p[len(apiPrefix)-1:]
	}
	switch string(p) {
	case "/prompt", "/queue", "/history", "/interrupt", "/free", "/view", "/upload/image", "/upload/mask",
		"/ws", "/jobs", "/remove-background", "/upscale-image", "/workflows", "/userdata", "/settings", "/users", "/internal":
		return true
	}
	for _, prefix := range []string{"/history/", "/jobs/", "/workflows/", "/userdata/", "/settings/", "/internal/", "/v2/userdata"} {
		if bytes.HasPrefix(p, []byte(prefix)) {
			return true
		}
	}
	return false
}

// cleanPath is the canonical form of a path canonicalPath found
// cleanable: unreserved characters decoded, empty and "." segments
// dropped, ".." resolved (never above the root), a trailing "/" kept
// except on a decided route.
func cleanPath(raw []byte) []byte {
	var segs [][]byte
	parts := bytes.Split(raw[1:], []byte("/"))
	for n, part := range parts {
		s := decodeUnreserved(part)
		switch {
		case string(s) == ".":
		case string(s) == "..":
			if len(segs) > 0 {
				segs = segs[:len(segs)-1]
			}
		case len(s) == 0:
		default:
			segs = append(segs, s)
			continue
		}
		if n == len(parts)-1 {
			// A path ending in "/." or "/.." names a directory.
			segs = append(segs, nil)
		}
	}
	out := []byte{'/'}
	out = append(out, bytes.Join(segs, []byte("/"))...)
	if last := parts[len(parts)-1]; len(last) == 0 && len(segs) > 0 && len(segs[len(segs)-1]) > 0 {
		out = append(out, '/')
	}
	if len(out) > 1 && out[len(out)-1] == '/' && decidedRoute(out[:len(out)-1]) {
		out = out[:len(out)-1]
	}
	return out
}

// decodeUnreserved decodes the percent-escapes of unreserved characters
// in one segment and upper-cases the hex digits of the others.
func decodeUnreserved(seg []byte) []byte {
	if bytes.IndexByte(seg, '%') < 0 {
		return seg
	}
	out := make([]byte, 0, len(seg))
	for j := 0; j < len(seg); j++ {
		if seg[j] == '%' && j+2 < len(seg) {
			if d, ok := unhex2(seg[j+1], seg[j+2]); ok {
				if unreserved(d) {
					out = append(out, d)
				} else {
					out = append(out, '%', upperHex(seg[j+1]), upperHex(seg[j+2]))
				}
				j += 2
				continue
			}
		}
		out = append(out, seg[j])
	}
	return out
}

// slashEncodedAllowed reports whether raw is a /userdata/{file} route,
// whose file segments carry "/" as %2F.
func slashEncodedAllowed(raw []byte) bool {
	p := raw
	if bytes.HasPrefix(p, apiPrefix) {
		p = p[len(apiPrefix)-1:]
	}
	return bytes.HasPrefix(p, []byte("/userdata/"))
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func unhex2(a, b byte) (byte, bool) {
	x, ok1 := unhex(a)
	y, ok2 := unhex(b)
	return x<<4 | y, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// requireCanonicalPath answers a request whose path is not canonical (308
// to the clean path for GET and HEAD, else 400) and reports false; raw is
// the path without its query.
func requireCanonicalPath(ctx *fasthttp.RequestCtx, raw []byte) bool {
	form := canonicalPath(raw)
	if form == pathCanonical {
		return true
	}
	if form == pathCleanable && (ctx.IsGet() || ctx.IsHead()) {
		clean := cleanPath(raw)
		if canonicalPath(clean) == pathCanonical {
			loc := clean
			if q := ctx.URI().QueryString(); len(q) > 0 {
				loc = append(append(loc, '?'), q...)
			}
			writeJSONError(ctx, fasthttp.StatusPermanentRedirect, "non_canonical_path",
				"this path has another, canonical form: "+string(clean))
			ctx.Response.Header.SetBytesV(fasthttp.HeaderLocation, loc)
			return false
		}
	}
	writeJSONError(ctx, fasthttp.StatusBadRequest, "non_canonical_path",
		`the request path must be canonical: no "//", no "." or ".." segments, no percent-encoded unreserved characters, and "/" encoded as %2F only in /userdata file names`)
	return false
}
