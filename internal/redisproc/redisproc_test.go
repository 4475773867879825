package redisproc_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/redisproc"
	"github.com/comfygate/comfygate/internal/testkit"
)

// client is a go-redis client of addr that tries each command once.
func client(t *testing.T, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// A started server answers PING on a loopback port; killed, it refuses;
// started again, it answers on the same address, empty.
func TestServerRestartsOnItsPort(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv, err := redisproc.Start(ctx, redisproc.Options{Bin: testkit.RedisServerBin(t), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Kill)
	host, _, err := net.SplitHostPort(srv.Addr())
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("Addr %q: want 127.0.0.1:port (%v)", srv.Addr(), err)
	}
	if srv.URL() != "redis://"+srv.Addr() {
		t.Errorf("URL %q, want redis://%s", srv.URL(), srv.Addr())
	}
	if err := client(t, srv.Addr()).Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}

	srv.Kill()
	if err := redisproc.Ping(ctx, srv.Addr()); err == nil {
		t.Fatal("PING answered after Kill")
	}
	srv.Kill() // a second Kill does nothing

	if err := srv.Start(ctx); err != nil {
		t.Fatalf("Start again: %v", err)
	}
	if err := redisproc.Ping(ctx, srv.Addr()); err != nil {
		t.Fatalf("PING after Start: %v", err)
	}
	if n, err := client(t, srv.Addr()).Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Errorf("EXISTS k after a restart = %d, %v; want 0 (no persistence)", n, err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Errorf("Start while running: %v", err)
	}
}

// A port another process holds makes redis-server exit, and the error says
// why from its log.
func TestStartOnTakenPortReportsLog(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	go func() { // hang up on PINGs at once rather than at their deadline
		for {
			c, err := taken.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := taken.Addr().(*net.TCPAddr).Port
	srv, err := redisproc.Start(t.Context(), redisproc.Options{Bin: testkit.RedisServerBin(t), Dir: t.TempDir(), Port: port})
	if err == nil {
		srv.Kill()
		t.Fatalf("redis-server started on %d, which another listener holds", port)
	}
	if !strings.Contains(err.Error(), "Address already in use") {
		t.Errorf("error %q does not carry the log's reason", err)
	}
}

// What redis-server says on stderr before its log is open reaches the
// error too.
func TestStartReportsStderr(t *testing.T) {
	t.Parallel()
	srv, err := redisproc.Start(t.Context(), redisproc.Options{Bin: testkit.RedisServerBin(t), Dir: filepath.Join(t.TempDir(), "missing")})
	if err == nil {
		srv.Kill()
		t.Fatal("redis-server started with a --dir that does not exist")
	}
	if !strings.Contains(err.Error(), "No such file or directory") {
		t.Errorf("error %q does not carry redis-server's stderr", err)
	}
}

// A context that has ended stops the wait, and no server is left.
func TestStartEndsWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	srv, err := redisproc.Start(ctx, redisproc.Options{Bin: testkit.RedisServerBin(t), Dir: t.TempDir()})
	if err == nil {
		srv.Kill()
		t.Fatal("Start succeeded with an ended context")
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %q, want %v", err, context.Canceled)
	}
}
