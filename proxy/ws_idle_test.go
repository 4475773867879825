package proxy

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

var wsIdleClients = flag.Int("ws.idle", 0,
	"TestWSIdleClientMemory: open this many idle client WebSockets through comfygate and report what each costs")

// wsIdleHelperEnv makes the test binary the idle clients' process
// (TestWSIdleClientsHelper): "addr,n".
const wsIdleHelperEnv = "COMFYGATE_WS_IDLE_HELPER"

// TestWSIdleClientMemory measures what an idle client WebSocket costs
// comfygate: n clients (another process, so their own memory is not
// counted) connect to /ws, get their first status message and then send
// nothing. Reported per client: resident memory, Go heap and goroutine
// stacks in use, and goroutines. It asserts nothing about the figures
// (they are measurements); it fails only when the clients cannot connect.
//
//	go test ./proxy/ -run TestWSIdleClientMemory -v -ws.idle=2000
func TestWSIdleClientMemory(t *testing.T) {
	n := *wsIdleClients
	if n <= 0 {
		t.Skip("a measurement: run with -ws.idle=N (e.g. 2000)")
	}
	up := startMinimalUpstream(t)
	g := startGate(t, []string{up.addr}, func(c *config.Config) {
		c.Limits.MaxConnsPerIP = 0 // every client comes from 127.0.0.1
		c.HealthCheck.Interval = time.Hour
	})
	before := memNow(t)

	cmd := exec.Command(os.Args[0], "-test.run=^TestWSIdleClientsHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d", wsIdleHelperEnv, g.addr, n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close() // the helper ends when its stdin does
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- nil
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
		}
		ready <- fmt.Errorf("idle clients' process ended before it was ready: %v", sc.Err())
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("idle clients did not connect within 2 minutes")
	}
	testkit.Eventually(t, "every client registered", func() bool { return g.srv.hub.Clients() == n })
	after := memNow(t)

	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) / 1024 }
	t.Logf("%d idle client WebSockets: per client %.1f KiB resident, %.1f KiB Go heap in use, %.1f KiB goroutine stacks, %.2f goroutines",
		n, per(after.rss, before.rss), per(after.heap, before.heap), per(after.stack, before.stack),
		float64(after.goroutines-before.goroutines)/float64(n))
}

type memSample struct {
	rss, heap, stack uint64
	goroutines       int
}

// memNow samples the process's memory after a collection that returns
// what it can to the OS.
func memNow(t *testing.T) memSample {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("resident memory needs /proc: %v", err)
	}
	var rss uint64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			rss = kb << 10
		}
	}
	return memSample{rss: rss, heap: ms.HeapInuse, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

// TestWSIdleClientsHelper is the idle clients' process of
// TestWSIdleClientMemory (it skips unless started by it): it opens the
// sockets, reads each one's first message, says "ready" and holds them
// until its stdin closes.
func TestWSIdleClientsHelper(t *testing.T) {
	spec := os.Getenv(wsIdleHelperEnv)
	if spec == "" {
		t.Skip("started by TestWSIdleClientMemory only")
	}
	addr, count, _ := strings.Cut(spec, ",")
	n, err := strconv.Atoi(count)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	buf := make([]byte, 4096)
	for i := range n {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		conns = append(conns, c)
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(c, "GET /ws?clientId=idle-%d HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", i, addr)
		// The 101 and the first status message (a text frame naming the sid).
		var got []byte
		for !bytes.Contains(got, []byte(`"sid"`)) {
			k, err := c.Read(buf)
			if err != nil {
				t.Fatalf("client %d: %v after %q", i, err, got)
			}
			got = append(got, buf[:k]...)
		}
		if !bytes.HasPrefix(got, []byte("HTTP/1.1 101")) {
			t.Fatalf("client %d: %q", i, got)
		}
		_ = c.SetDeadline(time.Time{})
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
}
