package limits

// PROXY protocol version 2 (HAProxy's proxy-protocol.txt, section 2.2): a
// load balancer that passes TCP through (HAProxy send-proxy-v2, AWS NLB,
// …) sends, before any byte of the client's, a binary header naming the
// client's address. Only connections from the peers ListenerOptions.
// ProxyProtocol names are read for it, and those must start with it; from
// any other peer the bytes are the client's own.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
)

// ErrProxyHeader: a connection that must start with a PROXY protocol v2
// header did not.
var ErrProxyHeader = errors.New("proxy protocol v2 header")

// proxySig is the header's first 12 bytes.
var proxySig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// readProxyHeader reads one v2 header from r, byte-exact (nothing of the
// request after it), and returns the source address it names; ok=false
// for a LOCAL command or an address family other than TCP over IPv4/IPv6
// (the connection's own peer stands).
func readProxyHeader(r io.Reader) (src netip.AddrPort, ok bool, err error) {
	var h [16]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if err == io.EOF {
			return src, false, io.EOF // closed before a byte: a TCP health check
		}
		return src, false, fmt.Errorf("%w: %w", ErrProxyHeader, err)
	}
	if !bytes.Equal(h[:12], proxySig) {
		return src, false, fmt.Errorf("%w: no signature", ErrProxyHeader)
	}
	if h[12]>>4 != 2 {
		return src, false, fmt.Errorf("%w: version %d", ErrProxyHeader, h[12]>>4)
	}
	n := int(binary.BigEndian.Uint16(h[14:16]))
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return src, false, fmt.Errorf("%w: %w", ErrProxyHeader, err)
	}
	switch h[12] & 0x0f {
	case 0x0: // LOCAL: the proxy's own connection (a health check)
		return src, false, nil
	case 0x1: // PROXY
	default:
		return src, false, fmt.Errorf("%w: command %d", ErrProxyHeader, h[12]&0x0f)
	}
	switch h[13] {
	case 0x11: // TCP over IPv4: src, dst, src port, dst port
		if n < 12 {
			return src, false, fmt.Errorf("%w: %d address bytes for IPv4", ErrProxyHeader, n)
		}
		a := netip.AddrFrom4([4]byte(body[0:4]))
		return netip.AddrPortFrom(a, binary.BigEndian.Uint16(body[8:10])), true, nil
	case 0x21: // TCP over IPv6
		if n < 36 {
			return src, false, fmt.Errorf("%w: %d address bytes for IPv6", ErrProxyHeader, n)
		}
		a := netip.AddrFrom16([16]byte(body[0:16])).Unmap()
		return netip.AddrPortFrom(a, binary.BigEndian.Uint16(body[32:34])), true, nil
	default: // UNSPEC, UDP, unix sockets: no client address to take
		return src, false, nil
	}
}

// proxyConn is the part of a Conn that reads the PROXY header: on the
// first Read, before anything else.
type proxyConn struct {
	expect bool                        // the header is still to be read; touched by the reader only
	src    atomic.Pointer[net.TCPAddr] // the client it named; nil: the TCP peer
}

// readProxy reads the header from c (the first Read of a connection that
// must start with one) and keeps the client it names.
func (c *Conn) readProxy() error {
	c.pp.expect = false
	src, ok, err := readProxyHeader(c.Conn)
	if err != nil {
		return err
	}
	if ok {
		c.pp.src.Store(&net.TCPAddr{IP: src.Addr().AsSlice(), Port: int(src.Port())})
	}
	return nil
}

// RemoteAddr is the client's address: the one the PROXY header named,
// once read, or the TCP peer's.
func (c *Conn) RemoteAddr() net.Addr {
	if a := c.pp.src.Load(); a != nil {
		return a
	}
	return c.Conn.RemoteAddr()
}
