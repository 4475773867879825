package upstream

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/clock"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
)

// coreConfig is testkit.DrivenConfig.
func coreConfig(addrs ...string) *config.Config { return testkit.DrivenConfig(addrs...) }

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
	return newClockedPool(t, cfg, start, nil)
}

// fakeClock is a fake clock at a fixed date.
func fakeClock() *testkit.FakeClock {
	return testkit.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}

// newClockedPool is newCorePool on clk (nil: the wall clock), built by
// testkit.Start with only the pool wired (Idle unless start).
func newClockedPool(t testing.TB, cfg *config.Config, start bool, clk clock.Clock) (*Pool, *logRec) {
	t.Helper()
	rec := &logRec{}
	gw := testkit.Start(t, testkit.GatewayOptions{Base: cfg, Logger: slog.New(rec), Idle: !start},
		testkit.Wiring[*Pool, testkit.NoPart, testkit.NoPart, testkit.NoPart]{
			Pool: func(cfg *config.Config, m *metrics.Metrics, log *slog.Logger) (*Pool, error) {
				return NewWithClock(cfg, m, log, clk)
			},
		})
	return gw.Pool(), rec
}
