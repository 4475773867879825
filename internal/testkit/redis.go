package testkit

import (
	"context"
	"testing"

	"github.com/comfygate/comfygate/internal/redisproc"
)

// Redis starts a real redis-server (Debian's package redis-server) for the
// test on a free loopback port, with no persistence (--save "",
// --appendonly no) and a temporary directory of its own, waits until it
// answers PING and stops it when the test ends. It returns its URL
// (redis://127.0.0.1:port), the form state.url takes.
//
// Without redis-server on the PATH the test fails when CI is set (CI
// installs it, .ci/run) and is skipped otherwise, saying to install it.
func Redis(t testing.TB) string {
	t.Helper()
	return StartRedis(t).URL()
}

// RedisServer is a redis-server of one test that the test can kill and
// start again on the same port, as a restarted Redis (with no persistence
// it comes back empty).
type RedisServer struct {
	srv *redisproc.Server
}

// StartRedis is Redis returning the server itself.
func StartRedis(t testing.TB) *RedisServer {
	t.Helper()
	srv, err := redisproc.Start(context.Background(), redisproc.Options{Bin: RedisServerBin(t), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Kill)
	return &RedisServer{srv: srv}
}

// RedisServerBin is the path of redis-server on the PATH. Without one the
// test fails when CI is set (.ci/run installs it) and is skipped
// otherwise, saying to install it.
func RedisServerBin(t testing.TB) string {
	t.Helper()
	return Tool(t, "redis-server", "the shared-state tests need a real one", "redis-server")
}

// URL is the server's redis:// URL.
func (r *RedisServer) URL() string { return r.srv.URL() }

// Addr is the server's host:port.
func (r *RedisServer) Addr() string { return r.srv.Addr() }

// Kill ends the server with SIGKILL and waits for it; nothing when it is
// not running.
func (r *RedisServer) Kill() { r.srv.Kill() }

// Start runs redis-server on the server's port again, after Kill, and
// returns once it answers PING.
func (r *RedisServer) Start() error { return r.srv.Start(context.Background()) }
