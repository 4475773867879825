package limits

import (
	"sync"
	"testing"
)

func TestBodyBudget(t *testing.T) {
	t.Parallel()
	b := NewBodyBudget(100)
	r1, ok := b.TryAcquire(60)
	if !ok {
		t.Fatal("60 of 100 refused")
	}
	if _, ok := b.TryAcquire(41); ok {
		t.Fatal("41 more over a budget of 100 (60 held) accepted")
	}
	r2, ok := b.TryAcquire(40)
	if !ok || b.InUse() != 100 {
		t.Fatalf("40 more: ok=%v in use %d, want true 100", ok, b.InUse())
	}
	r1()
	r1() // a second release counts nothing
	if b.InUse() != 40 {
		t.Fatalf("after release: in use %d, want 40", b.InUse())
	}
	r2()
	if b.Peak() != 100 {
		t.Fatalf("peak %d, want 100", b.Peak())
	}
	if b.InUse() != 0 {
		t.Fatalf("after both releases: in use %d, want 0", b.InUse())
	}
	if _, ok := NewBodyBudget(0).TryAcquire(1 << 40); !ok {
		t.Error("a budget of 0 (no bound) refused")
	}
}

// TestBodyBudgetConcurrent: concurrent acquirers never hold more than the
// budget together.
func TestBodyBudgetConcurrent(t *testing.T) {
	t.Parallel()
	b := NewBodyBudget(10)
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := int64(0)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if rel, ok := b.TryAcquire(3); ok {
					mu.Lock()
					peak = max(peak, b.InUse())
					mu.Unlock()
					rel()
				}
			}
		}()
	}
	wg.Wait()
	if peak > 10 || b.InUse() != 0 {
		t.Fatalf("peak %d (budget 10), in use at the end %d", peak, b.InUse())
	}
}
