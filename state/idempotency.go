package state

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// IdemEntry is what an Idempotency-Key is remembered with: the
// fingerprint of the request that first came with it and the job that
// request created ("" while it is still creating it).
type IdemEntry struct {
	FP    string
	JobID string
}

// Idempotency remembers the job API's Idempotency-Keys for a TTL counted
// from the first request. Keys are opaque to it (the job API makes each
// of an owner and the header's value); a fingerprint must not hold "\n".
type Idempotency interface {
	// Claim reserves key for a request with fingerprint fp for ttl, and
	// reports claimed. When the key is already remembered it reserves
	// nothing and returns its entry: the caller compares the fingerprint
	// and the job id.
	Claim(ctx context.Context, key, fp string, ttl time.Duration) (e IdemEntry, claimed bool, err error)
	// Complete records the job a reservation of key with fp created.
	Complete(ctx context.Context, key, fp, jobID string) error
	// Abort frees a reservation of key with fp that created no job, so
	// that a retry may claim it.
	Abort(ctx context.Context, key, fp string) error
	// Restore remembers key again with e (a job restored at start), for
	// what is left of ttl since created; a key already remembered stays.
	Restore(ctx context.Context, key string, e IdemEntry, created time.Time, ttl time.Duration) error
}

// Idempotency returns the store's Idempotency-Keys. In memory each call
// makes a table of its own, bounded at maxKeys keys and reading the time
// from now (nil: time.Now); in Redis every call shares the server's keys.
func (s *Store) Idempotency(maxKeys int, now func() time.Time) Idempotency {
	if s.rdb != nil {
		return &redisIdempotency{rdb: s.rdb}
	}
	return NewMemoryIdempotency(maxKeys, now)
}

// MemoryIdempotency is Idempotency in this process's memory, bounded at
// max keys: past it the expired go, and then the oldest tenth of those
// that created their job.
type MemoryIdempotency struct {
	max int
	now func() time.Time

	mu   sync.Mutex // guards keys
	keys map[string]*memIdem
}

type memIdem struct {
	e       IdemEntry
	expires time.Time
}

// NewMemoryIdempotency returns an empty table of at most max keys that
// reads the time from now (nil: time.Now).
func NewMemoryIdempotency(max int, now func() time.Time) *MemoryIdempotency {
	if now == nil {
		now = time.Now
	}
	return &MemoryIdempotency{max: max, now: now, keys: map[string]*memIdem{}}
}

func (m *MemoryIdempotency) Claim(_ context.Context, key, fp string, ttl time.Duration) (IdemEntry, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if e := m.keys[key]; e != nil && now.Before(e.expires) {
		return e.e, false, nil
	}
	if len(m.keys) >= m.max {
		m.expireLocked(now, true)
	}
	m.keys[key] = &memIdem{e: IdemEntry{FP: fp}, expires: now.Add(ttl)}
	return IdemEntry{FP: fp}, true, nil
}

func (m *MemoryIdempotency) Complete(_ context.Context, key, fp, jobID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.keys[key]; e != nil && e.e.FP == fp && e.e.JobID == "" {
		e.e.JobID = jobID
	}
	return nil
}

func (m *MemoryIdempotency) Abort(_ context.Context, key, fp string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.keys[key]; e != nil && e.e.FP == fp && e.e.JobID == "" {
		delete(m.keys, key)
	}
	return nil
}

func (m *MemoryIdempotency) Restore(_ context.Context, key string, e IdemEntry, created time.Time, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	expires := created.Add(ttl)
	if !m.now().Before(expires) {
		return nil
	}
	if old := m.keys[key]; old != nil && m.now().Before(old.expires) {
		return nil
	}
	m.keys[key] = &memIdem{e: e, expires: expires}
	return nil
}

// Sweep forgets the expired keys. Redis expires its own; in memory the
// job API's expiry loop calls it.
func (m *MemoryIdempotency) Sweep() {
	m.mu.Lock()
	m.expireLocked(m.now(), false)
	m.mu.Unlock()
}

// Len is how many keys the table holds, expired ones included.
func (m *MemoryIdempotency) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.keys)
}

// expireLocked forgets the expired keys; with full set, also the oldest
// tenth of those that created their job when the table is still full.
func (m *MemoryIdempotency) expireLocked(now time.Time, full bool) {
	for k, e := range m.keys {
		if !now.Before(e.expires) {
			delete(m.keys, k)
		}
	}
	if !full || len(m.keys) < m.max {
		return
	}
	keys := slices.SortedFunc(maps.Keys(m.keys), func(a, b string) int { return m.keys[a].expires.Compare(m.keys[b].expires) })
	for _, k := range keys[:len(keys)/10+1] {
		if m.keys[k].e.JobID != "" {
			delete(m.keys, k)
		}
	}
}

// redisIdempotency is Idempotency in Redis: one key per Idempotency-Key,
// Prefix+"idem:"+sha256(key), holding "<fingerprint>\n<job id>" with the
// TTL (SET NX PX); Complete keeps the TTL.
type redisIdempotency struct{ rdb *redis.Client }

func idemValue(e IdemEntry) string { return e.FP + "\n" + e.JobID }

func (r *redisIdempotency) Claim(ctx context.Context, key, fp string, ttl time.Duration) (IdemEntry, bool, error) {
	k := hashed("idem:", key)
	// SET NX then GET: a key that expires between the two is claimed on
	// the next round; two rounds settle any such race but a pathological one.
	for range 3 {
		ok, err := r.rdb.SetNX(ctx, k, idemValue(IdemEntry{FP: fp}), ttl).Result()
		if err != nil {
			return IdemEntry{}, false, errRedis("claim idempotency key", err)
		}
		if ok {
			return IdemEntry{FP: fp}, true, nil
		}
		v, err := r.rdb.Get(ctx, k).Result()
		if err == redis.Nil {
			continue
		}
		if err != nil {
			return IdemEntry{}, false, errRedis("read idempotency key", err)
		}
		fpOld, job, _ := strings.Cut(v, "\n")
		return IdemEntry{FP: fpOld, JobID: job}, false, nil
	}
	return IdemEntry{}, false, errRedis("claim idempotency key", errChurn)
}

// completeIdem sets a reservation's job id, keeping its TTL, only while
// the key still holds that reservation.
var completeIdem = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0`)

// abortIdem deletes a reservation only while the key still holds it.
var abortIdem = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

func (r *redisIdempotency) Complete(ctx context.Context, key, fp, jobID string) error {
	err := completeIdem.Run(ctx, r.rdb, []string{hashed("idem:", key)}, idemValue(IdemEntry{FP: fp}), idemValue(IdemEntry{FP: fp, JobID: jobID})).Err()
	return errRedis("complete idempotency key", err)
}

func (r *redisIdempotency) Abort(ctx context.Context, key, fp string) error {
	err := abortIdem.Run(ctx, r.rdb, []string{hashed("idem:", key)}, idemValue(IdemEntry{FP: fp})).Err()
	return errRedis("abort idempotency key", err)
}

func (r *redisIdempotency) Restore(ctx context.Context, key string, e IdemEntry, created time.Time, ttl time.Duration) error {
	left := time.Until(created.Add(ttl))
	if left <= 0 {
		return nil
	}
	return errRedis("restore idempotency key", r.rdb.SetNX(ctx, hashed("idem:", key), idemValue(e), left).Err())
}
