package prompts

import (
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/comfygate/comfygate/internal/lifecycle"

	"github.com/comfygate/comfygate/upstream"
)

// delivery hands the prompts' events to their sinks, and broadcasts and
// fleet queue changes to the listener, through the outboxes.
type delivery struct {
	p   fleet // the fleet's queue (QueueRemaining)
	run *run  // the goroutines that deliver
	log *slog.Logger

	outboxes sync.Map // *upstream.Instance -> *outbox: event delivery per instance; nil key: queue changes

	queueMu   sync.Mutex // guards lastQueue; orders the QueueChanged deliveries
	lastQueue int

	listener atomic.Pointer[Listener] // who receives broadcasts and queue changes (nil: none)
}

func newDelivery(p fleet, r *run, log *slog.Logger) *delivery {
	return &delivery{p: p, run: r, log: log, lastQueue: -1}
}

// outbox delivers one instance's events (and the fleet queue changes) to
// sinks and the listener in the order they were queued, from a goroutine
// of its own that holds no lock of the table while it calls them: code
// that routes an event on an instance's owner only queues it. The goroutine runs
// while there is something to deliver and ends when the queue is empty.
type outbox struct {
	d *delivery

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
	o, _ := t.outboxes.LoadOrStore(inst, &outbox{d: t})
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
	if !o.d.goDeliver(o.drain) {
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
		safely(o.d.log, "event delivery", f)
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

// notifyQueue tells the listener the fleet queue when it changed.
func (t *delivery) notifyQueue() {
	o := t.outboxFor(nil)
	t.queueMu.Lock()
	defer t.queueMu.Unlock()
	q := t.p.QueueRemaining()
	if q == t.lastQueue {
		return
	}
	t.lastQueue = q
	if l := t.currentListener(); l != nil {
		o.push(func() { l.QueueChanged(q) })
	}
}

// currentListener returns the listener (nil if none).
func (t *delivery) currentListener() Listener {
	if l := t.listener.Load(); l != nil {
		return *l
	}
	return nil
}

// deliver queues one event of pr for its sink, on the outbox of the
// instance it came from (in order with that instance's other events). An
// event of a prompt whose sink already got its end is dropped. force
// delivers anyway: comfygate's own synthesized ending.
func (t *delivery) deliver(pr *Prompt, ev Event, force bool) {
	if pr.Sink == nil {
		return
	}
	if !force && pr.Life().Phase == lifecycle.Ended {
		return
	}
	sink := pr.Sink
	t.outboxFor(ev.Instance).push(func() { sink.PromptEvent(pr, ev) })
}
