package limits

import (
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestUncappedPeersSkipTheConnectionCap: with max_conns_per_ip 1, a second
// connection from one address is refused with 429, unless Uncapped names
// the address (a trusted proxy, whose one address carries many clients).
func TestUncappedPeersSkipTheConnectionCap(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc     string
		uncapped func(netip.Addr) bool
		refused  bool
	}{
		{"capped", nil, true},
		{"another address uncapped", func(a netip.Addr) bool { return a == netip.MustParseAddr("10.0.0.1") }, true},
		{"loopback uncapped", func(a netip.Addr) bool { return a.IsLoopback() }, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			l := Listen(inner, ListenerOptions{MaxConnsPerIP: 1, Uncapped: tc.uncapped})
			defer l.Close()
			accepted := make(chan net.Conn, 3)
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						close(accepted)
						return
					}
					accepted <- c
				}
			}()
			dial := func() net.Conn {
				c, err := net.DialTimeout("tcp", inner.Addr().String(), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			}
			dial()
			select {
			case c := <-accepted:
				defer c.Close()
			case <-time.After(5 * time.Second):
				t.Fatal("first connection not accepted")
			}
			second := dial()
			_ = second.SetReadDeadline(time.Now().Add(5 * time.Second))
			if tc.refused {
				b, _ := io.ReadAll(second)
				if !strings.HasPrefix(string(b), "HTTP/1.1 429") {
					t.Fatalf("second connection got %q, want 429", b)
				}
				if l.Open("127.0.0.1") != 1 {
					t.Fatalf("open connections %d, want 1", l.Open("127.0.0.1"))
				}
				return
			}
			select {
			case c := <-accepted:
				defer c.Close()
			case <-time.After(5 * time.Second):
				t.Fatal("second connection from an uncapped address not accepted")
			}
			if n := l.Open("127.0.0.1"); n != 0 {
				t.Fatalf("uncapped address holds %d counted connections, want 0", n)
			}
		})
	}
}
