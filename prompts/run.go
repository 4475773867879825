package prompts

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/comfygate/comfygate/upstream"
)

// run is the table's life from Start to Close: its context, and the
// goroutines (owners, sockets, workers, deliveries) Close waits for. It
// takes no lock: a goroutine enters by counting itself, and Close marks
// the count closed, so nothing enters after it.
type run struct {
	log     *slog.Logger // where a panic of a goroutine it runs is logged
	started atomic.Bool
	ctx     atomic.Pointer[context.Context] // nil until Start
	cancel  atomic.Pointer[context.CancelFunc]
	n       atomic.Int64  // goroutines running; closedBit once closed
	quit    chan struct{} // closed by close: the owners stop
	drained chan struct{} // closed once closed with none running
	once    sync.Once     // closes drained
}

const closedBit = int64(1) << 62

func newRun(log *slog.Logger) *run {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &run{log: log, quit: make(chan struct{}), drained: make(chan struct{})}
}

// start begins the run on a child of ctx; false when it started or closed already.
func (r *run) start(ctx context.Context) (context.Context, bool) {
	if r.closed() || !r.started.CompareAndSwap(false, true) {
		return nil, false
	}
	ctx, cancel := context.WithCancel(ctx)
	r.cancel.Store(&cancel)
	r.ctx.Store(&ctx)
	if r.closed() { // Close came meanwhile and may have missed cancel
		cancel()
	}
	return ctx, true
}

// context returns the run's context; nil before start.
func (r *run) context() context.Context {
	if c := r.ctx.Load(); c != nil {
		return *c
	}
	return nil
}

func (r *run) closed() bool { return r.n.Load()&closedBit != 0 }

// enter counts a goroutine in; false after close (nothing counted).
func (r *run) enter() bool {
	if r.n.Add(1)&closedBit != 0 {
		r.exit()
		return false
	}
	return true
}

// exit counts a goroutine out.
func (r *run) exit() {
	if r.n.Add(-1) == closedBit {
		r.once.Do(func() { close(r.drained) })
	}
}

// goRun runs f in a goroutine close waits for; false after close.
func (r *run) goRun(f func()) bool {
	if !r.enter() {
		return false
	}
	go func() {
		defer r.exit()
		f()
	}()
	return true
}

// goBackground runs f on the run's context in a goroutine close waits
// for, logging a panic. It reports false (and runs nothing) before start
// or after close.
func (r *run) goBackground(f func(ctx context.Context)) bool {
	ctx := r.context()
	if ctx == nil {
		return false
	}
	return r.goRun(func() { safely(r.log, "prompt table", func() { f(ctx) }) })
}

// running reports whether the run started and has not ended.
func (r *run) running() bool {
	ctx := r.context()
	return ctx != nil && ctx.Err() == nil
}

// runCtx is the run's context (Background before start).
func (r *run) runCtx() context.Context {
	if ctx := r.context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// close ends the run: the owners stop, the context ends, nothing new
// enters. wait waits for what is running.
func (r *run) close() {
	old := r.n.Or(closedBit)
	if old&closedBit != 0 {
		return
	}
	close(r.quit)
	if c := r.cancel.Load(); c != nil {
		(*c)()
	}
	if old == 0 {
		r.once.Do(func() { close(r.drained) })
	}
}

func (r *run) wait() { <-r.drained }

// ownerMap is the instances' owners (their socket records), copy on
// write: readers load it without a lock; the rare writers (an instance's
// first use, a drained instance's socket closed) replace it with a
// compare-and-swap.
type ownerMap = map[*upstream.Instance]*instSocket

type owners struct {
	m  atomic.Pointer[ownerMap]
	mk func(*upstream.Instance) *instSocket // a new record
}

// socketFor returns the record of inst, creating it (its socket not
// running) if needed. Its owner runs when it has messages (mailbox).
func (o *owners) socketFor(inst *upstream.Instance) *instSocket {
	if s := o.get(inst); s != nil {
		return s
	}
	s, _ := o.getOrAdd(inst, func() *instSocket { return o.mk(inst) })
	return s
}

// get returns inst's record, nil if none.
func (o *owners) get(inst *upstream.Instance) *instSocket {
	if m := o.m.Load(); m != nil {
		return (*m)[inst]
	}
	return nil
}

// all returns every record.
func (o *owners) all() []*instSocket {
	m := o.m.Load()
	if m == nil {
		return nil
	}
	out := make([]*instSocket, 0, len(*m))
	for _, s := range *m {
		out = append(out, s)
	}
	return out
}

// getOrAdd returns inst's record, adding mk() if there is none; added
// reports that the record returned is the new one.
func (o *owners) getOrAdd(inst *upstream.Instance, mk func() *instSocket) (s *instSocket, added bool) {
	var fresh *instSocket
	for {
		old := o.m.Load()
		if old != nil {
			if s := (*old)[inst]; s != nil {
				return s, false
			}
		}
		if fresh == nil {
			fresh = mk()
		}
		next := make(ownerMap, 1)
		if old != nil {
			next = make(ownerMap, len(*old)+1)
			for k, v := range *old {
				next[k] = v
			}
		}
		next[inst] = fresh
		if o.m.CompareAndSwap(old, &next) {
			return fresh, true
		}
	}
}

// remove drops inst's record if it is s; false if it is not.
func (o *owners) remove(inst *upstream.Instance, s *instSocket) bool {
	for {
		old := o.m.Load()
		if old == nil || (*old)[inst] != s {
			return false
		}
		next := make(ownerMap, len(*old))
		for k, v := range *old {
			if k != inst {
				next[k] = v
			}
		}
		if o.m.CompareAndSwap(old, &next) {
			return true
		}
	}
}
