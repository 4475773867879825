package proxy

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
	"github.com/valyala/fasthttp"
)

// TestClientIP: the forwarding headers name the client only when the TCP
// peer is a trusted proxy; X-Forwarded-For is walked from the right past
// the trusted proxies; Forwarded: for= is read without it.
func TestClientIP(t *testing.T) {
	t.Parallel()
	trusted := trustedProxies{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	for _, tc := range []struct {
		desc    string
		trusted trustedProxies
		peer    string
		xff     []string
		fwd     []string
		want    string
	}{
		{desc: "no trusted proxies: headers ignored", peer: "10.0.0.1", xff: []string{"203.0.113.9"}, want: "10.0.0.1"},
		{desc: "untrusted peer: spoofed header ignored", trusted: trusted, peer: "198.51.100.2", xff: []string{"203.0.113.9"}, want: "198.51.100.2"},
		{desc: "untrusted peer: spoofed Forwarded ignored", trusted: trusted, peer: "198.51.100.2", fwd: []string{"for=203.0.113.9"}, want: "198.51.100.2"},
		{desc: "trusted peer without headers", trusted: trusted, peer: "10.0.0.1", want: "10.0.0.1"},
		{desc: "trusted peer", trusted: trusted, peer: "10.0.0.1", xff: []string{"203.0.113.9"}, want: "203.0.113.9"},
		{desc: "client's own entry left of the real one", trusted: trusted, peer: "10.0.0.1", xff: []string{"1.2.3.4, 203.0.113.9"}, want: "203.0.113.9"},
		{desc: "two proxies", trusted: trusted, peer: "10.0.0.1", xff: []string{"1.2.3.4, 203.0.113.9, 10.0.0.2"}, want: "203.0.113.9"},
		{desc: "several header lines are one list", trusted: trusted, peer: "10.0.0.1", xff: []string{"1.2.3.4, 203.0.113.9", "10.0.0.3"}, want: "203.0.113.9"},
		{desc: "every hop trusted: the leftmost", trusted: trusted, peer: "10.0.0.1", xff: []string{"10.0.0.3, 10.0.0.2"}, want: "10.0.0.3"},
		{desc: "garbage stops at the last trusted hop", trusted: trusted, peer: "10.0.0.1", xff: []string{"203.0.113.9, unknown, 10.0.0.2"}, want: "10.0.0.2"},
		{desc: "empty entries skipped", trusted: trusted, peer: "10.0.0.1", xff: []string{"203.0.113.9,, 10.0.0.2,"}, want: "203.0.113.9"},
		{desc: "ports and brackets", trusted: trusted, peer: "10.0.0.1", xff: []string{"[2001:db8::1]:4711"}, want: "2001:db8::1"},
		{desc: "IPv4 with a port", trusted: trusted, peer: "10.0.0.1", xff: []string{"192.0.2.1:80"}, want: "192.0.2.1"},
		{desc: "IPv4-mapped entry", trusted: trusted, peer: "10.0.0.1", xff: []string{"::ffff:192.0.2.1"}, want: "192.0.2.1"},
		{desc: "IPv4-mapped trusted peer", trusted: trusted, peer: "::ffff:10.0.0.1", xff: []string{"192.0.2.1"}, want: "192.0.2.1"},
		{desc: "IPv6 trusted peer", trusted: trusted, peer: "fd00::5", xff: []string{"2001:db8::7"}, want: "2001:db8::7"},
		{desc: "Forwarded", trusted: trusted, peer: "10.0.0.1", fwd: []string{"for=192.0.2.60;proto=http;by=203.0.113.43"}, want: "192.0.2.60"},
		{desc: "Forwarded quoted IPv6 with port", trusted: trusted, peer: "10.0.0.1", fwd: []string{`For="[2001:db8:cafe::17]:4711"`}, want: "2001:db8:cafe::17"},
		{desc: "Forwarded walked from the right", trusted: trusted, peer: "10.0.0.1", fwd: []string{"for=1.2.3.4, for=198.51.100.17;proto=https, for=10.0.0.2"}, want: "198.51.100.17"},
		{desc: "Forwarded unknown", trusted: trusted, peer: "10.0.0.1", fwd: []string{"for=unknown"}, want: "10.0.0.1"},
		{desc: "Forwarded obfuscated behind a proxy", trusted: trusted, peer: "10.0.0.1", fwd: []string{"for=_hidden, for=10.0.0.2"}, want: "10.0.0.2"},
		{desc: "Forwarded element without for", trusted: trusted, peer: "10.0.0.1", fwd: []string{"proto=https"}, want: "10.0.0.1"},
		{desc: "X-Forwarded-For before Forwarded", trusted: trusted, peer: "10.0.0.1", xff: []string{"203.0.113.9"}, fwd: []string{"for=192.0.2.60"}, want: "203.0.113.9"},
	} {
		var req fasthttp.Request
		for _, v := range tc.xff {
			req.Header.Add("X-Forwarded-For", v)
		}
		for _, v := range tc.fwd {
			req.Header.Add("Forwarded", v)
		}
		var ctx fasthttp.RequestCtx
		ctx.Init(&req, &net.TCPAddr{IP: net.ParseIP(tc.peer), Port: 40000}, nil)
		s := &edge{trusted: tc.trusted}
		if got := s.clientIP(&ctx); got.String() != tc.want {
			t.Errorf("%s: clientIP = %s, want %s", tc.desc, got, tc.want)
		}
		s.noteClient(&ctx)
		if got := requestClient(&ctx); got.String() != tc.want {
			t.Errorf("%s: requestClient = %s, want %s", tc.desc, got, tc.want)
		}
	}
}

// TestClientBehindTrustedProxy: through a trusted proxy (here the test's
// own loopback address), the per-IP prompt rate limit has a bucket per
// client that X-Forwarded-For names, and the access log names that client;
// from an untrusted peer the same header is ignored: one bucket for the
// peer, and the log names the peer.
func TestClientBehindTrustedProxy(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	body, _ := json.Marshal(map[string]any{"prompt": emptyImagePrompt(1, "xff")})
	post := func(g *gate, client string) int {
		t.Helper()
		status, _, raw := gateDo(t, "POST", g.base+"/prompt", http.Header{"X-Forwarded-For": {client}}, strings.NewReader(string(body)))
		if status != 200 && status != http.StatusTooManyRequests {
			t.Fatalf("POST /prompt from %s = %d %s", client, status, raw)
		}
		return status
	}
	start := func(trusted string) (*gate, *logSink) {
		sink := &logSink{}
		g := startGateWith(t, addrsOf(ss), func(c *config.Config) {
			c.Server.TrustedProxies = []string{trusted}
			c.RateLimit.PromptsPerSecond = 0.001
			c.RateLimit.PromptBurst = 1
		}, func(o *Options) { o.Logger = slog.New(slog.NewJSONHandler(sink, nil)) })
		return g, sink
	}
	logged := func(sink *logSink, client string) bool {
		for _, l := range sink.lines() {
			if l["msg"] == "request" && l["path"] == "/prompt" && l["client"] == client {
				return true
			}
		}
		return false
	}

	g, sink := start("127.0.0.0/8")
	for k, client := range []string{"203.0.113.1", "203.0.113.2", "1.1.1.1, 203.0.113.3"} {
		if status := post(g, client); status != 200 {
			t.Errorf("prompt %d from %s through a trusted proxy = %d, want its own bucket", k, client, status)
		}
	}
	if status := post(g, "9.9.9.9, 203.0.113.1"); status != http.StatusTooManyRequests {
		t.Errorf("second prompt of 203.0.113.1 (own entry spoofed left of it) = %d, want 429", status)
	}
	testkit.Eventually(t, "the access log names the client behind the proxy", func() bool {
		return logged(sink, "203.0.113.3")
	})
	if logged(sink, "1.1.1.1") {
		t.Error("the access log names an address the client wrote itself")
	}

	g, sink = start("10.0.0.0/8") // the loopback peer is not trusted
	if status := post(g, "203.0.113.1"); status != 200 {
		t.Fatalf("first prompt = %d", status)
	}
	for k := range 3 {
		spoofed := fmt.Sprintf("203.0.113.%d", 10+k)
		if status := post(g, spoofed); status != http.StatusTooManyRequests {
			t.Errorf("prompt with spoofed X-Forwarded-For %s from an untrusted peer = %d, want 429 (the peer's one bucket)", spoofed, status)
		}
	}
	testkit.Eventually(t, "the access log names the peer", func() bool { return logged(sink, "127.0.0.1") })
	for _, l := range sink.lines() {
		if c, _ := l["client"].(string); strings.HasPrefix(c, "203.0.113.") {
			t.Errorf("the access log took a spoofed X-Forwarded-For from an untrusted peer: %v", l)
		}
	}
}

// proxyV2Header is a PROXY protocol v2 header for TCP over IPv4 from src.
func proxyV2Header(src netip.AddrPort) []byte {
	h := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c")
	s := src.Addr().As4()
	h = append(h, s[:]...)
	h = append(h, 127, 0, 0, 1)
	h = binary.BigEndian.AppendUint16(h, src.Port())
	return binary.BigEndian.AppendUint16(h, 8190)
}

// TestProxyProtocol: with server.proxy_protocol, a trusted peer's
// connection starts with a PROXY v2 header whose source is the client (the
// access log names it, and the X-Forwarded-For the client itself sends is
// not believed); a trusted peer's connection without the header is closed
// and counted; from an untrusted peer the header is not read.
func TestProxyProtocol(t *testing.T) {
	t.Parallel()
	sim := testkit.Sim(t, comfysim.Options{})
	start := func(trusted string) (*gate, *logSink) {
		sink := &logSink{}
		m := metrics.New("test")
		g := startGateWith(t, []string{sim.Addr()}, func(c *config.Config) {
			c.Server.TrustedProxies = []string{trusted}
			c.Server.ProxyProtocol = true
		}, func(o *Options) {
			o.Logger = slog.New(slog.NewJSONHandler(sink, nil))
			o.Metrics = m
		})
		return g, sink
	}
	req := func(g *gate, path string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: " + g.addr + "\r\nX-Forwarded-For: 198.51.100.1\r\nConnection: close\r\n\r\n"
	}
	logged := func(sink *logSink, path string) (string, bool) {
		for _, l := range sink.lines() {
			if l["msg"] == "request" && l["path"] == path {
				c, _ := l["client"].(string)
				return c, true
			}
		}
		return "", false
	}

	g, sink := start("127.0.0.0/8")
	hdr := proxyV2Header(netip.MustParseAddrPort("203.0.113.7:40001"))
	if status, _ := rawExchange(t, g.addr, string(hdr)+req(g, "/system_stats")); status != "HTTP/1.1 200 OK" {
		t.Fatalf("request after a PROXY header = %q, want 200", status)
	}
	var client string
	testkit.Eventually(t, "the access log line", func() (ok bool) { client, ok = logged(sink, "/system_stats"); return ok })
	if client != "203.0.113.7" {
		t.Errorf("access log client %q, want the PROXY header's source 203.0.113.7", client)
	}
	if status, _ := rawExchange(t, g.addr, req(g, "/queue")); !strings.HasPrefix(status, "HTTP/1.1 400") {
		t.Errorf("trusted peer without a PROXY header = %q, want 400 and close", status)
	}
	if _, ok := logged(sink, "/queue"); ok {
		t.Error("a request without its PROXY header was served")
	}
	if n := metricValue(t, g.m, "comfygate_limit_refused_total", map[string]string{"reason": "proxy_protocol"}); n != 1 {
		t.Errorf("proxy_protocol refusals %v, want 1", n)
	}

	g, sink = start("10.0.0.0/8") // the loopback peer is not trusted
	if status, _ := rawExchange(t, g.addr, req(g, "/system_stats")); status != "HTTP/1.1 200 OK" {
		t.Fatalf("untrusted peer's plain request = %q, want 200", status)
	}
	testkit.Eventually(t, "the access log line", func() (ok bool) { client, ok = logged(sink, "/system_stats"); return ok })
	if client != "127.0.0.1" {
		t.Errorf("access log client %q, want the peer 127.0.0.1", client)
	}
}
