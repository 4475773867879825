package prompts

// Every instance has one owner: a goroutine that runs, one after another,
// everything that changes what is routed at that instance (the socket's
// frames, the ids learned from POST answers, endings rebuilt from
// history, the running prompt) and decides the background passes (which
// run in workers and report back to it). It is modelled on the serve loop
// of golang.org/x/net/http2's server: the socket's reader queues each
// frame for it, so a prompt's events are applied in the instance's order,
// and before the socket's loss is acted on (the reader waits for the
// frames it queued before it reports the loss).
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
// goroutine does.
type mailbox struct {
	mu     sync.Mutex // guards msgs, closed (the queue only)
	msgs   []message
	closed bool
	wake   chan struct{} // capacity 1: messages are waiting
	done   chan struct{} // closed when the owner has stopped
	spare  []message     // the owner's: the queue it emptied last, reused for the next
}

// message is one queued function; ran, for do, hears when it has run.
type message struct {
	f   func()
	ran chan struct{}
}

// ranChans recycles do's signals (capacity 1): every frame of an
// instance's socket and every step of a submission waits on one.
var ranChans = sync.Pool{New: func() any { return make(chan struct{}, 1) }}

func newMailbox() *mailbox {
	return &mailbox{wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// startOwner runs s's owner until the table closes.
func (t *instances) startOwner(s *instSocket) {
	if !t.run.goRun(func() { s.box.serve(t.log, t.run.quit) }) {
		s.box.close()
	}
}

// serve runs the queued messages in order until quit is closed. It takes
// the whole queue at once and gives the poster an empty one to fill,
// the one it emptied before: a queue that fills and drains, message by
// message, allocates nothing.
func (b *mailbox) serve(log *slog.Logger, quit <-chan struct{}) {
	defer b.close()
	for {
		select {
		case <-quit:
			return
		case <-b.wake:
		}
		for {
			b.mu.Lock()
			batch := b.msgs
			b.msgs, b.spare = b.spare[:0], nil
			b.mu.Unlock()
			for i, m := range batch {
				batch[i] = message{}
				safely(log, "instance owner", m.f)
				if m.ran != nil {
					m.ran <- struct{}{}
				}
			}
			b.spare = batch[:0]
			if len(batch) == 0 {
				break
			}
		}
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

// put queues m; false when the owner has stopped.
func (b *mailbox) put(m message) bool {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return false
	}
	b.msgs = append(b.msgs, m)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return true
}

// do runs f on the owner and waits until it ran; false when the owner has
// stopped first. It must not be called from the owner itself.
func (b *mailbox) do(f func()) bool {
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
