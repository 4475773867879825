package jobs

import (
	"errors"
	"io"

	"github.com/comfygate/comfygate/limits"
	"github.com/valyala/fasthttp"
)

// errBusy is the type of the 429 a request gets when the bodies held in
// memory would go past limits.max_buffered_body_bytes.
const errBusy = "too_many_buffered_bodies"

func budgetError() *apiError {
	return &apiError{status: fasthttp.StatusTooManyRequests, typ: errBusy, retryAfter: 1,
		msg: "comfygate holds as many request bodies in memory as it may (limits.max_buffered_body_bytes); retry after Retry-After"}
}

// bodyMem is what one request holds of its body in memory, charged to the
// service's budget (limits.max_buffered_body_bytes) until release. A nil
// bodyMem charges nothing (parsing outside a service).
type bodyMem struct {
	budget *limits.BodyBudget
	rel    []func()
	held   int64
}

func (s *api) newBodyMem() *bodyMem { return &bodyMem{budget: s.bodies} }

// take charges n more bytes; false when the budget has no room for them.
func (m *bodyMem) take(n int64) bool {
	if m == nil || n <= 0 {
		return true
	}
	rel, ok := m.budget.TryAcquire(n)
	if !ok {
		return false
	}
	m.rel = append(m.rel, rel)
	m.held += n
	return true
}

// release gives back everything charged.
func (m *bodyMem) release() {
	if m == nil {
		return
	}
	for _, r := range m.rel {
		r()
	}
	m.rel, m.held = nil, 0
}

// readAll reads r to its end, at most limit bytes (more: errBodyTooLarge),
// charging the buffer to m as it grows. size, when positive, is the
// expected length (a Content-Length): the buffer is made that large at once.
func (m *bodyMem) readAll(r io.Reader, limit, size int64) ([]byte, error) {
	c := int64(512)
	if size > 0 {
		c = min(size, limit) + 1 // +1: the read that sees the end
	}
	if !m.take(c) {
		return nil, errBodyBudget
	}
	buf := make([]byte, 0, c)
	for {
		if int64(len(buf)) > limit {
			return nil, errBodyTooLarge
		}
		if len(buf) == cap(buf) {
			grow := min(max(int64(cap(buf)), 512), limit+1-int64(cap(buf)))
			if grow <= 0 {
				grow = 1
			}
			if !m.take(grow) {
				return nil, errBodyBudget
			}
			buf = append(make([]byte, 0, int64(cap(buf))+grow), buf...)
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			if int64(len(buf)) > limit {
				return nil, errBodyTooLarge
			}
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// BodyBudget is the bound on request bodies held in memory at once
// (limits.max_buffered_body_bytes) that the job API charges what it reads
// whole to; other handlers that read bodies whole may share it.
func (s *Service) BodyBudget() *limits.BodyBudget { return s.bodies }
