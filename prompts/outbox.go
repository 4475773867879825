package prompts

import (
	"sync"

	"github.com/comfygate/comfygate/upstream"
)

// delivery hands the prompts' events to their sinks, and broadcasts and
// fleet queue changes to the listener, through the outboxes.
type delivery struct{ *Table }

// outbox delivers one instance's events (and the fleet queue changes) to
// sinks and the listener in the order they were queued, from a goroutine
// of its own that holds no lock of the table while it calls them: code
// that routes an event on an instance's owner only queues it. The goroutine runs
// while there is something to deliver and ends when the queue is empty.
type outbox struct {
	t *Table

	mu      sync.Mutex // guards queue, running
	queue   []func()
	running bool
}

// outboxFor returns the outbox of inst (nil inst: the table's own, for
// queue changes).
func (t *delivery) outboxFor(inst *upstream.Instance) *outbox {
	if o, ok := t.outboxes.Load(inst); ok {
		return o.(*outbox)
	}
	o, _ := t.outboxes.LoadOrStore(inst, &outbox{t: t.Table})
	return o.(*outbox)
}

// push queues f and makes sure a goroutine delivers it. Before the table
// starts or after it closed nothing is delivered.
func (o *outbox) push(f func()) {
	o.mu.Lock()
	o.queue = append(o.queue, f)
	if o.running {
		o.mu.Unlock()
		return
	}
	o.running = true
	o.mu.Unlock()
	if !o.t.events.goDeliver(o.drain) {
		o.mu.Lock()
		o.queue, o.running = nil, false
		o.mu.Unlock()
	}
}

// drain calls what is queued, in order, until the queue is empty.
func (o *outbox) drain() {
	for {
		o.mu.Lock()
		if len(o.queue) == 0 {
			o.running = false
			o.queue = nil
			o.mu.Unlock()
			return
		}
		f := o.queue[0]
		o.queue[0] = nil
		o.queue = o.queue[1:]
		o.mu.Unlock()
		safely(o.t.log, "event delivery", f)
	}
}

// goDeliver runs f in a goroutine close waits for; false before start or
// after close.
func (t *delivery) goDeliver(f func()) bool {
	if t.run.context() == nil {
		return false
	}
	return t.run.goRun(f)
}
