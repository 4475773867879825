package testkit

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// nameServer answers GET /name with name, and upgrades GET /ws and
// /api/ws to a socket that sends name first and then echoes.
func nameServer(t *testing.T, name string) string {
	t.Helper()
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" && r.URL.Path != "/api/ws" {
			_, _ = io.WriteString(w, name)
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		if c.WriteMessage(websocket.TextMessage, []byte(name)) != nil {
			return
		}
		for {
			mt, b, err := c.ReadMessage()
			if err != nil || c.WriteMessage(mt, b) != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// getName asks b's /name through hc.
func getName(t *testing.T, hc *http.Client, b *Balancer) string {
	t.Helper()
	resp, err := hc.Get(b.URL + "/name")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	s, _ := io.ReadAll(resp.Body)
	return string(s)
}

// dialName opens a socket through b to path and returns it with the
// backend's name; a large message goes there and back unchanged.
func dialName(t *testing.T, b *Balancer, path string) string {
	t.Helper()
	c, _, err := websocket.DefaultDialer.Dial("ws://"+b.Addr+path, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(WaitBound))
	_, name, err := c.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<14) // 256 KiB
	if err := c.WriteMessage(websocket.BinaryMessage, big); err != nil {
		t.Fatal(err)
	}
	if _, back, err := c.ReadMessage(); err != nil || !bytes.Equal(back, big) {
		t.Fatalf("echo through the balancer: %v, %d bytes back of %d", err, len(back), len(big))
	}
	return string(name)
}

func TestRoundRobin(t *testing.T) {
	t.Parallel()
	a, b := nameServer(t, "a"), nameServer(t, "b")
	lb := RoundRobin(t, a, b)
	hc := lb.HTTPClient()
	var got []string
	for range 4 {
		got = append(got, getName(t, hc, lb))
	}
	got = append(got, dialName(t, lb, "/ws?clientId=x"), dialName(t, lb, "/ws"))
	if s := strings.Join(got, ","); s != "a,b,a,b,a,b" {
		t.Errorf("backends in turn: %s, want a,b,a,b,a,b", s)
	}
	// A keep-alive connection stays where it was sent.
	keep := &http.Client{Transport: &http.Transport{}}
	defer keep.CloseIdleConnections()
	first := getName(t, keep, lb)
	for range 3 {
		if n := getName(t, keep, lb); n != first {
			t.Fatalf("a keep-alive connection's requests went to %s and %s", first, n)
		}
	}
	all, ws := lb.Conns()
	if all[0] != 4 || all[1] != 3 || ws[0] != 1 || ws[1] != 1 {
		t.Errorf("connections %v (sockets %v), want [4 3] ([1 1])", all, ws)
	}
}

func TestSplit(t *testing.T) {
	t.Parallel()
	a, b := nameServer(t, "a"), nameServer(t, "b")
	lb := Split(t, a, b)
	hc := lb.HTTPClient()
	got := []string{dialName(t, lb, "/ws?clientId=x"), getName(t, hc, lb), getName(t, hc, lb),
		dialName(t, lb, "/api/ws"), getName(t, hc, lb)}
	if s := strings.Join(got, ","); s != "b,a,a,b,a" {
		t.Errorf("sockets to b, the rest to a: %s", s)
	}
	all, ws := lb.Conns()
	if all[0] != 3 || all[1] != 2 || ws[0] != 0 || ws[1] != 2 {
		t.Errorf("connections %v (sockets %v), want [3 2] ([0 2])", all, ws)
	}
}

func TestIsWebSocketLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc, line string
		want       bool
	}{
		{"ComfyUI's socket", "GET /ws?clientId=abc HTTP/1.1\r\n", true},
		{"without a query", "GET /ws HTTP/1.1\r\n", true},
		{"under /api", "GET /api/ws HTTP/1.1\r\n", true},
		{"under a prefix", "GET /comfy/ws?clientId=1 HTTP/1.1\r\n", true},
		{"a POST", "POST /ws HTTP/1.1\r\n", false},
		{"another path", "GET /wsx HTTP/1.1\r\n", false},
		{"a query naming ws", "GET /view?f=/ws HTTP/1.1\r\n", false},
	} {
		if got := isWebSocketLine([]byte(tc.line)); got != tc.want {
			t.Errorf("%s: %q: %v, want %v", tc.desc, tc.line, got, tc.want)
		}
	}
}
