package proxy

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/auth"
	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/prompts"
	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// wsRefused reports whether opening /ws?clientId=id with key is refused
// with 403.
func wsRefused(t *testing.T, g *gate, id, key string) bool {
	t.Helper()
	c, resp, err := websocket.DefaultDialer.Dial("ws://"+g.addr+"/ws?clientId="+id, bearer(key))
	if err == nil {
		_ = c.Close()
		return false
	}
	return resp != nil && resp.StatusCode == http.StatusForbidden
}

// TestClientIDChurn: one key's many claims (prompts with fresh client_ids,
// short sockets, prompts) never make another key's clientIds or prompts
// go; B's live socket keeps its clientId, and it keeps receiving its
// events.
func TestClientIDChurn(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), func(c *config.Config) { withKeys(c); c.Auth.MaxOwners = 3 })

	live := dialWSWith(t, &websocket.Dialer{HandshakeTimeout: wsTestTimeout}, "ws://"+g.addr+"/ws?clientId=live-of-b&token="+keyB)
	if status, raw := postJSON(t, g.base+"/prompt", bearer(keyB), map[string]any{"prompt": map[string]any{}, "client_id": "posted-by-b"}, nil); status == http.StatusForbidden {
		t.Fatalf("B claiming posted-by-b: %d %s", status, raw)
	}
	bID := submitAs(t, g, keyB, map[string]any{"prompt": emptyImagePrompt(0x010203, "b")})

	// A churns: refused prompts with fresh client_ids, short sockets, and
	// prompts of its own, each well over auth.max_owners.
	for i := range 8 {
		postJSON(t, g.base+"/prompt", bearer(keyA), map[string]any{"prompt": map[string]any{}, "client_id": fmt.Sprint("churn-", i)}, nil)
		c, _, err := websocket.DefaultDialer.Dial(fmt.Sprintf("ws://%s/ws?clientId=sock-%d&token=%s", g.addr, i, keyA), nil)
		if err != nil {
			t.Fatalf("A's socket %d: %v", i, err)
		}
		_ = c.Close()
	}
	for i := range 5 {
		submitAs(t, g, keyA, map[string]any{"prompt": emptyImagePrompt(0x040506+i, "a")})
	}

	for _, id := range []string{"live-of-b", "posted-by-b"} {
		if !wsRefused(t, g, id, keyA) {
			t.Errorf("A opened a socket with B's clientId %s after churning", id)
		}
		if status, raw := postJSON(t, g.base+"/prompt", bearer(keyA), map[string]any{"prompt": emptyImagePrompt(1, "x"), "client_id": id}, nil); status != http.StatusForbidden {
			t.Errorf("A posting with B's client_id %s after churning: %d %s, want 403", id, status, raw)
		}
	}
	waitHistoryAs(t, g, keyB, bID)
	if _, ok := historyOf(t, g, keyB, "/history")[bID]; !ok {
		t.Error("B's prompt left B's /history after A's churn")
	}

	// B's socket was not replaced: it gets the events of B's next prompt.
	id := submitAs(t, g, keyB, map[string]any{"prompt": emptyImagePrompt(0x070809, "b2"), "client_id": "live-of-b"})
	live.readUntilAll(`"execution_success"`, id)
}

// waitHistoryAs polls /history/{id} with key until the prompt is done.
func waitHistoryAs(t *testing.T, g *gate, key, id string) {
	t.Helper()
	testkit.Eventually(t, "history of "+id, func() bool {
		_, ok := historyOf(t, g, key, "/history/"+id)[id]
		return ok
	})
}

// readUntilAll reads up to and including a text message that contains
// every one of parts, and returns what came before it.
func (c *wsTestClient) readUntilAll(parts ...string) []wsMsg {
	c.t.Helper()
	var out []wsMsg
	for range 10000 {
		m := c.read()
		all := !m.binary
		for _, p := range parts {
			all = all && strings.Contains(string(m.data), p)
		}
		if all {
			return out
		}
		out = append(out, m)
	}
	c.t.Fatalf("no message with %q came", parts)
	return nil
}

// submitAs posts a prompt with key and returns its id.
func submitAs(t *testing.T, g *gate, key string, body map[string]any) string {
	t.Helper()
	var a promptAnswer
	if status, raw := postJSON(t, g.base+"/prompt", bearer(key), body, &a); status != http.StatusOK || a.PromptID == "" {
		t.Fatalf("POST /prompt with %s…: %d %s", key[:5], status, raw)
	}
	return a.PromptID
}

// TestUnownedEventsStayWithTheirKey: the events of B's prompt without
// client_id (ComfyUI sends progress and progress_state to every socket)
// reach B's socket, never A's nor an admin's; fleet-wide messages still
// reach everyone.
func TestUnownedEventsStayWithTheirKey(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), withKeys)
	d := &websocket.Dialer{HandshakeTimeout: wsTestTimeout}
	wa := dialWSWith(t, d, "ws://"+g.addr+"/ws?clientId=sock-of-a&token="+keyA)
	wb := dialWSWith(t, d, "ws://"+g.addr+"/ws?clientId=sock-of-b&token="+keyB)
	wadmin := dialWSWith(t, d, "ws://"+g.addr+"/ws?clientId=sock-of-admin&token="+keyAdmin)

	id := submitAs(t, g, keyB, map[string]any{"prompt": emptyImagePrompt(0x0a0b0c, "nocid")})
	waitHistoryAs(t, g, keyB, id)
	// An admin key claims no clientId: its prompt naming A's is still not
	// A's to watch.
	adminID := submitAs(t, g, keyAdmin, map[string]any{"prompt": emptyImagePrompt(0x0d0e0f, "adm"), "client_id": "sock-of-a"})
	waitHistoryAs(t, g, keyAdmin, adminID)
	// The marker comes from the instance after every event of B's prompt,
	// on the same socket: what a client got before it is all it gets.
	ss[0].BroadcastCustom("test_marker", map[string]any{"m": "after"})
	count := func(msgs []wsMsg) int {
		n := 0
		for _, m := range msgs {
			if !m.binary && strings.Contains(string(m.data), id) {
				n++
			}
		}
		return n
	}
	if n := count(wb.readUntil("test_marker")); n == 0 {
		t.Error("B's socket got no event of B's prompt without client_id")
	}
	if n := count(wadmin.readUntil("test_marker")); n != 0 {
		t.Errorf("the admin socket got %d events of B's prompt", n)
	}
	for _, m := range wa.readUntil("test_marker") {
		if strings.Contains(string(m.data), id) || strings.Contains(string(m.data), adminID) {
			t.Errorf("A's socket got an event of another key's prompt: %.200s", m.data)
		}
	}
}

// TestListingsFilterBeforeWindow: max_items, offset and limit apply to
// what the key may see, and the jobs list's total counts only that.
func TestListingsFilterBeforeWindow(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{Version: "0.38.0"})
	g := startGate(t, addrsOf(ss), withKeys)
	var bIDs []string
	for i := range 3 {
		id := submitAs(t, g, keyB, map[string]any{"prompt": emptyImagePrompt(0x100000+i, "lb")})
		waitHistoryAs(t, g, keyB, id)
		bIDs = append(bIDs, id)
	}
	for i := range 3 {
		waitHistoryAs(t, g, keyA, submitAs(t, g, keyA, map[string]any{"prompt": emptyImagePrompt(0x200000+i, "la")}))
	}
	keys := func(h map[string]json.RawMessage) []string {
		var out []string
		for k := range h {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	sorted := func(ids ...string) []string { return slices.Sorted(slices.Values(ids)) }
	for _, tc := range []struct {
		path string
		want []string
	}{
		{"/history?max_items=1", []string{bIDs[2]}},
		{"/api/history?max_items=2", sorted(bIDs[1], bIDs[2])},
		{"/history?offset=1", sorted(bIDs[1], bIDs[2])},
		{"/history?offset=1&max_items=1", []string{bIDs[1]}},
		{"/history", sorted(bIDs...)},
	} {
		if got := keys(historyOf(t, g, keyB, tc.path)); !slices.Equal(got, tc.want) {
			t.Errorf("B's GET %s: %v, want %v", tc.path, got, tc.want)
		}
	}
	if n := len(historyOf(t, g, keyAdmin, "/history?max_items=6")); n != 6 {
		t.Errorf("admin's /history?max_items=6: %d entries, want 6", n)
	}

	var page struct {
		Jobs []struct {
			ID string `json:"id"`
		} `json:"jobs"`
		Pagination struct {
			Total   int  `json:"total"`
			HasMore bool `json:"has_more"`
		} `json:"pagination"`
	}
	for _, tc := range []struct {
		query   string
		want    []string
		hasMore bool
	}{
		{"?limit=1", []string{bIDs[2]}, true},
		{"?limit=1&offset=2", []string{bIDs[0]}, false},
		{"?sort_order=asc&offset=1", []string{bIDs[1], bIDs[2]}, false},
	} {
		status, _, body := gateDo(t, "GET", g.base+"/api/jobs"+tc.query, bearer(keyB), nil)
		if status != http.StatusOK || json.Unmarshal(body, &page) != nil {
			t.Fatalf("B's GET /api/jobs%s: %d %s", tc.query, status, body)
		}
		var got []string
		for _, j := range page.Jobs {
			got = append(got, j.ID)
		}
		if !slices.Equal(got, tc.want) || page.Pagination.Total != 3 || page.Pagination.HasMore != tc.hasMore {
			t.Errorf("B's GET /api/jobs%s: %v total %d has_more %v, want %v total 3 has_more %v",
				tc.query, got, page.Pagination.Total, page.Pagination.HasMore, tc.want, tc.hasMore)
		}
	}
}

// TestWSEventsStayWithTheirKey, on the hub alone: with isolation, a
// socket neither replays a backlog another key's prompts left on its
// clientId nor receives another key's events routed by clientId, and a
// clientId held by a live socket is refused to other keys.
func TestWSEventsStayWithTheirKey(t *testing.T) {
	t.Parallel()
	h := newHub(wsTestConfig(func(w *config.WebSocket) { w.BacklogGrace = time.Minute }), nil, nil, nil)
	h.isolate(auth.NewOwners(10))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve := func(ctx *fasthttp.RequestCtx) {
		if k := ctx.QueryArgs().Peek("k"); len(k) > 0 {
			ctx.SetUserValue(userValueKey, &auth.Key{Name: string(k)})
		}
		h.ServeWS(ctx)
	}
	srv := &fasthttp.Server{Handler: serve, NoDefaultServerHeader: true, KeepHijackedConns: true}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		h.Close()
		_ = srv.Shutdown()
		<-done
	})
	base := "ws://" + ln.Addr().String() + "/ws?clientId=X&k="

	h.sinkFor("a").PromptEvent(&prompts.Prompt{ID: "pa", ClientID: "X"}, textEvent("progress", "pa", ""))
	b := dialWS(t, base+"b")
	if _, resp, err := websocket.DefaultDialer.Dial(base+"a", nil); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("a opening X while b's socket holds it: %v, want 403", err)
	}
	h.sinkFor("a").PromptEvent(&prompts.Prompt{ID: "pa2", ClientID: "X"}, textEvent("progress", "pa2", ""))
	h.sinkFor("b").PromptEvent(&prompts.Prompt{ID: "pb", ClientID: "X"}, textEvent("progress", "pb", ""))
	h.Broadcast(marker("m"))
	got := b.readUntil(`"m": "m"`)
	if len(got) != 1 || !strings.Contains(string(got[0].data), `"pb"`) {
		var all []string
		for _, m := range got {
			all = append(all, string(m.data))
		}
		t.Errorf("b's socket on X got %q, want only b's own event", all)
	}
}

// TestRunningBroadcastStaysWithItsKey: a message naming no prompt that an
// instance sends while it runs B's prompt (a custom node's message to the
// running prompt's client looks like a broadcast) reaches B's socket, not
// A's; once the instance is idle, such messages reach everyone.
func TestRunningBroadcastStaysWithItsKey(t *testing.T) {
	t.Parallel()
	// A long upscale, interruptible at every one of its many steps.
	ss := sims(t, 1, comfysim.Options{Delay: time.Minute, Steps: 3000})
	g := startGate(t, addrsOf(ss), withKeys)
	d := &websocket.Dialer{HandshakeTimeout: wsTestTimeout}
	wa := dialWSWith(t, d, "ws://"+g.addr+"/ws?clientId=run-a&token="+keyA)
	wb := dialWSWith(t, d, "ws://"+g.addr+"/ws?clientId=run-b&token="+keyB)
	id := submitAs(t, g, keyB, map[string]any{"client_id": "run-b", "prompt": map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": 1}},
		"2": map[string]any{"class_type": "UpscaleModelLoader", "inputs": map[string]any{"model_name": comfysim.DefaultUpscaleModels[0]}},
		"3": map[string]any{"class_type": "ImageUpscaleWithModel", "inputs": map[string]any{"upscale_model": []any{"2", 0}, "image": []any{"1", 0}}},
		"4": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"3", 0}, "filename_prefix": "run"}},
	}})
	wb.readUntilAll(`"executing"`, id, `"node": "3"`)
	ss[0].BroadcastCustom("custom_running", map[string]any{"m": "during"})
	wb.readUntil("custom_running")
	if status, raw := postJSON(t, g.base+"/interrupt", bearer(keyB), map[string]any{"prompt_id": id}, nil); status != http.StatusOK {
		t.Fatalf("B's interrupt: %d %s", status, raw)
	}
	waitHistoryAs(t, g, keyB, id)
	ss[0].BroadcastCustom("test_marker", map[string]any{"m": "idle"})
	for _, m := range wa.readUntil("test_marker") {
		if strings.Contains(string(m.data), "custom_running") {
			t.Errorf("A's socket got a message sent while B's prompt ran: %s", m.data)
		}
	}
	wb.readUntil("test_marker")
}
