package prompts

// Every instance has one owner: one goroutine at a time (started when a
// message comes to an idle owner, ended when none is left; or the caller
// of do that finds the owner idle, for that one message) that runs,
// one after another, everything that changes what is routed at that
// instance (the socket's frames, the ids learned from POST answers,
// endings rebuilt from history, the running prompt) and decides the
// background passes (which run in workers and report back to it). It is
// modelled on the serve loop of golang.org/x/net/http2's server: the
// socket's reader queues each frame for it, so a prompt's events are
// applied in the instance's order, and before the socket's loss is acted
// on (the reader waits for the frames it queued before it reports the
// loss).
//
// The fields of instSocket marked "owner" are read and written only by
// code that runs on the owner (a message posted with post or do); they
// need no lock.

import (
	"log/slog"
	"sync"
)

// mailbox is an owner's queue of messages. Posting never blocks, so code
// running on the owner can post to it (a pass it starts) as any other
// goroutine does. The owner's goroutine runs while messages wait and ends
// when the queue is empty: an idle instance holds no goroutine (nor its
// stack) for its owner, and the next message starts one. There is never
// more than one, so the messages still run one after another, in order.
type mailbox struct {
	run *run         // the owner's goroutines are the table's
	log *slog.Logger // a message's panic

	mu      sync.Mutex // guards msgs, running, closed (the queue only)
	msgs    []message
	running bool          // a goroutine is draining the queue
	closed  bool          // the table closed: nothing more runs
	done    chan struct{} // closed when the owner has stopped for good
	spare   []message     // the owner's: the queue it emptied last, reused for the next
}

// message is one queued function; ran, for do, hears when it has run.
type message struct {
	f   func()
	ran chan struct{}
}

// ranChans recycles do's signals (capacity 1): every step of a submission
// waits on one.
var ranChans = sync.Pool{New: func() any { return make(chan struct{}, 1) }}

func newMailbox(r *run, log *slog.Logger) *mailbox {
	return &mailbox{run: r, log: log, done: make(chan struct{})}
}

// drain runs the queued messages in order until the queue is empty or
// the table closed. It takes the whole queue at once and gives the
// poster an empty one to fill, the one it emptied before: a queue that
// fills and drains, message by message, allocates nothing.
func (b *mailbox) drain() {
	for {
		select {
		case <-b.run.quit:
			b.close()
			return
		default:
		}
		b.mu.Lock()
		batch := b.msgs
		if len(batch) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.msgs, b.spare = b.spare[:0], nil
		b.mu.Unlock()
		for i, m := range batch {
			batch[i] = message{}
			safely(b.log, "instance owner", m.f)
			if m.ran != nil {
				m.ran <- struct{}{}
			}
		}
		b.spare = batch[:0]
	}
}

// close stops taking messages; the ones still queued are dropped.
func (b *mailbox) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	b.msgs = nil
	close(b.done)
}

// post queues f for the owner; false when the owner has stopped (the
// table closed), and f will not run.
func (b *mailbox) post(f func()) bool {
	return b.put(message{f: f})
}

// put queues m, starting the owner's goroutine if none runs; false when
// the owner has stopped (the table closed).
func (b *mailbox) put(m message) bool {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return false
	}
	b.msgs = append(b.msgs, m)
	if b.running {
		b.mu.Unlock()
		return true
	}
	b.running = true
	b.mu.Unlock()
	if !b.run.goRun(b.drain) {
		b.close() // the table closed: m is dropped with the rest
		return false
	}
	return true
}

// do runs f on the owner and waits until it ran; false when the owner has
// stopped first. It must not be called from the owner itself.
func (b *mailbox) do(f func()) bool {
	if b.runHere(f) {
		return true
	}
	ran := ranChans.Get().(chan struct{})
	if !b.put(message{f: f, ran: ran}) {
		ranChans.Put(ran)
		return false
	}
	select {
	case <-ran:
	case <-b.done:
		// Stopped: a message it took ran before, one it dropped never will.
		select {
		case <-ran:
		default:
			return false
		}
	}
	ranChans.Put(ran)
	return true
}

// runHere runs f on the calling goroutine, as the owner, when the owner is
// idle (no goroutine drains the queue and nothing waits in it): a step of
// a submission then costs no goroutine start and no two wake-ups, which on
// a busy machine are most of its time. Messages posted while f runs wait
// for it, and then a goroutine of the owner's takes them. false: the owner
// is busy or stopped, and f did not run.
func (b *mailbox) runHere(f func()) bool {
	select {
	case <-b.run.quit:
		return false
	default:
	}
	if !b.run.enter() {
		return false
	}
	defer b.run.exit()
	b.mu.Lock()
	if b.closed || b.running || len(b.msgs) > 0 {
		b.mu.Unlock()
		return false
	}
	b.running = true
	b.mu.Unlock()
	safely(b.log, "instance owner", f)
	b.mu.Lock()
	if len(b.msgs) == 0 {
		b.running = false
		b.mu.Unlock()
		return true
	}
	b.mu.Unlock()
	if !b.run.goRun(b.drain) {
		b.close() // the table closed: what was posted meanwhile is dropped
	}
	return true
}
