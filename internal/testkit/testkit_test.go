package testkit

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/fasthttp/websocket"
)

func TestFakeClock(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	c := NewFakeClock(start)
	t1 := c.NewTimer(2 * time.Second)
	t2 := c.After(time.Second)
	var ran atomic.Bool
	done := make(chan struct{})
	c.AfterFunc(3*time.Second, func() { ran.Store(true); close(done) })
	stopped := c.NewTimer(time.Second)
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop of a pending timer must report true once")
	}
	if c.Pending() != 3 {
		t.Fatalf("pending = %d, want 3", c.Pending())
	}
	c.Advance(1500 * time.Millisecond)
	select {
	case at := <-t2:
		if !at.Equal(start.Add(time.Second)) {
			t.Fatalf("1 s timer fired at %v", at)
		}
	default:
		t.Fatal("1 s timer did not fire after 1.5 s")
	}
	select {
	case <-t1.C():
		t.Fatal("2 s timer fired after 1.5 s")
	default:
	}
	if got := c.Now(); !got.Equal(start.Add(1500 * time.Millisecond)) {
		t.Fatalf("now = %v", got)
	}
	if !t1.Reset(time.Second) { // now due at 2.5 s
		t.Fatal("Reset of a pending timer must report true")
	}
	c.Advance(time.Second)
	if at := <-t1.C(); !at.Equal(start.Add(2500 * time.Millisecond)) {
		t.Fatalf("reset timer fired at %v", at)
	}
	c.Advance(time.Second)
	<-done
	if !ran.Load() || c.Pending() != 0 {
		t.Fatalf("AfterFunc ran=%v, pending=%d", ran.Load(), c.Pending())
	}
}

// fakeTB records Fatalf instead of stopping the goroutine.
type fakeTB struct {
	testing.TB
	failed atomic.Bool
}

func (f *fakeTB) Helper()               {}
func (f *fakeTB) Fatalf(string, ...any) { f.failed.Store(true) }

func TestEventually(t *testing.T) {
	t.Parallel()
	n := 0
	Eventually(t, "third poll", func() bool { n++; return n == 3 })
	ft := &fakeTB{TB: t}
	EventuallyWithin(ft, 20*time.Millisecond, "never", func() bool { return false })
	if !ft.failed.Load() {
		t.Fatal("EventuallyWithin did not fail for a condition that never holds")
	}
}

// get sends GET /system_stats through the proxy with a client that gives up
// after d.
func get(addr string, d time.Duration) (int, error) {
	c := &http.Client{Timeout: d, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/system_stats")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	return resp.StatusCode, err
}

func TestFaultProxyModes(t *testing.T) {
	t.Parallel()
	sim := Sim(t, comfysim.Options{})
	p := NewFaultProxy(t, sim.Addr())
	if code, err := get(p.Addr(), 5*time.Second); err != nil || code != 200 {
		t.Fatalf("pass: %d %v", code, err)
	}

	p.Refuse()
	_, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	var op *net.OpError
	if !errors.As(err, &op) {
		t.Fatalf("refuse: dial error %v, want connection refused", err)
	}
	p.Pass()
	if code, err := get(p.Addr(), 5*time.Second); err != nil || code != 200 {
		t.Fatalf("pass after refuse: %d %v", code, err)
	}

	// Hang: the request is accepted and unanswered; Resume delivers it.
	p.Hang()
	cn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer cn.Close()
	if _, err := io.WriteString(cn, "GET /system_stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = cn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := cn.Read(make([]byte, 1)); n != 0 || !errors.Is(err, errTimeout(err)) {
		t.Fatalf("hung proxy answered: %d bytes, %v", n, err)
	}
	p.Resume()
	_ = cn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(cn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after resume: %v %v", resp, err)
	}
	_ = resp.Body.Close()

	// Slow: 1 byte a second cannot deliver an answer within 300 ms.
	p.Slow(1)
	if _, err := get(p.Addr(), 300*time.Millisecond); err == nil {
		t.Fatal("slow proxy answered within 300 ms")
	}
	p.Pass()

	// Flap: both refusals and answers are seen within a few periods.
	p.Flap(30 * time.Millisecond)
	var ok, refused bool
	Eventually(t, "flapping seen", func() bool {
		if _, err := get(p.Addr(), time.Second); err == nil {
			ok = true
		} else {
			refused = true
		}
		return ok && refused
	})
	p.Pass()
	if code, err := get(p.Addr(), 5*time.Second); err != nil || code != 200 {
		t.Fatalf("pass after flap: %d %v", code, err)
	}
}

// errTimeout returns err when it is a timeout, so errors.Is matches it.
func errTimeout(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return errors.New("not a timeout")
}

func TestFaultProxyDropsWebSockets(t *testing.T) {
	t.Parallel()
	sim := Sim(t, comfysim.Options{})
	p := NewFaultProxy(t, sim.Addr())
	conn, resp, err := websocket.DefaultDialer.Dial("ws://"+p.Addr()+"/ws?clientId=drop", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	defer conn.Close()
	p.DropWebSockets(20 * time.Millisecond)
	// Plain HTTP keeps working while sockets are dropped.
	if code, err := get(p.Addr(), 5*time.Second); err != nil || code != 200 {
		t.Fatalf("HTTP while dropping sockets: %d %v", code, err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(WaitBound))
	for {
		if _, _, err := conn.ReadMessage(); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("socket not dropped")
			}
			return
		}
	}
}

// The client balancer sends a request whose replica refuses, or does not answer
// within the attempt timeout, to the other, and tries a replica that
// failed last for a while; a split session dials its socket at the next
// address when the first refuses.
func TestClientBalancerFailsOver(t *testing.T) {
	t.Parallel()
	sim := Sim(t, comfysim.Options{})
	hung := NewFaultProxy(t, sim.Addr())
	hung.Hang()
	dead := ClosedAddr(t)
	b := NewClientBalancer([]string{dead, hung.Addr(), sim.Addr()}, 300*time.Millisecond)
	hc := b.Client(10 * time.Second)
	t.Cleanup(b.CloseIdleConnections)
	for _, first := range []string{dead, hung.Addr()} {
		resp, err := hc.Get("http://" + first + "/system_stats")
		if err != nil {
			t.Fatalf("GET via %s: %v", first, err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET via %s: %d", first, resp.StatusCode)
		}
	}
	// dead -> hung (timed out) -> sim; then the request for hung goes to
	// sim first (hung and dead failed just now): no more.
	if n := b.Failovers(); n != 2 {
		t.Errorf("failovers: %d, want 2", n)
	}
	s, err := NewSplitSession(context.Background(), "http://"+sim.Addr(), []string{"http://" + dead, "http://" + sim.Addr()}, "", hc)
	if err != nil {
		t.Fatalf("split session: %v", err)
	}
	s.Close()
}
