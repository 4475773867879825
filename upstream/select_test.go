package upstream

import (
	"errors"
	"testing"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/internal/testkit"
)

// selectPool returns a pool of n instances that are healthy without any
// network (nothing is started).
func selectPool(t *testing.T, n int) (*Pool, []*Instance) {
	t.Helper()
	addrs := make([]string, n)
	for k := range addrs {
		addrs[k] = testkit.ClosedAddr(t)
	}
	p, _ := newCorePool(t, coreConfig(addrs...), false)
	insts := p.Instances()
	for _, inst := range insts {
		inst.state.healthy.Store(true)
	}
	return p, insts
}

// openBreaker fails requests until inst's breaker opens.
func openBreaker(t *testing.T, inst *Instance) {
	t.Helper()
	for k := 0; k < 10 && inst.transport.breaker.Ready(); k++ {
		done, err := inst.transport.breaker.Allow()
		if err != nil {
			break
		}
		done.Done(breaker.Failure)
	}
	if inst.transport.breaker.Ready() {
		t.Fatal("breaker did not open")
	}
}

func TestSelectPolicy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		desc     string
		n        int
		setup    func(t *testing.T, in []*Instance)
		exclude  []int
		want     []int // instances chosen by successive Selects (indexes)
		wantNone bool
	}{
		{desc: "least work wins", n: 3, setup: func(t *testing.T, in []*Instance) {
			in[0].workload.inflight.Store(2)
			in[1].workload.queueDepth.Store(1)
			in[2].workload.inflight.Store(1)
			in[2].workload.queueDepth.Store(2)
		}, want: []int{1, 1, 1}},
		{desc: "in-flight and reported queue are the same prompts, not added", n: 2, setup: func(t *testing.T, in []*Instance) {
			in[0].workload.inflight.Store(2)
			in[0].workload.queueDepth.Store(2)
			in[1].workload.inflight.Store(3)
		}, want: []int{0}},
		{desc: "a reported queue longer than in-flight counts (prompts from elsewhere)", n: 2, setup: func(t *testing.T, in []*Instance) {
			in[0].workload.queueDepth.Store(3)
			in[1].workload.inflight.Store(2)
		}, want: []int{1}},
		{desc: "round-robin among ties", n: 3, want: []int{0, 1, 2, 0, 1, 2}},
		{desc: "round-robin only among the least loaded", n: 3, setup: func(t *testing.T, in []*Instance) {
			in[1].workload.queueDepth.Store(4)
		}, want: []int{0, 2, 0, 2}},
		{desc: "excluded instance skipped", n: 2, exclude: []int{0}, want: []int{1, 1}},
		{desc: "unhealthy skipped", n: 3, setup: func(t *testing.T, in []*Instance) {
			in[0].state.healthy.Store(false)
			in[1].workload.queueDepth.Store(9)
		}, want: []int{2, 2, 2}},
		{desc: "open breaker skipped", n: 2, setup: func(t *testing.T, in []*Instance) {
			openBreaker(t, in[0])
		}, want: []int{1, 1}},
		{desc: "draining skipped", n: 2, setup: func(t *testing.T, in []*Instance) {
			in[1].state.draining.Store(true)
		}, want: []int{0, 0}},
		{desc: "suspect only as last resort", n: 2, setup: func(t *testing.T, in []*Instance) {
			in[0].state.suspect.Store(true)
			in[1].workload.queueDepth.Store(5)
		}, want: []int{1, 1}},
		{desc: "suspect chosen when nothing else", n: 2, setup: func(t *testing.T, in []*Instance) {
			in[0].state.suspect.Store(true)
			in[1].state.healthy.Store(false)
		}, want: []int{0}},
		{desc: "all unhealthy", n: 2, setup: func(t *testing.T, in []*Instance) {
			in[0].state.healthy.Store(false)
			in[1].state.healthy.Store(false)
		}, wantNone: true},
		{desc: "all excluded or open", n: 2, exclude: []int{1}, setup: func(t *testing.T, in []*Instance) {
			openBreaker(t, in[0])
		}, wantNone: true},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			p, in := selectPool(t, tc.n)
			if tc.setup != nil {
				tc.setup(t, in)
			}
			var ex []*Instance
			for _, k := range tc.exclude {
				ex = append(ex, in[k])
			}
			if tc.wantNone {
				if got, err := p.Selector().Select(ex...); !errors.Is(err, ErrNoUpstream) {
					t.Fatalf("Select = %v, %v; want ErrNoUpstream", got, err)
				}
				if len(p.Healthy()) > 0 && len(ex) == 0 {
					t.Fatalf("Healthy = %v, want none", p.Healthy())
				}
				return
			}
			for k, w := range tc.want {
				got, err := p.Selector().Select(ex...)
				if err != nil {
					t.Fatalf("Select #%d: %v", k, err)
				}
				if got != in[w] {
					t.Fatalf("Select #%d = %s, want %s", k, got.Name, in[w].Name)
				}
			}
		})
	}
}

func TestSelectSpreadsEvenlyAsWorkGrows(t *testing.T) {
	t.Parallel()
	p, in := selectPool(t, 3)
	counts := map[*Instance]int{}
	for k := 0; k < 30; k++ {
		inst, err := p.Selector().Select()
		if err != nil {
			t.Fatal(err)
		}
		inst.workload.add(1)
		counts[inst]++
	}
	for _, inst := range in {
		if counts[inst] != 10 {
			t.Fatalf("split = %v, want 10 each", counts)
		}
	}
}

func TestHalfOpenIsSelectable(t *testing.T) {
	t.Parallel()
	cfg := coreConfig(testkit.ClosedAddr(t))
	cfg.Breaker.OpenTimeout = time.Minute
	clk := fakeClock()
	p, _ := newClockedPool(t, cfg, false, clk)
	inst := p.Instances()[0]
	inst.state.healthy.Store(true)
	openBreaker(t, inst)
	if _, err := p.Selector().Select(); !errors.Is(err, ErrNoUpstream) {
		t.Fatalf("Select with open breaker = %v, want ErrNoUpstream", err)
	}
	clk.Advance(time.Minute)
	if !inst.transport.breaker.Ready() {
		t.Fatalf("breaker %v once its open timeout passed, want half-open", inst.transport.breaker.State())
	}
	if got, err := p.Selector().Select(); err != nil || got != inst {
		t.Fatalf("Select half-open = %v, %v", got, err)
	}
}

func TestQueueRemainingSumsHealthyInstances(t *testing.T) {
	t.Parallel()
	p, in := selectPool(t, 3)
	in[0].workload.SetQueueDepth(2)
	in[1].workload.SetQueueDepth(3)
	in[2].workload.SetQueueDepth(7)
	in[2].state.healthy.Store(false)
	if got := p.QueueRemaining(); got != 5 {
		t.Fatalf("QueueRemaining = %d, want 5", got)
	}
}

func TestSelectDoesNotAllocate(t *testing.T) {
	p, _ := selectPool(t, 4)
	if n := testing.AllocsPerRun(100, func() { _, _ = p.Selector().Select() }); n != 0 {
		t.Fatalf("Select allocates %v times", n)
	}
}

// TestReserveCountsThePick: a reserved instance counts the prompt at
// once, so reserves one after another spread, prefer is taken while it
// can take work, and a refused prefer falls back to selection.
func TestReserveCountsThePick(t *testing.T) {
	t.Parallel()
	p, in := selectPool(t, 2)
	var got []string
	for range 4 {
		inst, err := p.Reserve(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, inst.Name)
	}
	if got[0] == got[1] || got[2] == got[3] || in[0].workload.inflight.Load() != 2 || in[1].workload.inflight.Load() != 2 {
		t.Fatalf("reserves went to %v, in flight %d/%d; want alternating, 2/2", got, in[0].workload.inflight.Load(), in[1].workload.inflight.Load())
	}
	if inst, err := p.Reserve(in[1], nil); err != nil || inst != in[1] {
		t.Fatalf("Reserve(prefer %s) = %v, %v", in[1].Name, inst, err)
	}
	if inst, err := p.Reserve(in[1], nil, in[1]); err != nil || inst != in[0] {
		t.Fatalf("Reserve(prefer excluded) = %v, %v; want %s", inst, err, in[0].Name)
	}
	in[0].state.healthy.Store(false)
	in[1].state.healthy.Store(false)
	if _, err := p.Reserve(nil, nil); !errors.Is(err, ErrNoUpstream) {
		t.Fatalf("Reserve with none healthy = %v, want ErrNoUpstream", err)
	}
}

func TestReserveDoesNotAllocate(t *testing.T) {
	p, _ := selectPool(t, 4)
	if n := testing.AllocsPerRun(100, func() {
		inst, err := p.Reserve(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		inst.workload.CountInflight(-1)
	}); n != 0 {
		t.Fatalf("Reserve allocates %v times", n)
	}
}

func BenchmarkSelect(b *testing.B) {
	addrs := make([]string, 8)
	for k := range addrs {
		addrs[k] = "127.0.0.1:1"
	}
	p, err := New(coreConfig(addrs...), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	for k, inst := range p.Instances() {
		inst.state.healthy.Store(true)
		inst.workload.queueDepth.Store(int64(k % 3))
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := p.Selector().Select(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
