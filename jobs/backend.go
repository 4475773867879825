package jobs

import (
	"context"

	"github.com/comfygate/comfygate/upstream"
)

// backend is what the Service needs from the instance pool. *upstream.Pool
// provides it through poolBackend; tests substitute a scripted fake.
type backend interface {
	// Select picks the instance for new work.
	Select(exclude ...*upstream.Instance) (*upstream.Instance, error)
	// Healthy returns the instances selection may choose.
	Healthy() []*upstream.Instance
	// PinFile records that inst holds ref.
	PinFile(ref upstream.FileRef, inst *upstream.Instance)
	// FileOwner finds the instance that holds ref.
	FileOwner(ctx context.Context, ref upstream.FileRef) (*upstream.Instance, bool)
	// Submit forwards one prompt (the pool selects, pins, resubmits on failover).
	Submit(ctx context.Context, req upstream.SubmitRequest) (upstream.SubmitResult, error)
	// Prompt looks a submitted prompt up.
	Prompt(id string) (*upstream.Prompt, bool)
	// Cancel deletes a pending prompt from its instance's queue or
	// interrupts it when running.
	Cancel(ctx context.Context, id string) (bool, error)
	// Call does one request to inst through its breaker.
	Call(ctx context.Context, inst *upstream.Instance, method, path string, header map[string]string, body []byte) (int, []byte, error)
}

// poolBackend adapts *upstream.Pool to backend.
type poolBackend struct{ *upstream.Pool }

func (b poolBackend) Call(ctx context.Context, inst *upstream.Instance, method, path string, header map[string]string, body []byte) (int, []byte, error) {
	return inst.Call(ctx, method, path, header, body)
}
