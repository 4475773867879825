package testkit

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
		addr, err := startRedis(t, bin)
		if err == nil {
			return "redis://" + addr
		}
		last = err
	}
	t.Fatalf("redis-server did not start: %v", last)
	return ""
}

// startRedis runs one redis-server on a free loopback port and returns
// its address once it answers PING; it is stopped at the test's end.
func startRedis(t testing.TB, bin string) (string, error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	dir := t.TempDir()
	cmd := exec.Command(bin,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"), "--daemonize", "no")
	if err := cmd.Start(); err != nil {
		return "", err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	gone := false
	answered := Poll(redisStartBound, func() bool {
		select {
		case <-exited:
			gone = true
			return true
		default:
		}
		return redisPing(addr) == nil
	})
	if gone || !answered {
		if !gone {
			stop()
		}
		log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
		return "", fmt.Errorf("redis-server on %s: no PONG within %v; its log:\n%s", addr, redisStartBound, log)
	}
	t.Cleanup(stop)
	return addr, nil
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
