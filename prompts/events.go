package prompts

// How the table hears of the pool's instances: it subscribes to their
// events (upstream.Pool.Subscribe) and reacts. Added opens a socket,
// Removed closes it once the instance's prompts are done, Down starts
// failover once failover.suspect_grace shows the instance is really gone,
// Warmup runs the instance's warm-up workflow (warmup.go).

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/upstream"
)

// instances is the table's side of the pool's instances: it handles
// their events, runs their sockets and owners, and their warm-ups.
type instances struct {
	p      fleet
	cfg    *config.Config
	log    *slog.Logger
	run    *run
	owners *owners                // the instances' owners and sockets (run.go)
	sub    *upstream.Subscription // the pool's instance events

	settled chan struct{} // capacity 1: a socket came up or its first dial failed (awaitSockets)
}

// added opens the socket of inst (at start if the table is not running
// yet). Calling it twice is harmless.
func (t *instances) added(inst *upstream.Instance) {
	s := t.owners.socketFor(inst)
	if t.run.context() != nil && !t.run.closed() {
		t.runSocket(s)
	}
}

// socketSettled reports whether inst's socket is up or its first dial
// failed (Table.SocketSettled).
func (t *instances) socketSettled(inst *upstream.Instance) bool {
	s := t.owners.get(inst)
	return inst.State().SocketUp() || s == nil || s.dialed.Load()
}

// removed closes inst's socket once its prompts are done.
func (t *instances) removed(inst *upstream.Instance) {
	s := t.owners.get(inst)
	if s == nil {
		return
	}
	s.box.post(func() {
		s.draining = true
		s.passes.closeIfDrained()
	})
}

// startEvents handles the events queued so far (the pool's Start
// announced its instances: their sockets open before awaitSockets looks),
// then runs a goroutine handling the rest in order until Close.
func (t *instances) startEvents(ctx context.Context) {
	for {
		ev, ok, _ := t.sub.TryNext()
		if !ok {
			break
		}
		safely(t.log, "instance event", func() { t.handle(ev) })
	}
	t.run.goBackground(func(context.Context) {
		for {
			ev, ok := t.sub.Next(ctx)
			if !ok {
				return
			}
			safely(t.log, "instance event", func() { t.handle(ev) })
		}
	})
}

// handle reacts to one instance event. It must not wait long: the events
// after it wait for it.
func (t *instances) handle(ev upstream.InstanceEvent) {
	switch ev.Kind {
	case upstream.EventAdded:
		t.added(ev.Inst)
	case upstream.EventRemoved:
		t.removed(ev.Inst)
	case upstream.EventDown:
		s := t.owners.socketFor(ev.Inst)
		s.box.post(func() { s.passes.wantFailOver() })
	case upstream.EventWarmup:
		t.warmUp(ev.Inst)
	}
}

// An instance that went down is failed over by its owner once its death
// is sure: its socket has stayed down for failover.suspect_grace and no
// probe meanwhile got an answer. A refused or reset connection is known
// at once, but an instance that is unreachable for a moment only (its
// network or its port flapping) still runs its queue: moving its prompts
// then would run them twice. A hung instance has used the grace up
// already (its socket went silent, then a health check timed out). The
// grace is a state of the owner (instSocket.failing): its probes are
// workers and its waits timers of the pool's clock, whose answers and
// expiries are messages to the owner.

// errNoProbe stands for a probe that ended without an error value (it
// panicked): no answer.
var errNoProbe = errors.New("prompts: probe ended without an answer")

// wantFailOver begins the grace of s's instance, or asks for another
// after the one under way (the instance came back and went down again
// meanwhile). On the owner.
func (s *passes) wantFailOver() {
	if s.failing {
		s.failAgain = true
		return
	}
	s.failing, s.failAgain = true, false
	s.graceCheck()
}

// graceCheck looks at the instance once: back (its socket is up), its
// grace used up (its prompts move, in a worker), or still within it (a
// probe, in a worker). On the owner.
func (s *passes) graceCheck() {
	t := s.t
	inst := s.inst
	if inst.State().SocketUp() {
		s.failDone()
		return
	}
	lost := inst.State().LostAt()
	left := t.cfg.Failover.SuspectGrace - t.p.Clock().Now().Sub(lost)
	if lost.IsZero() || left <= 0 {
		// Never connected (nothing ran there unseen), or down for the
		// whole grace.
		if !t.run.goBackground(func(context.Context) {
			defer s.box.post(func() { s.failDone() })
			t.InstanceDown(inst)
		}) {
			s.failing = false
		}
		return
	}
	if !t.run.goBackground(func(ctx context.Context) {
		err := errNoProbe
		defer func() {
			if ctx.Err() == nil {
				s.box.post(func() { s.graceProbed(left, err) })
			}
		}()
		err = t.p.Probe(ctx, inst, min(left, t.cfg.HealthCheck.Timeout))
	}) {
		s.failing = false
	}
}

// graceProbed acts on a probe within the grace (left of it remained when
// it began): an answer keeps the prompts where they are; none looks again
// shortly. On the owner.
func (s *passes) graceProbed(left time.Duration, err error) {
	t := s.t
	if err == nil {
		t.log.Info("prompts: instance answers again; its prompts stay", "instance", s.inst.Name)
		s.failDone()
		return
	}
	grace := t.cfg.Failover.SuspectGrace
	poll := min(max(grace/8, 20*time.Millisecond), 250*time.Millisecond)
	t.p.Clock().AfterFunc(min(poll, left), func() { s.box.post(func() { s.graceCheck() }) })
}

// failDone ends the grace (or the failover after it), and begins another
// if the instance went down again meanwhile. On the owner.
func (s *passes) failDone() {
	s.failing = false
	if s.failAgain {
		s.wantFailOver()
	}
}

// awaitSockets waits, at most limit, until every healthy instance's event
// socket is up (or its first dial failed): a prompt sent before its
// instance's socket connects would run with no progress events reaching
// its client (only its end, rebuilt from history on connect).
func (t *instances) awaitSockets(ctx context.Context, limit time.Duration) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for {
		waiting := false
		for _, inst := range t.p.Instances() {
			if inst.State().Healthy() && !t.socketSettled(inst) {
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
