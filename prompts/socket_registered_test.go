package prompts

import (
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit"
)

// TestSocketUpOnlyOnceTheInstanceSpoke: ComfyUI registers a socket under
// its clientId only after the handshake, then sends it its status; what it
// sends to that clientId before goes nowhere. So comfygate's socket is up
// (and prompts may go there expecting their events) only once the
// instance's first message came, not when the handshake completed.
func TestSocketUpOnlyOnceTheInstanceSpoke(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	release := make(chan struct{})
	f.HoldSockets(release)
	p := newTestPool(t, promptsConfig(f.Addr()), nil, nil)
	started := make(chan struct{})
	go func() {
		defer close(started)
		p.Pool.Start(t.Context())
		p.prompts.Start(t.Context()) // waits for the socket, at most health_check.timeout
	}()
	testkit.Eventually(t, "the handshake", func() bool { return f.Dials.Load() > 0 })
	inst := p.Instances()[0]
	// Bounded: the handshake is done, the instance has not spoken; the
	// socket must not count as up meanwhile.
	for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
		if inst.State().SocketUp() {
			t.Fatal("the socket counts as up before the instance registered it")
		}
		<-time.After(5 * time.Millisecond)
	}
	close(release)
	testkit.Eventually(t, "the socket up once the instance spoke", func() bool { return inst.State().SocketUp() })
	<-started
}
