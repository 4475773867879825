package jobs

import (
	"context"
	"fmt"
	"io"

	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// backend is what the Service needs from the instance pool and its prompt
// table. *upstream.Pool and *prompts.Table provide it through poolBackend;
// tests substitute a scripted fake.
type backend interface {
	// Select picks the instance for new work.
	Select(exclude ...*upstream.Instance) (*upstream.Instance, error)
	// Instances returns every instance of the pool.
	Instances() []*upstream.Instance
	// Healthy returns the instances selection may choose.
	Healthy() []*upstream.Instance
	// PinFile records that inst holds ref.
	PinFile(ref prompts.FileRef, inst *upstream.Instance)
	// FileOwner finds the instance that holds ref.
	FileOwner(ctx context.Context, ref prompts.FileRef) (*upstream.Instance, bool)
	// Submit forwards one prompt (the prompt table selects, pins, resubmits on failover).
	Submit(ctx context.Context, req prompts.SubmitRequest) (prompts.SubmitResult, error)
	// Prompt looks a submitted prompt up.
	Prompt(id string) (*prompts.Prompt, bool)
	// Cancel deletes a pending prompt from its instance's queue or
	// interrupts it when running.
	Cancel(ctx context.Context, id string) (bool, error)
	// Call does one request to inst through its breaker.
	Call(ctx context.Context, inst *upstream.Instance, method, path string, header map[string]string, body []byte) (int, []byte, error)
	// Upload streams img (size bytes) into inst's POST /upload/image as
	// ref (overwriting) and checks that the instance stored it under that name.
	Upload(ctx context.Context, inst *upstream.Instance, ref prompts.FileRef, img io.Reader, size int64) error
	// Fetch GETs path from inst through its breaker and streams a 200
	// answer's body into w; other statuses are returned with nothing written.
	Fetch(ctx context.Context, inst *upstream.Instance, path string, w io.Writer) (int, error)
}

// poolBackend adapts *upstream.Pool (selection) and *prompts.Table
// (prompts and files) to backend.
type poolBackend struct {
	*upstream.Pool
	*prompts.Table
}

func (b poolBackend) Select(exclude ...*upstream.Instance) (*upstream.Instance, error) {
	return b.Pool.Selector().Select(exclude...)
}

func (b poolBackend) Call(ctx context.Context, inst *upstream.Instance, method, path string, header map[string]string, body []byte) (int, []byte, error) {
	return inst.Transport().Call(ctx, method, path, header, body)
}

func (b poolBackend) Upload(ctx context.Context, inst *upstream.Instance, ref prompts.FileRef, img io.Reader, size int64) error {
	return uploadImage(ctx, inst, ref, img, size)
}

// Fetch streams the body, so an output of any size costs a copy buffer,
// not its size, in memory. It goes through inst.Do: the instance's
// breaker judges the answer, and COMFYUI_TIMEOUT bounds the instance's
// silence, not the length of a large download. A write error (comfygate's
// own disk) does not count against the instance.
func (b poolBackend) Fetch(ctx context.Context, inst *upstream.Instance, path string, w io.Writer) (int, error) {
	req := fasthttp.AcquireRequest()
	req.SetRequestURI(path)
	a, err := inst.Transport().Do(ctx, req, upstream.DoOpts{})
	if err != nil {
		return 0, fmt.Errorf("get %s: %w", inst.Name, err)
	}
	defer a.Close()
	status := a.StatusCode()
	if status != fasthttp.StatusOK {
		return status, nil
	}
	resp := a.Response()
	var readErr, writeErr error
	if body := resp.BodyStream(); body != nil {
		_, err = io.Copy(writerFunc(func(p []byte) (int, error) {
			n, err := w.Write(p)
			writeErr = err
			return n, err
		}), body)
		if writeErr == nil {
			readErr = err
		}
	} else {
		_, writeErr = w.Write(resp.Body())
	}
	if readErr != nil {
		return 0, fmt.Errorf("read %s: %w", inst.Name, readErr)
	}
	if writeErr != nil {
		return 0, writeErr
	}
	return status, nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
