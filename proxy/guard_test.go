package proxy

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/fasthttp/websocket"
)

// rawExchange sends raw bytes on a new connection and returns the answer's
// status line and the rest of what arrived until the server closed or 5 s
// passed (every answer here must come at once).
func rawExchange(t *testing.T, addr, raw string) (status string, rest string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("%q: no answer: %v", raw, err)
	}
	var b strings.Builder
	for {
		l, err := br.ReadString('\n')
		b.WriteString(l)
		if err != nil || strings.HasPrefix(l, "{") {
			break
		}
	}
	return strings.TrimSpace(line), b.String()
}

// TestRequestTargets: whatever the request line, the instance sees its own
// Host and the path comfygate routed on; a target comfygate cannot route
// on its path alone gets 400 and reaches no instance.
func TestRequestTargets(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	g := startGate(t, []string{fake.Addr()}, nil)
	host := "Host: " + g.addr + "\r\n"
	for _, tc := range []struct {
		desc, line, want, seen string
	}{
		{"other scheme", "GET evil.com://attacker.internal/secret HTTP/1.1", "400", ""},
		{"other scheme to /prompt", "POST x://any/prompt HTTP/1.1", "400", ""},
		{"scheme-relative", "GET //attacker.internal/a?b=http://attacker.internal/ HTTP/1.1", "400", ""},
		{"asterisk", "GET * HTTP/1.1", "400", ""},
		{"authority form", "GET attacker.internal:80 HTTP/1.1", "400", ""},
		{"absolute http", "GET http://attacker.internal/secret?x=1 HTTP/1.1", "200", "/secret?x=1"},
		{"absolute https, no path", "GET HTTPS://attacker.internal HTTP/1.1", "200", "/"},
		{"origin form", "GET /plain HTTP/1.1", "200", "/plain"},
	} {
		before := len(fake.Requests())
		status, _ := rawExchange(t, g.addr, tc.line+"\r\n"+host+"Content-Length: 0\r\nConnection: close\r\n\r\n")
		if !strings.Contains(status, " "+tc.want+" ") {
			t.Errorf("%s: %q answered %q, want %s", tc.desc, tc.line, status, tc.want)
		}
		got := fake.Requests()[before:]
		switch {
		case tc.seen == "" && len(got) != 0:
			t.Errorf("%s: the instance saw %s %s (Host %s), want nothing", tc.desc, got[0].Method, got[0].RequestURI, got[0].Host)
		case tc.seen != "" && (len(got) != 1 || got[0].RequestURI != tc.seen || got[0].Host != fake.Addr()):
			t.Errorf("%s: the instance saw %+v, want %s with Host %s", tc.desc, got, tc.seen, fake.Addr())
		}
	}
}

// TestBareLFAnsweredAtOnce: a header block with bare-LF line endings gets
// its 400 at once (the server would otherwise wait for CRLFCRLF until its
// header timeout), also as the second request of a kept-alive connection
// after a body that itself holds bare LFs.
func TestBareLFAnsweredAtOnce(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	g := startGate(t, []string{fake.Addr()}, func(c *config.Config) { c.Limits.HeaderTimeout = time.Minute })
	status, body := rawExchange(t, g.addr, "GET /x HTTP/1.1\nHost: "+g.addr+"\n\n")
	if !strings.Contains(status, " 400 ") || !strings.Contains(body, `"error"`) {
		t.Errorf("bare LF: %q %q, want 400 with a JSON error", status, body)
	}
	c, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	payload := "a\n\nb\n\n"
	first := "POST /userdata/x HTTP/1.1\r\nHost: " + g.addr + "\r\nContent-Length: 7\r\n\r\n" + payload
	if _, err := c.Write([]byte(first + "GET /y HTTP/1.1\nHost: x\n\n")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var statuses []string
	for len(statuses) < 2 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("after %v: %v", statuses, err)
		}
		resp.Body.Close()
		statuses = append(statuses, resp.Status)
	}
	if !strings.HasPrefix(statuses[0], "200") || !strings.HasPrefix(statuses[1], "400") {
		t.Errorf("keep-alive: %v, want 200 then 400", statuses)
	}
}

// TestUnparsableOriginRefused: an Origin Go's URL parser refuses is not
// let through on a loopback Host.
func TestUnparsableOriginRefused(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	g := startGate(t, []string{fake.Addr()}, nil)
	for _, origin := range []string{"http://[::1", "http://evil.example:99999x", "http://%zz"} {
		status, _ := rawExchange(t, g.addr, "POST /prompt HTTP/1.1\r\nHost: "+g.addr+"\r\nOrigin: "+origin+"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
		if !strings.Contains(status, " 403 ") {
			t.Errorf("Origin %q: %q, want 403", origin, status)
		}
	}
	if n := len(fake.Requests()); n != 0 {
		t.Errorf("the instance saw %d requests, want 0", n)
	}
}

// TestClientLimits: body, header and per-IP connection limits answer with
// their status and a JSON error at once.
func TestClientLimits(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	g := startGate(t, []string{fake.Addr()}, func(c *config.Config) {
		c.Limits.MaxBodyBytes = 1000
		c.Limits.MaxHeaderBytes = 4096
		c.Limits.MaxConnsPerIP = 3
	})
	status, body := rawExchange(t, g.addr, "POST /upload/image HTTP/1.1\r\nHost: "+g.addr+"\r\nContent-Length: 1001\r\n\r\n"+strings.Repeat("x", 1001))
	if !strings.Contains(status, " 413 ") || !strings.Contains(body, "max_body_bytes") {
		t.Errorf("large body: %q %q, want 413 naming limits.max_body_bytes", status, body)
	}
	status, body = rawExchange(t, g.addr, "GET /x HTTP/1.1\r\nHost: "+g.addr+"\r\nX-Big: "+strings.Repeat("a", 5000)+"\r\n\r\n")
	if !strings.Contains(status, " 431 ") || !strings.Contains(body, "max_header_bytes") {
		t.Errorf("large header: %q %q, want 431 naming limits.max_header_bytes", status, body)
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 3 {
		c, err := net.Dial("tcp", g.addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// The three are accepted (the server counts them) before the fourth.
	testkit.Eventually(t, "three connections counted", func() bool {
		status, _ := rawExchange(t, g.addr, "GET /health HTTP/1.1\r\nHost: "+g.addr+"\r\nConnection: close\r\n\r\n")
		return strings.Contains(status, " 429 ")
	})
	for _, c := range held {
		c.Close()
	}
	held = nil
	testkit.Eventually(t, "a slot after closing", func() bool {
		status, _ := rawExchange(t, g.addr, "GET /health HTTP/1.1\r\nHost: "+g.addr+"\r\nConnection: close\r\n\r\n")
		return strings.Contains(status, " 200 ")
	})
}

// TestWSClientLimits: a client message over limits.ws_max_frame_bytes
// closes the socket with 1009, more messages than
// limits.ws_messages_per_second allows close it with 1008.
func TestWSClientLimits(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(nil)
	g := startGate(t, []string{fake.Addr()}, func(c *config.Config) {
		c.Limits.WSMaxFrameBytes = 1000
		c.Limits.WSMessagesPerSecond = 0.001
		c.Limits.WSMessageBurst = 5
	})
	closeCode := func(send func(c *websocket.Conn)) int {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+g.addr+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(gateTimeout))
		send(c)
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					return ce.Code
				}
				t.Fatalf("socket ended without a close frame: %v", err)
			}
		}
	}
	if code := closeCode(func(c *websocket.Conn) {
		_ = c.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("x", 1001)))
	}); code != websocket.CloseMessageTooBig {
		t.Errorf("large frame: close %d, want %d", code, websocket.CloseMessageTooBig)
	}
	if code := closeCode(func(c *websocket.Conn) {
		for range 10 {
			_ = c.WriteMessage(websocket.TextMessage, []byte(`{}`))
		}
	}); code != websocket.ClosePolicyViolation {
		t.Errorf("message flood: close %d, want %d", code, websocket.ClosePolicyViolation)
	}
}

// TestAdminRoutesOriginChecked: with keys off, a browser on another site
// cannot use the admin routes of a comfygate on the operator's loopback
// address (a cross-origin POST carries an Origin that does not match).
func TestAdminRoutesOriginChecked(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(nil)
	g := startGate(t, []string{fake.Addr()}, nil)
	for _, hdr := range []http.Header{{"Origin": {"http://evil.example"}}, {"Sec-Fetch-Site": {"cross-site"}}} {
		status, _, body := gateDo(t, "POST", g.base+"/admin/instances/i0/drain", hdr, nil)
		if status != http.StatusForbidden {
			t.Errorf("cross-site POST /admin/instances/i0/drain with %v: %d %s, want 403", hdr, status, body)
		}
	}
	if g.pool.Instances()[0].Status().Draining {
		t.Error("a cross-site request drained the instance")
	}
}
