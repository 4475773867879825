package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/fasthttp/websocket"
)

// TestWSServerShutdownClosesSockets: Shutdown does not wait for WebSocket
// clients to leave on their own; they get close code 1001.
func TestWSServerShutdownClosesSockets(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{})
	s := startStack(t, []string{a.Addr()}, nil)
	c := dialWS(t, s.wsURL("bye"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Shutdown took %v with a WebSocket client open", d)
	}
	if _, err := c.tryRead(wsTestTimeout); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Fatalf("client: %v, want close 1001", err)
	}
}
