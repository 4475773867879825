package limits

import (
	"sync"
	"sync/atomic"
)

// BodyBudget bounds the bytes of request bodies that handlers hold in
// memory at once, over every request: a handler acquires what it is about
// to buffer and releases it when the buffer is dropped. Acquire never
// waits; a request that does not fit is refused (429) rather than queued,
// so many large bodies at once cost their budget, not their sum.
type BodyBudget struct {
	max  int64
	used atomic.Int64
	peak atomic.Int64
}

// NewBodyBudget returns a budget of max bytes; max <= 0 means no bound.
func NewBodyBudget(max int64) *BodyBudget { return &BodyBudget{max: max} }

// TryAcquire takes n bytes of the budget. It returns the function that
// gives them back (safe to call more than once; only the first call
// counts) and true, or nil and false when n bytes are not free now. A nil
// budget, n <= 0 and a budget without bound always succeed.
func (b *BodyBudget) TryAcquire(n int64) (release func(), ok bool) {
	if b == nil || n <= 0 || b.max <= 0 {
		return func() {}, true
	}
	for {
		used := b.used.Load()
		if used+n > b.max || used+n < used {
			return nil, false
		}
		if b.used.CompareAndSwap(used, used+n) {
			for p := b.peak.Load(); used+n > p && !b.peak.CompareAndSwap(p, used+n); p = b.peak.Load() {
			}
			break
		}
	}
	var once sync.Once
	return func() { once.Do(func() { b.used.Add(-n) }) }, true
}

// InUse is the number of bytes acquired and not yet released.
func (b *BodyBudget) InUse() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}

// Peak is the most bytes held at once since the budget was made (bounded
// budgets only).
func (b *BodyBudget) Peak() int64 {
	if b == nil {
		return 0
	}
	return b.peak.Load()
}

// Max is the budget's bound in bytes (<= 0: none).
func (b *BodyBudget) Max() int64 {
	if b == nil {
		return 0
	}
	return b.max
}
