package jobs

import (
	"context"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"
)

// runner runs the service's goroutines (its loops, and the work the parts
// start) and waits for them in Close. A panic in one is logged, not fatal.
type runner struct {
	ctx  context.Context // ends when the service closes
	wg   sync.WaitGroup
	wake chan struct{} // wakes the dispatch loop
	log  *slog.Logger
}

// goLoop starts loop(name, period, fn).
func (s *runner) goLoop(name string, period time.Duration, fn func()) {
	s.wg.Add(1)
	go s.loop(name, period, fn)
}

// spawn runs fn on a goroutine, safely.
func (s *runner) spawn(what string, fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.safely(what, fn)
	}()
}

// goPlain runs fn on a goroutine.
func (s *runner) goPlain(fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

// wait waits for every goroutine started.
func (s *runner) wait() { s.wg.Wait() }

// loop runs fn every period and whenever the dispatcher is woken.
func (s *runner) loop(name string, period time.Duration, fn func()) {
	defer s.wg.Done()
	t := time.NewTicker(period)
	defer t.Stop()
	wake := s.wake
	if name != "dispatch" {
		wake = nil
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-wake:
		}
		s.safely(name, fn)
	}
}

// safely runs fn, logging a panic instead of dying with it.
func (s *runner) safely(what string, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("jobs: panic", "in", what, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	fn()
}

// kick wakes the dispatcher without blocking.
func (s *runner) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
