package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/prompts"
	"github.com/fasthttp/websocket"
)

// Full-stack tests: real comfysim instances, a real upstream.Pool and the
// proxy's Server, with clients speaking ComfyUI's own websocket example.

const stackTimeout = 30 * time.Second

// startStack is startGate with metrics, the default upstream timeout and
// health checks every 200 ms: many clients at once on a loaded machine.
func startStack(t testing.TB, addrs []string, mod func(*config.Config)) *gate {
	t.Helper()
	return startStackWith(t, addrs, mod, nil)
}

// startStackWith is startStack with a hook on the server's Options.
func startStackWith(t testing.TB, addrs []string, mod func(*config.Config), opts func(*Options)) *gate {
	t.Helper()
	return startGateMetrics(t, addrs, func(c *config.Config) {
		c.Timeout = config.Default().Timeout
		c.HealthCheck.Interval = 200 * time.Millisecond
		if mod != nil {
			mod(c)
		}
	}, metrics.New("test"), opts)
}

// connCounter is a TCP forwarder in front of one instance that counts the
// connections comfygate opens: WebSocket upgrades (GET /ws, /api/ws) and
// plain HTTP, now and at most.
type connCounter struct {
	addr                string
	ws, wsMax, http, hm atomic.Int64
}

func startConnCounter(t testing.TB, target string) *connCounter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &connCounter{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, cn := range open {
			_ = cn.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				_ = in.Close()
				continue
			}
			mu.Lock()
			open = append(open, in, out)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.pipe(in, out)
			}()
		}
	}()
	return c
}

func (c *connCounter) pipe(in, out net.Conn) {
	defer in.Close()
	defer out.Close()
	br := bufio.NewReader(in)
	line, _ := br.Peek(12)
	cur, top := &c.http, &c.hm
	if bytes.HasPrefix(line, []byte("GET /ws")) || bytes.HasPrefix(line, []byte("GET /api/ws")) {
		cur, top = &c.ws, &c.wsMax
	}
	n := cur.Add(1)
	defer cur.Add(-1)
	for {
		m := top.Load()
		if n <= m || top.CompareAndSwap(m, n) {
			break
		}
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(out, br); done <- struct{}{} }()
	go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
	<-done
}

// exampleWorkflow is EmptyImage -> ImageInvert -> SaveImage; color makes
// each client's prompt distinct (no cache hits across clients).
func exampleWorkflow(color int) map[string]any {
	return map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 16, "height": 16, "batch_size": 1, "color": color}},
		"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
		"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": "wsflow"}},
	}
}

// flowResult is what one run of ComfyUI's websocket example saw.
type flowResult struct {
	promptID string
	types    []string // text message types on the socket, in order
}

// comfyExampleFlow is ComfyUI's script_examples/websockets_api_example.py:
// connect /ws?clientId, queue the prompt with that client_id, read until
// `executing` with node null for its prompt_id, then GET /history/{id}
// and GET /view of each output image. It also checks that every event on
// the socket that names a prompt names this one.
func comfyExampleFlow(ctx context.Context, s *gate, clientID string, color int, hooks flowHooks) (flowResult, error) {
	var res flowResult
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, resp, err := d.DialContext(ctx, s.wsURL(clientID), nil)
	if err != nil {
		return res, fmt.Errorf("dial: %w", err)
	}
	_ = resp.Body.Close()
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}

	body, _ := json.Marshal(map[string]any{"prompt": exampleWorkflow(color), "client_id": clientID})
	var queued struct {
		PromptID string `json:"prompt_id"`
	}
	if err := httpJSONWith(ctx, s.client(), http.MethodPost, s.base+"/prompt", body, &queued); err != nil {
		return res, fmt.Errorf("POST /prompt: %w", err)
	}
	res.promptID = queued.PromptID
	if res.promptID == "" {
		return res, fmt.Errorf("POST /prompt: no prompt_id")
	}
	if hooks.queued != nil {
		hooks.queued <- res.promptID
	}
	started := hooks.started

	for {
		mt, data, err := conn.ReadMessage()
		if err != nil {
			return res, fmt.Errorf("ws read (after %v): %w", res.types, err)
		}
		if mt != websocket.TextMessage {
			continue // previews
		}
		var msg struct {
			Type string `json:"type"`
			Data struct {
				Node     *string `json:"node"`
				PromptID *string `json:"prompt_id"`
			} `json:"data"`
		}
		if err := json.Unmarshal(data, &msg); err != nil {
			return res, fmt.Errorf("ws message %q: %w", data, err)
		}
		res.types = append(res.types, msg.Type)
		if msg.Data.PromptID != nil && *msg.Data.PromptID != res.promptID {
			return res, fmt.Errorf("socket of %s got %s for prompt %s (its own is %s)", clientID, msg.Type, *msg.Data.PromptID, res.promptID)
		}
		if msg.Type == "execution_start" && started != nil {
			started <- res.promptID
			started = nil
		}
		if msg.Type == "executing" && msg.Data.Node == nil && msg.Data.PromptID != nil {
			break // execution is done
		}
	}

	var hist map[string]struct {
		Outputs map[string]struct {
			Images []struct {
				Filename, Subfolder, Type string
			} `json:"images"`
		} `json:"outputs"`
	}
	if err := httpJSONWith(ctx, s.client(), http.MethodGet, s.base+"/history/"+res.promptID, nil, &hist); err != nil {
		return res, fmt.Errorf("GET /history: %w", err)
	}
	entry, ok := hist[res.promptID]
	if !ok || len(entry.Outputs) == 0 {
		return res, fmt.Errorf("GET /history/%s: no outputs in %v", res.promptID, hist)
	}
	for _, out := range entry.Outputs {
		for _, img := range out.Images {
			q := url.Values{"filename": {img.Filename}, "subfolder": {img.Subfolder}, "type": {img.Type}}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/view?"+q.Encode(), nil)
			resp, err := s.client().Do(req)
			if err != nil {
				return res, fmt.Errorf("GET /view: %w", err)
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !bytes.HasPrefix(b, []byte("\x89PNG")) {
				return res, fmt.Errorf("GET /view %s: %d, %d bytes", img.Filename, resp.StatusCode, len(b))
			}
		}
	}
	return res, nil
}

func httpJSON(ctx context.Context, method, u string, body []byte, into any) error {
	return httpJSONWith(ctx, http.DefaultClient, method, u, body, into)
}

// httpJSONWith is httpJSON through hc.
func httpJSONWith(ctx context.Context, hc *http.Client, method, u string, body []byte, into any) error {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return json.Unmarshal(b, into)
}

// flowHooks, when set, receive a client's prompt id once the POST was
// answered (queued) and once its socket saw the prompt start (started).
type flowHooks struct {
	queued, started chan<- string
}

// runClients runs the example flow for n parallel clients.
func runClients(t *testing.T, s *gate, n int, hooks flowHooks) []flowResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stackTimeout)
	defer cancel()
	results := make([]flowResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = comfyExampleFlow(ctx, s, fmt.Sprintf("client-%d-%d", i, time.Now().UnixNano()), 1000+i, hooks)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
	}
	return results
}

// traceASequence is what ComfyUI 0.3.65 sent the submitting client for
// EmptyImage -> ImageInvert -> SaveImage, status messages left out
// (shared/comfyui-traces/a-emptyimage-invert-save.json, first run).
var traceASequence = []string{
	"execution_start", "execution_cached",
	"progress_state", "executing", "progress_state",
	"progress_state", "executing", "progress_state",
	"progress_state", "executing", "executed", "progress_state",
	"execution_success", "executing",
}

// TestWSStackExampleFlowTenClients: ten clients run ComfyUI's websocket
// example at once, against one gateway and against two replicas behind a
// balancer (round robin, and each client's POST on one replica with its
// socket on the other): every client gets exactly its prompt's events in
// ComfyUI's order, then its /history and its images through /view.
func TestWSStackExampleFlowTenClients(t *testing.T) {
	t.Parallel()
	forEachTarget(t, func(t *testing.T, kind targetKind) {
		a := testkit.Sim(t, comfysim.Options{Delay: 10 * time.Millisecond})
		b := testkit.Sim(t, comfysim.Options{Delay: 10 * time.Millisecond})
		tg := startTarget(t, kind, func(opts func(*Options)) *gate {
			return startStackWith(t, []string{a.Addr(), b.Addr()}, nil, opts)
		})
		// An observer that submits nothing sees only status messages, as the
		// trace's second socket did.
		observer := dialWS(t, tg.front.wsURL("observer"))

		results := runClients(t, tg.front, 10, flowHooks{})
		if t.Failed() {
			return
		}
		// Each client saw exactly its prompt's messages in ComfyUI's order
		// (status messages, the fleet's queue count, interleave with other
		// clients' prompts and are left out).
		want := strings.Join(traceASequence, ",")
		for i, r := range results {
			if got := strings.Join(withoutStatus(r.types), ","); got != want {
				t.Errorf("client %d saw\n%s\nwant\n%s", i, got, want)
			}
		}
		if a.PromptsExecuted() == 0 || b.PromptsExecuted() == 0 {
			t.Errorf("prompts executed: %d and %d; want both instances used", a.PromptsExecuted(), b.PromptsExecuted())
		}
		tg.checkSpread(t)
		// The observer's replica sends it a broadcast of its own.
		for _, g := range tg.replicas {
			g.srv.hub.Broadcast(marker("end"))
		}
		for _, m := range observer.readUntil(`"m": "end"`) {
			if m.typ() != "status" {
				t.Fatalf("observer got %s", m.data)
			}
		}
	})
}

// withoutStatus drops status messages (their number and place depend on
// the other clients' prompts).
func withoutStatus(types []string) []string {
	var out []string
	for _, ty := range types {
		if ty != "status" {
			out = append(out, ty)
		}
	}
	return out
}

// TestWSStackExampleFlowSurvivesKill: ten clients run the websocket
// example while the instance running some of their prompts is killed;
// every client still gets its prompt's end, history and images. On one
// gateway and on two replicas behind a balancer, each replica moving the
// prompts it took.
func TestWSStackExampleFlowSurvivesKill(t *testing.T) {
	t.Parallel()
	forEachTarget(t, testExampleFlowSurvivesKill)
}

func testExampleFlowSurvivesKill(t *testing.T, kind targetKind) {
	// a is slow, so that no prompt finishes there before the kill (the
	// history of a prompt that finished on a dead instance is gone with it).
	a := testkit.Sim(t, comfysim.Options{Delay: 2 * time.Second})
	b := testkit.Sim(t, comfysim.Options{Delay: 20 * time.Millisecond})
	tg := startTarget(t, kind, func(opts func(*Options)) *gate {
		return startStackWith(t, []string{a.Addr(), b.Addr()}, nil, opts)
	})
	// prompt finds a prompt on the replica that took it.
	prompt := func(id string) (*prompts.Prompt, bool) {
		for _, g := range tg.replicas {
			if p, ok := g.prompts.Prompt(id); ok {
				return p, true
			}
		}
		return nil, false
	}

	// Kill instance a once every prompt was accepted and one is running:
	// "killed while their prompts run".
	const n = 10
	queued, started := make(chan string, n), make(chan string, n)
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		timeout := time.After(stackTimeout)
		for range n {
			select {
			case <-queued:
			case <-timeout:
				return
			}
		}
		for {
			select {
			case id := <-started:
				if p, ok := prompt(id); ok && p.Instance() != nil && p.Instance().Name == "i0" {
					a.Kill()
					return
				}
			case <-timeout:
				return
			}
		}
	}()
	results := runClients(t, tg.front, n, flowHooks{queued: queued, started: started})
	<-killed
	resubmitted := 0
	for i, r := range results {
		p, ok := prompt(r.promptID)
		if ok && p.Attempts() > 1 {
			resubmitted++
		}
		if t.Failed() && ok {
			inst := "none"
			if p.Instance() != nil {
				inst = p.Instance().Name
			}
			t.Logf("client %d: prompt %s state %d attempts %d on %s", i, r.promptID, p.State(), p.Attempts(), inst)
		}
	}
	t.Logf("prompts executed: a=%d (killed) b=%d; resubmitted %d", a.PromptsExecuted(), b.PromptsExecuted(), resubmitted)
	if resubmitted == 0 || a.PromptsExecuted() != 0 {
		t.Errorf("instance a was not killed mid-run (%d resubmitted, %d done on a)", resubmitted, a.PromptsExecuted())
	}
	tg.checkSpread(t)
}

func TestWSStack200ClientsOneUpstreamSocketPerInstance(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{})
	b := testkit.Sim(t, comfysim.Options{})
	ca, cb := startConnCounter(t, a.Addr()), startConnCounter(t, b.Addr())
	const maxConns = 8
	s := startStack(t, []string{ca.addr, cb.addr}, func(cfg *config.Config) {
		cfg.MaxConnectionsPerInstance = maxConns
		// This test counts connections. Health checks that wait for one
		// of the 8 connections behind 200 prompts and time out (1 s, one
		// failure) would take both instances out and answer 503.
		cfg.HealthCheck.Timeout = config.Default().HealthCheck.Timeout
		cfg.HealthCheck.UnhealthyThreshold = config.Default().HealthCheck.UnhealthyThreshold
	})

	const n = 200
	ctx, cancel := context.WithTimeout(context.Background(), stackTimeout)
	defer cancel()
	// All 200 sockets are open at once before any prompt is queued.
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conn, resp, err := (&websocket.Dialer{}).DialContext(ctx, s.wsURL(fmt.Sprintf("many-%d", i)), nil)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		_ = resp.Body.Close()
		t.Cleanup(func() { _ = conn.Close() })
		_ = conn.SetReadDeadline(time.Now().Add(stackTimeout))
		if _, _, err := conn.ReadMessage(); err != nil { // first status: registered
			t.Fatalf("client %d: %v", i, err)
		}
		conns[i] = conn
	}
	if got, st := s.srv.hub.Clients(), s.m.Stats().WSClients; got != n || st != n {
		t.Fatalf("hub has %d clients (metric %d), want %d", got, st, n)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("many-%d", i)
			body, _ := json.Marshal(map[string]any{"prompt": exampleWorkflow(i), "client_id": id})
			var q struct {
				PromptID string `json:"prompt_id"`
			}
			if err := httpJSON(ctx, http.MethodPost, s.base+"/prompt", body, &q); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			_ = conn.SetReadDeadline(time.Now().Add(stackTimeout))
			for {
				_, data, err := conn.ReadMessage()
				if err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					return
				}
				if bytes.Contains(data, []byte(`"node": null`)) && bytes.Contains(data, []byte(q.PromptID)) {
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for name, c := range map[string]*connCounter{"a": ca, "b": cb} {
		t.Logf("instance %s: at most %d upstream websockets, %d HTTP connections", name, c.wsMax.Load(), c.hm.Load())
		if got := c.wsMax.Load(); got != 1 {
			t.Errorf("instance %s: %d concurrent upstream websockets, want 1", name, got)
		}
		if got := c.hm.Load(); got > maxConns+1 { // +1: the health check's own client
			t.Errorf("instance %s: %d concurrent HTTP connections, want <= %d", name, got, maxConns+1)
		}
	}
}

// TestWSStackBroadcastAndPreviews: a custom node's broadcast on either
// instance reaches every client, and each prompt's previews only its own
// client in the form it negotiated; on one gateway and on two replicas
// behind a balancer (each replica has its own event socket to every
// instance, so broadcasts reach its sockets; previews cross replicas).
func TestWSStackBroadcastAndPreviews(t *testing.T) {
	t.Parallel()
	forEachTarget(t, testBroadcastAndPreviews)
}

func testBroadcastAndPreviews(t *testing.T, kind targetKind) {
	a := testkit.Sim(t, comfysim.Options{Delay: 20 * time.Millisecond, Steps: 2})
	b := testkit.Sim(t, comfysim.Options{Delay: 20 * time.Millisecond, Steps: 2})
	tg := startTarget(t, kind, func(opts func(*Options)) *gate {
		return startStackWith(t, []string{a.Addr(), b.Addr()}, nil, opts)
	})
	s := tg.front
	c1 := dialWS(t, s.wsURL("bp-1"))
	c2 := dialWS(t, s.wsURL("bp-2"))
	c2.sendFlags(true)
	// A broadcast sent before comfygate's event socket to its instance is
	// up is lost (ComfyUI keeps no backlog), so wait for every replica's
	// sockets.
	testkit.Eventually(t, "every event socket up", func() bool {
		for _, g := range tg.replicas {
			for _, inst := range g.pool.Instances() {
				if !inst.State().SocketUp() {
					return false
				}
			}
		}
		return true
	})

	// A custom node's broadcast on either instance reaches both clients.
	a.BroadcastCustom("custom.hello", map[string]any{"from": "a"})
	b.BroadcastCustom("custom.hello", map[string]any{"from": "b"})
	for _, c := range []*wsTestClient{c1, c2} {
		seen := map[string]bool{}
		for len(seen) < 2 {
			m := c.read()
			if m.typ() == "custom.hello" {
				seen[string(m.data)] = true
			}
		}
	}

	// An upscale prompt's previews reach its client only: type 1 for the
	// plain client, type 4 naming the prompt for the metadata client.
	upscale := func(color int) map[string]any {
		return map[string]any{
			"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": color}},
			"2": map[string]any{"class_type": "UpscaleModelLoader", "inputs": map[string]any{"model_name": comfysim.DefaultUpscaleModels[0]}},
			"3": map[string]any{"class_type": "ImageUpscaleWithModel", "inputs": map[string]any{"upscale_model": []any{"2", 0}, "image": []any{"1", 0}}},
			"4": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"3", 0}, "filename_prefix": "bp"}},
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), stackTimeout)
	defer cancel()
	ids := map[*wsTestClient]string{}
	for i, c := range []*wsTestClient{c1, c2} {
		body, _ := json.Marshal(map[string]any{"prompt": upscale(77 + i), "client_id": c.sid})
		var q struct {
			PromptID string `json:"prompt_id"`
		}
		if err := httpJSONWith(ctx, s.client(), http.MethodPost, s.base+"/prompt", body, &q); err != nil {
			t.Fatal(err)
		}
		ids[c] = q.PromptID
	}
	for c, id := range ids {
		previews := 0
		for {
			m := c.read()
			if m.binary {
				typ := m.typ()
				switch {
				case c == c1 && typ != "binary:1", c == c2 && typ != "binary:4":
					t.Fatalf("%s got preview %s", c.sid, typ)
				case c == c2 && !bytes.Contains(m.data, []byte(id)):
					t.Fatalf("%s got a type-4 preview of another prompt", c.sid)
				}
				previews++
				continue
			}
			if bytes.Contains(m.data, []byte(`"prompt_id"`)) && !bytes.Contains(m.data, []byte(id)) {
				t.Fatalf("%s got another prompt's event %s", c.sid, m.data)
			}
			if m.typ() == "executing" && bytes.Contains(m.data, []byte(`"node": null`)) {
				break
			}
		}
		if previews == 0 {
			t.Errorf("%s got no previews", c.sid)
		}
	}
	tg.checkSpread(t)
}
