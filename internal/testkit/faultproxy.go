package testkit

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// FaultProxy is a TCP proxy in front of one instance whose behaviour a test
// switches at run time, to model what happens to a ComfyUI process and its
// network: Pass (forward everything), Refuse (nothing listens: connections
// are refused, open ones reset), Hang (connections are accepted and kept
// open, nothing is forwarded either way: a SIGSTOPped process), Resume
// (what Hang held back flows again: SIGCONT), Slow (every byte both ways at
// a fixed rate), DropWebSockets (its WebSocket connections cut every few
// seconds), and Flap (refusing and passing in turns). Answering 500 to
// everything is comfysim's SetFail500, freezing execution its SetFrozen.
//
// It is stopped when the test ends. Methods are safe for concurrent use.
type FaultProxy struct {
	tb     testing.TB
	target string
	addr   string
	wg     sync.WaitGroup // accept loops, pumps, flap/drop loops

	mu      sync.Mutex // guards the fields below
	ln      net.Listener
	conns   map[*faultConn]struct{}
	hold    chan struct{} // non-nil while hung; closed by Resume/Pass
	rate    int           // bytes per second and direction while slow; 0 = full speed
	loop    chan struct{} // closed to stop the running Flap or DropWebSockets loop
	closed  bool
	accepts int
	ticks   int // steps taken by Flap and DropWebSockets loops
}

// faultConn is one client connection and its connection to the target.
type faultConn struct {
	client, server net.Conn
	ws             bool
	once           sync.Once
	done           chan struct{}
}

// close cuts both sides; reset makes the client side send RST instead of
// FIN, as the kernel does for a process that died.
func (c *faultConn) close(reset bool) {
	c.once.Do(func() {
		if reset {
			if tc, ok := c.client.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
		}
		_ = c.client.Close()
		_ = c.server.Close()
		close(c.done)
	})
}

// NewFaultProxy listens on a free loopback port and forwards to target
// (host:port), in Pass mode.
func NewFaultProxy(tb testing.TB, target string) *FaultProxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("fault proxy: %v", err)
	}
	p := &FaultProxy{tb: tb, target: target, addr: ln.Addr().String(), ln: ln, conns: map[*faultConn]struct{}{}}
	p.serve(ln)
	tb.Cleanup(p.close)
	return p
}

// Addr is the proxy's host:port: configure it as the instance's address.
func (p *FaultProxy) Addr() string { return p.addr }

// Accepted counts the connections accepted so far.
func (p *FaultProxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepts
}

// Ticks counts the steps the Flap and DropWebSockets loops took so far
// (a drop of the WebSockets, a turn of Flap): a test spreads its work over
// several of them by waiting for the count to grow.
func (p *FaultProxy) Ticks() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ticks
}

// Pass ends every fault: it listens again if refusing, lets held traffic
// flow, returns to full speed and stops Flap and DropWebSockets.
func (p *FaultProxy) Pass() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLoopLocked()
	p.passLocked()
}

func (p *FaultProxy) passLocked() {
	if p.closed {
		return
	}
	p.rate = 0
	if p.hold != nil {
		close(p.hold)
		p.hold = nil
	}
	if p.ln == nil {
		var ln net.Listener
		var err error
		for range 100 { // the port may take a moment to be free again
			if ln, err = net.Listen("tcp", p.addr); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			p.tb.Errorf("fault proxy: listen again on %s: %v", p.addr, err)
			return
		}
		p.ln = ln
		p.serve(ln)
	}
}

// Refuse stops listening (new connections are refused) and resets every
// open connection, as a killed process's kernel does.
func (p *FaultProxy) Refuse() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLoopLocked()
	p.refuseLocked()
}

func (p *FaultProxy) refuseLocked() {
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.close(true)
	}
}

// Hang keeps accepting connections but forwards nothing either way until
// Resume or Pass; what was sent meanwhile is held, not lost.
func (p *FaultProxy) Hang() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hold == nil && !p.closed {
		p.hold = make(chan struct{})
	}
}

// Resume lets what Hang held back flow, like SIGCONT.
func (p *FaultProxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hold != nil {
		close(p.hold)
		p.hold = nil
	}
}

// Slow forwards at most bytesPerSec bytes per second in each direction of
// each connection (1 is a byte a second).
func (p *FaultProxy) Slow(bytesPerSec int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rate = max(bytesPerSec, 1)
}

// DropWebSockets cuts every WebSocket connection through the proxy (those
// that began with GET /ws or GET /api/ws) every interval, until Pass or
// another loop replaces it. Plain HTTP is left alone.
func (p *FaultProxy) DropWebSockets(every time.Duration) {
	p.startLoop(every, func(int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		for c := range p.conns {
			if c.ws {
				c.close(false)
			}
		}
	})
}

// Flap refuses and passes in turns, each for period, starting with Refuse,
// until Pass or Refuse.
func (p *FaultProxy) Flap(period time.Duration) {
	p.mu.Lock()
	p.refuseLocked()
	p.mu.Unlock()
	p.startLoop(period, func(n int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if n%2 == 0 {
			p.passLocked()
		} else {
			p.refuseLocked()
		}
	})
}

func (p *FaultProxy) startLoop(every time.Duration, tick func(n int)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLoopLocked()
	if p.closed {
		return
	}
	stop := make(chan struct{})
	p.loop = stop
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-t.C:
				tick(n)
				p.mu.Lock()
				p.ticks++
				p.mu.Unlock()
			}
		}
	}()
}

func (p *FaultProxy) stopLoopLocked() {
	if p.loop != nil {
		close(p.loop)
		p.loop = nil
	}
}

func (p *FaultProxy) close() {
	p.mu.Lock()
	p.closed = true
	p.stopLoopLocked()
	if p.hold != nil {
		close(p.hold)
		p.hold = nil
	}
	p.refuseLocked()
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *FaultProxy) serve(ln net.Listener) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			cn, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.handle(cn)
			}()
		}
	}()
}

func (p *FaultProxy) handle(client net.Conn) {
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		if tc, ok := client.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = client.Close()
		return
	}
	c := &faultConn{client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.close(true)
		return
	}
	p.conns[c] = struct{}{}
	p.accepts++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		c.close(false)
	}()

	br := bufio.NewReader(client)
	head, _ := br.Peek(len("GET /api/ws"))
	if bytes.HasPrefix(head, []byte("GET /ws")) || bytes.HasPrefix(head, []byte("GET /api/ws")) {
		p.mu.Lock()
		c.ws = true
		p.mu.Unlock()
	}
	ended := make(chan struct{}, 2)
	go func() { p.pump(c, server, br); ended <- struct{}{} }()
	go func() { p.pump(c, client, server); ended <- struct{}{} }()
	<-ended
	c.close(false)
	<-ended
}

// pump copies src to dst, holding each chunk while hung and pacing it
// while slow.
func (p *FaultProxy) pump(c *faultConn, dst net.Conn, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.deliver(c, dst, buf[:n]) {
				return
			}
		}
		if err != nil {
			return // the first side to end ends the connection
		}
	}
}

// deliver writes b to dst once the proxy is not hung, at the slow rate if
// one is set. It reports false when the connection is gone.
func (p *FaultProxy) deliver(c *faultConn, dst net.Conn, b []byte) bool {
	for len(b) > 0 {
		p.mu.Lock()
		hold, rate := p.hold, p.rate
		p.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
				continue
			case <-c.done:
				return false
			}
		}
		chunk := len(b)
		var pause time.Duration
		if rate > 0 {
			chunk = min(chunk, max(rate/20, 1))
			pause = time.Duration(chunk) * time.Second / time.Duration(rate)
		}
		if _, err := dst.Write(b[:chunk]); err != nil {
			return false
		}
		b = b[chunk:]
		if pause > 0 {
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-c.done:
				t.Stop()
				return false
			}
		}
	}
	return true
}
