package proxy

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/prompts"
	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// Tests of the hub alone: events are injected by calling PromptEvent,
// Broadcast and QueueChanged, and clients are real sockets to a fasthttp
// server on 127.0.0.1:0 that serves only ServeWS.

const wsTestTimeout = 5 * time.Second

func wsTestConfig(mod func(*config.WebSocket)) *config.Config {
	cfg := config.Default()
	if mod != nil {
		mod(&cfg.WebSocket)
	}
	return cfg
}

// startHub serves a new hub on a loopback port and returns it with its ws:// base.
func startHub(t testing.TB, mod func(*config.WebSocket)) (*Hub, string) {
	t.Helper()
	return startHubWith(t, mod, nil)
}

// startHubWith is startHub with hubMod applied to the hub before it serves.
func startHubWith(t testing.TB, mod func(*config.WebSocket), hubMod func(*Hub)) (*Hub, string) {
	t.Helper()
	h := newHub(wsTestConfig(mod), nil, nil, nil)
	if hubMod != nil {
		hubMod(h)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: h.ServeWS, NoDefaultServerHeader: true, KeepHijackedConns: true}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		h.Close()
		_ = srv.Shutdown()
		<-done
	})
	return h, "ws://" + ln.Addr().String()
}

// wsTestClient is a test's client socket.
type wsTestClient struct {
	t    testing.TB
	conn *websocket.Conn
	sid  string
}

type wsMsg struct {
	binary bool
	data   []byte
}

func (m wsMsg) typ() string {
	if m.binary {
		return fmt.Sprintf("binary:%d", binary.BigEndian.Uint32(m.data))
	}
	var v struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(m.data, &v)
	return v.Type
}

// dialWS connects to url (a full ws:// URL) and reads the first status message.
func dialWS(t testing.TB, url string) *wsTestClient {
	t.Helper()
	return dialWSWith(t, &websocket.Dialer{HandshakeTimeout: wsTestTimeout}, url)
}

func dialWSWith(t testing.TB, d *websocket.Dialer, url string) *wsTestClient {
	t.Helper()
	conn, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	_ = resp.Body.Close()
	c := &wsTestClient{t: t, conn: conn}
	t.Cleanup(func() { _ = conn.Close() })
	first := c.read()
	var st struct {
		Type string `json:"type"`
		Data struct {
			Status struct {
				ExecInfo struct {
					QueueRemaining *int `json:"queue_remaining"`
				} `json:"exec_info"`
			} `json:"status"`
			SID string `json:"sid"`
		} `json:"data"`
	}
	if err := json.Unmarshal(first.data, &st); err != nil || st.Type != "status" || st.Data.SID == "" ||
		st.Data.Status.ExecInfo.QueueRemaining == nil {
		t.Fatalf("first message %q is not a status with sid", first.data)
	}
	c.sid = st.Data.SID
	return c
}

func (c *wsTestClient) read() wsMsg {
	c.t.Helper()
	m, err := c.tryRead(wsTestTimeout)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

func (c *wsTestClient) tryRead(d time.Duration) (wsMsg, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(d))
	mt, data, err := c.conn.ReadMessage()
	if err != nil {
		return wsMsg{}, err
	}
	return wsMsg{binary: mt == websocket.BinaryMessage, data: data}, nil
}

// readUntil reads up to and including a text message whose data contains
// marker, and returns what came before it.
func (c *wsTestClient) readUntil(marker string) []wsMsg {
	c.t.Helper()
	var out []wsMsg
	for range 10000 {
		m := c.read()
		if !m.binary && bytes.Contains(m.data, []byte(marker)) {
			return out
		}
		out = append(out, m)
	}
	c.t.Fatalf("marker %q never came", marker)
	return nil
}

func (c *wsTestClient) sendFlags(metadata bool) {
	c.t.Helper()
	msg := fmt.Sprintf(`{"type": "feature_flags", "data": {"supports_preview_metadata": %t}}`, metadata)
	if err := c.conn.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		c.t.Fatal(err)
	}
	got := c.read()
	if string(got.data) != string(featureFlagsReply) {
		c.t.Fatalf("feature_flags reply = %q, want %q", got.data, featureFlagsReply)
	}
}

func textEvent(typ, promptID string, extra string) prompts.Event {
	data := fmt.Sprintf(`{"type": %q, "data": {"prompt_id": %q%s}}`, typ, promptID, extra)
	return prompts.Event{Type: typ, PromptID: promptID, Data: []byte(data)}
}

// marker is a broadcast every client receives, to delimit what came before.
func marker(name string) prompts.Event {
	return prompts.Event{Type: "test_marker", Data: []byte(`{"type": "test_marker", "data": {"m": "` + name + `"}}`)}
}

func preview4(t testing.TB, promptID, imageType string, img []byte) []byte {
	t.Helper()
	md, err := json.Marshal(map[string]any{"node_id": "2", "prompt_id": promptID, "display_node_id": "2",
		"parent_node_id": nil, "real_node_id": "2", "image_type": imageType})
	if err != nil {
		t.Fatal(err)
	}
	b := binary.BigEndian.AppendUint32(nil, 4)
	b = binary.BigEndian.AppendUint32(b, uint32(len(md)))
	b = append(b, md...)
	return append(b, img...)
}

func preview1(format uint32, img []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, 1)
	b = binary.BigEndian.AppendUint32(b, format)
	return append(b, img...)
}

var (
	pngBytes  = []byte("\x89PNG\r\n\x1a\n-fake-png-body")
	jpegBytes = []byte("\xff\xd8\xff\xe0-fake-jpeg-body")
)

// live reports whether id has a registered socket (test peek at the hub).
func (h *Hub) isLive(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions[id]
	return s != nil && s.client != nil
}

func TestWSFirstStatus(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, nil)
	h.QueueChanged(3)

	c := dialWS(t, base+"/ws?clientId=my-client")
	if c.sid != "my-client" {
		t.Fatalf("sid = %q, want my-client", c.sid)
	}
	// Exactly ComfyUI's bytes (Python json.dumps).
	if got, want := string(comfyapi.StatusMessage(3, "my-client", true)),
		`{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 3}}, "sid": "my-client"}}`; got != want {
		t.Fatalf("status = %s, want %s", got, want)
	}

	anon := dialWS(t, base+"/api/ws")
	if len(anon.sid) != 32 || strings.Trim(anon.sid, "0123456789abcdef") != "" || anon.sid[12] != '4' {
		t.Fatalf("minted sid %q is not a uuid4 hex", anon.sid)
	}
	if h.Clients() != 2 {
		t.Fatalf("Clients() = %d, want 2", h.Clients())
	}

	h.QueueChanged(5)
	for _, cl := range []*wsTestClient{c, anon} {
		m := cl.read()
		if want := `{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 5}}}}`; string(m.data) != want {
			t.Fatalf("QueueChanged sent %s, want %s", m.data, want)
		}
	}
}

func TestWSRoutesToOwnClientOnly(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, nil)
	a := dialWS(t, base+"/ws?clientId=A")
	b := dialWS(t, base+"/ws?clientId=B")
	pa := &prompts.Prompt{ID: "pa", ClientID: "A"}
	pb := &prompts.Prompt{ID: "pb", ClientID: "B"}

	var wantA, wantB []string
	for i := range 20 {
		p, want := pa, &wantA
		if i%3 == 0 {
			p, want = pb, &wantB
		}
		ev := textEvent("progress", p.ID, fmt.Sprintf(`, "value": %d`, i))
		h.PromptEvent(p, ev)
		*want = append(*want, string(ev.Data))
	}
	h.Broadcast(marker("end"))
	for _, tc := range []struct {
		c    *wsTestClient
		want []string
	}{{a, wantA}, {b, wantB}} {
		got := tc.c.readUntil(`"m": "end"`)
		if len(got) != len(tc.want) {
			t.Fatalf("%s got %d messages, want %d", tc.c.sid, len(got), len(tc.want))
		}
		for i := range got {
			if string(got[i].data) != tc.want[i] {
				t.Fatalf("%s message %d = %s, want %s", tc.c.sid, i, got[i].data, tc.want[i])
			}
		}
	}
}

func TestWSPromptWithoutClientID(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, nil)
	a := dialWS(t, base+"/ws?clientId=A")
	b := dialWS(t, base+"/ws?clientId=B")
	b.sendFlags(true) // even a metadata client gets type 1, like ComfyUI's sid None
	p := &prompts.Prompt{ID: "p0"}

	events := []struct {
		ev   prompts.Event
		want string // what each client receives; "" = suppressed
	}{
		{textEvent("execution_start", "p0", ""), ""},
		{textEvent("execution_cached", "p0", `, "nodes": []`), ""},
		{textEvent("executing", "p0", `, "node": "1"`), ""},
		{textEvent("progress", "p0", `, "value": 1, "max": 2`), "progress"},
		{textEvent("progress_state", "p0", `, "nodes": {}`), "progress_state"},
		{prompts.Event{Binary: true, PromptID: "p0", Data: preview1(comfyapi.FormatJPEG, jpegBytes)}, "binary:1"},
		{prompts.Event{Binary: true, PromptID: "p0", Data: preview4(t, "p0", "image/png", pngBytes)}, "binary:1"},
		{prompts.Event{Binary: true, Data: append(binary.BigEndian.AppendUint32(nil, 3), "\x00\x00\x00\x012hello"...)}, "binary:3"},
		{textEvent("executed", "p0", `, "node": "3", "output": null`), ""},
		{textEvent("execution_interrupted", "p0", `, "node_id": "2"`), "execution_interrupted"},
		{textEvent("execution_success", "p0", ""), ""},
		{textEvent("execution_error", "p0", ""), ""},
	}
	var want []string
	for _, e := range events {
		h.PromptEvent(p, e.ev)
		if e.want != "" {
			want = append(want, e.want)
		}
	}
	h.Broadcast(marker("end"))
	for _, c := range []*wsTestClient{a, b} {
		got := c.readUntil(`"m": "end"`)
		var types []string
		for _, m := range got {
			types = append(types, m.typ())
		}
		if strings.Join(types, ",") != strings.Join(want, ",") {
			t.Fatalf("%s got %v, want %v", c.sid, types, want)
		}
		// The converted type-4 preview is a PNG type-1 frame.
		if conv := got[3].data; !bytes.Equal(conv, preview1(comfyapi.FormatPNG, pngBytes)) {
			t.Fatalf("%s converted preview = %x", c.sid, conv)
		}
	}
}

func TestWSPreviewConversion(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, nil)
	plain := dialWS(t, base+"/ws?clientId=plain")
	meta := dialWS(t, base+"/ws?clientId=meta")
	meta.sendFlags(true)
	neg := dialWS(t, base+"/ws?clientId=neg")
	neg.sendFlags(false)

	for _, tc := range []struct {
		desc      string
		imageType string
		img       []byte
		format    uint32
	}{
		{"png", "image/png", pngBytes, comfyapi.FormatPNG},
		{"jpeg", "image/jpeg", jpegBytes, comfyapi.FormatJPEG},
		{"unknown type sniffed", "image/x", jpegBytes, comfyapi.FormatJPEG},
		{"unknown type default png", "", []byte("raw"), comfyapi.FormatPNG},
	} {
		for _, c := range []*wsTestClient{plain, meta, neg} {
			p := &prompts.Prompt{ID: "p-" + c.sid, ClientID: c.sid}
			orig := preview4(t, p.ID, tc.imageType, tc.img)
			h.PromptEvent(p, prompts.Event{Binary: true, PromptID: p.ID, Data: orig})
			got := c.read()
			want := preview1(tc.format, tc.img)
			if c == meta {
				want = orig
			}
			if !got.binary || !bytes.Equal(got.data, want) {
				t.Fatalf("%s/%s: got %x, want %x", tc.desc, c.sid, got.data, want)
			}
		}
	}

	// A malformed type-4 frame reaches metadata clients only.
	bad := []byte{0, 0, 0, 4, 0, 0, 1, 0, 'x'}
	h.Broadcast(prompts.Event{Binary: true, Data: bad})
	h.Broadcast(marker("end"))
	if got := meta.readUntil(`"m": "end"`); len(got) != 1 || !bytes.Equal(got[0].data, bad) {
		t.Fatalf("meta got %v", got)
	}
	if got := plain.readUntil(`"m": "end"`); len(got) != 0 {
		t.Fatalf("plain got %v", got)
	}
}

func TestWSOnlyFirstTextFrameNegotiates(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, nil)
	c := dialWS(t, base+"/ws?clientId=late")
	for _, msg := range []string{`{"type": "hello"}`, `{"type": "feature_flags", "data": {"supports_preview_metadata": true}}`} {
		if err := c.conn.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	// The server answers a ping after it has read both frames; tick
	// markers keep the client's reads returning until the pong came.
	pong := make(chan struct{})
	c.conn.SetPongHandler(func(string) error { close(pong); return nil })
	if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	stopTicks := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stopTicks:
				return
			case <-time.After(10 * time.Millisecond):
				h.Broadcast(marker("tick"))
			}
		}
	}()
	for waiting := true; waiting; {
		if m := c.read(); !strings.Contains(string(m.data), "tick") {
			t.Fatalf("got %s; the second text frame must not negotiate", m.data)
		}
		select {
		case <-pong:
			waiting = false
		default:
		}
	}
	close(stopTicks)
	h.Broadcast(prompts.Event{Binary: true, Data: preview4(t, "", "image/png", pngBytes)})
	h.Broadcast(marker("end"))
	var got []wsMsg
	for _, m := range c.readUntil(`"m": "end"`) {
		if !strings.Contains(string(m.data), "tick") {
			got = append(got, m)
		}
	}
	if len(got) != 1 || !bytes.Equal(got[0].data, preview1(comfyapi.FormatPNG, pngBytes)) {
		t.Fatalf("got %v; the second text frame must not negotiate", got)
	}
}

func TestWSSlowClientDropped(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, func(ws *config.WebSocket) { ws.ClientBuffer = 4 })

	// The slow client never reads until it was dropped.
	slow := dialWS(t, base+"/ws?clientId=slow")
	fast := dialWS(t, base+"/ws?clientId=fast")
	ps := &prompts.Prompt{ID: "ps", ClientID: "slow"}
	pf := &prompts.Prompt{ID: "pf", ClientID: "fast"}
	big := preview4(t, "ps", "image/png", bytes.Repeat([]byte{7}, 256<<10))

	dropped := false
	var maxLag time.Duration
	for i := 0; i < 400 && !dropped; i++ {
		start := time.Now()
		h.PromptEvent(ps, prompts.Event{Binary: true, PromptID: "ps", Data: big})
		ev := textEvent("progress", "pf", fmt.Sprintf(`, "value": %d`, i))
		h.PromptEvent(pf, ev)
		if d := time.Since(start); d > time.Second {
			t.Fatalf("PromptEvent blocked for %v", d)
		}
		got := fast.read()
		if string(got.data) != string(ev.Data) {
			t.Fatalf("fast got %s, want %s", got.data, ev.Data)
		}
		maxLag = max(maxLag, time.Since(start))
		dropped = !h.isLive("slow")
	}
	if !dropped {
		t.Fatal("slow client was never dropped")
	}
	t.Logf("fast client's worst event latency while the slow one backed up: %v", maxLag)
	// The fast client still gets everything.
	h.PromptEvent(pf, textEvent("executing", "pf", `, "node": null`))
	if m := fast.read(); m.typ() != "executing" {
		t.Fatalf("fast got %s", m.data)
	}
	// The slow client, reading at last, finds close code 1008 after its frames.
	var err error
	for range 1000 {
		if _, err = slow.tryRead(wsTestTimeout); err != nil {
			break
		}
	}
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("slow client ended with %v, want close 1008", err)
	}
}

// throttledConn reads at most n bytes per every: a client on a slow link.
type throttledConn struct {
	net.Conn
	n     int
	every time.Duration
}

func (c throttledConn) Read(p []byte) (int, error) {
	time.Sleep(c.every)
	return c.Conn.Read(p[:min(len(p), c.n)])
}

// TestWSSlowReaderSeesPolicyClose: a client on a slow link, dropped as too
// slow, reads on and finds close code 1008 after its frames, even when
// draining what was in flight takes far longer than writeWait (it saw the
// connection cut mid-frame, 1006, before).
func TestWSSlowReaderSeesPolicyClose(t *testing.T) {
	t.Parallel()
	const writeWait = 700 * time.Millisecond
	h, base := startHubWith(t, func(ws *config.WebSocket) { ws.ClientBuffer = 4 },
		func(h *Hub) { h.writeWait, h.closeWait = writeWait, 20*time.Millisecond })
	// At most 1.6 MB/s.
	d := &websocket.Dialer{HandshakeTimeout: wsTestTimeout, NetDial: func(network, addr string) (net.Conn, error) {
		conn, err := net.Dial(network, addr)
		if err != nil {
			return nil, err
		}
		return throttledConn{conn, 8 << 10, 5 * time.Millisecond}, nil
	}}
	slow := dialWSWith(t, d, base+"/ws?clientId=slow")
	// The client reads all along, slower than the events come.
	type result struct {
		frames int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		for range 1000 {
			if _, r.err = slow.tryRead(wsTestTimeout); r.err != nil {
				break
			}
			r.frames++
		}
		done <- r
	}()
	ps := &prompts.Prompt{ID: "ps", ClientID: "slow"}
	big := preview4(t, "ps", "image/png", bytes.Repeat([]byte{7}, 256<<10))
	// About 25 MB/s of previews: the socket buffers fill, then the queue.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < 400 && h.isLive("slow"); i++ {
		h.PromptEvent(ps, prompts.Event{Binary: true, PromptID: "ps", Data: big})
		<-tick.C
	}
	if h.isLive("slow") {
		t.Fatal("slow client was never dropped")
	}
	r := <-done
	frames, err := r.frames, r.err
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("slow client ended after %d frames with %v, want close 1008", frames, err)
	}
	if testing.Verbose() {
		t.Logf("frames read %d", frames)
	}
}

func TestWSBacklogReplay(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, func(ws *config.WebSocket) { ws.BacklogGrace = time.Minute })
	url := base + "/ws?clientId=R"
	p := &prompts.Prompt{ID: "pr", ClientID: "R"}
	ev := func(i int) prompts.Event { return textEvent("progress", "pr", `, "value": `+strconv.Itoa(i)) }

	c := dialWS(t, url)
	for i := range 5 {
		h.PromptEvent(p, ev(i))
	}
	for i := range 5 {
		if m := c.read(); string(m.data) != string(ev(i).Data) {
			t.Fatalf("got %s, want %d", m.data, i)
		}
	}
	_ = c.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	_ = c.conn.Close()
	testkit.Eventually(t, "the hub to see the close", func() bool { return !h.isLive("R") })

	// Events while away, then more events racing the reconnect: the new
	// socket gets 5..N exactly once, in order.
	const n = 400
	h.PromptEvent(p, ev(5))
	h.PromptEvent(p, ev(6))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 7; i < n; i++ {
			h.PromptEvent(p, ev(i))
		}
	}()
	c2 := dialWS(t, url)
	wg.Wait()
	for i := 5; i < n; i++ {
		if m := c2.read(); string(m.data) != string(ev(i).Data) {
			t.Fatalf("after reconnect got %s, want value %d", m.data, i)
		}
	}
	h.Broadcast(marker("end"))
	if extra := c2.readUntil(`"m": "end"`); len(extra) != 0 {
		t.Fatalf("duplicates after replay: %d", len(extra))
	}
}

func TestWSBacklogForUnseenClient(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, func(ws *config.WebSocket) {
		ws.BacklogGrace = time.Minute
		ws.BacklogSize = 3
	})
	p := &prompts.Prompt{ID: "pu", ClientID: "U"}
	for i := range 5 {
		h.PromptEvent(p, textEvent("progress", "pu", `, "value": `+strconv.Itoa(i)))
	}
	h.PromptEvent(p, prompts.Event{Binary: true, PromptID: "pu", Data: preview4(t, "pu", "image/png", pngBytes)})
	c := dialWS(t, base+"/ws?clientId=U")
	// Bounded to 3, oldest dropped; previews kept as type 1 (never negotiated).
	h.Broadcast(marker("end"))
	got := c.readUntil(`"m": "end"`)
	if len(got) != 3 || !strings.Contains(string(got[0].data), `"value": 3`) ||
		!strings.Contains(string(got[1].data), `"value": 4`) || !bytes.Equal(got[2].data, preview1(comfyapi.FormatPNG, pngBytes)) {
		t.Fatalf("replay = %v", got)
	}
}

func TestWSBacklogExpires(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, func(ws *config.WebSocket) { ws.BacklogGrace = 50 * time.Millisecond })
	q := &prompts.Prompt{ID: "pg", ClientID: "G"}
	h.PromptEvent(q, textEvent("progress", "pg", ""))
	testkit.Eventually(t, "the backlog to expire", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.sessions["G"] == nil
	})
	g := dialWS(t, base+"/ws?clientId=G")
	h.Broadcast(marker("end"))
	if got := g.readUntil(`"m": "end"`); len(got) != 0 {
		t.Fatalf("expired backlog replayed: %v", got)
	}
	// A socket that leaves starts the grace; the sweeper forgets it after.
	_ = g.conn.Close()
	testkit.Eventually(t, "the closed socket's session to expire", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.sessions) == 0
	})
}

func TestWSBacklogDisabled(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, func(ws *config.WebSocket) { ws.BacklogGrace = 0 })
	h.PromptEvent(&prompts.Prompt{ID: "p", ClientID: "X"}, textEvent("progress", "p", ""))
	c := dialWS(t, base+"/ws?clientId=X")
	h.Broadcast(marker("end"))
	if got := c.readUntil(`"m": "end"`); len(got) != 0 {
		t.Fatalf("got %v with the backlog off", got)
	}
	h.mu.Lock()
	n := len(h.sessions)
	h.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d sessions, want only the live one", n)
	}
}

func TestWSReconnectSameClientID(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, nil)
	url := base + "/ws?clientId=same"
	p := &prompts.Prompt{ID: "ps", ClientID: "same"}
	old := dialWS(t, url)
	neu := dialWS(t, url)

	// The old socket is closed by comfygate with 4000.
	_, err := old.tryRead(wsTestTimeout)
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != closeReplaced {
		t.Fatalf("old socket ended with %v, want close %d", err, closeReplaced)
	}
	_ = old.conn.Close()
	testkit.Eventually(t, "the old socket to go", func() bool { return h.Clients() == 1 })

	// Its close did not unregister the new one (ComfyUI's race).
	h.PromptEvent(p, textEvent("executing", "ps", `, "node": null`))
	if m := neu.read(); m.typ() != "executing" {
		t.Fatalf("new socket got %s", m.data)
	}
}

func TestWSReplaceFlapDamping(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, nil)
	url := base + "/ws?clientId=tab"
	var socks []*wsTestClient
	for range replaceLimit + 2 {
		socks = append(socks, dialWS(t, url))
	}
	// The first replaceLimit sockets are closed with 4000; the next one is
	// left open and silent; the newest is live.
	for i, c := range socks[:replaceLimit] {
		if _, err := c.tryRead(wsTestTimeout); !websocket.IsCloseError(err, closeReplaced) {
			t.Fatalf("socket %d: %v, want close 4000", i, err)
		}
	}
	h.PromptEvent(&prompts.Prompt{ID: "p", ClientID: "tab"}, textEvent("progress", "p", ""))
	if m := socks[len(socks)-1].read(); m.typ() != "progress" {
		t.Fatalf("newest got %s", m.data)
	}
	if _, err := socks[replaceLimit].tryRead(100 * time.Millisecond); err == nil || websocket.IsCloseError(err, closeReplaced) {
		t.Fatalf("silent socket: %v, want a read timeout", err)
	}
}

func TestWSKeepalive(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, func(ws *config.WebSocket) { ws.PingInterval = 500 * time.Millisecond })
	c := dialWS(t, base+"/ws?clientId=k")
	pings := make(chan struct{}, 100)
	c.conn.SetPingHandler(func(string) error {
		select {
		case pings <- struct{}{}:
		default:
		}
		return c.conn.WriteControl(websocket.PongMessage, nil, time.Now().Add(time.Second))
	})
	// A reading client answers pings and stays; it sees at least 3 pings.
	go func() {
		for {
			if _, _, err := c.conn.ReadMessage(); err != nil {
				return
			}
		}
	}()
	for range 3 {
		select {
		case <-pings:
		case <-time.After(wsTestTimeout):
			t.Fatal("no ping")
		}
	}
	if !h.isLive("k") {
		t.Fatal("a client answering pings was dropped")
	}
	// A client that never reads never answers: dropped after ~2 intervals.
	mute := dialWS(t, base+"/ws?clientId=mute")
	_ = mute
	testkit.Eventually(t, "the mute client to be dropped", func() bool { return !h.isLive("mute") })
	if !h.isLive("k") {
		t.Fatal("the answering client was dropped too")
	}
}

func TestWSHubClose(t *testing.T) {
	t.Parallel()
	h, base := startHub(t, nil)
	a := dialWS(t, base+"/ws?clientId=a")
	b := dialWS(t, base+"/ws?clientId=b")
	done := make(chan struct{})
	go func() { h.Close(); close(done) }()
	for _, c := range []*wsTestClient{a, b} {
		if _, err := c.tryRead(wsTestTimeout); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Fatalf("%s: %v, want close 1001", c.sid, err)
		}
		_ = c.conn.Close()
	}
	select {
	case <-done:
	case <-time.After(wsTestTimeout):
		t.Fatal("Close did not return")
	}
	if h.Clients() != 0 {
		t.Fatalf("Clients() = %d after Close", h.Clients())
	}
	_, resp, err := (&websocket.Dialer{}).Dial(base+"/ws", nil)
	if err == nil || resp == nil || resp.StatusCode != fasthttp.StatusServiceUnavailable {
		t.Fatalf("dial after Close: %v", err)
	}
	h.PromptEvent(&prompts.Prompt{ID: "p", ClientID: "a"}, textEvent("progress", "p", "")) // no panic
	h.Close()                                                                              // idempotent
}

func TestWSBacklogRing(t *testing.T) {
	t.Parallel()
	var b backlog
	for i := range 10000 {
		b.push(frame{data: []byte(strconv.Itoa(i))}, 100)
		if b.len() > 100 || len(b.frames) > 200 {
			t.Fatalf("backlog grew to %d/%d", b.len(), len(b.frames))
		}
	}
	out := b.take()
	if len(out) != 100 || string(out[0].data) != "9900" || string(out[99].data) != "9999" || b.dropped != 0 {
		t.Fatalf("take = %d frames from %s", len(out), out[0].data)
	}
}
