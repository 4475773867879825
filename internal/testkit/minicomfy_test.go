package testkit

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// TestMiniScript: events sent before the answer to POST /prompt reach the
// socket before the answer returns, events after it only once it was
// flushed; Handle and Fallback take routes from the script and Requests
// records them as sent; Kill refuses connections until Restart.
func TestMiniScript(t *testing.T) {
	t.Parallel()
	f := Mini(t, "0.3.65")
	c, _, err := websocket.DefaultDialer.Dial("ws://"+f.Addr()+"/ws?clientId=c1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(WaitBound))
	read := func() string {
		t.Helper()
		_, b, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if m := read(); !strings.Contains(m, `"sid": "c1"`) {
		t.Fatalf("first message %s, want a status with the clientId as sid", m)
	}
	Eventually(t, "the socket registered", func() bool { return f.SocketCount() == 1 })

	answered := make(chan struct{})
	f.BeforeAnswer(func(id string) { f.Emit(`{"type": "before", "data": {"prompt_id": %q}}`, id) })
	f.AfterAnswer(func(id string) {
		select {
		case <-answered:
		case <-time.After(WaitBound):
		}
		f.Emit(`{"type": "after", "data": {"prompt_id": %q}}`, id)
	})
	hc := &http.Client{Timeout: WaitBound}
	resp, err := hc.Post(f.URL()+"/prompt", "application/json", strings.NewReader(`{"prompt": {}, "prompt_id": "p1"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	close(answered)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"prompt_id": "p1"`) {
		t.Fatalf("POST /prompt: %d %s", resp.StatusCode, body)
	}
	if m := read(); !strings.Contains(m, `"before"`) {
		t.Fatalf("got %s, want the event sent before the answer", m)
	}
	if m := read(); !strings.Contains(m, `"after"`) {
		t.Fatalf("got %s, want the event sent after the answer", m)
	}
	if f.PromptCount() != 1 || string(f.LastBody()["prompt_id"]) != `"p1"` {
		t.Fatalf("prompts %d, last body %v", f.PromptCount(), f.LastBody())
	}

	f.Handle("/object_info", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "route") })
	f.Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	for _, tc := range []struct {
		desc, path string
		code       int
	}{
		{"a Handle route", "/object_info", http.StatusOK},
		{"the fallback", "/queue", http.StatusTeapot},
		{"/system_stats stays scripted", "/system_stats", http.StatusOK},
	} {
		resp, err := hc.Get(f.URL() + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%s: GET %s = %d, want %d", tc.desc, tc.path, resp.StatusCode, tc.code)
		}
	}
	var uris []string
	for _, r := range f.Requests() {
		uris = append(uris, r.Method+" "+r.RequestURI)
	}
	if got, want := strings.Join(uris, ","), "POST /prompt,GET /object_info,GET /queue"; got != want {
		t.Errorf("requests %s, want %s", got, want)
	}

	f.Kill()
	if conn, err := net.DialTimeout("tcp", f.Addr(), time.Second); err == nil {
		_ = conn.Close()
		t.Fatal("a killed instance accepted a connection")
	}
	f.Restart()
	resp, err = hc.Get(f.URL() + "/system_stats")
	if err != nil {
		t.Fatalf("after Restart: %v", err)
	}
	_ = resp.Body.Close()
	if f.Checks.Load() != 2 {
		t.Errorf("%d /system_stats requests, want 2", f.Checks.Load())
	}
}
