package prompts

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/upstream"
	"github.com/fasthttp/websocket"
)

// recSink records a prompt's events.
type recSink struct {
	ch chan Event
}

func newRecSink() *recSink { return &recSink{ch: make(chan Event, 1024)} }

func (r *recSink) PromptEvent(_ *Prompt, ev Event) {
	select {
	case r.ch <- ev:
	default:
		panic("recSink full")
	}
}

// until collects events up to and including executing with node null.
func (r *recSink) until(t testing.TB, within time.Duration) []Event {
	t.Helper()
	var out []Event
	timeout := time.After(within)
	for {
		select {
		case ev := <-r.ch:
			out = append(out, ev)
			if ev.Type == "executing" && strings.Contains(string(ev.Data), `"node": null`) {
				return out
			}
		case <-timeout:
			t.Fatalf("no executing-null within %v; got %s", within, types(out))
			return nil
		}
	}
}

// none checks that no event arrives for a short while.
func (r *recSink) none(t testing.TB) {
	t.Helper()
	select {
	case ev := <-r.ch:
		t.Fatalf("unexpected event %s %s", ev.Type, ev.Data)
	case <-time.After(50 * time.Millisecond):
	}
}

func (r *recSink) next(t testing.TB) Event {
	t.Helper()
	select {
	case ev := <-r.ch:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
		return Event{}
	}
}

func types(evs []Event) string {
	var s []string
	for _, ev := range evs {
		if ev.Binary {
			s = append(s, fmt.Sprintf("binary%d", binary.BigEndian.Uint32(ev.Data)))
			continue
		}
		s = append(s, ev.Type)
	}
	return strings.Join(s, ",")
}

// recListener records broadcasts and queue changes.
type recListener struct {
	bc    chan Event
	mu    sync.Mutex
	queue []int
}

func newRecListener() *recListener { return &recListener{bc: make(chan Event, 1024)} }

func (l *recListener) Broadcast(ev Event) {
	select {
	case l.bc <- ev:
	default:
	}
}

func (l *recListener) QueueChanged(n int) {
	l.mu.Lock()
	l.queue = append(l.queue, n)
	l.mu.Unlock()
}

func (l *recListener) lastQueue() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) == 0 {
		return -1
	}
	return l.queue[len(l.queue)-1]
}

// promptsConfig is coreConfig with quick sockets.
func promptsConfig(addrs ...string) *config.Config {
	c := coreConfig(addrs...)
	c.WebSocket.ReconnectMin = 10 * time.Millisecond
	c.WebSocket.ReconnectMax = 100 * time.Millisecond
	c.WebSocket.PingInterval = time.Second
	return c
}

// fakePool starts a pool in front of the fakes with a listener, and waits
// until every socket is up.
func fakePool(t *testing.T, cfg *config.Config, fakes ...*testkit.MiniComfy) (*testPool, *recListener) {
	t.Helper()
	return fakePoolMetrics(t, cfg, nil, fakes...)
}

// fakePoolMetrics is fakePool reporting to m.
func fakePoolMetrics(t *testing.T, cfg *config.Config, m *metrics.Metrics, fakes ...*testkit.MiniComfy) (*testPool, *recListener) {
	t.Helper()
	if cfg == nil {
		var addrs []string
		for _, f := range fakes {
			addrs = append(addrs, f.Addr())
		}
		cfg = promptsConfig(addrs...)
	}
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() && os.Getenv("UPSTREAM_DEBUG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	l := newRecListener()
	p := startPool(t, testkit.GatewayOptions{Base: cfg, Metrics: func() *metrics.Metrics { return m }, Logger: log}, l, true)
	testkit.Eventually(t, "sockets up", func() bool {
		for _, f := range fakes {
			if f.SocketCount() == 0 {
				return false
			}
		}
		for _, inst := range p.Instances() {
			if !inst.State().SocketUp() {
				return false
			}
		}
		return true
	})
	return p, l
}

// submit sends a small prompt with the given client-facing id.
func submit(t *testing.T, p *testPool, id string, sink Sink) SubmitResult {
	t.Helper()
	res, err := p.Submit(context.Background(), SubmitRequest{
		Body: map[string]json.RawMessage{
			"prompt":     json.RawMessage(`{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}, "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x<y>"}}}`),
			"client_id":  json.RawMessage(`"client-a"`),
			"extra_data": json.RawMessage(`{"extra_pnginfo": {"workflow": {"k": 1}}, "client_id": "client-a"}`),
		},
		PromptID: id,
		ClientID: "client-a",
		Sink:     sink,
	})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return res
}

func upstreamIDOf(t *testing.T, res SubmitResult) string {
	t.Helper()
	if res.Prompt == nil {
		t.Fatalf("no prompt: status %d %s", res.Status, res.Body)
	}
	return res.Prompt.UpstreamID()
}

func fakeOf(inst *upstream.Instance, fakes ...*testkit.MiniComfy) *testkit.MiniComfy {
	for _, f := range fakes {
		if f.Addr() == inst.Addr {
			return f
		}
	}
	return nil
}

func TestSocketSendsFeatureFlagsFirstAndStaysSingle(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f)
	for k := range 20 {
		res := submit(t, p, newUUID(), newRecSink())
		if res.Status != 200 {
			t.Fatalf("submit %d: %d %s", k, res.Status, res.Body)
		}
	}
	if n := f.Dials.Load(); n != 1 {
		t.Fatalf("instance saw %d sockets, want 1 whatever the number of prompts", n)
	}
	first := f.FirstFrames()
	if len(first) != 1 || first[0] != string(featureFlags) {
		t.Fatalf("first frames %q, want the feature_flags frame", first)
	}
	if got := p.Outstanding(); got != 20 {
		t.Fatalf("Outstanding = %d, want 20", got)
	}
}

func TestEventsReachTheirOwnSinkInOrder(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p, l := fakePool(t, nil, f1, f2)
	sa, sb := newRecSink(), newRecSink()
	ida, idb := newUUID(), newUUID()
	ra, rb := submit(t, p, ida, sa), submit(t, p, idb, sb)
	if ra.Instance == rb.Instance {
		t.Fatalf("both prompts went to %s; selection should spread them", ra.Instance.Name)
	}
	for _, r := range []SubmitResult{ra, rb} {
		var ans struct {
			PromptID string `json:"prompt_id"`
		}
		if err := json.Unmarshal(r.Body, &ans); err != nil || ans.PromptID != r.Prompt.ID {
			t.Fatalf("answer %s: prompt_id should be the client-facing %s", r.Body, r.Prompt.ID)
		}
		if r.Prompt.UpstreamID() != r.Prompt.ID {
			t.Fatalf("a canonical UUID should be kept upstream, got %s", r.Prompt.UpstreamID())
		}
	}
	fa, fb := fakeOf(ra.Instance, f1, f2), fakeOf(rb.Instance, f1, f2)

	// The body the instance got carries comfygate's client id, both places.
	body := fa.LastBody()
	var cid string
	_ = json.Unmarshal(body["client_id"], &cid)
	var extra map[string]json.RawMessage
	_ = json.Unmarshal(body["extra_data"], &extra)
	var ecid string
	_ = json.Unmarshal(extra["client_id"], &ecid)
	if cid != ra.Instance.SocketClientID() || ecid != cid || extra["extra_pnginfo"] == nil {
		t.Fatalf("forwarded body client_id %q extra_data %s; want %q in both, other keys kept", cid, body["extra_data"], ra.Instance.SocketClientID())
	}
	if !strings.Contains(string(body["prompt"]), `"x<y>"`) {
		t.Fatalf("prompt text was escaped: %s", body["prompt"])
	}

	// Interleave the two runs.
	fa.Start(ida)
	fb.Start(idb)
	fb.Finish(idb, "b.png")
	fa.Finish(ida, "a.png")
	want := "execution_start,execution_cached,executing,progress,executed,execution_success,executing"
	for _, c := range []struct {
		sink *recSink
		id   string
	}{{sa, ida}, {sb, idb}} {
		evs := c.sink.until(t, 5*time.Second)
		if got := types(evs); got != want {
			t.Fatalf("events %s, want %s", got, want)
		}
		for _, ev := range evs {
			if ev.PromptID != c.id || !strings.Contains(string(ev.Data), c.id) {
				t.Fatalf("event %s of another prompt: %s", ev.Type, ev.Data)
			}
		}
		c.sink.none(t)
	}
	if st := ra.Prompt.State(); st != PromptDone {
		t.Fatalf("state %v after execution_success", st)
	}
	testkit.Eventually(t, "in-flight back to 0", func() bool {
		return p.Outstanding() == 0 && ra.Instance.Status().Inflight == 0 && rb.Instance.Status().Inflight == 0
	})
	if inst, ok := p.FileOwner(context.Background(), FileRef{Filename: "a.png", Type: "output"}); !ok || inst != ra.Instance {
		t.Fatalf("a.png should be pinned to %s from the executed event", ra.Instance.Name)
	}
	select {
	case ev := <-l.bc:
		t.Fatalf("prompt events must not be broadcast: %s", ev.Data)
	default:
	}
	if q := l.lastQueue(); q != 0 {
		t.Fatalf("last QueueChanged %d, want 0", q)
	}
}

func TestPreviewsBroadcastsAndResync(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, l := fakePool(t, nil, f)
	sink := newRecSink()
	id := "not-a-uuid" // mapped to a minted upstream id
	res := submit(t, p, id, sink)
	uid := upstreamIDOf(t, res)
	if uid == id || !isCanonicalUUID(uid) {
		t.Fatalf("upstream id %q: want a minted UUID for a non-UUID client id", uid)
	}
	var sent string
	_ = json.Unmarshal(f.LastBody()["prompt_id"], &sent)
	if sent != uid {
		t.Fatalf("instance got prompt_id %q, want %q", sent, uid)
	}

	// A preview before anything runs belongs to nobody: broadcast.
	preview1 := []byte{0, 0, 0, 1, 0, 0, 0, 2, 0x89, 'P', 'N', 'G'}
	f.EmitRaw(websocket.BinaryMessage, preview1)
	if ev := <-l.bc; !ev.Binary {
		t.Fatalf("want the binary broadcast, got %s", ev.Data)
	}
	f.Start(uid)
	f.EmitRaw(websocket.BinaryMessage, preview1)
	meta := fmt.Appendf(nil, `{"node_id": "1", "prompt_id": %q, "display_node_id": "1", "parent_node_id": null, "real_node_id": "1", "image_type": "image/png"}`, uid)
	preview4 := binary.BigEndian.AppendUint32([]byte{0, 0, 0, 4}, uint32(len(meta)))
	preview4 = append(append(preview4, meta...), 0x89, 'P', 'N', 'G')
	f.EmitRaw(websocket.BinaryMessage, preview4)
	f.Emit(`{"type": "crystools.monitor", "data": {"cpu_utilization": 3}}`)
	f.Emit(`{"type": "executing", "data": {"node": "1", "display_node": "1"}}`) // re-sync: no prompt_id
	f.Emit(`{"type": "execution_error", "data": {"prompt_id": %q, "node_id": "1", "exception_type": "ExecutionBlocked", "exception_message": "blocked"}}`, uid)
	f.Finish(uid, "c.png")

	evs := sink.until(t, 5*time.Second)
	want := "execution_start,execution_cached,executing,binary1,binary4,executing,execution_error,progress,executed,execution_success,executing"
	if got := types(evs); got != want {
		t.Fatalf("events %s\nwant   %s", got, want)
	}
	for _, ev := range evs {
		if strings.Contains(string(ev.Data), uid) {
			t.Fatalf("upstream id leaked to the client in %s: %s", ev.Type, ev.Data)
		}
		if ev.PromptID != id {
			t.Fatalf("event PromptID %q, want %q", ev.PromptID, id)
		}
	}
	b4 := evs[4].Data
	n := binary.BigEndian.Uint32(b4[4:8])
	var m struct {
		PromptID string `json:"prompt_id"`
	}
	if err := json.Unmarshal(b4[8:8+n], &m); err != nil || m.PromptID != id || string(b4[8+n:]) != "\x89PNG" {
		t.Fatalf("type-4 frame not rewritten properly: meta %q tail %q", b4[8:8+n], b4[8+n:])
	}
	if ev := <-l.bc; ev.Type != "crystools.monitor" {
		t.Fatalf("broadcast %s, want the custom node's message", ev.Type)
	}
	if res.Prompt.State() != PromptDone {
		t.Fatal("ExecutionBlocked must not end the prompt, execution_success must")
	}
}

func TestOldInstanceEventsBeforeAnswerAreReplayed(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.40")
	p, _ := fakePool(t, nil, f)
	f.BeforeAnswer(func(uid string) {
		f.Start(uid) // events before the HTTP answer, for an id we do not know yet
	})
	sink := newRecSink()
	id := newUUID()
	res := submit(t, p, id, sink)
	uid := upstreamIDOf(t, res)
	if uid == id {
		t.Fatal("an old instance mints its own id")
	}
	if _, ok := f.LastBody()["prompt_id"]; ok {
		t.Fatal("no prompt_id should be sent to an instance older than v0.3.45")
	}
	if !strings.Contains(string(res.Body), id) || strings.Contains(string(res.Body), uid) {
		t.Fatalf("answer %s should name the client-facing id only", res.Body)
	}
	if pr, ok := p.PromptByUpstreamID(res.Instance, uid); !ok || pr != res.Prompt {
		t.Fatal("PromptByUpstreamID misses the mapping")
	}
	f.Finish(uid, "old.png")
	evs := sink.until(t, 5*time.Second)
	if got, want := types(evs), "execution_start,execution_cached,executing,progress,executed,execution_success,executing"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	for _, ev := range evs {
		if strings.Contains(string(ev.Data), uid) || !strings.Contains(string(ev.Data), id) {
			t.Fatalf("%s not rewritten: %s", ev.Type, ev.Data)
		}
	}
}

func TestSubmitRelays400AndForgets(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f)
	f.AnswerStatus(400)
	id := newUUID()
	res := submit(t, p, id, newRecSink())
	if res.Status != 400 || res.Prompt != nil || !strings.Contains(string(res.Body), "prompt_no_outputs") {
		t.Fatalf("got %d %s, want the instance's 400 as is", res.Status, res.Body)
	}
	if _, ok := p.Prompt(id); ok || p.Outstanding() != 0 {
		t.Fatal("a refused prompt must not stay pinned")
	}
}

func TestSubmitSkipsRefusingInstance(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	dead := testkit.ClosedAddr(t)
	cfg := promptsConfig(dead, f.Addr())
	p := newCorePool(t, cfg, true)
	// Make the dead one look healthy so selection picks it first sometimes.
	for _, inst := range p.Instances() {
		inst.State().ForceHealthy(true)
	}
	for range 4 {
		res := submit(t, p, newUUID(), newRecSink())
		if res.Status != 200 || res.Instance.Addr != f.Addr() {
			t.Fatalf("got %d from %v, want 200 from the live instance", res.Status, res.Instance)
		}
	}
}

func TestNoInstanceIsErrNoUpstream(t *testing.T) {
	t.Parallel()
	p := newCorePool(t, promptsConfig(testkit.ClosedAddr(t)), true)
	_, err := p.Submit(context.Background(), SubmitRequest{Body: map[string]json.RawMessage{"prompt": json.RawMessage(`{}`)}, PromptID: newUUID()})
	if err == nil || !strings.Contains(err.Error(), upstream.ErrNoUpstream.Error()) {
		t.Fatalf("err %v, want upstream.ErrNoUpstream", err)
	}
}

func TestStatusFeedsQueueDepthNotSinks(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, l := fakePool(t, nil, f)
	sink := newRecSink()
	res := submit(t, p, newUUID(), sink)
	f.Emit(`{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 7}}}}`)
	testkit.Eventually(t, "queue depth 7", func() bool { return res.Instance.Workload().QueueDepth() == 7 })
	testkit.Eventually(t, "QueueChanged", func() bool { return l.lastQueue() == p.QueueRemaining() })
	sink.none(t)
}

func TestReconnectDeliversWhatHistorySays(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f)
	sink := newRecSink()
	res := submit(t, p, newUUID(), sink)
	uid := upstreamIDOf(t, res)
	f.Start(uid)
	if got := types([]Event{sink.next(t), sink.next(t), sink.next(t)}); got != "execution_start,execution_cached,executing" {
		t.Fatalf("start events %s", got)
	}
	// The socket drops; meanwhile the prompt finishes (events lost).
	f.SetRunning(nil)
	f.SetHistory(uid, fmt.Appendf(nil, `{"outputs": {"9": {"images": [{"filename": "r.png", "subfolder": "", "type": "output"}]}}, "status": {"status_str": "error", "completed": false, "messages": [["execution_error", {"prompt_id": %q, "node_id": "9", "exception_type": "RuntimeError", "exception_message": "boom"}]]}}`, uid))
	f.DropSockets()
	evs := sink.until(t, 5*time.Second)
	if got := types(evs); got != "execution_error,executing" {
		t.Fatalf("after reconnect got %s, want execution_error,executing", got)
	}
	if !strings.Contains(string(evs[0].Data), "boom") {
		t.Fatalf("the history's error should be relayed: %s", evs[0].Data)
	}
	testkit.Eventually(t, "socket reconnected", func() bool { return f.Dials.Load() >= 2 })
	testkit.Eventually(t, "prompt done", func() bool { return res.Prompt.State() == PromptDone && p.Outstanding() == 0 })
}

func TestCancelQueuedAndRunning(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f)
	ctx := context.Background()
	queued := submit(t, p, newUUID(), newRecSink())
	ok, err := p.Cancel(ctx, queued.Prompt.ID)
	if err != nil || !ok {
		t.Fatalf("cancel queued: %v %v", ok, err)
	}
	if queued.Prompt.State() != PromptDone || p.Outstanding() != 0 {
		t.Fatal("a deleted prompt is done")
	}
	running := submit(t, p, newUUID(), newRecSink())
	f.Start(running.Prompt.UpstreamID())
	testkit.Eventually(t, "running", func() bool { return running.Prompt.State() == PromptRunning })
	ok, err = p.Cancel(ctx, running.Prompt.ID)
	if err != nil || !ok {
		t.Fatalf("cancel running: %v %v", ok, err)
	}
	posts := strings.Join(f.Posts(), "\n")
	if !strings.Contains(posts, `POST /queue {"delete":["`+queued.Prompt.UpstreamID()+`"]}`) ||
		!strings.Contains(posts, `POST /interrupt {"prompt_id":"`+running.Prompt.UpstreamID()+`"}`) {
		t.Fatalf("instance got:\n%s", posts)
	}
	if ok, _ := p.Cancel(ctx, queued.Prompt.ID); ok {
		t.Fatal("cancelling a done prompt cancels nothing")
	}
}

func TestDeletedBehindOurBackIsNoticed(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f)
	res := submit(t, p, newUUID(), newRecSink())
	f.SetPending(nil) // someone POSTed /queue clear straight to the instance
	f.Emit(`{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}`)
	testkit.Eventually(t, "deleted prompt done", func() bool { return res.Prompt.State() == PromptDone && p.Outstanding() == 0 })
}

func TestLocatePromptAsksInstances(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f1, f2)
	id := newUUID()
	f2.SetHistory(id, json.RawMessage(`{"outputs": {}, "status": {"status_str": "success", "completed": true, "messages": []}}`))
	inst, err := p.LocatePrompt(context.Background(), id)
	if err != nil || inst.Addr != f2.Addr() {
		t.Fatalf("LocatePrompt = %v, %v; want the instance with its history", inst, err)
	}
	if pr, ok := p.Prompt(id); !ok || pr.Instance() != inst {
		t.Fatal("the answer should be pinned")
	}
	if _, err := p.LocatePrompt(context.Background(), newUUID()); err != ErrUnknownPrompt {
		t.Fatalf("unknown id: %v, want ErrUnknownPrompt", err)
	}
}

func TestBuildBody(t *testing.T) {
	t.Parallel()
	cases := []struct {
		desc string
		base string
		uid  string
		want string
	}{
		{"no extra_data", `{"prompt": {}, "client_id": "c"}`, "u", `{"client_id":"me","extra_data":{"client_id":"me"},"prompt":{},"prompt_id":"u"}`},
		{"extra kept", `{"prompt": {}, "extra_data": {"a": 1, "client_id": "c"}}`, "", `{"client_id":"me","extra_data":{"a":1,"client_id":"me"},"prompt":{}}`},
		{"client prompt_id removed for old instances", `{"prompt": {}, "prompt_id": "x"}`, "", `{"client_id":"me","extra_data":{"client_id":"me"},"prompt":{}}`},
		{"front and number kept", `{"prompt": {}, "front": true, "number": 3}`, "u", `{"client_id":"me","extra_data":{"client_id":"me"},"front":true,"number":3,"prompt":{},"prompt_id":"u"}`},
	}
	for _, c := range cases {
		var base map[string]json.RawMessage
		if err := json.Unmarshal([]byte(c.base), &base); err != nil {
			t.Fatal(err)
		}
		got, err := buildBody(base, "me", c.uid)
		if err != nil || string(got) != c.want {
			t.Errorf("%s: got %s (%v), want %s", c.desc, got, err, c.want)
		}
	}
}

func TestUUIDs(t *testing.T) {
	t.Parallel()
	for range 100 {
		if u := newUUID(); !isCanonicalUUID(u) || u[14] != '4' {
			t.Fatalf("newUUID %q", u)
		}
	}
	for _, s := range []string{"", "ABCDEF00-0000-4000-8000-000000000000", "abcdef00000040008000000000000000", "abcdef00-0000-4000-8000-00000000000g"} {
		if isCanonicalUUID(s) {
			t.Errorf("%q is not canonical", s)
		}
	}
}
