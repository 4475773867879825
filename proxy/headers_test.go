package proxy

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

func TestOriginAllowed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc, method, host, origin, site, upgrade string
		want                                      bool
	}{
		{desc: "no origin", method: "POST", host: "127.0.0.1:8190", want: true},
		{desc: "same origin", method: "POST", host: "127.0.0.1:8190", origin: "http://127.0.0.1:8190", want: true},
		{desc: "other origin, loopback host", method: "POST", host: "127.0.0.1:8190", origin: "http://evil.example", want: false},
		{desc: "other port", method: "POST", host: "127.0.0.1:8190", origin: "http://127.0.0.1:8188", want: false},
		{desc: "localhost vs 127.0.0.1", method: "POST", host: "localhost:8190", origin: "http://127.0.0.1:8190", want: false},
		{desc: "origin without port", method: "POST", host: "localhost:8190", origin: "http://localhost", want: true},
		{desc: "host without port", method: "POST", host: "localhost", origin: "http://localhost:3000", want: true},
		{desc: "case-insensitive", method: "POST", host: "LOCALHOST:8190", origin: "http://localhost:8190", want: true},
		{desc: "IPv6 loopback mismatch", method: "POST", host: "[::1]:8190", origin: "http://[::1]:9", want: false},
		{desc: "non-loopback host not checked", method: "POST", host: "comfy.example", origin: "http://evil.example", want: true},
		{desc: "origin null", method: "POST", host: "127.0.0.1:8190", origin: "null", want: true},
		{desc: "cross-site POST", method: "POST", host: "comfy.example", site: "cross-site", want: false},
		{desc: "cross-site GET", method: "GET", host: "comfy.example", site: "cross-site", want: true},
		{desc: "cross-site WebSocket", method: "GET", host: "comfy.example", site: "cross-site", upgrade: "websocket", want: false},
		{desc: "same-site POST", method: "POST", host: "comfy.example", site: "same-site", want: true},
		{desc: "Cross-Site is not cross-site", method: "POST", host: "comfy.example", site: "Cross-Site", want: true},
	} {
		var h fasthttp.RequestHeader
		h.SetMethod(tc.method)
		h.SetHost(tc.host)
		if tc.origin != "" {
			h.Set("Origin", tc.origin)
		}
		if tc.site != "" {
			h.Set("Sec-Fetch-Site", tc.site)
		}
		if tc.upgrade != "" {
			h.Set("Upgrade", tc.upgrade)
		}
		if got := originAllowed(&h); got != tc.want {
			t.Errorf("%s: originAllowed = %v, want %v", tc.desc, got, tc.want)
		}
	}
}

// requestCtxFrom parses a raw HTTP request into a RequestCtx.
func requestCtxFrom(t testing.TB, raw string) *fasthttp.RequestCtx {
	t.Helper()
	var ctx fasthttp.RequestCtx
	var req fasthttp.Request
	if err := req.ReadLimitBody(bufioReader(raw), 1<<20); err != nil {
		return nil
	}
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 5555}, nil)
	return &ctx
}

// FuzzCopyRequestHeaders feeds arbitrary header names and values through
// the request rewriting and checks its invariants: no hop-by-hop header, no
// header named in Connection, no Sec-Fetch-*, Host and Origin pointing at
// the instance, X-Forwarded-For the peer's address.
func FuzzCopyRequestHeaders(f *testing.F) {
	f.Add("X-Foo", "bar", "X-Foo", "http://evil.example", "cross-site")
	f.Add("Keep-Alive", "timeout=5", "close", "null", "same-origin")
	f.Add("Sec-Fetch-Dest", "document", "Upgrade, X-A", "", "")
	f.Add("Comfy-User", "", "keep-alive", "http://127.0.0.1:1", "none")
	inst := &upstream.Instance{Name: "i", Addr: "127.0.0.1:8188"}
	f.Fuzz(func(t *testing.T, name, value, connection, origin, site string) {
		for _, s := range []string{name, value, connection, origin, site} {
			if strings.ContainsAny(s, "\r\n\x00") {
				return
			}
		}
		raw := "POST /api/prompt HTTP/1.1\r\nHost: 127.0.0.1:8190\r\n" +
			name + ": " + value + "\r\n" +
			"Connection: " + connection + "\r\n" +
			"Origin: " + origin + "\r\n" +
			"Sec-Fetch-Site: " + site + "\r\n" +
			"X-Forwarded-For: 1.2.3.4\r\nContent-Length: 0\r\n\r\n"
		ctx := requestCtxFrom(t, raw)
		if ctx == nil {
			return // not a request fasthttp accepts
		}
		var out fasthttp.RequestHeader
		copyRequestHeaders(ctx, &out, inst)
		conn := connectionTokens(ctx.Request.Header.Peek("Connection"))
		for k := range out.All() {
			if isHop(k, nil) {
				t.Errorf("hop-by-hop header %q forwarded", k)
			}
			for _, c := range conn {
				if bytes.EqualFold(k, c) && !bytes.EqualFold(k, hdrHost) && !bytes.EqualFold(k, hdrOrigin) &&
					!bytes.EqualFold(k, hdrXFF) && !bytes.EqualFold(k, hdrXFProto) && !bytes.EqualFold(k, hdrXFHost) {
					t.Errorf("header %q named in Connection forwarded", k)
				}
			}
			if len(k) >= len(prefixSecFetch) && bytes.EqualFold(k[:len(prefixSecFetch)], prefixSecFetch) {
				t.Errorf("%q forwarded", k)
			}
		}
		if string(out.Host()) != inst.Addr {
			t.Errorf("Host = %q", out.Host())
		}
		if o := out.Peek("Origin"); o != nil && string(o) != "http://"+inst.Addr {
			t.Errorf("Origin = %q", o)
		}
		if xff := string(out.Peek("X-Forwarded-For")); xff != "10.0.0.7" {
			t.Errorf("X-Forwarded-For = %q", xff)
		}
	})
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// TestCopyRequestHeadersDropsClientAddressClaims: a client's Forwarded and
// X-Real-IP are as unbelievable as its X-Forwarded-For and must not reach
// the instance, which could take them for the client's address.
func TestCopyRequestHeadersDropsClientAddressClaims(t *testing.T) {
	t.Parallel()
	ctx := requestCtxFrom(t, "GET /queue HTTP/1.1\r\nHost: 127.0.0.1:8190\r\n"+
		"Forwarded: for=1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\nX-Forwarded-For: 1.2.3.4\r\nX-Keep: yes\r\n\r\n")
	if ctx == nil {
		t.Fatal("request not parsed")
	}
	var out fasthttp.RequestHeader
	copyRequestHeaders(ctx, &out, &upstream.Instance{Name: "i", Addr: "127.0.0.1:8188"})
	for _, h := range []string{"Forwarded", "X-Real-IP"} {
		if v := out.Peek(h); v != nil {
			t.Errorf("%s forwarded: %q", h, v)
		}
	}
	if xff := string(out.Peek("X-Forwarded-For")); xff != "10.0.0.7" {
		t.Errorf("X-Forwarded-For = %q, want 10.0.0.7", xff)
	}
	if string(out.Peek("X-Keep")) != "yes" {
		t.Error("X-Keep not forwarded")
	}
}

// connectionTokens returns the header names listed in a Connection value:
// the fuzz test's own reading, to check copyRequestHeaders against.
func connectionTokens(v []byte) [][]byte {
	var out [][]byte
	for _, t := range bytes.Split(v, []byte{','}) {
		t = bytes.TrimSpace(t)
		if len(t) > 0 && !bytes.EqualFold(t, []byte("close")) && !bytes.EqualFold(t, []byte("keep-alive")) {
			out = append(out, t)
		}
	}
	return out
}
