package proxy_test

// Events between replicas: two gateways sharing a real redis-server
// (state.url) in front of the same simulated instance.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/stack"
	"github.com/comfygate/comfygate/state"
	"github.com/fasthttp/websocket"
	"github.com/redis/go-redis/v9"
)

const (
	xKeyA       = "xr-key-a-0123456789abcdef"
	xKeyB       = "xr-key-b-0123456789abcdef"
	xKeyAdmin   = "xr-admin-0123456789abcdef"
	xKeyMetrics = "xr-stats-0123456789abcdef"
)

// xSteps is the progress steps (each with a preview) of the upscale node.
const xSteps = 6

// replicas starts two gateways, A and B, sharing one redis-server, in
// front of one simulator, with API keys on; it returns them and a client
// of the server.
func replicas(t *testing.T) (a, b *stack.Stack, rdb *redis.Client) {
	t.Helper()
	return replicasWith(t, func(c *config.Config) {
		c.Auth.Keys = []string{xKeyA, xKeyB}
		c.Auth.AdminKeys = []string{xKeyAdmin}
		c.Auth.MetricsKeys = []string{xKeyMetrics}
	})
}

// replicasWith is replicas with keys's configuration (nil: keys off).
func replicasWith(t *testing.T, keys func(*config.Config)) (a, b *stack.Stack, rdb *redis.Client) {
	t.Helper()
	url := testkit.Redis(t)
	open := func() *state.Store {
		st, err := state.Open(context.Background(), config.State{URL: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	}
	a = stack.Start(t, stack.Options{Instances: 1, Sim: comfysim.Options{Delay: 600 * time.Millisecond, Steps: xSteps},
		Config: keys, State: open()})
	b = stack.Start(t, stack.Options{Addrs: []string{a.Sims[0].Addr()}, Config: keys, State: open()})
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb = redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	return a, b, rdb
}

// xSocket is a client socket of the test.
type xSocket struct {
	t    *testing.T
	id   string
	conn *websocket.Conn
}

func xDial(t *testing.T, st *stack.Stack, clientID, key string) *xSocket {
	t.Helper()
	u := st.WSURL(clientID)
	if key != "" {
		u += "&token=" + key
	}
	conn, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", st.Addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	s := &xSocket{t: t, id: clientID, conn: conn}
	if m := s.read(); m.typ() != "status" {
		t.Fatalf("first message %s, want status", m)
	}
	return s
}

type xMsg struct {
	binary bool
	data   []byte
}

func (m xMsg) typ() string {
	if m.binary {
		if len(m.data) < 4 {
			return "binary:?"
		}
		return fmt.Sprintf("binary:%d", binary.BigEndian.Uint32(m.data))
	}
	var v struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(m.data, &v)
	return v.Type
}

func (m xMsg) String() string {
	if m.binary {
		return m.typ()
	}
	return string(m.data)
}

// end reports `executing` with node null for prompt id.
func (m xMsg) end(id string) bool {
	return !m.binary && m.typ() == "executing" && bytes.Contains(m.data, []byte(`"node": null`)) &&
		bytes.Contains(m.data, []byte(id))
}

func (s *xSocket) read() xMsg {
	s.t.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(testkit.WaitBound))
	mt, data, err := s.conn.ReadMessage()
	if err != nil {
		s.t.Fatalf("%s: read: %v", s.id, err)
	}
	return xMsg{binary: mt == websocket.BinaryMessage, data: data}
}

// until reads until stop says so, and returns what it read.
func (s *xSocket) until(stop func(xMsg) bool) []xMsg {
	s.t.Helper()
	var out []xMsg
	for range 10000 {
		m := s.read()
		out = append(out, m)
		if stop(m) {
			return out
		}
	}
	s.t.Fatalf("%s: no end after 10000 messages", s.id)
	return nil
}

// close closes with the closing handshake and waits for its answer. It
// returns what the replica wrote before it saw the close: those frames
// reached this socket, and a reconnect elsewhere rightly does not get
// them again.
func (s *xSocket) close() []xMsg {
	s.t.Helper()
	_ = s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""),
		time.Now().Add(time.Second))
	_ = s.conn.SetReadDeadline(time.Now().Add(testkit.WaitBound))
	var late []xMsg
	for range 10000 {
		mt, data, err := s.conn.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				s.t.Fatalf("%s: close: %v", s.id, err)
			}
			return late
		}
		late = append(late, xMsg{binary: mt == websocket.BinaryMessage, data: data})
	}
	s.t.Fatalf("%s: no close answer after 10000 messages", s.id)
	return nil
}

// xSubmit posts a prompt to st with key and clientID and returns its id.
func xSubmit(t *testing.T, st *stack.Stack, key, clientID string, prompt map[string]any) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"prompt": prompt, "client_id": clientID})
	got := postRawAs(t, st, key, body)
	if got.code != http.StatusOK || got.promptID == "" {
		t.Fatalf("POST /prompt: %+v", got)
	}
	return got.promptID
}

// xUpscale is a prompt whose upscale node reports xSteps progress steps,
// each with a preview.
func xUpscale(color int) map[string]any {
	return map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": color}},
		"2": map[string]any{"class_type": "UpscaleModelLoader", "inputs": map[string]any{"model_name": comfysim.DefaultUpscaleModels[0]}},
		"3": map[string]any{"class_type": "ImageUpscaleWithModel", "inputs": map[string]any{"upscale_model": []any{"2", 0}, "image": []any{"1", 0}}},
		"4": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"3", 0}, "filename_prefix": "xr"}},
	}
}

// texts is the text messages of msgs that name a prompt.
func texts(msgs []xMsg) []string {
	var out []string
	for _, m := range msgs {
		if !m.binary && bytes.Contains(m.data, []byte(`"prompt_id"`)) {
			out = append(out, string(m.data))
		}
	}
	return out
}

// checkRun checks that msgs are one whole run of the upscale prompt id,
// each event once and in order: execution_start first, progress 1..xSteps
// of the upscale node, executed, execution_success, executing null last.
func checkRun(t *testing.T, id string, msgs []string) {
	t.Helper()
	seen := map[string]bool{}
	var types []string
	var progress []int
	for _, m := range msgs {
		if seen[m] {
			t.Errorf("delivered twice: %s", m)
		}
		seen[m] = true
		var v struct {
			Type string `json:"type"`
			Data struct {
				PromptID string `json:"prompt_id"`
				Value    int    `json:"value"`
			} `json:"data"`
		}
		if err := json.Unmarshal([]byte(m), &v); err != nil || v.Data.PromptID != id {
			t.Fatalf("not an event of %s: %s", id, m)
		}
		types = append(types, v.Type)
		if v.Type == "progress" {
			progress = append(progress, v.Data.Value)
		}
	}
	want := make([]int, xSteps)
	for i := range want {
		want[i] = i + 1
	}
	if !slices.Equal(progress, want) {
		t.Errorf("progress values %v, want %v", progress, want)
	}
	if len(types) < 4 || types[0] != "execution_start" || !slices.Contains(types, "executed") ||
		!slices.Contains(types, "execution_success") || !strings.Contains(msgs[len(msgs)-1], `"node": null`) {
		t.Errorf("run's events: %v", types)
	}
	if i, j := slices.Index(types, "executed"), slices.Index(types, "execution_success"); i > j {
		t.Errorf("executed after execution_success: %v", types)
	}
}

// streamKey is the Redis stream of clientID's events.
func streamKey(clientID string) string {
	sum := sha256.Sum256([]byte(clientID))
	return state.Prefix + "events:{" + hex.EncodeToString(sum[:]) + "}"
}

// TestEventsAcrossReplicas: a client whose socket is on replica B and
// who submits on replica A gets its prompt's events on B, previews
// included (in the form it negotiated), each once and in order; another
// key's socket on B gets none of them. A socket that leaves B mid-prompt
// with a close handshake and reconnects to A gets what it missed, once
// and in order; with the stream lost meanwhile, the reconnect is as after
// an expired backlog: nothing from before, the rest of the run after.
func TestEventsAcrossReplicas(t *testing.T) {
	t.Parallel()
	a, b, rdb := replicas(t)

	t.Run("submit on A, socket on B", func(t *testing.T) {
		c := xDial(t, b, "xr-client-c", xKeyA)
		d := xDial(t, b, "xr-client-d", xKeyB)
		id := xSubmit(t, a, xKeyA, c.id, xUpscale(0x102030))
		msgs := c.until(func(m xMsg) bool { return m.end(id) })
		checkRun(t, id, texts(msgs))
		previews := 0
		for _, m := range msgs {
			if m.binary {
				if m.typ() != "binary:1" {
					t.Errorf("preview %s, want type 1 (no metadata negotiated)", m.typ())
				}
				previews++
			}
		}
		if previews != xSteps {
			t.Errorf("%d previews, want %d", previews, xSteps)
		}
		// B's other socket, of another key: its own prompt's events come
		// after anything of c's would have, and nothing of c's came.
		own := xSubmit(t, a, xKeyB, d.id, testkit.Workflow(0x405060, "xr-d"))
		for _, m := range d.until(func(m xMsg) bool { return m.end(own) }) {
			if m.binary || bytes.Contains(m.data, []byte(id)) {
				t.Errorf("another key's socket got %s", m)
			}
		}
		// An admin's socket on B whose clientId key A's prompt names gets
		// none of that prompt's events (as on one replica): its own
		// prompt, run after, ends on it with nothing of A's before.
		adm := xDial(t, b, "xr-client-admin", xKeyAdmin)
		other := xSubmit(t, a, xKeyA, adm.id, xUpscale(0x708090))
		mine := xSubmit(t, a, xKeyAdmin, adm.id, testkit.Workflow(0x405061, "xr-adm"))
		for _, m := range adm.until(func(m xMsg) bool { return m.end(mine) }) {
			if m.binary || bytes.Contains(m.data, []byte(other)) {
				t.Errorf("an admin's socket got key A's event %s", m)
			}
		}
	})

	t.Run("leave B mid-prompt, reconnect to A", func(t *testing.T) {
		c := xDial(t, b, "xr-client-e", xKeyA)
		id := xSubmit(t, a, xKeyA, c.id, xUpscale(0x112233))
		first := c.until(func(m xMsg) bool { return m.typ() == "progress" })
		first = append(first, c.close()...)
		// Every event so far crossed from A through the stream; those
		// published since the socket left wait there.
		testkit.Eventually(t, "an event the socket missed in the stream", func() bool {
			n, _ := rdb.XLen(context.Background(), streamKey(c.id)).Result()
			return n > int64(len(first))
		})
		c2 := xDial(t, a, c.id, xKeyA)
		rest := c2.until(func(m xMsg) bool { return m.end(id) })
		checkRun(t, id, append(texts(first), texts(rest)...))
	})

	t.Run("stream lost, reconnect to A", func(t *testing.T) {
		c := xDial(t, b, "xr-client-f", xKeyA)
		id := xSubmit(t, a, xKeyA, c.id, xUpscale(0x223344))
		first := c.until(func(m xMsg) bool { return m.typ() == "progress" })
		c.close()
		key := streamKey(c.id)
		testkit.Eventually(t, "events the socket missed in the stream", func() bool {
			n, _ := rdb.XLen(context.Background(), key).Result()
			return n > int64(len(first))+2 // a preview and a progress at least
		})
		// Read what the stream holds and lose it, in one transaction.
		var entries *redis.XMessageSliceCmd
		_, err := rdb.TxPipelined(context.Background(), func(p redis.Pipeliner) error {
			entries = p.XRange(context.Background(), key, "-", "+")
			p.Del(context.Background(), key, key+":epoch", key+":seen")
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, m := range texts(first) {
			got[m] = true
		}
		lost := map[string]bool{} // text events the socket did not get
		for _, e := range entries.Val() {
			p, _ := e.Values["d"].(string)
			if i := strings.IndexByte(p, '{'); i >= 0 && !got[p[i:]] {
				lost[p[i:]] = true
			}
		}
		if len(lost) == 0 {
			t.Fatalf("the lost stream held no text event the socket missed: %v", entries.Val())
		}
		c2 := xDial(t, a, c.id, xKeyA)
		rest := texts(c2.until(func(m xMsg) bool { return m.end(id) }))
		for _, m := range rest {
			if lost[m] {
				t.Errorf("an event of the lost stream came: %s", m)
			}
		}
		// Nothing the first socket got comes again.
		seen := map[string]bool{}
		for _, m := range append(texts(first), rest...) {
			if seen[m] {
				t.Errorf("delivered twice: %s", m)
			}
			seen[m] = true
		}
	})
}

// xFailures is st's comfygate_ws_cross_replica_failures_total.
func xFailures(t *testing.T, st *stack.Stack) float64 {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, st.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+xKeyMetrics)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "comfygate_ws_cross_replica_failures_total "); ok {
			var f float64
			_, _ = fmt.Sscan(v, &f)
			return f
		}
	}
	t.Fatalf("no comfygate_ws_cross_replica_failures_total in /metrics (%d)", resp.StatusCode)
	return 0
}

// TestEventsAcrossReplicasRedisGone: with the redis-server gone (and
// keys off: with keys, claiming a clientId needs it), a socket on the
// replica that runs a prompt gets its events whole, and what had to cross
// is counted as lost.
func TestEventsAcrossReplicasRedisGone(t *testing.T) {
	t.Parallel()
	state.SetLogger(slog.New(slog.DiscardHandler)) // the client's failed dials
	a, b, rdb := replicasWith(t, nil)
	const key = "" // keys off
	local := xDial(t, a, "xr-client-g", key)
	far := xDial(t, b, "xr-client-h", key)
	// Both sockets are caught up: a first prompt's events reach both.
	for i, s := range []*xSocket{local, far} {
		id := xSubmit(t, a, key, s.id, testkit.Workflow(0x010203+i, "xr-g"))
		s.until(func(m xMsg) bool { return m.end(id) })
	}
	_ = rdb.ShutdownNoSave(context.Background()).Err() // answers with the connection's end
	testkit.Eventually(t, "redis-server gone", func() bool { return rdb.Ping(context.Background()).Err() != nil })
	// The socket on the replica that runs the prompt gets it whole.
	id := xSubmit(t, a, key, local.id, xUpscale(0x0a0b0c))
	checkRun(t, id, texts(local.until(func(m xMsg) bool { return m.end(id) })))
	// The other replica's socket cannot: A counts what it lost.
	xSubmit(t, a, key, far.id, testkit.Workflow(0x0d0e0f, "xr-h"))
	testkit.Eventually(t, "A counts events that could not cross", func() bool {
		return xFailures(t, a) > 0
	})
}

// TestRateLimitsAcrossReplicas: a key's prompt rate is the fleet's: its
// burst spent on A and B, its next POST /prompt on A is 429 with
// Retry-After; another key's bucket is its own.
func TestRateLimitsAcrossReplicas(t *testing.T) {
	t.Parallel()
	a, b, _ := replicasWith(t, func(c *config.Config) {
		c.Auth.Keys = []string{xKeyA, xKeyB}
		c.RateLimit.PromptsPerSecond = 0.01
		c.RateLimit.PromptBurst = 2
	})
	xSubmit(t, a, xKeyA, "rate-a", xUpscale(1))
	xSubmit(t, b, xKeyA, "rate-a", xUpscale(2))
	body, _ := json.Marshal(map[string]any{"prompt": xUpscale(3), "client_id": "rate-a"})
	if got := postRawAs(t, a, xKeyA, body); got.code != http.StatusTooManyRequests || got.retryAfter == "" || got.errType != "rate_limited" {
		t.Fatalf("the key's third prompt, on A after one on each replica: %+v, want 429 rate_limited with Retry-After", got)
	}
	xSubmit(t, a, xKeyB, "rate-b", xUpscale(4))
}
