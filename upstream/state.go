package upstream

// What an instance is going through: its health verdict, its event
// socket, whether it is leaving the pool or held by an operator, its
// comebacks and its warm-up. Flags in atomics, read on the hot path.

import (
	"sync/atomic"
	"time"
)

// State is an instance's health and lifecycle flags (Instance.State).
type State struct {
	inst *Instance // its instance, for the clock and metrics; nil for an Instance a pool did not build

	healthy    atomic.Bool
	suspect    atomic.Bool // socket lost, not yet confirmed by health check
	draining   atomic.Bool // removed by discovery or a reload; no new work
	failures   atomic.Int32
	successes  atomic.Int32 // consecutive passed health checks
	lastCheck  atomic.Int64 // unix nanos
	confirming atomic.Bool  // a SocketLost check is running
	socketUp   atomic.Bool
	lostAt     atomic.Int64 // unix nanos its socket was lost; 0 while up

	held   atomic.Bool            // drained by an operator (Fleet.Drain): no new work
	cold   atomic.Bool            // a warm-up must pass before it takes work (warmup.go)
	warmup atomic.Pointer[string] // "" none, "running", "ok", "failed: ..."
	// upSince counts the instance's comebacks: it changes each time the
	// instance turns healthy, so a cache of its state (the catalogue) knows
	// to read it again.
	upSince atomic.Uint64
	// reconnects counts its event socket's reconnections after a loss.
	reconnects atomic.Uint64
}

// Healthy reports the health-check verdict.
func (s *State) Healthy() bool { return s.healthy.Load() }

// Suspect reports that its event socket dropped and no health check has
// confirmed it dead or alive yet.
func (s *State) Suspect() bool { return s.suspect.Load() }

// SocketUp reports whether comfygate's event socket to it is connected.
func (s *State) SocketUp() bool { return s.socketUp.Load() }

// SetSocketUp records the event socket's state (and its metric), and when
// it was lost (LostAt).
func (s *State) SetSocketUp(up bool) {
	if up {
		s.socketUp.Store(true)
		s.lostAt.Store(0)
	} else {
		s.lostAt.Store(s.inst.clock().Now().UnixNano())
		s.socketUp.Store(false)
	}
	if s.inst != nil && s.inst.reg != nil {
		s.inst.reg.m.SetUpstreamSocket(s.inst.Name, up)
	}
}

// LostAt is when its event socket was lost; zero while it is up or
// before it was ever lost.
func (s *State) LostAt() time.Time {
	if n := s.lostAt.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// ForceHealthy sets the health verdict without a check, as a test that
// needs an instance in a given state does; the next health check of a
// running pool judges it again.
func (s *State) ForceHealthy(up bool) { s.healthy.Store(up) }

// Comebacks changes each time the instance turns healthy or its event
// socket reconnects after a loss (a restart may pass no failed health
// check): it counts them.
func (s *State) Comebacks() uint64 { return s.upSince.Load() + s.reconnects.Load() }

// Leaving reports whether the instance is leaving the pool (discovery or
// a reload removed it): it finishes its prompts and goes.
func (s *State) Leaving() bool { return s.draining.Load() }

// Held reports whether an operator drained the instance.
func (s *State) Held() bool { return s.held.Load() }

// WarmupState is "" (no warm-up configured), "pending", "running", "ok"
// or "failed: <why>".
func (s *State) WarmupState() string {
	if w := s.warmup.Load(); w != nil {
		return *w
	}
	return ""
}

func (s *State) setWarmup(v string) { s.warmup.Store(&v) }
