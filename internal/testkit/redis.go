package testkit

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// redisStartBound bounds how long a redis-server may take to answer PING.
const redisStartBound = 10 * time.Second

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
	t         testing.TB
	bin, addr string
	dir       string

	mu   sync.Mutex // guards cmd and exit
	cmd  *exec.Cmd
	exit chan error // receives the running process's end
}

// StartRedis is Redis returning the server itself.
func StartRedis(t testing.TB) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		const msg = "redis-server is not installed (apt-get install redis-server): the shared-state tests need a real one"
		if ci := os.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
			t.Fatal("CI is set and " + msg + "; .ci/run installs it")
		}
		t.Skip(msg)
	}
	// The free port is found by listening and closing, so another process
	// may take it before redis-server binds it: try a few ports.
	var last error
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		_ = l.Close()
		r := &RedisServer{t: t, bin: bin, addr: addr, dir: t.TempDir()}
		if last = r.Start(); last == nil {
			t.Cleanup(r.Kill)
			return r
		}
	}
	t.Fatalf("redis-server did not start: %v", last)
	return nil
}

// URL is the server's redis:// URL.
func (r *RedisServer) URL() string { return "redis://" + r.addr }

// Addr is the server's host:port.
func (r *RedisServer) Addr() string { return r.addr }

// Kill ends the server with SIGKILL and waits for it; nothing when it is
// not running.
func (r *RedisServer) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exit
	r.cmd = nil
}

// Start runs redis-server on the server's port (again, after Kill) and
// returns once it answers PING.
func (r *RedisServer) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return nil
	}
	_, port, _ := net.SplitHostPort(r.addr)
	cmd := exec.Command(r.bin,
		"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir,
		"--logfile", filepath.Join(r.dir, "redis.log"), "--daemonize", "no")
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	gone := false
	answered := Poll(redisStartBound, func() bool {
		select {
		case err := <-exited:
			exited <- err
			gone = true
			return true
		default:
		}
		return redisPing(r.addr) == nil
	})
	if gone || !answered {
		if !gone {
			_ = cmd.Process.Kill()
		}
		<-exited
		log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
		return fmt.Errorf("redis-server on %s: no PONG within %v; its log:\n%s", r.addr, redisStartBound, log)
	}
	r.cmd, r.exit = cmd, exited
	return nil
}

// redisPing sends one PING in the inline protocol and wants +PONG.
func redisPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}
