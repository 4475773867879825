package proxy

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/state"
	"github.com/fasthttp/websocket"
	"github.com/redis/go-redis/v9"
)

// TestClientIDOwnersAcrossReplicas: two replicas sharing a real Redis
// (state.url) share who holds each clientId: a key's clientId claimed on
// one is refused to another key on the other, over WS and POST /prompt.
// /health reports the store; once it stops answering, claims fail closed
// with 503 and Retry-After.
func TestClientIDOwnersAcrossReplicas(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	ss := sims(t, 1, comfysim.Options{})
	replica := func() *gate {
		st, err := state.Open(context.Background(), config.State{URL: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return startGateWith(t, addrsOf(ss), withKeys, func(o *Options) { o.State = st })
	}
	g1, g2 := replica(), replica()

	ca, _, err := websocket.DefaultDialer.Dial(g1.wsURL("client-of-a")+"&token="+keyA, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	if !wsRefused(t, g2, "client-of-a", keyB) {
		t.Error("B took A's clientId on the other replica over WS")
	}
	body := map[string]any{"prompt": emptyImagePrompt(0x0a0b0c, "shared"), "client_id": "client-of-a"}
	if status, raw := postJSON(t, g2.base+"/prompt", bearer(keyB), body, nil); status != http.StatusForbidden {
		t.Errorf("B posting with A's client_id on the other replica: %d %s, want 403", status, raw)
	}
	if status, raw := postJSON(t, g2.base+"/prompt", bearer(keyA), body, nil); status != http.StatusOK {
		t.Errorf("A's prompt on the other replica: %d %s", status, raw)
	}
	// B's own clientId, claimed on the second replica, is B's on the first.
	if status, raw := postJSON(t, g2.base+"/prompt", bearer(keyB), map[string]any{"prompt": emptyImagePrompt(0x0d0e0f, "b"), "client_id": "client-of-b"}, nil); status != http.StatusOK {
		t.Fatalf("B's prompt: %d %s", status, raw)
	}
	if !wsRefused(t, g1, "client-of-b", keyA) {
		t.Error("A took B's clientId on the other replica")
	}

	health := func(g *gate) map[string]any {
		t.Helper()
		_, _, raw := gateDo(t, "GET", g.base+"/health", nil, nil)
		var h map[string]any
		if err := json.Unmarshal(raw, &h); err != nil {
			t.Fatalf("/health: %v %s", err, raw)
		}
		return h
	}
	if st, _ := health(g1)["state"].(map[string]any); st["store"] != "redis" || st["ok"] != true {
		t.Fatalf("/health state: %v", health(g1)["state"])
	}

	// The store stops: the replicas refuse to guess who holds a clientId.
	// The client's failed dials would go to the standard error; only this
	// test of the package uses Redis.
	state.SetLogger(slog.New(slog.DiscardHandler))
	opt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	_ = rdb.ShutdownNoSave(context.Background()).Err()
	testkit.Eventually(t, "redis-server gone", func() bool {
		st, _ := health(g1)["state"].(map[string]any)
		return st["ok"] == false
	})
	status, hdr, raw := gateDo(t, "GET", g2.base+"/ws?clientId=client-of-c", bearer(keyA), nil)
	if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Errorf("a claim with the store gone: %d %s (Retry-After %q), want 503", status, raw, hdr.Get("Retry-After"))
	}
	if status, raw := postJSON(t, g1.base+"/prompt", bearer(keyB), map[string]any{"prompt": emptyImagePrompt(0x0d0e10, "c"), "client_id": "client-of-d"}, nil); status != http.StatusServiceUnavailable {
		t.Errorf("a prompt's claim with the store gone: %d %s, want 503", status, raw)
	}
}

// TestMemoryStateHealthUnchanged: with state.url empty /health has no
// state field, as before the store existed.
func TestMemoryStateHealthUnchanged(t *testing.T) {
	t.Parallel()
	g := startGate(t, addrsOf(sims(t, 1, comfysim.Options{})), nil)
	_, _, raw := gateDo(t, "GET", g.base+"/health", nil, nil)
	var h map[string]json.RawMessage
	if err := json.Unmarshal(raw, &h); err != nil || h["comfyui_instances"] == nil {
		t.Fatalf("/health: %v %s", err, raw)
	}
	if _, ok := h["state"]; ok {
		t.Fatalf("/health in memory has a state field: %s", raw)
	}
}
