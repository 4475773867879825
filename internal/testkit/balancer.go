package testkit

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Balancer is a TCP load balancer in front of several gateways (replicas
// of one fleet), as a deployment puts one in front of comfygate: it picks
// a backend per client connection and splices the bytes both ways, so a
// WebSocket passes through as any connection does. RoundRobin takes the
// backends in turns; Split sends every WebSocket handshake to one backend
// and every other connection to another, so that a client's POST /prompt
// and its /ws are on different replicas by construction.
//
// Per connection means an HTTP client's keep-alive connection stays on
// one backend for all its requests: a test that wants its requests spread
// uses a client without keep-alive (HTTPClient).
//
// It is stopped when the test ends. Methods are safe for concurrent use.
type Balancer struct {
	// Addr is the balancer's host:port and URL "http://" + Addr: what the
	// clients are given.
	Addr, URL string

	backends []string
	pick     func(ws bool) int
	conns    []atomic.Int64 // connections sent to each backend
	wsConns  []atomic.Int64 // of those, WebSocket handshakes
	wg       sync.WaitGroup // the accept loop and the pumps

	openMu sync.Mutex // guards open
	open   map[net.Conn]struct{}
}

// RoundRobin starts a balancer that sends each connection to the next of
// addrs in turn, whatever it carries.
func RoundRobin(tb testing.TB, addrs ...string) *Balancer {
	tb.Helper()
	var next atomic.Uint64
	n := uint64(len(addrs))
	return startBalancer(tb, addrs, func(bool) int { return int((next.Add(1) - 1) % n) })
}

// Split starts a balancer that sends every WebSocket handshake (a
// request line GET .../ws) to wsAddr and every other connection to
// httpAddr: backend 0 is httpAddr, backend 1 wsAddr.
func Split(tb testing.TB, httpAddr, wsAddr string) *Balancer {
	tb.Helper()
	return startBalancer(tb, []string{httpAddr, wsAddr}, func(ws bool) int {
		if ws {
			return 1
		}
		return 0
	})
}

func startBalancer(tb testing.TB, addrs []string, pick func(ws bool) int) *Balancer {
	tb.Helper()
	if len(addrs) == 0 {
		tb.Fatal("balancer: no backend")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("balancer: %v", err)
	}
	b := &Balancer{
		Addr: ln.Addr().String(), backends: addrs, pick: pick,
		conns: make([]atomic.Int64, len(addrs)), wsConns: make([]atomic.Int64, len(addrs)),
		open: map[net.Conn]struct{}{},
	}
	b.URL = "http://" + b.Addr
	b.wg.Add(1)
	go b.accept(ln)
	tb.Cleanup(func() {
		_ = ln.Close()
		b.openMu.Lock()
		for c := range b.open {
			_ = c.Close()
		}
		b.openMu.Unlock()
		b.wg.Wait()
	})
	return b
}

// WSURL is the balancer's /ws URL for clientID ("": none, as the web UI's
// first connection).
func (b *Balancer) WSURL(clientID string) string {
	if clientID == "" {
		return "ws://" + b.Addr + "/ws"
	}
	return "ws://" + b.Addr + "/ws?clientId=" + url.QueryEscape(clientID)
}

// Conns returns how many connections went to each backend so far (in the
// order given), and how many of those were WebSocket handshakes.
func (b *Balancer) Conns() (all, ws []int64) {
	all, ws = make([]int64, len(b.backends)), make([]int64, len(b.backends))
	for i := range b.backends {
		all[i], ws[i] = b.conns[i].Load(), b.wsConns[i].Load()
	}
	return all, ws
}

// HTTPClient is a client without keep-alive: each request is a
// connection of its own, so RoundRobin spreads consecutive requests over
// the backends.
func (b *Balancer) HTTPClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

func (b *Balancer) accept(ln net.Listener) {
	defer b.wg.Done()
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		if !b.track(in) {
			_ = in.Close()
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.serve(in)
		}()
	}
}

// track records c as open; false once the balancer stopped.
func (b *Balancer) track(c net.Conn) bool {
	b.openMu.Lock()
	defer b.openMu.Unlock()
	if b.open == nil {
		return false
	}
	b.open[c] = struct{}{}
	return true
}

func (b *Balancer) untrack(c net.Conn) {
	b.openMu.Lock()
	defer b.openMu.Unlock()
	delete(b.open, c)
}

// serve reads the connection's first request line, picks the backend and
// splices the connection there; both sides close when either ends.
func (b *Balancer) serve(in net.Conn) {
	defer b.untrack(in)
	defer in.Close()
	br := bufio.NewReader(in)
	line, err := br.ReadSlice('\n')
	if err != nil {
		return
	}
	ws := isWebSocketLine(line)
	i := b.pick(ws)
	out, err := net.Dial("tcp", b.backends[i])
	if err != nil {
		return
	}
	if !b.track(out) {
		_ = out.Close()
		return
	}
	defer b.untrack(out)
	defer out.Close()
	b.conns[i].Add(1)
	if ws {
		b.wsConns[i].Add(1)
	}
	if _, err := out.Write(line); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(out, br); done <- struct{}{} }()
	go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
	<-done
	_ = in.Close()
	_ = out.Close()
	<-done
}

// isWebSocketLine reports whether an HTTP request line is a GET of a
// path ending in /ws (ComfyUI's /ws, /api/ws, or under a prefix).
func isWebSocketLine(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, []byte("GET "))
	if !ok {
		return false
	}
	target, _, _ := bytes.Cut(rest, []byte(" "))
	p, _, _ := strings.Cut(string(target), "?")
	return p == "/ws" || strings.HasSuffix(p, "/ws")
}
