// Package lifecycle is the life of one prompt comfygate forwarded, as a
// pure state machine: a State is a plain value (it could live in a shared
// store read by several comfygate replicas), and Step turns a State and an
// Event into the next State and the Effects its owner must carry out
// (count it in an instance's in-flight work, forget its id at an instance,
// leave a tombstone there, record its end). Step does no I/O, reads no
// clock and takes no lock; time comes in with the event.
//
// The phases and what moves a prompt between them:
//
//	Submitted   --Send-->        Sending       a POST /prompt to an instance is under way (Posting)
//	Sending     --Answered-->    Queued        the instance answered 200
//	Sending     --NoAnswer-->    Unconfirmed   sent, no answer: it may have it
//	Sending     --Refused-->     Submitted     first submission: nobody has it (forgotten)
//	                             Moving        resubmission: try another instance
//	Queued, Running --Refused--> (the same)    its events came, then its POST broke: tombstoned there
//	Unconfirmed --Seen-->        Queued        the instance showed it (event, /queue, /history)
//	Queued      --Started-->     Running       execution_start
//	any live    --Finished-->    Finished      success, error or interrupted (uncounted)
//	Finished    --Ended-->       Ended         its sink got the final executing-null
//	any live    --Close-->       Ended         comfygate delivered a synthesized end (lost, from history)
//	Queued, Running, Unconfirmed --MoveBegin--> Moving   failover holds it (one at a time)
//	Moving      --MoveAbort-->   (back)        its instance still has it after all
//	Moving      --Leave-->       Moving        it leaves its instance: uncounted, unpinned, tombstoned there
//	Moving      --Send-->        Sending       resubmitted to another instance
//	Unconfirmed --Drop-->        Dropped       first submission never found: its client was told it failed
//	Moving      --Reclaim-->     Finished      (after Leave) an instance it left earlier ran it to success after all: it ends there
//	Submitted   --Adopt-->       Queued, Running or Ended   learned from an instance (another replica or an earlier process submitted it)
//	any sent --Numbered-->       (the same)    its fleet queue number, once, after its first Send
//	Submitted   --TakeOver-->    its recorded phase   another replica's prompt, taken from its record (Event.Recorded) when that replica stopped
//
// Beside the phase, State holds what the phase alone cannot say and a
// prompt's next owner needs to go on with it (another replica reading it
// from a shared store): Posting (a send's POST is still to be settled, so
// no failover takes it), Resume (the phase a held prompt returns to),
// Attempts, Accepted, DeleteSent and its fleet Number. Each is set only
// by Step.
//
// An event that does not apply in the current phase (a failover of a prompt
// whose POST is under way, a second failover, a late answer of a finished
// prompt) leaves the state as it is and reports false: what the callers
// used to check with separate flags is the phase.
package lifecycle

import "time"

// Phase is where a prompt is in its life.
type Phase uint8

// The phases; see the package documentation for the transitions.
const (
	Submitted   Phase = iota // created, not at any instance
	Sending                  // POST /prompt to Instance under way
	Unconfirmed              // POST got no answer: Instance may have it
	Queued                   // Instance accepted it, not started
	Running                  // Instance is executing it
	Moving                   // failover holds it: leaving Instance for another
	Finished                 // terminal outcome known; its live ending may follow
	Ended                    // its sink got its last message: later events are dropped
	Dropped                  // never accepted and given up: its client was told
)

var phaseNames = [...]string{"submitted", "sending", "unconfirmed", "queued", "running", "moving", "finished", "ended", "dropped"}

func (p Phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return "unknown"
}

// Done reports a terminal phase.
func (p Phase) Done() bool { return p == Finished || p == Ended || p == Dropped }

// Outcomes of a finished prompt (the metrics' outcome label).
const (
	OutcomeSuccess     = "success"
	OutcomeError       = "error"
	OutcomeInterrupted = "interrupted"
	OutcomeLost        = "lost"
)

// State is one prompt's life. It is a plain value: copy it, compare it,
// store it.
type State struct {
	Phase Phase
	// Instance names the instance that holds (or may hold) it; "" before
	// the first send.
	Instance string
	// UpstreamID is its id at Instance ("" until known).
	UpstreamID string
	// Attempts counts the sends that reached an instance.
	Attempts int
	// Posting: the POST /prompt of attempt Attempts is under way. Its
	// answer (Answered, NoAnswer, Refused) settles it; events of the
	// prompt may come first and move the phase on meanwhile, but no
	// failover takes it until the POST is settled.
	Posting bool
	// Accepted: some instance accepted it once (its client got a 200, or
	// an instance showed it). A first submission that was never accepted
	// is dropped rather than moved when its instance turns out not to have it.
	Accepted bool
	// AcceptedAt is when Instance was last seen to have it.
	AcceptedAt time.Time
	// StartedAt is when it started running at Instance (zero if not).
	StartedAt time.Time
	// DoneAt and Outcome are set once it finished.
	DoneAt  time.Time
	Outcome string
	// Adopted: learned from an instance (another replica or an earlier
	// process submitted it). It is only a note of where it is: never
	// counted, moved or resubmitted.
	Adopted bool
	// Resume is the phase a MoveAbort returns to (while Moving).
	Resume Phase
	// Numbered: it has its fleet queue number, Number (a Numbered event
	// after its first send, as ComfyUI takes its counter before it
	// validates a prompt; never changed after). The number is the one a
	// client sees, so a prompt that moves keeps it, and its POST's answer
	// carries it without waiting for the step that settles the answer.
	Numbered bool
	Number   int64
	// DeleteSent: a move sent Instance a delete of it that got no answer
	// (MoveAbort with Event.DeleteSent), so it may vanish from that queue
	// by comfygate's own hand rather than a client's. Cleared when it
	// leaves Instance.
	DeleteSent bool
}

// Counted reports whether the prompt counts in its instance's in-flight
// work: from the send on (its POST under way or unanswered, queued or
// running there), also while failover holds it until it leaves. Counted
// from the send, not the answer, so that prompts sent at once see each
// other: counted only once answered, a burst's prompts all find the
// instances as idle as the first did.
func (s State) Counted() bool {
	p := s.Phase
	if p == Moving {
		p = s.Resume
	}
	return !s.Adopted && (p == Sending || p == Unconfirmed || p == Queued || p == Running)
}

// Live reports a prompt comfygate submitted that is not done.
func (s State) Live() bool { return !s.Adopted && !s.Phase.Done() }

// Kind names an event.
type Kind uint8

// The events.
const (
	Send      Kind = iota + 1 // a POST /prompt to Event.Instance under Event.UpstreamID starts
	Answered                  // the instance answered 200 (Event.UpstreamID: the id it gave, "" to keep)
	NoAnswer                  // the POST ended without an answer
	Refused                   // the instance did not take it (Event.NotSent: nothing reached it)
	Seen                      // the instance showed it has it
	Started                   // execution_start
	Finish                    // a terminal message (Event.Outcome)
	End                       // the final executing-null reached its sink
	Close                     // comfygate delivered a synthesized end (Event.Outcome, "" keeps it)
	MoveBegin                 // failover wants to move it off Event.Instance
	MoveAbort                 // failover leaves it where it is
	Leave                     // it leaves its instance (Event.Tombstone: that instance may still hold it)
	Drop                      // a first submission never found at its instance
	Reclaim                   // an instance it left earlier (Event.Instance, Event.UpstreamID) ran it to success after all
	Adopt                     // an instance (Event.Instance) has it under Event.UpstreamID, in phase Event.Found; comfygate never sent it
	Numbered                  // its owner gave it fleet number Event.Number after its first Send
	TakeOver                  // the replica that owned it stopped: it goes on from Event.Recorded, the state it recorded
)

var kindNames = [...]string{"", "send", "answered", "no-answer", "refused", "seen", "started", "finish", "end", "close", "move-begin", "move-abort", "leave", "drop", "reclaim", "adopt", "numbered", "take-over"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Event is something that happened to a prompt.
type Event struct {
	Kind       Kind
	At         time.Time
	Instance   string // Send: the target; MoveBegin: the instance it must still be at; Reclaim: where it ran
	UpstreamID string // Send, Answered, Reclaim: its id there
	Outcome    string // Finish, Close
	Attempt    int    // Answered, NoAnswer, Refused: the send they settle (0: the current one)
	NotSent    bool   // Refused: the request never reached the instance
	Resubmit   bool   // Refused: a resubmission (it moves on, even if never accepted)
	Tombstone  bool   // Leave: remember it at the instance it leaves
	Found      Phase  // Adopt: Queued, Running or Ended (its history has it)
	DeleteSent bool   // MoveAbort: a delete of it went to its instance unanswered
	Number     int64  // Numbered: its fleet number
	Recorded   *State // TakeOver: the state its last owner recorded
}

// EffectKind names an effect.
type EffectKind uint8

// The effects. The owner carries them out after it released its locks.
const (
	CountIn   EffectKind = iota + 1 // add one to Effect.Instance's in-flight work (a send)
	CountOut                        // take one off Effect.Instance's in-flight work
	Unpin                           // forget (Effect.Instance, Effect.UpstreamID): its late events are dropped
	Tombstone                       // remember (Effect.Instance, Effect.UpstreamID): delete or interrupt it there when it shows
	Accept                          // first acceptance: count the submission
	Record                          // it finished: record Effect.Outcome
	Forget                          // a first submission nobody took: out of the table
)

var effectNames = [...]string{"", "count-in", "count-out", "unpin", "tombstone", "accept", "record", "forget"}

func (k EffectKind) String() string {
	if int(k) < len(effectNames) {
		return effectNames[k]
	}
	return "unknown"
}

// Effect is work Step asks its owner to do.
type Effect struct {
	Kind       EffectKind
	Instance   string
	UpstreamID string
	Outcome    string
}

// Step applies e to s. ok is false when e does not apply in s's phase;
// then next == s and there are no effects.
func Step(s State, e Event) (next State, effects []Effect, ok bool) {
	next = s
	counted := s.Counted()
	uncount := func() {
		if counted {
			effects = append(effects, Effect{Kind: CountOut, Instance: s.Instance})
		}
	}
	accept := func() {
		next.Phase = Queued
		next.AcceptedAt = e.At
		if !s.Accepted {
			next.Accepted = true
			effects = append(effects, Effect{Kind: Accept, Instance: s.Instance})
		}
	}
	switch e.Kind {
	case Send:
		// A prompt that moves leaves its instance first (Leave): held
		// by a failover that has not let go of it, it is not sent.
		if s.Adopted || s.Posting || (s.Phase != Submitted && s.Phase != Moving) || s.Resume != 0 {
			return s, nil, false
		}
		uncount() // none: see above
		next.Phase, next.Instance, next.UpstreamID = Sending, e.Instance, e.UpstreamID
		next.DeleteSent = false
		effects = append(effects, Effect{Kind: CountIn, Instance: e.Instance})
		next.Attempts++
		next.Posting = true
		next.StartedAt = time.Time{}
	case Answered, NoAnswer, Refused:
		// The answer to a POST: only to the one under way.
		if !s.Posting || (e.Attempt != 0 && e.Attempt != s.Attempts) {
			return s, nil, false
		}
		next.Posting = false
		switch {
		case e.Kind == Answered:
			if e.UpstreamID != "" {
				next.UpstreamID = e.UpstreamID
			}
			if s.Phase == Sending || s.Phase == Unconfirmed {
				accept()
			} else if !s.Accepted {
				// Its events came first (it is queued or done already):
				// only the first acceptance is still to record.
				next.Accepted = true
				effects = append(effects, Effect{Kind: Accept, Instance: s.Instance})
			}
		case e.Kind == NoAnswer:
			if s.Phase == Sending {
				next.Phase = Unconfirmed
			}
			// Else its events showed the instance has it: it stays.
		case s.Phase.Done():
			// It ran there already: the broken POST changes nothing.
		default: // Refused
			if e.NotSent {
				next.Attempts--
			}
			uncount()
			if s.Phase != Sending {
				// Its events showed the instance had it, then the POST
				// broke (the instance died): it goes elsewhere, and if
				// the instance comes back it must not run it.
				effects = append(effects, Effect{Kind: Tombstone, Instance: s.Instance, UpstreamID: s.UpstreamID})
			}
			if e.Resubmit {
				next.Phase = Moving // a failover tries the next instance
				effects = append(effects, Effect{Kind: Unpin, Instance: s.Instance, UpstreamID: s.UpstreamID})
			} else {
				next.Phase = Submitted // its Submit tries the next instance
				effects = append(effects, Effect{Kind: Forget})
			}
			next.UpstreamID, next.StartedAt, next.DeleteSent = "", time.Time{}, false
		}
	case Seen:
		switch s.Phase {
		case Sending, Unconfirmed:
			accept()
		case Queued, Running, Finished, Ended:
			// Known to be there already.
		default:
			return s, nil, false
		}
	case Started:
		switch s.Phase {
		case Sending, Unconfirmed:
			accept()
		case Queued:
		default:
			return s, nil, false
		}
		next.Phase, next.StartedAt = Running, e.At
	case Finish:
		if s.Phase.Done() || s.Phase == Submitted {
			return s, nil, false
		}
		uncount()
		next.Phase, next.Outcome, next.DoneAt = Finished, e.Outcome, e.At
		next.Resume = 0
		if s.Phase == Sending || s.Phase == Unconfirmed {
			// It ran before its answer came: the instance had it.
			next.Accepted = true
			if !s.Accepted {
				effects = append(effects, Effect{Kind: Accept, Instance: s.Instance})
			}
		}
		if !s.Adopted {
			effects = append(effects, Effect{Kind: Record, Instance: s.Instance, Outcome: e.Outcome})
		}
	case End:
		if s.Phase != Finished {
			return s, nil, false
		}
		next.Phase = Ended
	case Close:
		if s.Phase == Ended || s.Phase == Dropped {
			return s, nil, false
		}
		if !s.Phase.Done() {
			uncount()
			next.Outcome, next.DoneAt = e.Outcome, e.At
			if !s.Adopted {
				effects = append(effects, Effect{Kind: Record, Instance: s.Instance, Outcome: e.Outcome})
			}
		}
		next.Phase = Ended
		next.Resume = 0
	case MoveBegin:
		if s.Adopted || s.Posting || s.Instance != e.Instance {
			return s, nil, false
		}
		switch s.Phase {
		case Queued, Running, Unconfirmed:
		default:
			return s, nil, false
		}
		next.Phase, next.Resume = Moving, s.Phase
	case MoveAbort:
		if s.Phase != Moving || s.Resume == 0 { // it left already
			return s, nil, false
		}
		next.Phase, next.Resume = s.Resume, 0
		if e.DeleteSent {
			next.DeleteSent = true
		}
	case Leave:
		if s.Phase != Moving || s.Resume == 0 {
			return s, nil, false
		}
		uncount()
		effects = append(effects, Effect{Kind: Unpin, Instance: s.Instance, UpstreamID: s.UpstreamID})
		if e.Tombstone && s.UpstreamID != "" {
			effects = append(effects, Effect{Kind: Tombstone, Instance: s.Instance, UpstreamID: s.UpstreamID})
		}
		// Instance stays: where it was until a send pins it elsewhere.
		next.UpstreamID, next.Resume, next.DeleteSent = "", 0, false
	case Reclaim:
		// Only once it left where it was (Leave): a failover holds it, so
		// no send of it is under way and nothing else moves it meanwhile.
		if s.Adopted || s.Phase != Moving || s.Resume != 0 || s.Posting {
			return s, nil, false
		}
		next.Phase, next.Outcome, next.DoneAt = Finished, OutcomeSuccess, e.At
		next.Instance, next.UpstreamID = e.Instance, e.UpstreamID
		effects = append(effects, Effect{Kind: Record, Instance: e.Instance, Outcome: OutcomeSuccess})
	case Adopt:
		// Only a fresh prompt: one comfygate sent is never adopted.
		if s != (State{}) || e.Instance == "" || e.UpstreamID == "" {
			return s, nil, false
		}
		next = State{Phase: Queued, Instance: e.Instance, UpstreamID: e.UpstreamID, Adopted: true, Accepted: true, AcceptedAt: e.At}
		switch e.Found {
		case Queued:
		case Running:
			next.Phase, next.StartedAt = Running, e.At
		case Ended:
			// Its history has it: ended as far as comfygate can tell.
			next.Phase, next.Outcome, next.DoneAt = Ended, OutcomeSuccess, e.At
		default:
			return s, nil, false
		}
		// Never counted, recorded or numbered: comfygate does not run it.
	case TakeOver:
		// A fresh prompt only, from a live state of one comfygate sent.
		if s != (State{}) || e.Recorded == nil {
			return s, nil, false
		}
		r := *e.Recorded
		if r.Adopted || r.Phase == Submitted || r.Phase.Done() || r.Instance == "" {
			return s, nil, false
		}
		next = r
		if r.Phase == Moving {
			if r.Resume != 0 {
				// The failover that held it stopped with its owner: back
				// where it was.
				next.Phase, next.Resume = r.Resume, 0
			} else {
				// It left its instance and was not sent again: a send
				// whose outcome nobody knows, at no instance.
				next.Phase = Unconfirmed
			}
		}
		if next.Posting || next.Phase == Sending {
			// Its POST's answer went to the owner that stopped: the
			// instance may or may not have it.
			next.Posting = false
			if next.Phase == Sending {
				next.Phase = Unconfirmed
			}
		}
		// Its owner took it from its client: from now on it moves rather
		// than being dropped when its instance does not have it.
		next.Accepted = true
		if next.Counted() {
			effects = append(effects, Effect{Kind: CountIn, Instance: next.Instance})
		}
	case Numbered:
		// Once, after its first send: a prompt that moves keeps its
		// number, and one comfygate does not run has none.
		if s.Numbered || s.Adopted || (!s.Posting && !s.Accepted) {
			return s, nil, false
		}
		next.Numbered, next.Number = true, e.Number
	case Drop:
		if s.Phase != Unconfirmed || s.Accepted || s.Posting {
			return s, nil, false
		}
		uncount()
		next.Phase, next.DoneAt = Dropped, e.At
		effects = append(effects,
			Effect{Kind: Tombstone, Instance: s.Instance, UpstreamID: s.UpstreamID},
			Effect{Kind: Forget})
	default:
		return s, nil, false
	}
	return next, effects, true
}
