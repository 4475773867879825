package upstream

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/comfygate/comfygate/internal/testkit"
)

// fakeOwner is a PromptOwner that records what the pool tells it.
type fakeOwner struct {
	cleanOK atomic.Bool // what CleanUp answers

	mu    sync.Mutex // guards calls
	calls []string
}

func newFakeOwner() *fakeOwner {
	o := &fakeOwner{}
	o.cleanOK.Store(true)
	return o
}

func (o *fakeOwner) record(s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, s)
}

func (o *fakeOwner) count(s string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, c := range o.calls {
		if c == s {
			n++
		}
	}
	return n
}

func (o *fakeOwner) Start(context.Context)             { o.record("start") }
func (o *fakeOwner) Close()                            { o.record("close") }
func (o *fakeOwner) InstanceAdded(inst *Instance)      { o.record("added " + inst.Name) }
func (o *fakeOwner) InstanceRemoved(inst *Instance)    { o.record("removed " + inst.Name) }
func (o *fakeOwner) InstanceDown(inst *Instance)       { o.record("down " + inst.Name) }
func (o *fakeOwner) SocketSettled(inst *Instance) bool { return true }
func (o *fakeOwner) CleanUp(_ context.Context, inst *Instance) bool {
	o.record("cleanup " + inst.Name)
	return o.cleanOK.Load()
}

// TestPromptOwnerHearsThePool: the pool starts and closes the owner it
// was attached to, announces its instances after Start's first checks,
// tells it when an instance is confirmed dead, and gives a comeback no
// work until the owner's CleanUp succeeds.
func TestPromptOwnerHearsThePool(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.HealthCheck.UnhealthyThreshold = 1
	p, err := New(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	o := newFakeOwner()
	p.Attach(o)
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	inst := p.Instances()[0]
	if o.count("start") != 1 || o.count("added i1") != 1 {
		t.Fatalf("after Start: start %d, added i1 %d; want 1 each", o.count("start"), o.count("added i1"))
	}
	if !inst.Healthy() {
		t.Fatal("instance not healthy after Start")
	}

	// Its health check fails and it has no event socket: confirmed dead.
	f.Fail500.Store(true)
	ctx := context.Background()
	if p.checkOnce(ctx, inst) || inst.Healthy() {
		t.Fatal("a failing check left the instance healthy")
	}
	testkit.Eventually(t, "the owner told the instance is down", func() bool { return o.count("down i1") == 1 })

	// Back, but the owner cannot clean it up yet: no work for it.
	f.Fail500.Store(false)
	o.cleanOK.Store(false)
	if p.checkOnce(ctx, inst) || inst.Healthy() {
		t.Fatal("a comeback the owner could not clean up was made healthy")
	}
	o.cleanOK.Store(true)
	if !p.checkOnce(ctx, inst) || !inst.Healthy() {
		t.Fatal("a comeback the owner cleaned up stayed unhealthy")
	}
	// Start's first check was a comeback too (from not yet healthy).
	if n := o.count("cleanup i1"); n != 3 {
		t.Fatalf("CleanUp called %d times, want 3 (one per check of an instance not healthy)", n)
	}

	p.Close()
	if o.count("close") != 1 {
		t.Fatalf("Close told the owner %d times, want 1", o.count("close"))
	}
}
