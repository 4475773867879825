package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/prompts"
)

const wsTestKey = "dGhlIHNhbXBsZSBub25jZQ=="

// TestWSHandshakeRefused: a bad opening handshake gets the websocket
// library's answer (status, Sec-Websocket-Version: 13) before anything is
// hijacked, and the server goes on serving.
func TestWSHandshakeRefused(t *testing.T) {
	t.Parallel()
	_, base := startHub(t, nil)
	addr := strings.TrimPrefix(base, "ws://")
	good := map[string]string{"Connection": "Upgrade", "Upgrade": "websocket",
		"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": wsTestKey}
	for _, tc := range []struct {
		desc   string
		method string
		change map[string]string
		want   int
	}{
		{desc: "POST", method: "POST", want: http.StatusMethodNotAllowed},
		{desc: "no upgrade token", method: "GET", change: map[string]string{"Connection": "keep-alive"}, want: http.StatusBadRequest},
		{desc: "not websocket", method: "GET", change: map[string]string{"Upgrade": "h2c"}, want: http.StatusBadRequest},
		{desc: "version 8", method: "GET", change: map[string]string{"Sec-WebSocket-Version": "8"}, want: http.StatusBadRequest},
		{desc: "short key", method: "GET", change: map[string]string{"Sec-WebSocket-Key": "c2hvcnQ="}, want: http.StatusBadRequest},
		{desc: "no key", method: "GET", change: map[string]string{"Sec-WebSocket-Key": ""}, want: http.StatusBadRequest},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, "http://"+addr+"/ws?clientId=bad", nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range good {
				req.Header.Set(k, v)
			}
			for k, v := range tc.change {
				if v == "" {
					req.Header.Del(k)
				} else {
					req.Header.Set(k, v)
				}
			}
			resp, err := (&http.Client{Timeout: wsTestTimeout}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != tc.want || resp.Header.Get("Sec-Websocket-Version") != "13" {
				t.Fatalf("status %d, Sec-Websocket-Version %q; want %d, 13", resp.StatusCode, resp.Header.Get("Sec-Websocket-Version"), tc.want)
			}
		})
	}
	dialWS(t, base+"/ws?clientId=after") // still serving
}

// maskedText is a client's text frame (masked, as RFC 6455 requires).
func maskedText(payload string) []byte {
	key := [4]byte{1, 2, 3, 4}
	f := []byte{0x81, 0x80 | byte(len(payload))}
	f = append(f, key[:]...)
	for i := range len(payload) {
		f = append(f, payload[i]^key[i%4])
	}
	return f
}

// TestWSBytesSentWithTheHandshake: a client that sends a frame in the same
// write as its handshake (before the 101) still has it read: the bytes the
// HTTP server read ahead move to the socket.
func TestWSBytesSentWithTheHandshake(t *testing.T) {
	t.Parallel()
	_, base := startHub(t, nil)
	addr := strings.TrimPrefix(base, "ws://")
	conn, err := net.DialTimeout("tcp", addr, wsTestTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(wsTestTimeout))
	var req bytes.Buffer
	fmt.Fprintf(&req, "GET /ws?clientId=eager HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n", addr, wsTestKey)
	req.Write(maskedText(`{"type": "feature_flags", "data": {"supports_preview_metadata": true}}`))
	if _, err := conn.Write(req.Bytes()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake answer %v, %v", resp, err)
	}
	// The first status message, then the answer to the flags.
	var got [][]byte
	for len(got) < 2 {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		if h[1]&0x7f >= 126 {
			t.Fatalf("unexpected long frame after %q", got)
		}
		p := make([]byte, h[1]&0x7f)
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatal(err)
		}
		got = append(got, p)
	}
	if !bytes.Contains(got[0], []byte(`"status"`)) || !bytes.Equal(got[1], featureFlagsReply) {
		t.Fatalf("frames %q, want the status message, then %q", got, featureFlagsReply)
	}
}

// writerRunning reports whether id's socket has a writer goroutine.
func (h *Hub) writerRunning(id string) bool {
	h.mu.Lock()
	s := h.sessions[id]
	h.mu.Unlock()
	if s == nil || s.client == nil {
		return false
	}
	c := s.client
	c.q.mu.Lock()
	defer c.q.mu.Unlock()
	return c.q.writing
}

// TestWSIdleSocketHasNoWriter: once its first messages are written, an
// idle socket has no writer goroutine; an event starts one, which writes
// it and leaves again.
func TestWSIdleSocketHasNoWriter(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, nil)
	c := dialWS(t, base+"/ws?clientId=idle")
	testkit.Eventually(t, "the writer to leave", func() bool { return !h.writerRunning("idle") })
	for i := range 3 {
		ev := textEvent("progress", "p", fmt.Sprintf(`, "value": %d`, i))
		h.PromptEvent(&prompts.Prompt{ID: "p", ClientID: "idle"}, ev)
		if m := c.read(); string(m.data) != string(ev.Data) {
			t.Fatalf("got %s, want %s", m.data, ev.Data)
		}
		testkit.Eventually(t, "the writer to leave again", func() bool { return !h.writerRunning("idle") })
	}
}
