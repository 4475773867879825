package prompts

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
)

// TestStartReturnsWithSocketsUp: a prompt sent right after Start must have
// its instance's event socket in place, or its progress never reaches the client.
func TestStartReturnsWithSocketsUp(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{})
	b := testkit.Sim(t, comfysim.Options{})
	cfg := promptsConfig(a.Addr(), b.Addr())
	p := newTestPool(t, cfg, nil, slog.New(slog.DiscardHandler))
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, inst := range p.Instances() {
		if st := inst.Status(); !st.Healthy || !st.SocketUp {
			t.Errorf("%s right after Start: healthy=%v socket=%v, want both", inst.Name, st.Healthy, st.SocketUp)
		}
	}
}

// TestStartDoesNotWaitForUnhealthyInstances: a dead instance costs Start
// no socket wait.
func TestStartDoesNotWaitForUnhealthyInstances(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{})
	dead := testkit.Sim(t, comfysim.Options{})
	dead.Kill()
	cfg := promptsConfig(a.Addr(), dead.Addr())
	cfg.HealthCheck.Timeout = 10 * time.Second
	p := newTestPool(t, cfg, nil, slog.New(slog.DiscardHandler))
	began := time.Now()
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A refused connection fails the check at once; waiting for the dead
	// instance's socket would take the whole 10 s timeout.
	if took := time.Since(began); took >= cfg.HealthCheck.Timeout {
		t.Fatalf("Start took %v: it waited for the dead instance's socket", took)
	}
	if !p.Instances()[0].Status().SocketUp {
		t.Fatal("the live instance's socket is not up after Start")
	}
}
