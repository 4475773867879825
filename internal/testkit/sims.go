package testkit

import (
	"fmt"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
)

// Sim starts a simulated ComfyUI on a free loopback port and closes it when
// the test ends.
func Sim(tb testing.TB, opts comfysim.Options) *comfysim.Server {
	tb.Helper()
	s, err := comfysim.New(opts)
	if err != nil {
		tb.Fatalf("comfysim.New: %v", err)
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		_ = s.Close()
		tb.Fatalf("comfysim.Start: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// Sims starts n simulators with the same options.
func Sims(tb testing.TB, n int, opts comfysim.Options) []*comfysim.Server {
	tb.Helper()
	out := make([]*comfysim.Server, n)
	for i := range out {
		out[i] = Sim(tb, opts)
	}
	return out
}

// Addrs returns the simulators' host:port addresses.
func Addrs(ss []*comfysim.Server) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.Addr()
	}
	return out
}

// Config is comfygate's default configuration in front of addrs (instances
// named prefix0, prefix1, ...), scaled down for tests: health checks every
// 100 ms that take an instance out after one failure, a 300 ms suspect
// grace, a 500 ms breaker open time, fast socket reconnects and a 5 s
// upstream timeout. mod, if not nil, adjusts it; the result is validated.
func Config(tb testing.TB, prefix string, addrs []string, mod func(*config.Config)) *config.Config {
	tb.Helper()
	cfg := config.Default()
	cfg.Instances = nil
	for i, a := range addrs {
		cfg.Instances = append(cfg.Instances, config.Instance{Name: fmt.Sprintf("%s%d", prefix, i), Address: a})
	}
	cfg.Timeout = 5 * time.Second
	cfg.HealthCheck.Interval = 100 * time.Millisecond
	cfg.HealthCheck.Timeout = time.Second
	cfg.HealthCheck.UnhealthyThreshold = 1
	cfg.Failover.SuspectGrace = 300 * time.Millisecond
	cfg.Breaker.OpenTimeout = 500 * time.Millisecond
	cfg.WebSocket.ReconnectMin = 20 * time.Millisecond
	cfg.WebSocket.ReconnectMax = 200 * time.Millisecond
	cfg.Jobs.StateDir = tb.TempDir()
	if mod != nil {
		mod(cfg)
	}
	if err := cfg.Validate(); err != nil {
		tb.Fatalf("test config: %v", err)
	}
	return cfg
}

// DrivenConfig is the configuration of tests that drive health checks
// themselves: instances i1, i2, ... at addrs, short call and check
// timeouts, a health interval and an open breaker of an hour (nothing
// changes an instance's state unless the test does), a 1 s suspect grace.
func DrivenConfig(addrs ...string) *config.Config {
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
