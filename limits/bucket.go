package limits

import (
	"math"
	"sync"
	"time"
)

// Bucket is a token bucket: Rate tokens a second, at most Burst saved. A
// zero Rate means no limit. The zero Bucket allows everything. Not safe
// for concurrent use; Buckets is.
type Bucket struct {
	Rate  float64
	Burst int

	tokens float64
	last   time.Time
}

// Take takes one token at now. When none is left it reports false and how
// long until one is.
func (b *Bucket) Take(now time.Time) (bool, time.Duration) {
	if b.Rate <= 0 {
		return true, 0
	}
	burst := float64(max(b.Burst, 1))
	if b.last.IsZero() {
		b.tokens, b.last = burst, now
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = math.Min(burst, b.tokens+el.Seconds()*b.Rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / b.Rate * float64(time.Second))
}

// Buckets holds one Bucket per name (an API key's name or a client IP),
// all with the same rate. Buckets untouched for long are forgotten, so a
// flood of client addresses does not grow it without bound.
type Buckets struct {
	rate  float64
	burst int
	now   func() time.Time

	mu      sync.Mutex // guards buckets and swept
	buckets map[string]*Bucket
	swept   time.Time
}

// NewBuckets returns per-name buckets of rate tokens a second and burst
// (at least 1) saved; rate 0 means no limit.
func NewBuckets(rate float64, burst int) *Buckets {
	return &Buckets{rate: rate, burst: burst, now: time.Now, buckets: map[string]*Bucket{}}
}

// Take takes a token from name's bucket; when none is left it reports
// false and how long until one is.
func (bs *Buckets) Take(name string) (bool, time.Duration) {
	if bs == nil || bs.rate <= 0 {
		return true, 0
	}
	now := bs.now()
	bs.mu.Lock()
	defer bs.mu.Unlock()
	bs.sweep(now)
	b := bs.buckets[name]
	if b == nil {
		b = &Bucket{Rate: bs.rate, Burst: bs.burst}
		bs.buckets[name] = b
	}
	return b.Take(now)
}

// sweep forgets full buckets once a minute (a full bucket is the same as
// a new one).
func (bs *Buckets) sweep(now time.Time) {
	if now.Sub(bs.swept) < time.Minute {
		return
	}
	bs.swept = now
	full := time.Duration(float64(max(bs.burst, 1)) / bs.rate * float64(time.Second))
	for k, b := range bs.buckets {
		if now.Sub(b.last) > full {
			delete(bs.buckets, k)
		}
	}
}
