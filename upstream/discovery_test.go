package upstream

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// fakeResolver answers LookupHost from a table the test changes.
type fakeResolver struct {
	mu    sync.Mutex // guards addrs, err, calls
	addrs []string
	err   error
	calls int
}

func (r *fakeResolver) set(err error, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addrs, r.err = addrs, err
}

func (r *fakeResolver) LookupHost(_ context.Context, host string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if host != "comfyui.test" {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return append([]string(nil), r.addrs...), r.err
}

func names(insts []*Instance) []string {
	var out []string
	for _, i := range insts {
		out = append(out, i.Name)
	}
	return out
}

func TestDiscoveryAddsAndDrains(t *testing.T) {
	t.Parallel()
	// Loopback addresses on a closed port: health checks fail at once,
	// without touching the network; the test drives discovery itself.
	_, port, _ := net.SplitHostPort(testkit.ClosedAddr(t))
	cfg := coreConfig()
	cfg.Instances = []config.Instance{
		{Name: "fixed", Address: testkit.ClosedAddr(t)},
		{Name: "gpu", Address: "comfyui.test:" + port, Discover: true},
	}
	res := &fakeResolver{}
	res.set(nil, "127.0.0.2", "127.0.0.10", "127.0.0.1")
	p, rec := newCorePool(t, cfg, false)
	p.disc.setResolver(res)
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := []string{"fixed", "gpu/127.0.0.1", "gpu/127.0.0.2", "gpu/127.0.0.10"}
	if got := names(p.Instances()); !equal(got, want) {
		t.Fatalf("instances after start = %v, want %v", got, want)
	}
	if addr := p.Instances()[1].Addr; addr != "127.0.0.1:"+port {
		t.Fatalf("addr = %q", addr)
	}

	// 127.0.0.2 goes away with a prompt in flight; 127.0.0.3 arrives.
	i2 := p.reg.byName("gpu/127.0.0.2")
	i2.workload.add(1)
	res.set(nil, "127.0.0.1", "127.0.0.10", "127.0.0.3")
	p.disc.discoverOnce(context.Background())
	want = []string{"fixed", "gpu/127.0.0.1", "gpu/127.0.0.2", "gpu/127.0.0.3", "gpu/127.0.0.10"}
	if got := names(p.Instances()); !equal(got, want) {
		t.Fatalf("instances = %v, want %v", got, want)
	}
	if !i2.state.draining.Load() || i2.Available() {
		t.Fatal("vanished instance not draining")
	}
	i2.state.healthy.Store(true)
	for k := 0; k < 5; k++ {
		if got, _ := p.Selector().Select(); got == i2 {
			t.Fatal("draining instance selected")
		}
	}
	// Its address comes back while it drains: it stays draining.
	res.set(nil, "127.0.0.1", "127.0.0.10", "127.0.0.3", "127.0.0.2")
	p.disc.discoverOnce(context.Background())
	if !i2.state.draining.Load() || p.reg.byName("gpu/127.0.0.2") != i2 {
		t.Fatal("draining instance revived in place")
	}
	res.set(nil, "127.0.0.1", "127.0.0.10", "127.0.0.3")
	// Its last prompt finishes: it leaves the pool.
	i2.workload.add(-1)
	want = []string{"fixed", "gpu/127.0.0.1", "gpu/127.0.0.3", "gpu/127.0.0.10"}
	if got := names(p.Instances()); !equal(got, want) {
		t.Fatalf("instances after drain = %v, want %v", got, want)
	}
	if rec.count("instance removed", "instance=gpu/127.0.0.2") != 1 {
		t.Fatal("removal not logged")
	}
	// Back after it left: a fresh instance.
	res.set(nil, "127.0.0.1", "127.0.0.10", "127.0.0.3", "127.0.0.2")
	p.disc.discoverOnce(context.Background())
	if again := p.reg.byName("gpu/127.0.0.2"); again == nil || again == i2 || again.state.draining.Load() {
		t.Fatalf("returning address: %v", again)
	}
	res.set(nil, "127.0.0.1", "127.0.0.10", "127.0.0.3")
	p.disc.discoverOnce(context.Background())

	// A failing lookup keeps the set.
	res.set(errors.New("SERVFAIL"))
	p.disc.discoverOnce(context.Background())
	p.disc.discoverOnce(context.Background())
	if got := names(p.Instances()); !equal(got, want) {
		t.Fatalf("instances after a failed lookup = %v, want %v", got, want)
	}
	if rec.count("discovery lookup failed") != 1 {
		t.Fatal("lookup failure not logged once")
	}

	// An idle instance that vanishes leaves at once.
	res.set(nil, "127.0.0.1")
	p.disc.discoverOnce(context.Background())
	want = []string{"fixed", "gpu/127.0.0.1"}
	if got := names(p.Instances()); !equal(got, want) {
		t.Fatalf("instances = %v, want %v", got, want)
	}
}

func TestDiscoveredInstanceIsCheckedAndUsable(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	host, port, _ := net.SplitHostPort(f.Addr())
	cfg := coreConfig()
	cfg.Instances = []config.Instance{{Name: "gpu", Address: "comfyui.test:" + port, Discover: true}}
	res := &fakeResolver{}
	p, _ := newCorePool(t, cfg, false)
	p.disc.setResolver(res)
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Selector().Select(); !errors.Is(err, ErrNoUpstream) {
		t.Fatalf("Select with nothing resolved = %v", err)
	}
	res.set(nil, host)
	p.disc.discoverOnce(context.Background())
	inst, err := p.Selector().Select()
	if err != nil || inst.Name != "gpu/"+host {
		t.Fatalf("Select after discovery = %v, %v", inst, err)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if a[k] != b[k] {
			return false
		}
	}
	return true
}
