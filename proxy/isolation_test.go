package proxy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/fasthttp/websocket"
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
