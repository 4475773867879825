// Package limits owns comfygate's connection-level limits: how many
// connections one client address may hold open, and the early refusal of
// request header blocks the HTTP server would otherwise wait on (bare-LF
// line endings). It also holds the token buckets (Buckets) that rate-limit
// submissions per key or per client address.
package limits

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// ListenerOptions configures Listen.
type ListenerOptions struct {
	// MaxConnsPerIP caps the connections one client IP may hold open
	// (WebSockets included); 0 means no cap. A connection over the cap is
	// answered 429 and closed at once.
	MaxConnsPerIP int
	// Uncapped, when set, names peers MaxConnsPerIP does not apply to: the
	// trusted proxies (server.trusted_proxies), whose one address carries
	// the connections of many clients. The cap counts TCP peers, before
	// any header: it does not see the clients behind a proxy.
	Uncapped func(netip.Addr) bool
	// ProxyProtocol, when set, names peers whose connections start with a
	// PROXY protocol v2 header (proxyproto.go): it is read before the
	// first request, and the client it names is the connection's
	// RemoteAddr. A connection from such a peer without a valid header is
	// closed (reason "proxy_protocol"). Connections from other peers are
	// not read for one.
	ProxyProtocol func(netip.Addr) bool
	// MaxHeaderBytes is the header block size past which the framer stops
	// following a connection (the server answers 431 for it):
	// limits.max_header_bytes.
	MaxHeaderBytes int
	// OnRefuse, when set, is called once per refused connection or request
	// with a reason from a fixed set ("conns_per_ip", "bare_lf"), for metrics.
	OnRefuse func(reason string)
}

// Listener wraps a net.Listener: it refuses connections over the per-IP
// cap and wraps every accepted connection in a Conn.
type Listener struct {
	net.Listener
	o ListenerOptions

	mu    sync.Mutex // guards perIP
	perIP map[string]int
}

// Listen wraps ln.
func Listen(ln net.Listener, o ListenerOptions) *Listener {
	return &Listener{Listener: ln, o: o, perIP: map[string]int{}}
}

// tooManyConns is the whole answer to a connection over the per-IP cap.
const tooManyConns = "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json; charset=utf-8\r\n" +
	"Retry-After: 1\r\nConnection: close\r\nContent-Length: 104\r\n\r\n" +
	`{"error":{"type":"too_many_connections","message":"this client address has too many open connections"}}`

// Accept returns the next connection within the caps.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := hostOf(c.RemoteAddr())
		pp := l.proxied(ip)
		if l.uncapped(ip) {
			conn := &Conn{Conn: c, l: l, fr: newFramer(l.o.MaxHeaderBytes)}
			conn.pp.expect = pp
			return conn, nil
		}
		if !l.take(ip) {
			l.refuse("conns_per_ip")
			// A short deadline: Accept must not wait on a client that does not read.
			_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			_, _ = c.Write([]byte(tooManyConns))
			_ = c.Close()
			continue
		}
		conn := &Conn{Conn: c, l: l, ip: ip, fr: newFramer(l.o.MaxHeaderBytes)}
		conn.pp.expect = pp
		return conn, nil
	}
}

func (l *Listener) refuse(reason string) {
	if l.o.OnRefuse != nil {
		l.o.OnRefuse(reason)
	}
}

// proxied reports whether the peer at ip sends a PROXY header.
func (l *Listener) proxied(ip string) bool {
	if l.o.ProxyProtocol == nil {
		return false
	}
	a, err := netip.ParseAddr(ip)
	return err == nil && l.o.ProxyProtocol(a.Unmap())
}

// uncapped reports whether the peer at ip is exempt from the per-IP cap.
func (l *Listener) uncapped(ip string) bool {
	if l.o.Uncapped == nil || l.o.MaxConnsPerIP <= 0 {
		return false
	}
	a, err := netip.ParseAddr(ip)
	return err == nil && l.o.Uncapped(a.Unmap())
}

func (l *Listener) take(ip string) bool {
	if l.o.MaxConnsPerIP <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perIP[ip] >= l.o.MaxConnsPerIP {
		return false
	}
	l.perIP[ip]++
	return true
}

func (l *Listener) release(ip string) {
	if l.o.MaxConnsPerIP <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perIP[ip] <= 1 {
		delete(l.perIP, ip)
		return
	}
	l.perIP[ip]--
}

// Open returns how many connections ip holds (0 without a per-IP cap).
func (l *Listener) Open(ip string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.perIP[ip]
}

func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

// Conn is an accepted connection: it releases its per-IP slot once when
// closed, and its Read returns ErrBareLF for a header block with bare-LF
// line endings (after handing over the bytes before it).
type Conn struct {
	net.Conn
	l      *Listener
	ip     string // its per-IP slot; "" when it holds none (Uncapped)
	closed atomic.Bool

	fr     *framer // used only by the connection's one reader
	failed error
	pp     proxyConn
}

func (c *Conn) Read(p []byte) (int, error) {
	if c.failed != nil {
		return 0, c.failed
	}
	if c.pp.expect {
		if err := c.readProxy(); err != nil {
			c.failed = err
			if err != io.EOF {
				c.l.refuse("proxy_protocol")
			}
			return 0, err
		}
	}
	n, err := c.Conn.Read(p)
	if n > 0 && c.fr != nil {
		if ferr := c.fr.feed(p[:n]); ferr != nil {
			c.failed = ferr
			c.fr = nil
			c.l.refuse("bare_lf")
			// The bytes go with the error: the server parses what came
			// before (an earlier pipelined request) and answers this one 400.
			return n, ferr
		}
		if c.fr.st == stPass {
			c.fr = nil
		}
	}
	return n, err
}

func (c *Conn) Close() error {
	if c.closed.CompareAndSwap(false, true) && c.ip != "" {
		c.l.release(c.ip)
	}
	return c.Conn.Close()
}

// NetConn is the connection under c (to set socket options on it).
func (c *Conn) NetConn() net.Conn { return c.Conn }

// IsBareLF reports whether err is (or wraps) ErrBareLF.
func IsBareLF(err error) bool { return errors.Is(err, ErrBareLF) }
