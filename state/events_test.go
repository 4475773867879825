package state_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/state"
	"github.com/redis/go-redis/v9"
)

// recorder is a Follower that keeps what it gets.
type recorder struct {
	mu     sync.Mutex
	events []state.Event
	caught bool
	start  state.Position
}

func (r *recorder) Event(ev state.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) CaughtUp(start state.Position) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.caught, r.start = true, start
}

func (r *recorder) payloads() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.events))
	for i, ev := range r.events {
		out[i] = string(ev.Payload)
	}
	return out
}

func (r *recorder) last() state.Position {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) == 0 {
		return state.Position{}
	}
	return r.events[len(r.events)-1].Pos
}

func (r *recorder) caughtUp() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.caught
}

func openRedis(t *testing.T, url string) *state.Store {
	t.Helper()
	s, err := state.Open(context.Background(), config.State{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func wantPayloads(t *testing.T, r *recorder, want ...string) {
	t.Helper()
	ok := testkit.Poll(testkit.WaitBound, func() bool { return len(r.payloads()) >= len(want) })
	got := r.payloads()
	if !ok || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %q, want %q", got, want)
	}
}

// TestEventsBetweenReplicas: what one store publishes for a clientId
// reaches another store following it (catch-up of what was published
// before, then live), each once and in order; a follower on a third
// store after a Leave starts where the first left; with the stream lost,
// it gets only what came after.
func TestEventsBetweenReplicas(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	opts := state.EventOptions{Window: 30 * time.Second, MaxLen: 100}
	a, b, c := openRedis(t, url).Events(opts), openRedis(t, url).Events(opts), openRedis(t, url).Events(opts)

	a.Publish("cid", []byte("e1"))
	a.Publish("cid", []byte("e2"))
	onB := &recorder{}
	// The publishes went in before the follow on another store: wait for
	// them to be in the stream (the catch-up reads it).
	opt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	testkit.Eventually(t, "two entries in the stream", func() bool {
		keys, _ := rdb.Keys(context.Background(), state.Prefix+"events:*").Result()
		for _, k := range keys {
			if n, _ := rdb.XLen(context.Background(), k).Result(); n == 2 {
				return true
			}
		}
		return false
	})
	if err := b.Follow("cid", onB); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "catch-up on B", onB.caughtUp)
	wantPayloads(t, onB, "e1", "e2")
	a.Publish("cid", []byte("e3"))
	a.Publish("other", []byte("not-for-cid"))
	wantPayloads(t, onB, "e1", "e2", "e3")

	// B's socket wrote up to e2 (e3 was its leftover from the stream):
	// C starts after e2.
	onB.mu.Lock()
	seen := onB.events[1].Pos
	onB.mu.Unlock()
	select {
	case err := <-b.Leave("cid", seen, [][]byte{[]byte("left-on-b")}):
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testkit.WaitBound):
		t.Fatal("Leave did not finish")
	}
	a.Publish("cid", []byte("e4"))
	onC := &recorder{}
	if err := c.Follow("cid", onC); err != nil {
		t.Fatal(err)
	}
	wantPayloads(t, onC, "e3", "left-on-b", "e4")
	testkit.Eventually(t, "catch-up on C", onC.caughtUp)
	if onC.start != seen {
		t.Errorf("C's catch-up started at %v, want %v", onC.start, seen)
	}
	if n := len(onB.payloads()); n != 3 {
		t.Errorf("B got %d events after it left: %q", n, onB.payloads())
	}
	for _, k := range mustKeys(t, rdb) {
		d, err := rdb.PTTL(context.Background(), k).Result()
		if err != nil || d <= 0 || d > 30*time.Second {
			t.Errorf("%s: TTL %v (%v), want 0 < TTL ≤ 30s", k, d, err)
		}
	}

	// The stream is lost: C leaves at e4, and its next follower gets
	// nothing from before, only what was published since.
	<-c.Leave("cid", onC.last(), nil)
	if err := rdb.Del(context.Background(), mustKeys(t, rdb)...).Err(); err != nil {
		t.Fatal(err)
	}
	<-b.Leave("cid", onC.last(), nil) // the position of the lost stream
	a.Publish("cid", []byte("e5"))
	onB2 := &recorder{}
	if err := b.Follow("cid", onB2); err != nil {
		t.Fatal(err)
	}
	wantPayloads(t, onB2, "e5")
}

func mustKeys(t *testing.T, rdb *redis.Client) []string {
	t.Helper()
	keys, err := rdb.Keys(context.Background(), state.Prefix+"events:*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("events keys: %v %v", keys, err)
	}
	return keys
}

// TestEventsInMemoryDoNothing: one replica has nobody to tell.
func TestEventsInMemoryDoNothing(t *testing.T) {
	ev := state.Memory().Events(state.EventOptions{})
	if ev.Publish("cid", []byte("x")) {
		t.Error("Publish in memory reported success")
	}
	if ev.Follow("cid", &recorder{}) == nil {
		t.Error("Follow in memory did not fail")
	}
	if err := <-ev.Leave("cid", state.Position{}, nil); err != nil {
		t.Error(err)
	}
}

// TestFollowWhilePublishing: a follow that starts while another store
// publishes gets the whole stream, from its catch-up then live, with no
// gap and no event twice.
func TestFollowWhilePublishing(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	opts := state.EventOptions{Window: 30 * time.Second, MaxLen: 1 << 20}
	a, b := openRedis(t, url).Events(opts), openRedis(t, url).Events(opts)
	r := &recorder{}
	published := make(chan int, 1)
	go func() {
		// Until the follower has had events, then 500 more: the follow
		// starts, catches up and goes live while events keep coming.
		i, more := 0, -1
		for more != 0 && i < 1<<20 {
			for !a.Publish("busy", fmt.Appendf(nil, "%d", i)) { // a full queue: wait for it
				time.Sleep(time.Millisecond)
			}
			i++
			switch {
			case more > 0:
				more--
			case more < 0 && len(r.payloads()) > 0:
				more = 500
			}
		}
		published <- i
	}()
	opt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	testkit.Eventually(t, "events in the stream", func() bool { return len(keysOrNone(rdb)) > 0 })
	if err := b.Follow("busy", r); err != nil {
		t.Fatal(err)
	}
	var n int
	select {
	case n = <-published:
	case <-time.After(testkit.WaitBound):
		t.Fatal("the publisher did not end")
	}
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprint(i)
	}
	wantPayloads(t, r, want...)
}

func keysOrNone(rdb *redis.Client) []string {
	keys, _ := rdb.Keys(context.Background(), state.Prefix+"events:*").Result()
	return keys
}
