package prompts

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/ready"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/upstream"
)

// coreConfig is testkit.DrivenConfig.
func coreConfig(addrs ...string) *config.Config { return testkit.DrivenConfig(addrs...) }

// testPool is a pool with its prompt table attached, as main wires them.
// The table's methods that tests call on the pool are forwarded to it.
type testPool struct {
	*upstream.Pool
	prompts *Table
	cfg     *config.Config
}

// startPool builds a pool and its prompt table with testkit.Start (the
// table reporting to l, if not nil; Start waits for a ready fleet if
// wait); opts says what runs.
func startPool(t testing.TB, opts testkit.GatewayOptions, l Listener, wait bool) *testPool {
	t.Helper()
	w := testkit.Wiring[*upstream.Pool, *Table, testkit.NoPart, testkit.NoPart]{
		Pool: upstream.New,
		Prompts: func(p *upstream.Pool, cfg *config.Config, m *metrics.Metrics, log *slog.Logger) *Table {
			table := New(p, cfg, m, log)
			if l != nil {
				table.SetListener(l)
			}
			return table
		},
	}
	if wait {
		w.Instances = ready.States
	}
	gw := testkit.Start(t, opts, w)
	return &testPool{Pool: gw.Pool(), prompts: gw.Prompts(), cfg: gw.Config}
}

// newTestPool builds a pool and its prompt table, closed at cleanup;
// nothing runs until Start.
func newTestPool(t testing.TB, cfg *config.Config, m *metrics.Metrics, log *slog.Logger) *testPool {
	t.Helper()
	return startPool(t, testkit.GatewayOptions{Base: cfg, Metrics: func() *metrics.Metrics { return m }, Logger: log, Idle: true}, nil, false)
}

func (p *testPool) Submit(ctx context.Context, req SubmitRequest) (SubmitResult, error) {
	return p.prompts.Submit(ctx, req)
}
func (p *testPool) Prompt(id string) (*Prompt, bool) { return p.prompts.Prompt(id) }
func (p *testPool) PromptByUpstreamID(inst *upstream.Instance, id string) (*Prompt, bool) {
	return p.prompts.PromptByUpstreamID(inst, id)
}
func (p *testPool) Outstanding() int { return p.prompts.Outstanding() }
func (p *testPool) LocatePrompt(ctx context.Context, id string) (*upstream.Instance, error) {
	return p.prompts.LocatePrompt(ctx, id)
}
func (p *testPool) Cancel(ctx context.Context, id string) (bool, error) {
	return p.prompts.Cancel(ctx, id)
}
func (p *testPool) PinFile(ref FileRef, inst *upstream.Instance) { p.prompts.PinFile(ref, inst) }
func (p *testPool) FileChanged(ref FileRef, holder *upstream.Instance) {
	p.prompts.FileChanged(ref, holder)
}
func (p *testPool) FileOwner(ctx context.Context, ref FileRef) (*upstream.Instance, bool) {
	return p.prompts.FileOwner(ctx, ref)
}
func (p *testPool) EnsureInputs(ctx context.Context, inst *upstream.Instance, prompt json.RawMessage) error {
	return p.prompts.EnsureInputs(ctx, inst, prompt)
}
func (p *testPool) SetListener(l Listener) { p.prompts.SetListener(l) }

// Start starts the pool, then its table, as main does.
func (p *testPool) Start(ctx context.Context) error {
	if err := p.Pool.Start(ctx); err != nil {
		return err
	}
	p.prompts.Start(ctx)
	return nil
}

// Close closes the pool, then its table, as main does.
func (p *testPool) Close() {
	p.Pool.Close()
	p.prompts.Close()
}

// newCorePool builds and (if start) starts a pool, closed at cleanup.
func newCorePool(t testing.TB, cfg *config.Config, start bool) *testPool {
	t.Helper()
	return startPool(t, testkit.GatewayOptions{Base: cfg, Logger: slog.New(slog.DiscardHandler), Idle: !start}, nil, false)
}

// selectPool returns a pool (not started) of n instances that nothing
// listens on, all marked healthy.
func selectPool(t *testing.T, n int) (*testPool, []*upstream.Instance) {
	t.Helper()
	addrs := make([]string, n)
	for k := range addrs {
		addrs[k] = testkit.ClosedAddr(t)
	}
	p := newCorePool(t, coreConfig(addrs...), false)
	insts := p.Instances()
	for _, inst := range insts {
		inst.State().ForceHealthy(true)
	}
	return p, insts
}
