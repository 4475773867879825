package proxy

import (
	"io"
	"slices"

	"github.com/comfygate/comfygate/limits"
	"github.com/valyala/fasthttp"
)

// clientBodies reads the request bodies comfygate must hold whole (a
// prompt, a mask, the small JSON bodies), charging what they hold to the
// bodies budget (limits.max_buffered_body_bytes) until the request ends.
type clientBodies struct {
	budget *limits.BodyBudget // shared with the job API
	edge   *edge              // counts a refusal
}

// readClientBody reads the client's request body whole, whatever its
// framing (Content-Length, chunked), up to limit bytes (errBodyTooLarge
// past it). What it holds is charged to the bodies budget
// (limits.max_buffered_body_bytes, shared with the job API) until the
// request ends: errBodiesBusy when the budget has no room for it.
func (s *clientBodies) readClientBody(ctx *fasthttp.RequestCtx, limit int64) ([]byte, error) {
	cl := ctx.Request.Header.ContentLength()
	if cl > 0 && int64(cl) > limit {
		return nil, errBodyTooLarge
	}
	bs := ctx.RequestBodyStream()
	if bs == nil {
		b := ctx.Request.Body()
		if int64(len(b)) > limit {
			return nil, errBodyTooLarge
		}
		if !s.holdBody(ctx, int64(len(b))) {
			return nil, errBodiesBusy
		}
		return b, nil
	}
	if cl == 0 {
		return nil, nil
	}
	if cl > 0 {
		// Known length: charged whole before any of it is read.
		if !s.holdBody(ctx, int64(cl)) {
			return nil, errBodiesBusy
		}
		b, err := io.ReadAll(io.LimitReader(bs, limit+1))
		if err != nil {
			return nil, err
		}
		if int64(len(b)) > limit {
			return nil, errBodyTooLarge
		}
		return b, nil
	}
	// Unknown length (chunked): charged as it arrives.
	var b []byte
	held := int64(0)
	for {
		if int64(len(b)) == held {
			if !s.holdBody(ctx, bodyStep) {
				return nil, errBodiesBusy
			}
			held += bodyStep
			b = slices.Grow(b, int(bodyStep))
		}
		n, err := bs.Read(b[len(b):min(cap(b), int(held))])
		b = b[:len(b)+n]
		if int64(len(b)) > limit {
			return nil, errBodyTooLarge
		}
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// bodyStep is how much of a body of unknown length is charged to the
// budget at a time.
const bodyStep = 64 << 10

// heldBody gives a request's share of the bodies budget back when the
// request ends (fasthttp closes a request's io.Closer user values).
type heldBody struct{ release []func() }

func (h *heldBody) Close() error {
	for _, r := range h.release {
		r()
	}
	h.release = nil
	return nil
}

// holdBody charges n bytes the request holds in memory to the bodies
// budget until the request ends; false when the budget has no room.
func (s *clientBodies) holdBody(ctx *fasthttp.RequestCtx, n int64) bool {
	release, ok := s.budget.TryAcquire(n)
	if !ok {
		s.edge.refused("buffered_bodies")
		return false
	}
	h, _ := ctx.UserValue(userValueHeldBody).(*heldBody)
	if h == nil {
		h = &heldBody{}
		ctx.SetUserValue(userValueHeldBody, h)
	}
	h.release = append(h.release, release)
	return true
}
