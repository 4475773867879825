package lifecycle

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit"
)

func effs(es ...Effect) []Effect { return es }

func TestStepTable(t *testing.T) {
	t.Parallel()
	clk := testkit.NewFakeClock(time.Date(2026, 12, 2, 17, 0, 0, 0, time.UTC))
	t0 := clk.Now()
	clk.Advance(time.Second)
	t1 := clk.Now()
	queuedAtA := State{Phase: Queued, Instance: "a", UpstreamID: "u1", Attempts: 1, Accepted: true, AcceptedAt: t0}
	runningAtA := queuedAtA
	runningAtA.Phase, runningAtA.StartedAt = Running, t0
	sendingToA := State{Phase: Sending, Instance: "a", UpstreamID: "u1", Attempts: 1, Posting: true}
	unconfirmedAtA := sendingToA
	unconfirmedAtA.Phase, unconfirmedAtA.Posting = Unconfirmed, false
	movingFromA := queuedAtA
	movingFromA.Phase, movingFromA.Resume = Moving, Queued
	leftA := movingFromA
	leftA.UpstreamID, leftA.Resume = "", 0

	tests := []struct {
		desc string
		s    State
		e    Event
		want State
		effs []Effect
		ok   bool
	}{
		{desc: "first send: counted", s: State{}, e: Event{Kind: Send, Instance: "a", UpstreamID: "u1", At: t0},
			want: sendingToA, effs: effs(Effect{Kind: CountIn, Instance: "a"}), ok: true},
		{desc: "answered: queued, first acceptance", s: sendingToA, e: Event{Kind: Answered, At: t0},
			want: queuedAtA, effs: effs(Effect{Kind: Accept, Instance: "a"}), ok: true},
		{desc: "answered with the id an old instance gave", s: State{Phase: Sending, Instance: "a", Attempts: 1, Posting: true},
			e:    Event{Kind: Answered, UpstreamID: "u9", At: t0},
			want: State{Phase: Queued, Instance: "a", UpstreamID: "u9", Attempts: 1, Accepted: true, AcceptedAt: t0},
			effs: effs(Effect{Kind: Accept, Instance: "a"}), ok: true},
		{desc: "no answer: unconfirmed", s: sendingToA, e: Event{Kind: NoAnswer, At: t1}, want: unconfirmedAtA, ok: true},
		{desc: "unconfirmed, then seen: queued", s: unconfirmedAtA, e: Event{Kind: Seen, At: t1},
			want: State{Phase: Queued, Instance: "a", UpstreamID: "u1", Attempts: 1, Accepted: true, AcceptedAt: t1},
			effs: effs(Effect{Kind: Accept, Instance: "a"}), ok: true},
		{desc: "refused first submission is uncounted and forgotten", s: sendingToA, e: Event{Kind: Refused, NotSent: true},
			want: State{Phase: Submitted, Instance: "a"}, effs: effs(Effect{Kind: CountOut, Instance: "a"}, Effect{Kind: Forget}), ok: true},
		{desc: "refused resubmission stays moving", s: State{Phase: Sending, Instance: "b", UpstreamID: "u1", Attempts: 2, Accepted: true, Posting: true},
			e:    Event{Kind: Refused, Resubmit: true},
			want: State{Phase: Moving, Instance: "b", Attempts: 2, Accepted: true},
			effs: effs(Effect{Kind: CountOut, Instance: "b"}, Effect{Kind: Unpin, Instance: "b", UpstreamID: "u1"}), ok: true},
		{desc: "adopted queued: a note of where it is, uncounted", s: State{}, e: Event{Kind: Adopt, Instance: "a", UpstreamID: "u7", Found: Queued, At: t0},
			want: State{Phase: Queued, Instance: "a", UpstreamID: "u7", Adopted: true, Accepted: true, AcceptedAt: t0}, ok: true},
		{desc: "adopted running", s: State{}, e: Event{Kind: Adopt, Instance: "a", UpstreamID: "u7", Found: Running, At: t0},
			want: State{Phase: Running, Instance: "a", UpstreamID: "u7", Adopted: true, Accepted: true, AcceptedAt: t0, StartedAt: t0}, ok: true},
		{desc: "adopted from history: ended, nothing recorded", s: State{}, e: Event{Kind: Adopt, Instance: "a", UpstreamID: "u7", Found: Ended, At: t0},
			want: State{Phase: Ended, Instance: "a", UpstreamID: "u7", Adopted: true, Accepted: true, AcceptedAt: t0, Outcome: OutcomeSuccess, DoneAt: t0}, ok: true},
		{desc: "a prompt comfygate sent is not adopted", s: sendingToA, e: Event{Kind: Adopt, Instance: "a", UpstreamID: "u1", Found: Queued, At: t0},
			want: sendingToA, ok: false},
		{desc: "adopted in no phase it can be found in", s: State{}, e: Event{Kind: Adopt, Instance: "a", UpstreamID: "u7", Found: Moving, At: t0},
			want: State{}, ok: false},
		{desc: "a move's delete got no answer: it stays, marked", s: movingFromA, e: Event{Kind: MoveAbort, DeleteSent: true},
			want: func() State { s := queuedAtA; s.DeleteSent = true; return s }(), ok: true},
		{desc: "leaving clears the mark of the instance it leaves", s: func() State { s := movingFromA; s.DeleteSent = true; return s }(),
			e: Event{Kind: Leave}, want: leftA, effs: effs(Effect{Kind: CountOut, Instance: "a"}, Effect{Kind: Unpin, Instance: "a", UpstreamID: "u1"}), ok: true},
		{desc: "started", s: queuedAtA, e: Event{Kind: Started, At: t0}, want: runningAtA, ok: true},
		{desc: "started before the answer: accepted and running", s: sendingToA, e: Event{Kind: Started, At: t0},
			want: func() State { s := runningAtA; s.Posting = true; return s }(), effs: effs(Effect{Kind: Accept, Instance: "a"}), ok: true},
		{desc: "finished: uncounted and recorded", s: runningAtA, e: Event{Kind: Finish, Outcome: OutcomeSuccess, At: t1},
			want: func() State { s := runningAtA; s.Phase, s.Outcome, s.DoneAt = Finished, OutcomeSuccess, t1; return s }(),
			effs: effs(Effect{Kind: CountOut, Instance: "a"}, Effect{Kind: Record, Instance: "a", Outcome: OutcomeSuccess}), ok: true},
		{desc: "a second finish does nothing", s: State{Phase: Finished, Instance: "a", Outcome: OutcomeSuccess},
			e: Event{Kind: Finish, Outcome: OutcomeError}, want: State{Phase: Finished, Instance: "a", Outcome: OutcomeSuccess}},
		{desc: "the live ending ends it", s: State{Phase: Finished, Instance: "a"}, e: Event{Kind: End},
			want: State{Phase: Ended, Instance: "a"}, ok: true},
		{desc: "a late answer of a finished prompt counts nothing", s: State{Phase: Ended, Instance: "a", Accepted: true, Posting: true},
			e: Event{Kind: Answered, At: t1}, want: State{Phase: Ended, Instance: "a", Accepted: true}, ok: true},
		{desc: "its events came, then the POST broke: it leaves, tombstoned",
			s: func() State { s := runningAtA; s.Posting = true; return s }(), e: Event{Kind: Refused},
			want: State{Phase: Submitted, Instance: "a", Attempts: 1, Accepted: true, AcceptedAt: t0},
			effs: effs(Effect{Kind: CountOut, Instance: "a"}, Effect{Kind: Tombstone, Instance: "a", UpstreamID: "u1"}, Effect{Kind: Forget}), ok: true},
		{desc: "it ran, then the POST broke: nothing changes",
			s: State{Phase: Finished, Instance: "a", UpstreamID: "u1", Attempts: 1, Accepted: true, Posting: true}, e: Event{Kind: Refused},
			want: State{Phase: Finished, Instance: "a", UpstreamID: "u1", Attempts: 1, Accepted: true}, ok: true},
		{desc: "an answer to an earlier send is stale", s: sendingToA, e: Event{Kind: Answered, Attempt: 3}, want: sendingToA},
		{desc: "no answer after its events came: stays queued", s: func() State { s := queuedAtA; s.Posting = true; return s }(),
			e: Event{Kind: NoAnswer}, want: queuedAtA, ok: true},
		{desc: "events came first: no failover until the POST is settled",
			s: func() State { s := queuedAtA; s.Posting = true; return s }(), e: Event{Kind: MoveBegin, Instance: "a"},
			want: func() State { s := queuedAtA; s.Posting = true; return s }()},
		{desc: "ran before its answer: accepted", s: sendingToA, e: Event{Kind: Finish, Outcome: OutcomeSuccess, At: t1},
			want: func() State {
				s := sendingToA
				s.Phase, s.Outcome, s.DoneAt, s.Accepted = Finished, OutcomeSuccess, t1, true
				return s
			}(), effs: effs(Effect{Kind: CountOut, Instance: "a"}, Effect{Kind: Accept, Instance: "a"}, Effect{Kind: Record, Instance: "a", Outcome: OutcomeSuccess}), ok: true},
		{desc: "lost: closed with a synthesized end", s: runningAtA, e: Event{Kind: Close, Outcome: OutcomeLost, At: t1},
			want: func() State { s := runningAtA; s.Phase, s.Outcome, s.DoneAt = Ended, OutcomeLost, t1; return s }(),
			effs: effs(Effect{Kind: CountOut, Instance: "a"}, Effect{Kind: Record, Instance: "a", Outcome: OutcomeLost}), ok: true},
		{desc: "failover takes a queued prompt", s: queuedAtA, e: Event{Kind: MoveBegin, Instance: "a"}, want: movingFromA, ok: true},
		{desc: "failover of another instance's prompt is refused", s: queuedAtA, e: Event{Kind: MoveBegin, Instance: "b"}, want: queuedAtA},
		{desc: "no failover while its POST is under way", s: sendingToA, e: Event{Kind: MoveBegin, Instance: "a"}, want: sendingToA},
		{desc: "no second failover", s: movingFromA, e: Event{Kind: MoveBegin, Instance: "a"}, want: movingFromA},
		{desc: "a done prompt never moves", s: State{Phase: Finished, Instance: "a"}, e: Event{Kind: MoveBegin, Instance: "a"},
			want: State{Phase: Finished, Instance: "a"}},
		{desc: "an adopted prompt never moves", s: State{Phase: Queued, Instance: "a", Adopted: true}, e: Event{Kind: MoveBegin, Instance: "a"},
			want: State{Phase: Queued, Instance: "a", Adopted: true}},
		{desc: "failover finds it still there", s: movingFromA, e: Event{Kind: MoveAbort}, want: queuedAtA, ok: true},
		{desc: "leaving a hung instance: uncounted, unpinned, tombstoned", s: movingFromA, e: Event{Kind: Leave, Tombstone: true},
			want: leftA, effs: effs(Effect{Kind: CountOut, Instance: "a"}, Effect{Kind: Unpin, Instance: "a", UpstreamID: "u1"},
				Effect{Kind: Tombstone, Instance: "a", UpstreamID: "u1"}), ok: true},
		{desc: "leaving a restarted instance that lost it: no tombstone", s: movingFromA, e: Event{Kind: Leave},
			want: leftA, effs: effs(Effect{Kind: CountOut, Instance: "a"}, Effect{Kind: Unpin, Instance: "a", UpstreamID: "u1"}), ok: true},
		{desc: "a prompt that left cannot come back by abort", s: leftA, e: Event{Kind: MoveAbort}, want: leftA},
		{desc: "resubmitted", s: leftA, e: Event{Kind: Send, Instance: "b", UpstreamID: "u1", At: t1},
			want: State{Phase: Sending, Instance: "b", UpstreamID: "u1", Attempts: 2, Accepted: true, AcceptedAt: t0, Posting: true},
			effs: effs(Effect{Kind: CountIn, Instance: "b"}), ok: true},
		{desc: "reclaimed by the instance it left: finished there", s: leftA, e: Event{Kind: Reclaim, Instance: "z", UpstreamID: "u0", At: t1},
			want: func() State {
				s := leftA
				s.Phase, s.Outcome, s.DoneAt, s.Instance, s.UpstreamID = Finished, OutcomeSuccess, t1, "z", "u0"
				return s
			}(), effs: effs(Effect{Kind: Record, Instance: "z", Outcome: OutcomeSuccess}), ok: true},
		{desc: "no reclaim before it left", s: movingFromA, e: Event{Kind: Reclaim, Instance: "z", UpstreamID: "u0"}, want: movingFromA},
		{desc: "no reclaim of a queued prompt", s: queuedAtA, e: Event{Kind: Reclaim, Instance: "z", UpstreamID: "u0"}, want: queuedAtA},
		{desc: "unanswered first submission never found is dropped and tombstoned", s: unconfirmedAtA, e: Event{Kind: Drop, At: t1},
			want: func() State { s := unconfirmedAtA; s.Phase, s.DoneAt = Dropped, t1; return s }(),
			effs: effs(Effect{Kind: CountOut, Instance: "a"}, Effect{Kind: Tombstone, Instance: "a", UpstreamID: "u1"}, Effect{Kind: Forget}), ok: true},
		{desc: "numbered after its first acceptance", s: queuedAtA, e: Event{Kind: Numbered, Number: 7},
			want: func() State { s := queuedAtA; s.Numbered, s.Number = true, 7; return s }(), ok: true},
		{desc: "numbered once: a moved prompt keeps its number",
			s: func() State { s := leftA; s.Numbered, s.Number = true, 7; return s }(), e: Event{Kind: Numbered, Number: 9},
			want: func() State { s := leftA; s.Numbered, s.Number = true, 7; return s }()},
		{desc: "numbered once sent, before its answer", s: sendingToA, e: Event{Kind: Numbered, Number: 7},
			want: func() State { s := sendingToA; s.Numbered, s.Number = true, 7; return s }(), ok: true},
		{desc: "not numbered before it is sent", s: State{}, e: Event{Kind: Numbered, Number: 7}, want: State{}},
		{desc: "an adopted prompt takes no number", s: State{Phase: Queued, Instance: "a", Adopted: true, Accepted: true},
			e: Event{Kind: Numbered, Number: 7}, want: State{Phase: Queued, Instance: "a", Adopted: true, Accepted: true}},
		{desc: "held while running: its resume phase is running", s: runningAtA, e: Event{Kind: MoveBegin, Instance: "a"},
			want: func() State { s := runningAtA; s.Phase, s.Resume = Moving, Running; return s }(), ok: true},
		{desc: "a held running prompt goes back to running",
			s: func() State { s := runningAtA; s.Phase, s.Resume = Moving, Running; return s }(), e: Event{Kind: MoveAbort}, want: runningAtA, ok: true},
		{desc: "a held prompt that finishes forgets where it would resume", s: movingFromA, e: Event{Kind: Finish, Outcome: OutcomeSuccess, At: t1},
			want: func() State { s := queuedAtA; s.Phase, s.Outcome, s.DoneAt = Finished, OutcomeSuccess, t1; return s }(),
			effs: effs(Effect{Kind: CountOut, Instance: "a"}, Effect{Kind: Record, Instance: "a", Outcome: OutcomeSuccess}), ok: true},
		{desc: "held by a failover, not sent before it left", s: movingFromA, e: Event{Kind: Send, Instance: "b", UpstreamID: "u2"}, want: movingFromA},
		{desc: "no second send while one is posting", s: sendingToA, e: Event{Kind: Send, Instance: "b", UpstreamID: "u2"}, want: sendingToA},
		{desc: "an answer with no send under way is stale", s: queuedAtA, e: Event{Kind: Answered, UpstreamID: "u5"}, want: queuedAtA},
		{desc: "an accepted prompt is moved, not dropped", s: func() State { s := unconfirmedAtA; s.Accepted = true; return s }(),
			e: Event{Kind: Drop}, want: func() State { s := unconfirmedAtA; s.Accepted = true; return s }()},
		{desc: "taken over running: as recorded, counted", s: State{}, e: Event{Kind: TakeOver, Recorded: &runningAtA},
			want: runningAtA, effs: effs(Effect{Kind: CountIn, Instance: "a"}), ok: true},
		{desc: "taken over while its POST was under way: unconfirmed, accepted", s: State{}, e: Event{Kind: TakeOver, Recorded: &sendingToA},
			want: func() State { s := unconfirmedAtA; s.Accepted = true; return s }(),
			effs: effs(Effect{Kind: CountIn, Instance: "a"}), ok: true},
		{desc: "taken over while a failover held it: back where it was", s: State{}, e: Event{Kind: TakeOver, Recorded: &movingFromA},
			want: queuedAtA, effs: effs(Effect{Kind: CountIn, Instance: "a"}), ok: true},
		{desc: "taken over after it left its instance: unconfirmed, nowhere", s: State{}, e: Event{Kind: TakeOver, Recorded: &leftA},
			want: func() State { s := leftA; s.Phase = Unconfirmed; return s }(), effs: effs(Effect{Kind: CountIn, Instance: "a"}), ok: true},
		{desc: "a done prompt is not taken over", s: State{}, e: Event{Kind: TakeOver, Recorded: &State{Phase: Finished, Instance: "a"}}, want: State{}},
		{desc: "an adopted note is not taken over", s: State{}, e: Event{Kind: TakeOver,
			Recorded: &State{Phase: Queued, Instance: "a", UpstreamID: "u7", Adopted: true}}, want: State{}},
		{desc: "only a fresh prompt is taken over", s: queuedAtA, e: Event{Kind: TakeOver, Recorded: &runningAtA}, want: queuedAtA},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got, gotEffs, ok := Step(tc.s, tc.e)
			if ok != tc.ok || got != tc.want || !slices.Equal(gotEffs, tc.effs) {
				t.Fatalf("Step(%+v, %v)\n got  %+v %v %v\n want %+v %v %v", tc.s, tc.e.Kind, got, gotEffs, ok, tc.want, tc.effs, tc.ok)
			}
		})
	}
}

// TestCountsBalance: along any path, every CountIn is matched by one
// CountOut by the time the prompt is done, whatever order events come in.
func TestCountsBalance(t *testing.T) {
	t.Parallel()
	clk := testkit.NewFakeClock(time.Unix(0, 0))
	paths := [][]Event{
		{{Kind: Send, Instance: "a", UpstreamID: "u"}, {Kind: Answered}, {Kind: Started}, {Kind: Finish, Outcome: OutcomeSuccess}, {Kind: End}},
		{{Kind: Send, Instance: "a", UpstreamID: "u"}, {Kind: Started}, {Kind: Finish, Outcome: OutcomeSuccess}, {Kind: Answered}, {Kind: End}},
		{{Kind: Send, Instance: "a", UpstreamID: "u"}, {Kind: NoAnswer}, {Kind: MoveBegin, Instance: "a"}, {Kind: Leave, Tombstone: true},
			{Kind: Send, Instance: "b", UpstreamID: "u"}, {Kind: Answered}, {Kind: Close, Outcome: OutcomeSuccess}},
		{{Kind: Send, Instance: "a", UpstreamID: "u"}, {Kind: Answered}, {Kind: Started}, {Kind: MoveBegin, Instance: "a"}, {Kind: Leave},
			{Kind: Send, Instance: "b", UpstreamID: "u"}, {Kind: Refused, Resubmit: true}, {Kind: Send, Instance: "c", UpstreamID: "u"}, {Kind: Started},
			{Kind: Answered}, {Kind: MoveBegin, Instance: "c"}, {Kind: MoveAbort}, {Kind: Finish, Outcome: OutcomeError}, {Kind: End}},
		{{Kind: Send, Instance: "a", UpstreamID: "u"}, {Kind: Answered}, {Kind: MoveBegin, Instance: "a"}, {Kind: Leave, Tombstone: true},
			{Kind: Close, Outcome: OutcomeLost}},
		{{Kind: Send, Instance: "a", UpstreamID: "u"}, {Kind: Answered}, {Kind: MoveBegin, Instance: "a"}, {Kind: Leave, Tombstone: true},
			{Kind: Send, Instance: "b", UpstreamID: "u"}, {Kind: Answered}, {Kind: Started}, {Kind: MoveBegin, Instance: "b"},
			{Kind: Leave, Tombstone: true}, {Kind: Reclaim, Instance: "a", UpstreamID: "u"}, {Kind: End}},
		{{Kind: Send, Instance: "a", UpstreamID: "u"}, {Kind: NoAnswer}, {Kind: Drop}},
		{{Kind: Send, Instance: "a", UpstreamID: "u"}, {Kind: Refused, NotSent: true}, {Kind: Send, Instance: "b", UpstreamID: "u"},
			{Kind: Started}, {Kind: Answered}, {Kind: Finish, Outcome: OutcomeSuccess}, {Kind: End}},
	}
	for k, path := range paths {
		t.Run(fmt.Sprint(k), func(t *testing.T) {
			var s State
			inflight := map[string]int{}
			for _, e := range path {
				clk.Advance(time.Millisecond)
				e.At = clk.Now()
				next, es, ok := Step(s, e)
				if !ok {
					t.Fatalf("%v refused in %v", e.Kind, s.Phase)
				}
				for _, ef := range es {
					switch ef.Kind {
					case CountIn:
						inflight[ef.Instance]++
					case CountOut:
						inflight[ef.Instance]--
					}
				}
				for inst, n := range inflight {
					want := 0
					if next.Counted() && next.Instance == inst {
						want = 1
					}
					if n != want {
						t.Fatalf("after %v: %s counts %d, want %d", e.Kind, inst, n, want)
					}
				}
				s = next
			}
			if !s.Phase.Done() {
				t.Fatalf("ended in %v", s.Phase)
			}
		})
	}
}

// TestRandomWalks steps random event sequences and checks, after every
// step that applied, what must hold in any order of events: the counts
// balance (an instance counts a prompt exactly while State.Counted says
// it is there), Posting is set only between a send and its answer,
// Resume only while a failover holds it before it left, the fleet number
// is given only to a prompt sent or accepted and never changes once
// given, an ended prompt stays ended, and a step that does not apply
// changes nothing.
func TestRandomWalks(t *testing.T) {
	t.Parallel()
	insts := []string{"a", "b", "c"}
	pick := func(r *rand.Rand) Event {
		in := insts[r.IntN(len(insts))]
		switch k := Kind(1 + r.IntN(int(Numbered))); k {
		case Send:
			return Event{Kind: k, Instance: in, UpstreamID: "u" + in}
		case Answered:
			return Event{Kind: k, Attempt: r.IntN(3)}
		case NoAnswer:
			return Event{Kind: k, Attempt: r.IntN(3)}
		case Refused:
			return Event{Kind: k, Attempt: r.IntN(3), NotSent: r.IntN(2) == 0, Resubmit: r.IntN(2) == 0}
		case Finish, Close:
			return Event{Kind: k, Outcome: []string{OutcomeSuccess, OutcomeError, OutcomeLost, ""}[r.IntN(4)]}
		case MoveBegin:
			return Event{Kind: k, Instance: in}
		case MoveAbort:
			return Event{Kind: k, DeleteSent: r.IntN(2) == 0}
		case Leave:
			return Event{Kind: k, Tombstone: r.IntN(2) == 0}
		case Reclaim:
			return Event{Kind: k, Instance: in, UpstreamID: "r" + in}
		case Adopt:
			return Event{Kind: k, Instance: in, UpstreamID: "x", Found: []Phase{Queued, Running, Ended, Moving}[r.IntN(4)]}
		case Numbered:
			return Event{Kind: k, Number: r.Int64N(100)}
		default:
			return Event{Kind: k}
		}
	}
	applied := map[Kind]int{}
	for seed := range uint64(2000) {
		r := rand.New(rand.NewPCG(seed, 1))
		clk := time.Unix(0, 0)
		var s State
		inflight := map[string]int{}
		for step := range 40 {
			e := pick(r)
			clk = clk.Add(time.Millisecond)
			e.At = clk
			next, es, ok := Step(s, e)
			if !ok {
				if next != s || len(es) != 0 {
					t.Fatalf("seed %d step %d: %v did not apply but changed %+v into %+v (%v)", seed, step, e.Kind, s, next, es)
				}
				continue
			}
			applied[e.Kind]++
			for _, ef := range es {
				switch ef.Kind {
				case CountIn:
					inflight[ef.Instance]++
				case CountOut:
					inflight[ef.Instance]--
				}
			}
			for _, in := range insts {
				want := 0
				if next.Counted() && next.Instance == in {
					want = 1
				}
				if inflight[in] != want {
					t.Fatalf("seed %d step %d: after %v (%v -> %v) %s counts %d, want %d", seed, step, e.Kind, s.Phase, next.Phase, in, inflight[in], want)
				}
			}
			if next.Posting && (next.Attempts < 1 || next.Phase == Submitted || next.Phase == Moving || next.Phase == Dropped) {
				t.Fatalf("seed %d step %d: posting in %v after %d attempts", seed, step, next.Phase, next.Attempts)
			}
			if next.Resume != 0 && next.Phase != Moving {
				t.Fatalf("seed %d step %d: resume %v in %v", seed, step, next.Resume, next.Phase)
			}
			if next.Phase == Moving && next.Resume != 0 && next.Resume != Queued && next.Resume != Running && next.Resume != Unconfirmed {
				t.Fatalf("seed %d step %d: resumes to %v", seed, step, next.Resume)
			}
			if s.Numbered && (!next.Numbered || next.Number != s.Number) {
				t.Fatalf("seed %d step %d: %v renumbered %d to %d", seed, step, e.Kind, s.Number, next.Number)
			}
			if next.Numbered && !s.Numbered && (s.Adopted || (!s.Posting && !s.Accepted)) {
				t.Fatalf("seed %d step %d: %v numbered a prompt neither sent nor accepted: %+v", seed, step, e.Kind, s)
			}
			if (s.Phase == Ended || s.Phase == Dropped) && next.Phase != s.Phase {
				t.Fatalf("seed %d step %d: %v left %v for %v", seed, step, e.Kind, s.Phase, next.Phase)
			}
			s = next
		}
	}
	// The walks must reach every kind of event, or they prove little.
	for k := Send; k <= Numbered; k++ {
		if applied[k] == 0 {
			t.Errorf("no walk applied a %v", k)
		}
	}
}
