package comfysim

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// testTimeout bounds every wait in these tests. The trace replay's
// interrupt scenario runs ~8 s of 250 ms nodes; a loaded machine (CI runs
// packages in parallel under -race) stretches it well past 10 s.
const testTimeout = 30 * time.Second

// wsMsg is one received frame.
type wsMsg struct {
	binary bool
	typ    string         // text: the message type
	data   map[string]any // text: data
	raw    []byte
}

// testWS is a WebSocket client that records everything it receives.
type testWS struct {
	t    testing.TB
	conn *websocket.Conn
	mu   sync.Mutex
	msgs []wsMsg
	news chan struct{}
	done chan struct{}
}

func dialWS(t testing.TB, base, clientID string) *testWS {
	t.Helper()
	u := "ws" + strings.TrimPrefix(base, "http") + "/ws"
	if clientID != "" {
		u += "?clientId=" + clientID
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	conn, resp, err := websocket.DefaultDialer.DialContext(ctx, u, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	w := &testWS{t: t, conn: conn, news: make(chan struct{}, 1), done: make(chan struct{})}
	go w.read()
	t.Cleanup(w.close)
	// The server registers the socket just after the handshake; its first
	// message (status with sid) proves registration, so later events reach it.
	w.waitFor("status with sid", func(ms []wsMsg) bool { return len(ms) >= 1 })
	return w
}

func (w *testWS) read() {
	defer close(w.done)
	for {
		typ, data, err := w.conn.ReadMessage()
		if err != nil {
			return
		}
		m := wsMsg{binary: typ == websocket.BinaryMessage, raw: data}
		if !m.binary {
			var v struct {
				Type string         `json:"type"`
				Data map[string]any `json:"data"`
			}
			_ = json.Unmarshal(data, &v)
			m.typ, m.data = v.Type, v.Data
		}
		w.mu.Lock()
		w.msgs = append(w.msgs, m)
		w.mu.Unlock()
		select {
		case w.news <- struct{}{}:
		default:
		}
	}
}

func (w *testWS) close() {
	_ = w.conn.Close()
	<-w.done
}

func (w *testWS) send(v any) {
	w.t.Helper()
	if err := w.conn.WriteJSON(v); err != nil {
		w.t.Fatalf("ws write: %v", err)
	}
}

func (w *testWS) snapshot() []wsMsg {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]wsMsg(nil), w.msgs...)
}

// waitFor waits until pred holds for the received messages and returns them.
func (w *testWS) waitFor(desc string, pred func([]wsMsg) bool) []wsMsg {
	w.t.Helper()
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	for {
		msgs := w.snapshot()
		if pred(msgs) {
			return msgs
		}
		select {
		case <-w.news:
		case <-w.done:
			msgs = w.snapshot()
			if pred(msgs) {
				return msgs
			}
			w.t.Fatalf("websocket closed while waiting for %s; got %s", desc, types(msgs))
		case <-deadline.C:
			w.t.Fatalf("timeout waiting for %s; got %s", desc, types(msgs))
		}
	}
}

// waitDone waits for executing {node: null, prompt_id: id}.
func (w *testWS) waitDone(id string) []wsMsg {
	w.t.Helper()
	return w.waitFor("executing null for "+id, func(ms []wsMsg) bool { return doneIndex(ms, id) >= 0 })
}

func doneIndex(ms []wsMsg, id string) int {
	for i, m := range ms {
		if m.typ == "executing" && m.data["node"] == nil && m.data["prompt_id"] == id {
			return i
		}
	}
	return -1
}

func types(ms []wsMsg) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		if m.binary {
			out[i] = "binary:" + string(rune('0'+binary.BigEndian.Uint32(m.raw[:4])))
		} else {
			out[i] = m.typ
		}
	}
	return out
}

// forPrompt keeps the messages of one prompt (from execution_start to its
// executing null), dropping status messages.
func forPrompt(ms []wsMsg, id string) []wsMsg {
	var out []wsMsg
	in := false
	for _, m := range ms {
		if m.typ == "execution_start" && m.data["prompt_id"] == id {
			in = true
		}
		if in && m.typ != "status" {
			out = append(out, m)
		}
		if in && m.typ == "executing" && m.data["node"] == nil && m.data["prompt_id"] == id {
			break
		}
	}
	return out
}

var httpClient = &http.Client{Timeout: testTimeout}

func doReq(t testing.TB, method, url string, body []byte, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp.StatusCode, resp.Header, b
}

func postJSON(t testing.TB, url string, v any) (int, []byte) {
	t.Helper()
	var body []byte
	switch x := v.(type) {
	case string:
		body = []byte(x)
	case []byte:
		body = x
	default:
		var err error
		body, err = json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
	}
	code, _, b := doReq(t, "POST", url, body, nil)
	return code, b
}

func getJSON(t testing.TB, url string, out any) int {
	t.Helper()
	code, _, b := doReq(t, "GET", url, nil, nil)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("GET %s: decode %q: %v", url, b, err)
		}
	}
	return code
}

// queuePrompt posts a prompt and returns its id, failing on non-200.
func queuePrompt(t testing.TB, base string, body map[string]any) string {
	t.Helper()
	code, b := postJSON(t, base+"/prompt", body)
	if code != http.StatusOK {
		t.Fatalf("POST /prompt: %d %s", code, b)
	}
	var r struct {
		PromptID string `json:"prompt_id"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r.PromptID
}

func pngBytes(t testing.TB, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// upload posts a file to /upload/image (or mask) and returns the answer.
func upload(t testing.TB, url, filename string, data []byte, fields map[string]string) (int, map[string]any) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range fields {
		_ = mw.WriteField(k, v)
	}
	fw, err := mw.CreateFormFile("image", filename)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fw.Write(data)
	_ = mw.Close()
	req, _ := http.NewRequest("POST", url, &buf)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

func decodePNG(t testing.TB, data []byte) *image.NRGBA {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("decode png: %v", err)
	}
	return toNRGBA(img)
}

// startForTest creates and starts a simulator on a free loopback port and
// closes it when the test ends. (Tests of other packages use
// internal/testkit, which imports this package.)
func startForTest(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := New(opts)
	if err != nil {
		tb.Fatalf("comfysim.New: %v", err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		_ = s.Close()
		tb.Fatalf("comfysim.Start: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}
