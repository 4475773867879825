package prompts

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
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

// newTestPool builds a pool and its prompt table; nothing runs until Start.
func newTestPool(cfg *config.Config, m *metrics.Metrics, log *slog.Logger) (*testPool, error) {
	p, err := upstream.New(cfg, m, log)
	if err != nil {
		return nil, err
	}
	return &testPool{Pool: p, prompts: New(p, cfg, m, log), cfg: cfg}, nil
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
	p, err := newTestPool(cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	if start {
		if err := p.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return p
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
		inst.ForceHealthy(true)
	}
	return p, insts
}
