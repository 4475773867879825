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

func TestOutstanding(t *testing.T) {
	t.Parallel()
	finished := map[string]bool{}
	done := func(id string) bool { return finished[id] }
	o := NewOutstanding(2)
	for i := range 2 {
		if !o.Reserve("a", done) {
			t.Fatalf("a's reservation %d refused", i)
		}
	}
	if o.Reserve("a", done) {
		t.Fatal("a's third allowed while two are reserved")
	}
	if !o.Reserve("b", done) {
		t.Fatal("b refused for a's prompts")
	}
	o.Commit("a", "p1")
	o.Commit("a", "") // not accepted: the slot is free again
	if !o.Reserve("a", done) {
		t.Fatal("a refused after a failed submission freed its slot")
	}
	o.Commit("a", "p2")
	if o.Reserve("a", done) {
		t.Fatal("a allowed a third while p1 and p2 run")
	}
	finished["p1"] = true
	if !o.Reserve("a", done) {
		t.Fatal("a refused after p1 finished")
	}
	if n := o.Held("a"); n != 2 {
		t.Fatalf("a holds %d, want 2", n)
	}
	if !NewOutstanding(0).Reserve("x", done) {
		t.Fatal("no cap refused")
	}
}
