package proxy

import (
	"bytes"
	"net"
	"net/url"
	"strings"

	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// hopHeaders are the hop-by-hop headers of RFC 9110 section 7.6.1 (plus the
// legacy Proxy-Connection): they describe one connection and are never
// forwarded, in either direction. Headers named in Connection are dropped too.
var hopHeaders = [][]byte{
	[]byte("Connection"),
	[]byte("Proxy-Connection"),
	[]byte("Keep-Alive"),
	[]byte("Proxy-Authenticate"),
	[]byte("Proxy-Authorization"),
	[]byte("Te"),
	[]byte("Trailer"),
	[]byte("Transfer-Encoding"),
	[]byte("Upgrade"),
}

var (
	hdrHost          = []byte("Host")
	hdrContentLength = []byte("Content-Length")
	hdrExpect        = []byte("Expect")
	hdrOrigin        = []byte("Origin")
	hdrXFF           = []byte("X-Forwarded-For")
	hdrXFProto       = []byte("X-Forwarded-Proto")
	hdrXFHost        = []byte("X-Forwarded-Host")
	hdrForwarded     = []byte("Forwarded")
	hdrXRealIP       = []byte("X-Real-IP")
	prefixSecFetch   = []byte("Sec-Fetch-")
	hdrSecFetchSite  = []byte("Sec-Fetch-Site")
	hdrUpgrade       = []byte("Upgrade")
	valueCrossSite   = []byte("cross-site")
	valueWebSocket   = []byte("websocket")
)

// isHop reports whether key is hop-by-hop or named in conn, the
// Connection header's value.
func isHop(key, conn []byte) bool {
	for _, h := range hopHeaders {
		if bytes.EqualFold(key, h) {
			return true
		}
	}
	return namedInConnection(key, conn)
}

// namedInConnection reports whether the Connection value conn lists key
// among its header names ("close" and "keep-alive" are options, not
// names). It walks the value in place: no allocation per request.
func namedInConnection(key, conn []byte) bool {
	for len(conn) > 0 {
		var t []byte
		t, conn, _ = bytes.Cut(conn, []byte{','})
		t = bytes.TrimSpace(t)
		if len(t) > 0 && bytes.EqualFold(key, t) &&
			!bytes.EqualFold(t, []byte("close")) && !bytes.EqualFold(t, []byte("keep-alive")) {
			return true
		}
	}
	return false
}

// copyRequestHeaders fills out with the client's headers as the instance
// must see them:
//   - hop-by-hop headers (and those named in Connection) are dropped;
//   - Host becomes the instance's address and an Origin, when the client
//     sent one, becomes the instance's own origin: ComfyUI's origin check
//     compares the two and answers 403 to a loopback Host whose Origin
//     differs. comfygate applies that check itself first (originAllowed);
//   - Sec-Fetch-* are dropped: ComfyUI 2026 refuses Sec-Fetch-Site:
//     cross-site, a judgement comfygate already made about its own origin;
//   - X-Forwarded-For is set to the client's address, replacing whatever
//     the client sent: comfygate has no list of trusted proxies, so a
//     client-supplied chain is not believed. X-Forwarded-Proto and
//     X-Forwarded-Host describe the client's request to comfygate. The
//     client's Forwarded and X-Real-IP are dropped for the same reason
//     (an instance or its plugins could believe them over X-Forwarded-For);
//   - Content-Length is left to the body (fasthttp sets it, or chunks);
//   - everything else (Comfy-User, Cookie, Authorization, custom headers)
//     passes unchanged.
func copyRequestHeaders(ctx *fasthttp.RequestCtx, out *fasthttp.RequestHeader, inst *upstream.Instance) {
	in := &ctx.Request.Header
	conn := in.Peek("Connection")
	hadOrigin := false
	for k, v := range in.All() {
		switch {
		case isHop(k, conn),
			bytes.EqualFold(k, hdrHost),
			bytes.EqualFold(k, hdrContentLength),
			bytes.EqualFold(k, hdrExpect), // comfygate answered the 100-continue itself
			bytes.EqualFold(k, hdrXFF),
			bytes.EqualFold(k, hdrXFProto),
			bytes.EqualFold(k, hdrXFHost),
			bytes.EqualFold(k, hdrForwarded),
			bytes.EqualFold(k, hdrXRealIP):
			continue
		case bytes.EqualFold(k, hdrOrigin):
			hadOrigin = true
			continue
		case len(k) >= len(prefixSecFetch) && bytes.EqualFold(k[:len(prefixSecFetch)], prefixSecFetch):
			continue
		}
		out.AddBytesKV(k, v)
	}
	out.SetHost(inst.Addr)
	scheme := "http"
	if inst.TLS {
		scheme = "https"
	}
	if hadOrigin {
		var buf [64]byte
		origin := append(append(append(buf[:0], scheme...), "://"...), inst.Addr...)
		out.SetBytesV("Origin", origin)
	}
	var ipBuf [64]byte
	out.SetBytesV("X-Forwarded-For", appendClientIP(ipBuf[:0], ctx))
	if ctx.IsTLS() {
		out.Set("X-Forwarded-Proto", "https")
	} else {
		out.Set("X-Forwarded-Proto", "http")
	}
	if h := in.Host(); len(h) > 0 {
		out.SetBytesV("X-Forwarded-Host", h)
	}
}

// appendClientIP appends the client's IP address (requestClient: behind a
// trusted proxy, the client it names), an IPv4-mapped address as IPv4,
// without allocating.
func appendClientIP(dst []byte, ctx *fasthttp.RequestCtx) []byte {
	return requestClient(ctx).AppendTo(dst)
}

// copyResponseHeaders copies the instance's answer headers to the client,
// without hop-by-hop headers and without Content-Length (set from the
// body). Server, Content-Type, Set-Cookie, ETag, Cache-Control and the rest
// pass unchanged.
func copyResponseHeaders(in *fasthttp.ResponseHeader, out *fasthttp.ResponseHeader) {
	conn := in.Peek("Connection")
	for k, v := range in.All() {
		if isHop(k, conn) || bytes.EqualFold(k, hdrContentLength) {
			continue
		}
		out.AddBytesKV(k, v)
	}
}

// originAllowed applies comfygate's browser policy, which is ComfyUI's own
// origin_only_middleware made to fit a proxy. comfygate rewrites Host and
// Origin towards the instance, which disarms the instance's CSRF check, so
// it checks the client's request itself first:
//
//  1. Sec-Fetch-Site: cross-site is refused on anything that can change
//     state: a method other than GET/HEAD, or a WebSocket handshake.
//     (ComfyUI 2026 refuses it on every request, which also breaks plain
//     links from other sites, issue #16203; a cross-site GET cannot read
//     the answer without CORS headers, which ComfyUI does not send.)
//  2. When the client's Host is a loopback name or address and an Origin
//     is present, their host[:port] must match (a port missing on one side
//     is ignored, as ComfyUI does). A non-loopback Host is not checked:
//     comfygate deployed behind a hostname is the operator's choice.
//
// It reports false when the request must be refused with an empty 403.
func originAllowed(h *fasthttp.RequestHeader) bool {
	if site := h.PeekBytes(hdrSecFetchSite); bytes.Equal(site, valueCrossSite) {
		if !(h.IsGet() || h.IsHead()) || bytes.EqualFold(h.PeekBytes(hdrUpgrade), valueWebSocket) {
			return false
		}
	}
	origin := h.PeekBytes(hdrOrigin)
	host := h.Host()
	if len(origin) == 0 || len(host) == 0 {
		return true
	}
	hostName, hostPort := splitHostPort(string(host))
	if !isLoopbackName(hostName) {
		return true
	}
	u, err := url.Parse(string(origin))
	if err != nil {
		// Python's urlparse, which ComfyUI uses, reads a host out of most
		// of what Go refuses, and then refuses the mismatch; an Origin no
		// browser sends is refused here.
		return false
	}
	oName, oPort := splitHostPort(u.Host)
	if oName == "" {
		return true // "Origin: null" and the like: ComfyUI lets them through too
	}
	if oPort == "" || hostPort == "" {
		oPort, hostPort = "", ""
	}
	return strings.EqualFold(oName, hostName) && oPort == hostPort
}

// splitHostPort splits "host[:port]" (IPv6 in brackets) without failing on
// a missing port.
func splitHostPort(hp string) (host, port string) {
	if h, p, err := net.SplitHostPort(hp); err == nil {
		return strings.Trim(h, "[]"), p
	}
	return strings.Trim(hp, "[]"), ""
}

// isLoopbackName reports a loopback IP literal or the localhost name.
func isLoopbackName(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
