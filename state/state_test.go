package state_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/auth"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/redisproc"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/state"
	"github.com/redis/go-redis/v9"
)

// backend is one implementation under test: replica returns a store as
// another replica of the same fleet would open it (the same one in
// memory, a new client of the same server in Redis), and expire forces a
// key's TTL to end at once (nil in memory).
type backend struct {
	desc    string
	replica func(t *testing.T) *state.Store
	rdb     *redis.Client // nil in memory
}

// backends returns the memory store and a Redis store on a real
// redis-server of the test's own: every test table runs on both.
func backends(t *testing.T) []backend {
	t.Helper()
	mem := state.Memory()
	url := testkit.Redis(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	return []backend{
		{desc: "memory", replica: func(*testing.T) *state.Store { return mem }},
		{desc: "redis", rdb: rdb, replica: func(t *testing.T) *state.Store {
			t.Helper()
			s, err := state.Open(context.Background(), config.State{URL: url})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			return s
		}},
	}
}

func TestOpen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := state.Open(ctx, config.State{})
	if err != nil || s.Shared() || s.Ping(ctx) != nil {
		t.Fatalf("empty url: %v shared=%v", err, s.Shared())
	}
	url := testkit.Redis(t)
	r, err := state.Open(ctx, config.State{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Shared() || r.Ping(ctx) != nil || !strings.HasPrefix(url, "redis://"+r.Addr()) {
		t.Fatalf("redis store: shared=%v addr=%q ping=%v", r.Shared(), r.Addr(), r.Ping(ctx))
	}
	_ = r.Close()
	if r.Ping(ctx) == nil {
		t.Fatal("a closed store answers PING")
	}

	// A server that does not answer stops start-up, naming the key and
	// never the password.
	// The client's own messages go to the logger SetLogger names (this is
	// the only test here that makes the client log).
	var logged syncBuffer
	state.SetLogger(slog.New(slog.NewTextHandler(&logged, nil)))
	dead := deadAddr(t)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = state.Open(short, config.State{URL: "redis://:hunter2secret@" + dead})
	if err == nil || !strings.HasPrefix(err.Error(), "state.url: ") || strings.Contains(err.Error(), "hunter2secret") {
		t.Fatalf("unreachable server: %v", err)
	}
	testkit.Eventually(t, "the client's failed dials in the log", func() bool {
		return strings.Contains(logged.String(), "component=redis") && strings.Contains(logged.String(), dead)
	})
	if strings.Contains(logged.String(), "hunter2secret") {
		t.Fatalf("the log shows the password: %s", logged.String())
	}
}

// syncBuffer is a bytes.Buffer the client's goroutines may write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// deadAddr is a loopback address nothing listens on (a port just freed).
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// TestCallsEndAtTheirDeadline: a call to a Redis that stopped answering
// ends when its context does, not after the client's socket timeout
// (set to a minute here, so the two cannot be mistaken).
func TestCallsEndAtTheirDeadline(t *testing.T) {
	t.Parallel()
	fp := testkit.NewFaultProxy(t, strings.TrimPrefix(testkit.Redis(t), "redis://"))
	s, err := state.Open(context.Background(), config.State{URL: "redis://" + fp.Addr() + "?read_timeout=1m&max_retries=-1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	fp.Hang()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := s.QueueNumbers().Next(ctx, 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a call to a silent Redis succeeded")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a call to a silent Redis outlived its 100 ms context by 30 s")
	}
}

func TestQueueNumbersAreDistinctAcrossReplicas(t *testing.T) {
	t.Parallel()
	for _, b := range backends(t) {
		t.Run(b.desc, func(t *testing.T) {
			const replicas, each = 3, 50
			got := make(chan int64, replicas*each)
			var wg sync.WaitGroup
			for range replicas {
				c := b.replica(t).QueueNumbers()
				wg.Go(func() {
					for range each {
						n, err := c.Next(context.Background(), 0)
						if err != nil {
							t.Error(err)
							return
						}
						got <- n
					}
				})
			}
			wg.Wait()
			close(got)
			seen := map[int64]bool{}
			for n := range got {
				if seen[n] || n < 0 || n >= replicas*each {
					t.Fatalf("number %d twice or out of 0..%d", n, replicas*each-1)
				}
				seen[n] = true
			}
			if len(seen) != replicas*each {
				t.Fatalf("%d numbers, want %d", len(seen), replicas*each)
			}
		})
	}
}

// TestQueueNumbersFloor: a replica's floor (the number after the last it
// saw) moves the counter on; a counter that was lost (a Redis restarted
// empty) goes on after the floor rather than from 0, and a floor below
// the counter changes nothing.
func TestQueueNumbersFloor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, b := range backends(t) {
		t.Run(b.desc, func(t *testing.T) {
			c := b.replica(t).QueueNumbers()
			next := func(floor int64) int64 {
				t.Helper()
				n, err := c.Next(ctx, floor)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			if n := next(0); n != 0 {
				t.Fatalf("first number %d, want 0", n)
			}
			if n := next(10); n != 10 {
				t.Fatalf("with floor 10: %d, want 10", n)
			}
			if n := next(3); n != 11 {
				t.Fatalf("with floor 3 after 10: %d, want 11", n)
			}
			if b.rdb == nil {
				return
			}
			if err := b.rdb.Del(ctx, state.Prefix+"queue_number").Err(); err != nil {
				t.Fatal(err)
			}
			if n := next(12); n != 12 {
				t.Errorf("after the counter was lost, with floor 12: %d, want 12", n)
			}
			if n := next(0); n != 13 {
				t.Errorf("then with floor 0: %d, want 13", n)
			}
		})
	}
}

func TestIdempotency(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, b := range backends(t) {
		t.Run(b.desc, func(t *testing.T) {
			a := b.replica(t).Idempotency(1000, nil)
			other := b.replica(t).Idempotency(1000, nil)
			if b.rdb == nil {
				other = a // one process: one table
			}
			const ttl = time.Hour
			claim := func(i state.Idempotency, key, fp string) (state.IdemEntry, bool) {
				t.Helper()
				e, ok, err := i.Claim(ctx, key, fp, ttl)
				if err != nil {
					t.Fatal(err)
				}
				return e, ok
			}
			if _, ok := claim(a, "owner\x00k1", "fp1"); !ok {
				t.Fatal("a new key was not claimed")
			}
			// While the first request creates its job, another replica sees the reservation.
			if e, ok := claim(other, "owner\x00k1", "fp1"); ok || e != (state.IdemEntry{FP: "fp1"}) {
				t.Fatalf("in progress: %+v claimed=%v", e, ok)
			}
			if err := a.Complete(ctx, "owner\x00k1", "fp1", "job-1"); err != nil {
				t.Fatal(err)
			}
			if e, ok := claim(other, "owner\x00k1", "fp1"); ok || e != (state.IdemEntry{FP: "fp1", JobID: "job-1"}) {
				t.Fatalf("done: %+v claimed=%v", e, ok)
			}
			// Another body with the key: the entry, for the caller's 422.
			if e, ok := claim(other, "owner\x00k1", "fp2"); ok || e.FP != "fp1" {
				t.Fatalf("another body: %+v claimed=%v", e, ok)
			}
			// An abort (or another body's complete) leaves a created job alone.
			_ = other.Abort(ctx, "owner\x00k1", "fp1")
			_ = other.Complete(ctx, "owner\x00k1", "fp2", "job-2")
			if e, _ := claim(a, "owner\x00k1", "fp1"); e.JobID != "job-1" {
				t.Fatalf("after abort: %+v", e)
			}
			// Another owner's same header value is another key.
			if _, ok := claim(a, "other\x00k1", "fp1"); !ok {
				t.Fatal("another owner's key was taken")
			}
			// An aborted reservation may be claimed again.
			claim(a, "owner\x00k2", "fp1")
			if err := a.Abort(ctx, "owner\x00k2", "fp1"); err != nil {
				t.Fatal(err)
			}
			if _, ok := claim(other, "owner\x00k2", "fp1"); !ok {
				t.Fatal("aborted key not claimable")
			}
			// Restore: a restored job's key while its TTL lasts, not after.
			_ = a.Restore(ctx, "owner\x00k3", state.IdemEntry{FP: "fp3", JobID: "job-3"}, time.Now().Add(-time.Minute), ttl)
			_ = a.Restore(ctx, "owner\x00k4", state.IdemEntry{FP: "fp4", JobID: "job-4"}, time.Now().Add(-2*ttl), ttl)
			if e, ok := claim(other, "owner\x00k3", "fp3"); ok || e.JobID != "job-3" {
				t.Fatalf("restored: %+v claimed=%v", e, ok)
			}
			if _, ok := claim(other, "owner\x00k4", "fp4"); !ok {
				t.Fatal("a restored key past its TTL is remembered")
			}
			// The TTL ends a key.
			if _, ok, _ := a.Claim(ctx, "owner\x00short", "fp", 50*time.Millisecond); !ok {
				t.Fatal("short key not claimed")
			}
			if b.rdb != nil {
				assertTTL(t, b.rdb, "idem:", ttl)
			}
			testkit.EventuallyWithin(t, 5*time.Second, "the key's TTL to end", func() bool {
				_, ok, err := other.Claim(ctx, "owner\x00short", "fp", time.Hour)
				return err == nil && ok
			})
		})
	}
}

// assertTTL checks that every key under Prefix+prefix has a TTL of at most max.
func assertTTL(t *testing.T, rdb *redis.Client, prefix string, max time.Duration) {
	t.Helper()
	keys, err := rdb.Keys(context.Background(), state.Prefix+prefix+"*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("keys under %s: %v %v", prefix, keys, err)
	}
	for _, k := range keys {
		d, err := rdb.PTTL(context.Background(), k).Result()
		if err != nil || d <= 0 || d > max {
			t.Fatalf("%s: TTL %v (%v), want 0 < TTL ≤ %v", k, d, err, max)
		}
	}
}

func TestMemoryIdempotencyIsBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	now := time.Unix(1_700_000_000, 0)
	m := state.NewMemoryIdempotency(10, func() time.Time { return now })
	for i := range 10 {
		key := fmt.Sprint(i)
		m.Claim(ctx, key, "fp", time.Hour)
		_ = m.Complete(ctx, key, "fp", "job")
		now = now.Add(time.Second)
	}
	if _, ok, _ := m.Claim(ctx, "new", "fp", time.Hour); !ok || m.Len() > 10 {
		t.Fatalf("full table: claimed=%v, %d keys", ok, m.Len())
	}
	// The oldest went, the newest stayed.
	if _, ok, _ := m.Claim(ctx, "0", "fp", time.Hour); !ok {
		t.Fatal("the oldest key is still remembered")
	}
	if e, ok, _ := m.Claim(ctx, "9", "fp", time.Hour); ok || e.JobID != "job" {
		t.Fatal("the newest key was forgotten")
	}
	now = now.Add(2 * time.Hour)
	m.Sweep()
	if m.Len() != 0 {
		t.Fatalf("%d keys after their TTL", m.Len())
	}
}

func TestClientOwners(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, b := range backends(t) {
		t.Run(b.desc, func(t *testing.T) {
			local := auth.NewOwners(100)
			a := b.replica(t).ClientOwners(local)
			other := b.replica(t).ClientOwners(local) // in Redis, another replica's own table
			if b.rdb != nil {
				other = b.replica(t).ClientOwners(auth.NewOwners(100))
			}
			claim := func(o state.ClientOwners, id, key string) bool {
				t.Helper()
				ok, err := o.ClaimClient(ctx, id, key)
				if err != nil {
					t.Fatal(err)
				}
				return ok
			}
			// The first claim, the same key claiming again, and on another replica.
			for i, o := range []state.ClientOwners{a, a, other} {
				if !claim(o, "c1", "alice") {
					t.Fatalf("claim %d: alice cannot use her clientId", i)
				}
			}
			if claim(other, "c1", "bob") || claim(a, "c1", "bob") {
				t.Fatal("bob took alice's clientId")
			}
			if !claim(other, "c2", "bob") || claim(a, "c2", "alice") {
				t.Fatal("bob's own clientId")
			}
			if b.rdb != nil {
				assertTTL(t, b.rdb, "client:", state.ClientTTL)
				if k, _ := b.rdb.Keys(ctx, state.Prefix+"client:*").Result(); strings.Contains(strings.Join(k, " "), "c1") {
					t.Fatalf("a clientId in a key name: %v", k)
				}
				// Once the key's TTL ends the clientId is free again.
				keys, _ := b.rdb.Keys(ctx, state.Prefix+"client:*").Result()
				for _, k := range keys {
					b.rdb.PExpire(ctx, k, time.Millisecond)
				}
				testkit.EventuallyWithin(t, 5*time.Second, "the clientId's TTL to end", func() bool {
					ok, err := other.ClaimClient(ctx, "c1", "bob")
					return err == nil && ok
				})
			}
		})
	}
}

func TestLeases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, b := range backends(t) {
		t.Run(b.desc, func(t *testing.T) {
			la, lb := b.replica(t).Leases(), b.replica(t).Leases()
			const inst = "127.0.0.1:8188" // a default instance name, colon and all
			t1, ok, err := la.Acquire(ctx, inst, "replica-a", time.Hour)
			if err != nil || !ok || t1 <= 0 {
				t.Fatalf("acquire: %d %v %v", t1, ok, err)
			}
			if _, ok, _ := lb.Acquire(ctx, inst, "replica-b", time.Hour); ok {
				t.Fatal("two replicas hold one lease")
			}
			if again, ok, _ := la.Acquire(ctx, inst, "replica-a", time.Hour); !ok || again != t1 {
				t.Fatalf("the holder acquiring again: %d %v, want %d", again, ok, t1)
			}
			if err := la.WriteFenced(ctx, inst, t1, "prompts", []byte("a1"), time.Hour); err != nil {
				t.Fatal(err)
			}
			if ok, _ := la.Renew(ctx, inst, "replica-a", t1, time.Hour); !ok {
				t.Fatal("the holder cannot renew")
			}
			if ok, _ := lb.Renew(ctx, inst, "replica-b", t1, time.Hour); ok {
				t.Fatal("another replica renewed the lease")
			}
			_ = lb.Release(ctx, inst, "replica-b", t1) // not its own: nothing
			if _, ok, _ := lb.Acquire(ctx, inst, "replica-b", time.Hour); ok {
				t.Fatal("another replica's release ended the lease")
			}
			if err := la.Release(ctx, inst, "replica-a", t1); err != nil {
				t.Fatal(err)
			}
			t2, ok, _ := lb.Acquire(ctx, inst, "replica-b", time.Hour)
			if !ok || t2 <= t1 {
				t.Fatalf("after release: %d %v, want a token above %d", t2, ok, t1)
			}
			// Replica a lost the lease: its token is stale everywhere.
			if err := la.WriteFenced(ctx, inst, t1, "prompts", []byte("a2"), time.Hour); !errors.Is(err, state.ErrStaleToken) {
				t.Fatalf("stale write: %v", err)
			}
			if ok, _ := la.Renew(ctx, inst, "replica-a", t1, time.Hour); ok {
				t.Fatal("a stale holder renewed")
			}
			if err := lb.WriteFenced(ctx, inst, t2, "prompts", []byte("b1"), time.Hour); err != nil {
				t.Fatal(err)
			}
			if v, ok, _ := la.ReadFenced(ctx, inst, "prompts"); !ok || string(v) != "b1" {
				t.Fatalf("read: %q %v", v, ok)
			}
			// Another instance's lease is another lease.
			if _, ok, _ := la.Acquire(ctx, "127.0.0.1:8189", "replica-a", time.Hour); !ok {
				t.Fatal("another instance's lease")
			}
			if b.rdb != nil {
				assertTTL(t, b.rdb, "lease:", time.Hour)
				assertTTL(t, b.rdb, "fenced:", time.Hour)
			}
		})
	}
}

// TestLostLeaseIsRefused: a lease not renewed in time ends; another
// replica takes the instance with a greater token, and the old holder's
// renewals and writes are refused, atomically with the check.
func TestLostLeaseIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, b := range backends(t) {
		t.Run(b.desc, func(t *testing.T) {
			la, lb := b.replica(t).Leases(), b.replica(t).Leases()
			const inst = "gpu0"
			t1, ok, _ := la.Acquire(ctx, inst, "replica-a", 100*time.Millisecond)
			if !ok {
				t.Fatal("acquire")
			}
			if err := la.WriteFenced(ctx, inst, t1, "state", []byte("a"), time.Hour); err != nil {
				t.Fatal(err)
			}
			var t2 int64
			testkit.EventuallyWithin(t, 5*time.Second, "the lease to expire and replica b to take it", func() bool {
				var err error
				t2, ok, err = lb.Acquire(ctx, inst, "replica-b", time.Hour)
				return err == nil && ok
			})
			if t2 <= t1 {
				t.Fatalf("token %d after %d", t2, t1)
			}
			if ok, _ := la.Renew(ctx, inst, "replica-a", t1, time.Hour); ok {
				t.Fatal("the lost lease was renewed")
			}
			if err := la.WriteFenced(ctx, inst, t1, "state", []byte("stale"), time.Hour); !errors.Is(err, state.ErrStaleToken) {
				t.Fatalf("stale write: %v", err)
			}
			if v, _, _ := lb.ReadFenced(ctx, inst, "state"); string(v) != "a" {
				t.Fatalf("value %q, want the last write made under a held lease", v)
			}
			if b.rdb == nil {
				return
			}
			// Forced expiry of b's lease (PEXPIRE): with no holder, even the
			// last token is refused, and a is refused once b took it back.
			b.rdb.PExpire(ctx, state.Prefix+"lease:{"+inst+"}", time.Millisecond)
			testkit.EventuallyWithin(t, 5*time.Second, "the forced expiry", func() bool {
				return errors.Is(lb.WriteFenced(ctx, inst, t2, "state", []byte("b"), time.Hour), state.ErrStaleToken)
			})
			t3, ok, _ := la.Acquire(ctx, inst, "replica-a", time.Hour)
			if !ok || t3 <= t2 {
				t.Fatalf("reacquire: %d %v after %d", t3, ok, t2)
			}
			if err := lb.WriteFenced(ctx, inst, t2, "state", []byte("b"), time.Hour); !errors.Is(err, state.ErrStaleToken) {
				t.Fatalf("b's stale write: %v", err)
			}
		})
	}
}

// TestOneHolderUnderContention: replicas racing for one lease get one
// holder between them.
func TestOneHolderUnderContention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, b := range backends(t) {
		t.Run(b.desc, func(t *testing.T) {
			const n = 8
			var mu sync.Mutex
			winners := 0
			var wg sync.WaitGroup
			for i := range n {
				l := b.replica(t).Leases()
				wg.Go(func() {
					_, ok, err := l.Acquire(ctx, "contended", fmt.Sprintf("replica-%d", i), time.Hour)
					if err != nil {
						t.Error(err)
					}
					if ok {
						mu.Lock()
						winners++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if winners != 1 {
				t.Fatalf("%d replicas hold the lease, want 1", winners)
			}
		})
	}
}

// TestJobLine: the job API's shared wait line keeps its order and bounds,
// gives each job to one replica at a time, refuses writes of a replica
// whose claim is gone, routes a cancel to the holder through the record,
// and gives a job whose claim ran out to the next replica that claims.
func TestJobLine(t *testing.T) {
	t.Parallel()
	for _, b := range backends(t) {
		t.Run(b.desc, func(t *testing.T) {
			ctx := context.Background()
			r1, r2 := b.replica(t).Jobs(), b.replica(t).Jobs()
			ids := []string{"00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002", "00000000-0000-4000-8000-000000000003"}
			queued := [2][]byte{[]byte(`{"t":"queued","d":{"queue_position":`), []byte(`}}`)}
			for i, id := range ids {
				err := r1.Add(ctx, state.JobAdd{ID: id, Static: []byte(`{"n":` + fmt.Sprint(i) + `}`), Live: []byte(`{}`),
					Queued: queued, Images: [][]byte{[]byte("img-" + id)}, MaxWaiting: 3})
				if err != nil {
					t.Fatalf("add %s: %v", id, err)
				}
			}
			if err := r2.Add(ctx, state.JobAdd{ID: "00000000-0000-4000-8000-000000000009", Static: []byte(`{}`), MaxWaiting: 3}); !errors.Is(err, state.ErrLineFull) {
				t.Fatalf("a fourth job in a line of 3: %v", err)
			}
			recs, err := r2.Read(ctx, []string{ids[1], "00000000-0000-4000-8000-00000000000f"}, []int{0, 0})
			if err != nil || recs[0] == nil || recs[1] != nil {
				t.Fatalf("read: %v %v", recs, err)
			}
			if r := recs[0]; r.State != state.JobWaiting || r.Position != 2 || len(r.Events) != 1 || string(r.Events[0]) != `{"t":"queued","d":{"queue_position":2}}` {
				t.Fatalf("second job: %+v events %q", r, r.Events)
			}

			const lease = 300 * time.Millisecond
			got, err := r1.Claim(ctx, "r1", 1, lease)
			if err != nil || len(got) != 1 || got[0].ID != ids[0] || got[0].Holder != "r1" || string(got[0].Images[0]) != "img-"+ids[0] || len(got[0].Events) != 1 {
				t.Fatalf("claim of the head: %+v %v", got, err)
			}
			if lost, err := r2.Write(ctx, "r2", []state.JobWrite{{ID: ids[0], State: "running", Live: []byte(`{}`), TTL: time.Hour}}); err != nil || len(lost) != 1 {
				t.Fatalf("a write by a replica that holds no claim: lost %v, %v", lost, err)
			}
			ev := []byte(`{"t":"started"}`)
			if lost, err := r1.Write(ctx, "r1", []state.JobWrite{{ID: ids[0], State: "running", Live: []byte(`{"progress":5}`), From: 1, Events: [][]byte{ev}, TTL: time.Hour}}); err != nil || len(lost) != 0 {
				t.Fatalf("the holder's write: lost %v, %v", lost, err)
			}
			// Written again (a retry): the log does not grow twice.
			if _, err := r1.Write(ctx, "r1", []state.JobWrite{{ID: ids[0], State: "running", Live: []byte(`{"progress":5}`), From: 1, Events: [][]byte{ev}, TTL: time.Hour}}); err != nil {
				t.Fatal(err)
			}
			recs, _ = r2.Read(ctx, []string{ids[0]}, []int{1})
			if r := recs[0]; r.State != "running" || string(r.Live) != `{"progress":5}` || len(r.Events) != 1 || string(r.Events[0]) != string(ev) || r.Position != 0 {
				t.Fatalf("the claimed job read back: %+v", r)
			}

			if _, ok, err := r2.Take(ctx, ids[2], "r2", time.Hour); !ok || err != nil {
				t.Fatalf("take of a waiting job: %v %v", ok, err)
			}
			if _, ok, _ := r1.Take(ctx, ids[2], "r1", time.Hour); ok {
				t.Fatal("a job taken twice")
			}
			if ok, err := r1.AskCancel(ctx, ids[2]); !ok || err != nil {
				t.Fatalf("ask cancel: %v %v", ok, err)
			}
			if held, err := r2.Renew(ctx, "r2", []string{ids[2], ids[0]}, time.Hour); err != nil || len(held) != 1 || !held[ids[2]] {
				t.Fatalf("renew by the holder: %v %v", held, err)
			}
			if _, ok, _ := r2.Take(ctx, ids[1], "r2", time.Hour); !ok {
				t.Fatal("take of the last waiting job")
			}

			// r1 renews nothing: once its lease ran out, its job is r2's.
			testkit.EventuallyWithin(t, 5*time.Second, "r1's claim to run out and r2 to take the job", func() bool {
				got, err := r2.Claim(ctx, "r2", 5, time.Hour)
				return err == nil && len(got) == 1 && got[0].ID == ids[0] && got[0].State == "running" && len(got[0].Events) == 2
			})
			if lost, _ := r1.Write(ctx, "r1", []state.JobWrite{{ID: ids[0], State: "failed", Live: []byte(`{}`), TTL: time.Hour}}); len(lost) != 1 {
				t.Fatal("the old holder wrote after its claim passed on")
			}
			if held, _ := r1.Renew(ctx, "r1", []string{ids[0]}, time.Hour); len(held) != 0 {
				t.Fatalf("the old holder renewed: %v", held)
			}
			if lost, _ := r2.Write(ctx, "r2", []state.JobWrite{{ID: ids[0], State: state.JobCompleted, Live: []byte(`{}`), TTL: time.Minute}}); len(lost) != 0 {
				t.Fatal("the new holder's write refused")
			}
			if held, _ := r2.Renew(ctx, "r2", []string{ids[0]}, time.Hour); len(held) != 0 {
				t.Fatalf("an ended job's claim renewed: %v", held)
			}
			if ok, _ := r1.AskCancel(ctx, ids[0]); ok {
				t.Fatal("a cancel asked of an ended job")
			}
			if got, _ := r1.Claim(ctx, "r1", 5, lease); len(got) != 0 {
				t.Fatalf("claimed from an empty line: %+v", got)
			}
			// A replica that shuts down releases its claims: the next
			// claim takes the job at once, whatever its lease said.
			if err := r1.Release(ctx, "r1", []string{ids[2]}); err != nil {
				t.Fatal(err)
			}
			if got, _ := r1.Claim(ctx, "r1", 5, time.Hour); len(got) != 0 {
				t.Fatalf("another replica's claim released: %+v", got)
			}
			if err := r2.Release(ctx, "r2", []string{ids[2]}); err != nil {
				t.Fatal(err)
			}
			if got, err := r1.Claim(ctx, "r1", 5, time.Hour); err != nil || len(got) != 1 || got[0].ID != ids[2] || !got[0].Cancel {
				t.Fatalf("claim after a release: %+v %v", got, err)
			}
			// A job made without the line is its maker's, with no lease.
			made := "00000000-0000-4000-8000-00000000000a"
			if err := r1.Create(ctx, made, "r1", []byte(`{}`), state.JobSummary{}); err != nil {
				t.Fatal(err)
			}
			if got, _ := r2.Claim(ctx, "r2", 5, lease); len(got) != 0 {
				t.Fatalf("a made job claimed: %+v", got)
			}
			if lost, err := r2.Write(ctx, "r2", []state.JobWrite{{ID: made, State: state.JobCompleted, Live: []byte(`{}`), TTL: time.Minute}}); err != nil || len(lost) != 1 {
				t.Fatalf("another replica wrote a made job: %v %v", lost, err)
			}
			if lost, err := r1.Write(ctx, "r1", []state.JobWrite{{ID: made, State: state.JobCompleted, Live: []byte(`{}`), TTL: time.Minute}}); err != nil || len(lost) != 0 {
				t.Fatalf("its maker's write: %v %v", lost, err)
			}
			if b.rdb != nil {
				if ttl, err := b.rdb.PTTL(ctx, state.Prefix+"{jobs}:job:"+ids[0]).Result(); err != nil || ttl <= 0 || ttl > time.Minute {
					t.Fatalf("an ended job's record TTL %v (%v), want at most the retention written", ttl, err)
				}
				if n, _ := b.rdb.Exists(ctx, state.Prefix+"{jobs}:job:"+ids[0]+":img:1").Result(); n != 0 {
					t.Fatal("an ended job's image kept")
				}
				if v, _ := b.rdb.Get(ctx, state.Prefix+"{jobs}:line_bytes").Int(); v != 0 {
					t.Fatalf("line_bytes %d with the line empty", v)
				}
			}
		})
	}
}

// TestOpenRefusesACluster: a state.url naming a node of a Redis Cluster
// stops start-up with what comfygate needs instead (its scripts touch keys
// of several slots, which a Cluster refuses at the first adoption).
func TestOpenRefusesACluster(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv, err := redisproc.Start(context.Background(), redisproc.Options{Bin: testkit.RedisServerBin(t), Dir: dir,
		Args: []string{"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Kill)
	_, err = state.Open(context.Background(), config.State{URL: srv.URL()})
	if err == nil || !strings.Contains(err.Error(), "Redis Cluster") || !strings.HasPrefix(err.Error(), "state.url: ") {
		t.Fatalf("a cluster node: %v, want an error naming state.url and the Cluster", err)
	}
}
