package upstream

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit"
)

// eventLog drains a subscription without waiting and keeps what it read.
type eventLog struct {
	sub *Subscription
	mu  sync.Mutex
	got []string
}

func (l *eventLog) drain() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		ev, ok, _ := l.sub.TryNext()
		if !ok {
			return append([]string(nil), l.got...)
		}
		l.got = append(l.got, ev.Kind.String()+" "+ev.Inst.Name)
	}
}

func (l *eventLog) count(s string) int {
	n := 0
	for _, g := range l.drain() {
		if g == s {
			n++
		}
	}
	return n
}

// TestEventsTellTheSubscriber: a subscription taken before Start hears
// the instance added after the first check, unhealthy and down when its
// check fails with no event socket, and nothing more after Close; a
// comeback gets no work until the comeback gate lets it.
func TestEventsTellTheSubscriber(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	cfg := coreConfig(f.Addr())
	cfg.HealthCheck.UnhealthyThreshold = 1
	p, _ := newCorePool(t, cfg, false)
	l := &eventLog{sub: p.Subscribe()}
	var gateOK atomic.Bool
	gateOK.Store(true)
	var gateCalls atomic.Int32
	p.SetComebackGate(func(_ context.Context, inst *Instance) bool {
		gateCalls.Add(1)
		return gateOK.Load()
	})
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	inst := p.Instances()[0]
	if got := l.drain(); len(got) != 2 || got[0] != "up i1" || got[1] != "added i1" {
		t.Fatalf("after Start: events %q, want [up i1, added i1]", got)
	}

	// Its health check fails and it has no event socket: down.
	f.Fail500.Store(true)
	ctx := context.Background()
	if p.health.checkOnce(ctx, inst) || inst.state.Healthy() {
		t.Fatal("a failing check left the instance healthy")
	}
	if l.count("unhealthy i1") != 1 || l.count("down i1") != 1 {
		t.Fatalf("after a failed check: events %q, want one unhealthy and one down", l.drain())
	}

	// Back, but the gate refuses it: no work for it.
	f.Fail500.Store(false)
	gateOK.Store(false)
	if p.health.checkOnce(ctx, inst) || inst.state.Healthy() {
		t.Fatal("a comeback the gate refused was made healthy")
	}
	gateOK.Store(true)
	if !p.health.checkOnce(ctx, inst) || !inst.state.Healthy() {
		t.Fatal("a comeback the gate let through stayed unhealthy")
	}
	// Start's first check was a comeback too (from not yet healthy).
	if n := gateCalls.Load(); n != 3 {
		t.Fatalf("gate asked %d times, want 3 (one per check of an instance not healthy)", n)
	}
	if l.count("up i1") != 2 || l.count("changed i1") != 1 {
		t.Fatalf("after the comeback: events %q, want a second up and one changed", l.drain())
	}

	p.Close()
	if _, ok := l.sub.Next(ctx); ok {
		// Next returns what is queued first: nothing is left after drain.
		t.Fatal("Next returned an event after Close with nothing queued")
	}
}

// TestSubscriptionKeepsOrderWithoutAReader: the pool publishes whether or
// not anybody reads; nothing is dropped and the order is kept.
func TestSubscriptionKeepsOrderWithoutAReader(t *testing.T) {
	t.Parallel()
	p, err := New(coreConfig(testkit.ClosedAddr(t)), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	inst := p.Instances()[0]
	slow, other := p.Subscribe(), p.Subscribe()
	const n = 5000
	kinds := []EventKind{EventUp, EventSuspect, EventBack, EventDown}
	for k := range n {
		p.bus.publish(kinds[k%len(kinds)], inst)
	}
	other.Close()
	if _, ok, closed := other.TryNext(); ok || !closed {
		t.Fatalf("a closed subscription: ok=%v closed=%v, want none and closed", ok, closed)
	}
	for k := range n {
		ev, ok := slow.Next(context.Background())
		if !ok || ev.Kind != kinds[k%len(kinds)] || ev.Inst != inst {
			t.Fatalf("event %d: %v %v, want %v", k, ev.Kind, ok, kinds[k%len(kinds)])
		}
	}
	p.Close()
	if ev, ok := slow.Next(context.Background()); ok {
		t.Fatalf("event after Close: %v", ev.Kind)
	}
	if s := p.Subscribe(); s != nil {
		if _, ok, closed := s.TryNext(); ok || !closed {
			t.Fatal("a subscription taken after Close is not closed")
		}
	}
	if got := fmt.Sprint(EventDrained, EventKind(99)); got != "drained unknown" {
		t.Fatalf("kind names: %q", got)
	}
}

// TestWarmupGateWaitsForItsRunner: a cold instance asks for its warm-up
// once (EventWarmup) and gets no work until WarmupDone; a failed run keeps
// it out and the next passed check asks again.
func TestWarmupGateWaitsForItsRunner(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "warm.json"), []byte(`{"1":{"class_type":"X","inputs":{}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := coreConfig(f.Addr())
	cfg.Dir = dir
	cfg.Instances[0].Warmup = "warm.json"
	p, _ := newCorePool(t, cfg, false)
	l := &eventLog{sub: p.Subscribe()}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	inst := p.Instances()[0]
	if l.count("warmup i1") != 1 || inst.Available() {
		t.Fatalf("cold instance: events %q, available %v; want one warmup and not available", l.drain(), inst.Available())
	}
	if string(p.WarmupWorkflow(inst)) != `{"1":{"class_type":"X","inputs":{}}}` {
		t.Fatalf("workflow %s", p.WarmupWorkflow(inst))
	}
	p.health.checkOnce(context.Background(), inst)
	if l.count("warmup i1") != 1 {
		t.Fatal("a second warm-up was asked for while one runs")
	}
	p.WarmupDone(inst, 0, errors.New("boom"))
	if inst.Available() || inst.state.WarmupState() != "failed: boom" {
		t.Fatalf("after a failed run: available %v, state %q", inst.Available(), inst.state.WarmupState())
	}
	p.health.checkOnce(context.Background(), inst)
	if l.count("warmup i1") != 2 {
		t.Fatalf("a passed check after a failed run asked %d times, want 2", l.count("warmup i1"))
	}
	p.WarmupDone(inst, time.Millisecond, nil)
	if !inst.Available() || inst.state.WarmupState() != "ok" {
		t.Fatalf("after a run: available %v, state %q", inst.Available(), inst.state.WarmupState())
	}
}
