package jobs

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// TestWaitLineTakesTurns: with API keys on, a key that submits a burst of
// jobs does not make another key wait behind all of it: key A's 20 jobs
// and key B's 2 leave the line in turns (A, B, A, B, then A's rest), and
// the places the status reports follow that order. With keys off (one
// key) the line is first come first served.
func TestWaitLineTakesTurns(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc       string
		keyA, keyB string
	}{
		{desc: "keys on", keyA: "key-a", keyB: "key-b"},
		{desc: "keys off", keyA: "", keyB: ""},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, 1, comfysim.Options{Delay: 10 * time.Millisecond, Steps: 1}, func(c *config.Config) {
				c.Jobs.MaxConcurrent = 1
			})
			// The one slot is taken by a job the paused instance holds:
			// everything submitted next waits in comfygate's line.
			h.sims[0].SetPaused(true)
			busy := submitAs(t, h.svc, "key-c", nil)
			testkit.Eventually(t, "the first job to leave the line", func() bool { return jobState(h.svc, busy) != stWaiting })

			var a, b []string
			for range 20 {
				a = append(a, submitAs(t, h.svc, tc.keyA, nil))
			}
			for range 2 {
				b = append(b, submitAs(t, h.svc, tc.keyB, nil))
			}
			want := slices.Concat(a[:1], b[:1], a[1:2], b[1:], a[2:])
			if tc.keyA == tc.keyB {
				want = slices.Concat(a, b)
			}

			for i, id := range want {
				owner := tc.keyA
				if slices.Contains(b, id) {
					owner = tc.keyB
				}
				if _, v := statusAs(t, h.svc, owner, id); v.QueuePosition == nil || *v.QueuePosition != i+1 {
					t.Fatalf("job %d of the expected order: status %+v, want queue_position %d", i+1, v, i+1)
				}
			}
			// Each job's last queued event tells its place: those another
			// key's job went ahead of were told.
			h.svc.eng.jobsMu.Lock()
			for i, id := range want {
				var last eventView
				for _, ev := range h.svc.eng.jobs[id].events {
					if ev.typ == evQueued {
						last = eventView{}
						_ = json.Unmarshal(ev.data, &last)
					}
				}
				if last.QueuePosition == nil || *last.QueuePosition != i+1 {
					h.svc.eng.jobsMu.Unlock()
					t.Fatalf("job %d of the expected order: last queued event %+v, want queue_position %d", i+1, last, i+1)
				}
			}
			h.svc.eng.jobsMu.Unlock()
			l := h.svc.Line(4)
			var head []string
			for _, w := range l.Waiting {
				head = append(head, w.ID)
			}
			if l.WaitingTotal != 22 || !slices.Equal(head, want[:4]) {
				t.Fatalf("Line(4): %d waiting, head %v, want %v", l.WaitingTotal, head, want[:4])
			}

			h.sims[0].SetPaused(false)
			for _, id := range want {
				h.waitStatus(id, 30*time.Second, statusCompleted)
			}
			// The order the jobs left the line in.
			h.svc.eng.jobsMu.Lock()
			got := slices.Clone(want)
			slices.SortFunc(got, func(x, y string) int {
				return cmp.Compare(h.svc.eng.jobs[x].dispatched.UnixNano(), h.svc.eng.jobs[y].dispatched.UnixNano())
			})
			h.svc.eng.jobsMu.Unlock()
			if !slices.Equal(got, want) {
				t.Fatalf("dispatch order\n got %v\nwant %v", names(got, a, b), names(want, a, b))
			}
		})
	}
}

// names spells ids as A1…, B1… for a failure message.
func names(ids, a, b []string) []string {
	var out []string
	for _, id := range ids {
		if i := slices.Index(a, id); i >= 0 {
			out = append(out, fmt.Sprintf("A%d", i+1))
		} else {
			out = append(out, fmt.Sprintf("B%d", slices.Index(b, id)+1))
		}
	}
	return out
}

// TestSharedWaitLineTakesTurns: the replicas' shared line (Redis) takes
// the same turns: a replica with one slot claims key A's first job, then
// key B's first, A's second, B's second and A's rest; every replica
// reports the places in that order.
func TestSharedWaitLineTakesTurns(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	f := newFake(t, 1)
	front := replica(t, f, url, 0, nil) // accepts jobs, claims none
	var a, b []string
	for range 20 {
		a = append(a, submitAs(t, front, "key-a", nil))
	}
	for range 2 {
		b = append(b, submitAs(t, front, "key-b", nil))
	}
	want := slices.Concat(a[:1], b[:1], a[1:2], b[1:], a[2:])
	for i, id := range want {
		owner := "key-a"
		if slices.Contains(b, id) {
			owner = "key-b"
		}
		var v statusView
		testkit.Eventually(t, "the shared line's places", func() bool {
			_, v = statusAs(t, front, owner, id)
			return v.QueuePosition != nil && *v.QueuePosition == i+1
		})
	}

	replica(t, f, url, 1, nil)
	var got []string
	for range want {
		id := f.waitSubmitted()
		got = append(got, id)
		runToEnd(f, id)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("claim order\n got %v\nwant %v", names(got, a, b), names(want, a, b))
	}
}

// BenchmarkWaitLineTurns measures one dispatch and one arrival on a full
// line of 1000 jobs: 500 of one key and 10 each of 50 others. A dispatch
// costs O(keys), not O(jobs). Run: go test -run '^$' -bench WaitLineTurns ./jobs/
func BenchmarkWaitLineTurns(b *testing.B) {
	l := newWaitLine(1000, 0)
	var js []*job
	add := func(owner string) {
		j := &job{meta: jobMeta{owner: owner}}
		js = append(js, j)
		l.push(j)
	}
	for range 500 {
		add("burst")
	}
	for k := range 50 {
		for range 10 {
			add(fmt.Sprintf("key-%d", k))
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		j := l.pop()
		l.done(j)
		l.push(j)
	}
	b.StopTimer()
	if l.len() != len(js) {
		b.Fatalf("%d jobs in line, want %d", l.len(), len(js))
	}
}
