package prompts

// How the table hears of the pool's instances: it subscribes to their
// events (upstream.Pool.Subscribe) and reacts. Added opens a socket,
// Removed closes it once the instance's prompts are done, Down starts
// failover once failover.suspect_grace shows the instance is really gone,
// Warmup runs the instance's warm-up workflow (warmup.go).

import (
	"context"
	"time"

	"github.com/comfygate/comfygate/upstream"
)

// startEvents handles the events queued so far (the pool's Start
// announced its instances: their sockets open before awaitSockets looks),
// then runs a goroutine handling the rest in order until Close.
func (t *Table) startEvents(ctx context.Context) {
	for {
		ev, ok, _ := t.sub.TryNext()
		if !ok {
			break
		}
		t.safely("instance event", func() { t.handle(ev) })
	}
	t.goBackground(func(context.Context) {
		for {
			ev, ok := t.sub.Next(ctx)
			if !ok {
				return
			}
			t.safely("instance event", func() { t.handle(ev) })
		}
	})
}

// handle reacts to one instance event. It must not wait long: the events
// after it wait for it.
func (t *Table) handle(ev upstream.InstanceEvent) {
	switch ev.Kind {
	case upstream.EventAdded:
		t.InstanceAdded(ev.Inst)
	case upstream.EventRemoved:
		t.InstanceRemoved(ev.Inst)
	case upstream.EventDown:
		s := t.socketFor(ev.Inst)
		s.box.post(func() { t.wantFailOver(s) })
	case upstream.EventWarmup:
		t.warmUp(ev.Inst)
	}
}

// wantFailOver starts failOver of s's instance in a worker, or asks for
// another after the one running (the instance came back and went down
// again meanwhile). On the owner.
func (t *Table) wantFailOver(s *instSocket) {
	if s.failing {
		s.failAgain = true
		return
	}
	s.failAgain = false
	s.failing = t.goBackground(func(ctx context.Context) {
		defer s.box.post(func() { // its end, even after a panic
			s.failing = false
			if s.failAgain && ctx.Err() == nil {
				t.wantFailOver(s)
			}
		})
		t.failOver(ctx, s.inst)
	})
}

// failOver moves inst's prompts to other instances once its death is
// sure: its socket has stayed down for failover.suspect_grace and no probe
// meanwhile got an answer. A refused or reset connection is known at once,
// but an instance that is unreachable for a moment only (its network or
// its port flapping) still runs its queue: moving its prompts then would
// run them twice. A hung instance has used the grace up already (its
// socket went silent, then a health check timed out).
func (t *Table) failOver(ctx context.Context, inst *upstream.Instance) {
	if t.staysDown(ctx, inst) {
		t.InstanceDown(inst)
	}
}

// staysDown waits until inst's socket has been down for
// failover.suspect_grace, probing it meanwhile; false as soon as it
// answers, its socket is back, or ctx ends.
func (t *Table) staysDown(ctx context.Context, inst *upstream.Instance) bool {
	grace := t.cfg.Failover.SuspectGrace
	poll := min(max(grace/8, 20*time.Millisecond), 250*time.Millisecond)
	clk := t.p.Clock()
	for {
		if inst.SocketUp() || ctx.Err() != nil {
			return false
		}
		lost := inst.LostAt()
		if lost.IsZero() {
			return true // never connected: nothing ran there unseen
		}
		left := grace - clk.Now().Sub(lost)
		if left <= 0 {
			return true
		}
		if err := t.p.Probe(ctx, inst, min(left, t.cfg.HealthCheck.Timeout)); err == nil {
			t.log.Info("prompts: instance answers again; its prompts stay", "instance", inst.Name)
			return false
		}
		tm := clk.NewTimer(min(poll, left))
		select {
		case <-ctx.Done():
			tm.Stop()
			return false
		case <-tm.C():
		}
	}
}

// awaitSockets waits, at most limit, until every healthy instance's event
// socket is up (or its first dial failed): a prompt sent before its
// instance's socket connects would run with no progress events reaching
// its client (only its end, rebuilt from history on connect).
func (t *Table) awaitSockets(ctx context.Context, limit time.Duration) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for {
		waiting := false
		for _, inst := range t.p.Instances() {
			if inst.Healthy() && !t.SocketSettled(inst) {
				waiting = true
				break
			}
		}
		if !waiting {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			t.log.Warn("prompts: not every healthy instance's socket connected at start-up", "waited", limit)
			return
		case <-t.settled: // a socket came up or its first dial failed
		}
	}
}
