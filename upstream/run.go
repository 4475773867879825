package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"
)

// runner owns the pool's background goroutines: Start gives them a
// context, Close ends it and waits for every one of them.
type runner struct {
	log *slog.Logger

	mu      sync.Mutex // guards started, closed, ctx, cancel, and wg.Add
	started bool
	closed  bool
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup // background goroutines stop waits for
}

// start begins the run: the returned context ends with stop. It runs once.
func (r *runner) start(ctx context.Context) (context.Context, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started || r.closed {
		return nil, errors.New("upstream: pool already started or closed")
	}
	r.started = true
	r.ctx, r.cancel = context.WithCancel(ctx)
	return r.ctx, nil
}

// stop ends the run's context and waits for every goroutine started by
// goAsync. It reports false when the run was already stopped.
func (r *runner) stop() bool {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return false
	}
	r.closed = true
	cancel := r.cancel
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	r.wg.Wait()
	return true
}

// running reports whether the run started and did not stop.
func (r *runner) running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.started && !r.closed
}

// runCtx is the run's context; nil before start.
func (r *runner) runCtx() context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ctx
}

// goLoop runs f every interval until ctx ends, recovering from panics.
func (r *runner) goLoop(ctx context.Context, name string, every time.Duration, f func(context.Context)) {
	r.goAsync(func(ctx context.Context) {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				r.safely(name, func() { f(ctx) })
			}
		}
	})
}

// goAsync runs f in a goroutine that stop waits for; f gets the run's
// context. After stop (or before start) it does nothing and reports false.
func (r *runner) goAsync(f func(ctx context.Context)) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || !r.started {
		return false
	}
	ctx := r.ctx
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.safely("background task", func() { f(ctx) })
	}()
	return true
}

// safely runs f and logs a panic instead of crashing the process.
func (r *runner) safely(what string, f func()) {
	defer func() {
		if v := recover(); v != nil {
			r.log.Error("upstream: panic recovered", "in", what, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	f()
}
