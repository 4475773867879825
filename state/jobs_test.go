package state_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/comfygate/comfygate/state"
	"github.com/redis/go-redis/v9"
)

// TestJobLineTakesTurns: the shared wait line serves the API keys round
// robin, each key's jobs in their order; a key whose first job joins
// waits for the keys already in turn; the place Add writes in the queued
// event and the place Read reports are the order Claim takes; a job taken
// out of turn (Take) moves its key's next one up; the bound counts every
// key's jobs.
func TestJobLineTakesTurns(t *testing.T) {
	t.Parallel()
	for _, b := range backends(t) {
		t.Run(b.desc, func(t *testing.T) {
			ctx := context.Background()
			r1, r2 := b.replica(t).Jobs(), b.replica(t).Jobs()
			queued := [2][]byte{[]byte(`{"queue_position":`), []byte(`}`)}
			n := 0
			add := func(key string) string {
				t.Helper()
				n++
				id := fmt.Sprintf("00000000-0000-4000-8000-%012d", n)
				if err := r1.Add(ctx, state.JobAdd{ID: id, JobSummary: state.JobSummary{Key: key}, Static: []byte(`{}`), Queued: queued, MaxWaiting: 8}); err != nil {
					t.Fatalf("add %s for %q: %v", id, key, err)
				}
				return id
			}
			// places reads the places of ids and checks they are 1, 2, ...
			// in the order given.
			places := func(when string, ids ...string) {
				t.Helper()
				recs, err := r2.Read(ctx, ids, make([]int, len(ids)))
				if err != nil {
					t.Fatal(err)
				}
				for i, r := range recs {
					if r == nil || r.Position != i+1 {
						t.Fatalf("%s: job %d of the expected order %+v, want place %d", when, i+1, r, i+1)
					}
				}
				// The line's head, whole and cut, starts in that order too
				// (ids may leave out jobs without a key's turn, which
				// come last).
				for _, n := range []int{len(ids) + 1, 2} {
					l, err := r2.Line(ctx, n)
					if err != nil {
						t.Fatal(err)
					}
					var head []string
					for _, j := range l.Waiting {
						head = append(head, j.ID)
					}
					if want := ids[:min(n, len(ids))]; l.WaitingTotal < len(ids) || len(head) < len(want) || fmt.Sprint(head[:len(want)]) != fmt.Sprint(want) {
						t.Fatalf("%s: the line's first %d: %v of %d, want %v of %d", when, n, head, l.WaitingTotal, want, len(ids))
					}
				}
			}
			firstPlace := func(id string) string {
				t.Helper()
				recs, err := r2.Read(ctx, []string{id}, []int{0})
				if err != nil || recs[0] == nil || len(recs[0].Events) != 1 {
					t.Fatalf("read %s: %+v %v", id, recs, err)
				}
				return string(recs[0].Events[0])
			}
			claim := func(n int, want ...string) {
				t.Helper()
				got, err := r1.Claim(ctx, "r1", n, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				var ids []string
				for _, g := range got {
					ids = append(ids, g.ID)
				}
				if fmt.Sprint(ids) != fmt.Sprint(want) {
					t.Fatalf("claimed %v, want %v", ids, want)
				}
			}

			a1, a2, a3, a4 := add("a"), add("a"), add("a"), add("a")
			b1, b2 := add("b"), add("b")
			c1 := add("c")
			for id, want := range map[string]string{a4: `{"queue_position":4}`, b1: `{"queue_position":2}`, b2: `{"queue_position":4}`, c1: `{"queue_position":3}`} {
				if got := firstPlace(id); got != want {
					t.Errorf("queued event of %s: %s, want %s", id, got, want)
				}
			}
			places("three keys", a1, b1, c1, a2, b2, a3, a4)
			if err := r2.Add(ctx, state.JobAdd{ID: "00000000-0000-4000-8000-0000000000ff", JobSummary: state.JobSummary{Key: "e"}, Static: []byte(`{}`), MaxWaiting: 7}); !errors.Is(err, state.ErrLineFull) {
				t.Fatalf("an eighth job, of another key, in a line of 7: %v", err)
			}

			if _, ok, err := r2.Take(ctx, b1, "r2", time.Hour); !ok || err != nil {
				t.Fatalf("take %s: %v %v", b1, ok, err)
			}
			places("b's first taken", a1, b2, c1, a2, a3, a4)
			claim(1, a1)
			// a had its turn: d, new, comes after it.
			d1 := add("d")
			places("d joined", b2, c1, a2, d1, a3, a4)
			claim(3, b2, c1, a2)
			places("a and d left", d1, a3, a4)
			claim(5, d1, a3, a4)
			claim(5)

			// One key: first come first served.
			x1, x2, x3 := add(""), add(""), add("")
			places("one key", x1, x2, x3)
			claim(2, x1, x2)
			claim(2, x3)
			if b.rdb != nil {
				// A job in line without an API key's turn (as a version
				// without turns added it) goes when no key has one waiting.
				old := "00000000-0000-4000-8000-0000000000aa"
				if err := b.rdb.HSet(ctx, state.Prefix+"{jobs}:job:"+old, "s", "{}", "st", state.JobWaiting, "n", 0).Err(); err != nil {
					t.Fatal(err)
				}
				b.rdb.ZAdd(ctx, state.Prefix+"{jobs}:line", redis.Z{Score: 0, Member: old})
				y1 := add("y")
				places("a job without a turn", y1)
				if l, err := r2.Line(ctx, 5); err != nil || l.WaitingTotal != 2 || len(l.Waiting) != 2 || l.Waiting[1].ID != old {
					t.Fatalf("the line with a job without a turn: %+v %v, want it second", l, err)
				}
				claim(5, y1, old)
				for _, k := range []string{"ring", "line_keys", "line", "kline:a", "kline:"} {
					if n, err := b.rdb.Exists(ctx, state.Prefix+"{jobs}:"+k).Result(); err != nil || n != 0 {
						t.Errorf("%s left with the line empty: %d %v", k, n, err)
					}
				}
			}
		})
	}
}

// TestJobList: every replica lists the fleet's jobs, waiting, held or
// made without the line, oldest first, with what the list shows of each;
// a key lists only its own; the limit keeps the newest; a job whose
// record expired leaves the list.
func TestJobList(t *testing.T) {
	t.Parallel()
	for _, b := range backends(t) {
		t.Run(b.desc, func(t *testing.T) {
			ctx := context.Background()
			r1, r2 := b.replica(t).Jobs(), b.replica(t).Jobs()
			t0 := time.Now().Truncate(time.Millisecond)
			ids := []string{"00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002", "00000000-0000-4000-8000-000000000003"}
			for i, key := range []string{"a", "b"} {
				sum := state.JobSummary{Key: key, Workflow: "wf-" + key, Created: t0.Add(time.Duration(i) * time.Millisecond)}
				if err := r1.Add(ctx, state.JobAdd{ID: ids[i], JobSummary: sum, Static: []byte(`{}`), Live: []byte(`{}`), MaxWaiting: 8}); err != nil {
					t.Fatal(err)
				}
			}
			if err := r2.Create(ctx, ids[2], "r2", []byte(`{}`), state.JobSummary{Key: "a", Workflow: "cached", Created: t0.Add(2 * time.Millisecond)}); err != nil {
				t.Fatal(err)
			}
			got, err := r1.Claim(ctx, "r1", 1, time.Hour)
			if err != nil || len(got) != 1 || got[0].ID != ids[0] {
				t.Fatalf("claim: %+v %v", got, err)
			}
			if lost, err := r1.Write(ctx, "r1", []state.JobWrite{{ID: ids[0], State: "running", Live: []byte(`{"progress":40}`), TTL: time.Hour}}); err != nil || len(lost) != 0 {
				t.Fatalf("write: %v %v", lost, err)
			}
			list := func(key string, limit int) string {
				t.Helper()
				jobs, err := r2.List(ctx, key, limit)
				if err != nil {
					t.Fatal(err)
				}
				var s []string
				for _, j := range jobs {
					s = append(s, fmt.Sprintf("%s %s %s %s %s +%v", j.ID[len(j.ID)-1:], j.Key, j.Workflow, j.State, j.Live, j.Created.Sub(t0)))
				}
				return fmt.Sprint(s)
			}
			if got, want := list("", 10), "[1 a wf-a running {\"progress\":40} +0s 2 b wf-b waiting {} +1ms 3 a cached submitting  +2ms]"; got != want {
				t.Fatalf("the fleet's list:\n got %s\nwant %s", got, want)
			}
			if got, want := list("a", 10), "[1 a wf-a running {\"progress\":40} +0s 3 a cached submitting  +2ms]"; got != want {
				t.Fatalf("key a's list:\n got %s\nwant %s", got, want)
			}
			if got, want := list("", 2), "[2 b wf-b waiting {} +1ms 3 a cached submitting  +2ms]"; got != want {
				t.Fatalf("the newest two:\n got %s\nwant %s", got, want)
			}
			if got := list("c", 10); got != "[]" {
				t.Fatalf("a key without jobs lists %s", got)
			}
			l, err := r2.Line(ctx, 10)
			if err != nil || l.WaitingTotal != 1 || len(l.Waiting) != 1 || l.Waiting[0].ID != ids[1] || l.Waiting[0].Workflow != "wf-b" ||
				l.HeldTotal != 1 || len(l.Held) != 1 || l.Held[0].ID != ids[0] || l.Held[0].State != "running" {
				t.Fatalf("the line: %+v %v, want %s waiting and %s held", l, err, ids[1], ids[0])
			}
			if l, err := r2.Line(ctx, 0); err != nil || l.WaitingTotal != 1 || l.HeldTotal != 1 || len(l.Waiting)+len(l.Held) != 0 {
				t.Fatalf("the line's totals alone: %+v %v", l, err)
			}
			// Ended with a retention of 1 ms: gone from the list, and in
			// Redis from the sorted sets too.
			if _, err := r1.Write(ctx, "r1", []state.JobWrite{{ID: ids[0], State: state.JobCompleted, Live: []byte(`{}`), TTL: time.Millisecond}}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			if got, want := list("a", 10), "[3 a cached submitting  +2ms]"; got != want {
				t.Fatalf("key a's list after its first job expired:\n got %s\nwant %s", got, want)
			}
			if b.rdb != nil {
				if n, _ := b.rdb.ZScore(ctx, state.Prefix+"{jobs}:list:a", ids[0]).Result(); n != 0 {
					t.Fatal("an expired job kept in its key's list")
				}
			}
		})
	}
}
