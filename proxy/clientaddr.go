package proxy

// The client's address behind load balancers.
//
// Behind a load balancer every connection comes from the balancer, so the
// per-IP rate limits would lump every client together and the access log
// would name the balancer. server.trusted_proxies lists the balancers and
// reverse proxies comfygate sits behind (nginx's set_real_ip_from, Caddy's
// trusted_proxies). Only when the TCP peer is one of them are the
// forwarding headers read:
//
//   - X-Forwarded-For, all its lines taken as one list, walked from the
//     right: each trusted proxy appends the address it got the request
//     from, so the first address that is not a trusted proxy is the client
//     (nginx's real_ip_recursive). Addresses left of it were written by
//     the client itself and are never looked at. When every address is a
//     trusted proxy, the leftmost is the client.
//   - Without X-Forwarded-For, Forwarded (RFC 7239): the for= of its
//     elements, walked the same way.
//
// A value that is not an address ("unknown", an obfuscated "_hidden", a
// malformed entry) stops the walk: the client is the last trusted hop
// before it (the nearest proxy that vouched for the request). From any
// other peer, both headers are ignored and the peer is the client, so a
// client cannot choose its own address by sending them.
//
// The address is found once per request (noteClient, before routing) and
// read by everything that keys or logs by client (requestClient).

import (
	"bytes"
	"net/netip"
	"slices"

	"github.com/valyala/fasthttp"
)

// userValueClient holds the request's client address when it is not the
// TCP peer's (a request through a trusted proxy).
const userValueClient = "comfygate.client"

// trustedProxies is server.trusted_proxies, compiled once.
type trustedProxies []netip.Prefix

// contains reports whether a is a trusted proxy.
func (t trustedProxies) contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// peerAddr is the TCP peer's address (IPv4-mapped IPv6 as IPv4); the zero
// Addr's IPv4 0.0.0.0 for a connection that has none (an in-memory one).
func peerAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	a, ok := netip.AddrFromSlice(ctx.RemoteIP())
	if !ok {
		return netip.IPv4Unspecified()
	}
	return a.Unmap()
}

// clientIP returns the address of the client the request comes from: the
// TCP peer, or for a peer in server.trusted_proxies the address the
// forwarding headers name (see the file comment).
func (s *edge) clientIP(ctx *fasthttp.RequestCtx) netip.Addr {
	peer := peerAddr(ctx)
	if len(s.trusted) == 0 || !s.trusted.contains(peer) {
		return peer
	}
	h := &ctx.Request.Header
	if xff := h.PeekAll(fasthttp.HeaderXForwardedFor); len(xff) > 0 {
		return s.trusted.walk(peer, xff, xffHop)
	}
	if fwd := h.PeekAll(fasthttp.HeaderForwarded); len(fwd) > 0 {
		return s.trusted.walk(peer, fwd, forwardedHop)
	}
	return peer
}

// noteClient finds the request's client address once, before routing, and
// keeps it on the request when it is not the peer's.
func (s *edge) noteClient(ctx *fasthttp.RequestCtx) {
	if len(s.trusted) == 0 {
		return
	}
	if a := s.clientIP(ctx); a != peerAddr(ctx) {
		ctx.SetUserValue(userValueClient, a)
	}
}

// requestClient is the client address noteClient found: what the per-IP
// rate limits, the access log and the X-Forwarded-For towards the
// instance use.
func requestClient(ctx *fasthttp.RequestCtx) netip.Addr {
	if a, ok := ctx.UserValue(userValueClient).(netip.Addr); ok {
		return a
	}
	return peerAddr(ctx)
}

// walk goes through the comma-separated entries of the header lines from
// the right, starting at the trusted peer, and returns the first address
// that is not a trusted proxy; hop reads one entry. An entry that is not
// an address, or no entry left, ends the walk at the last trusted hop.
func (t trustedProxies) walk(peer netip.Addr, lines [][]byte, hop func([]byte) (netip.Addr, bool)) netip.Addr {
	last := peer
	for _, line := range slices.Backward(lines) {
		for end := len(line); end >= 0; {
			start := bytes.LastIndexByte(line[:end], ',') + 1
			entry := bytes.TrimSpace(line[start:end])
			end = start - 1
			if len(entry) == 0 {
				continue // "a,,b" or a trailing comma: no hop
			}
			a, ok := hop(entry)
			if !ok {
				return last
			}
			if !t.contains(a) {
				return a
			}
			last = a
		}
	}
	return last
}

// xffHop reads one X-Forwarded-For entry: an address, possibly with a
// port ("192.0.2.1:4711", "[2001:db8::1]:4711") or in brackets.
func xffHop(entry []byte) (netip.Addr, bool) {
	return parseHop(string(entry))
}

// forwardedHop reads the for= parameter of one Forwarded element
// ("for=192.0.2.60;proto=http;by=203.0.113.43", `for="[2001:db8::1]:80"`).
// An element without for= names no address.
func forwardedHop(elem []byte) (netip.Addr, bool) {
	for len(elem) > 0 {
		var pair []byte
		pair, elem, _ = bytes.Cut(elem, []byte{';'})
		k, v, ok := bytes.Cut(bytes.TrimSpace(pair), []byte{'='})
		if !ok || !bytes.EqualFold(bytes.TrimSpace(k), []byte("for")) {
			continue
		}
		v = bytes.TrimSpace(v)
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		return parseHop(string(v))
	}
	return netip.Addr{}, false
}

// parseHop reads an address, with or without a port, IPv6 with or without
// brackets; zones are not addresses of a client.
func parseHop(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), a.Zone() == ""
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), ap.Addr().Zone() == ""
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		return parseHop(s[1 : len(s)-1])
	}
	return netip.Addr{}, false
}

// clientRemote names the client for a log line: the peer's address and
// port, or behind a trusted proxy the client's address.
func clientRemote(ctx *fasthttp.RequestCtx) string {
	if a, ok := ctx.UserValue(userValueClient).(netip.Addr); ok {
		return a.String()
	}
	return ctx.RemoteAddr().String()
}

// uncapped is limits.Listener's Uncapped: limits.max_conns_per_ip counts
// TCP peers before any header is read, so a trusted proxy, whose one
// address carries every client behind it, is not capped. Behind a proxy,
// the per-client limits are the rate limits (keyed by requestClient); the
// connection cap is the proxy's own business.
func (s *edge) uncapped(a netip.Addr) bool {
	return len(s.trusted) > 0 && s.trusted.contains(a)
}

// proxyProtocol is limits.Listener's ProxyProtocol: with
// server.proxy_protocol, the trusted proxies send a PROXY v2 header; nil
// without it.
func (s *edge) proxyProtocol() func(netip.Addr) bool {
	if !s.cfg.Server.ProxyProtocol || len(s.trusted) == 0 {
		return nil
	}
	return s.trusted.contains
}
