package limits

import (
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	b := Bucket{Rate: 2, Burst: 3}
	for i := range 3 {
		if ok, _ := b.Take(t0); !ok {
			t.Fatalf("take %d of the burst refused", i)
		}
	}
	ok, wait := b.Take(t0)
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("over the burst: %v %v, want refused with 500ms", ok, wait)
	}
	if ok, _ := b.Take(t0.Add(500 * time.Millisecond)); !ok {
		t.Fatal("a token after 1/rate refused")
	}
	if ok, _ := (&Bucket{}).Take(t0); !ok {
		t.Fatal("a zero bucket refused")
	}
}

func TestBucketsPerName(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	bs := NewBuckets(1, 1)
	bs.now = func() time.Time { return now }
	if ok, _ := bs.Take("a"); !ok {
		t.Fatal("a's first refused")
	}
	if ok, _ := bs.Take("a"); ok {
		t.Fatal("a's second allowed")
	}
	if ok, _ := bs.Take("b"); !ok {
		t.Fatal("b refused for a's use")
	}
	now = now.Add(2 * time.Minute)
	bs.Take("c")
	if len(bs.buckets) != 1 {
		t.Fatalf("%d buckets after a sweep, want 1", len(bs.buckets))
	}
}
