package upstream

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
)

// coreConfig returns a configuration for the given addresses with short
// intervals and a long health interval (tests drive checks themselves).
func coreConfig(addrs ...string) *config.Config {
	c := config.Default()
	c.Instances = nil
	for k, a := range addrs {
		c.Instances = append(c.Instances, config.Instance{Name: fmt.Sprintf("i%d", k+1), Address: a})
	}
	c.Timeout = 2 * time.Second
	c.HealthCheck.Interval = time.Hour
	c.HealthCheck.Timeout = time.Second
	c.Breaker.OpenTimeout = time.Hour
	c.Failover.SuspectGrace = time.Second
	return c
}

// logRec is a slog.Handler that keeps messages.
type logRec struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRec) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRec) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	msg := rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "instance" || a.Key == "to" || a.Key == "reason" {
			msg += " " + a.Key + "=" + a.Value.String()
		}
		return true
	})
	r.msgs = append(r.msgs, msg)
	return nil
}
func (r *logRec) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRec) WithGroup(string) slog.Handler      { return r }

// count returns how many messages contain all of parts.
func (r *logRec) count(parts ...string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
next:
	for _, m := range r.msgs {
		for _, p := range parts {
			if !strings.Contains(m, p) {
				continue next
			}
		}
		n++
	}
	return n
}

// newCorePool builds and (if start) starts a pool, closed at cleanup.
func newCorePool(t testing.TB, cfg *config.Config, start bool) (*Pool, *logRec) {
	t.Helper()
	rec := &logRec{}
	p, err := New(cfg, nil, slog.New(rec))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	if start {
		if err := p.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return p, rec
}
