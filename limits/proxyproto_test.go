package limits

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"testing"
)

// proxyV2 builds a PROXY protocol v2 header: command (0 LOCAL, 1 PROXY),
// family byte, source and destination, and extra TLV bytes.
func proxyV2(cmd, fam byte, src, dst netip.AddrPort, tlv []byte) []byte {
	var addrs []byte
	switch fam {
	case 0x11:
		s, d := src.Addr().As4(), dst.Addr().As4()
		addrs = append(append(addrs, s[:]...), d[:]...)
	case 0x21:
		s, d := src.Addr().As16(), dst.Addr().As16()
		addrs = append(append(addrs, s[:]...), d[:]...)
	}
	if fam != 0 {
		addrs = binary.BigEndian.AppendUint16(addrs, src.Port())
		addrs = binary.BigEndian.AppendUint16(addrs, dst.Port())
	}
	addrs = append(addrs, tlv...)
	h := append(append([]byte(nil), proxySig...), 0x20|cmd, fam)
	h = binary.BigEndian.AppendUint16(h, uint16(len(addrs)))
	return append(h, addrs...)
}

func TestReadProxyHeader(t *testing.T) {
	t.Parallel()
	v4 := netip.MustParseAddrPort("203.0.113.7:40001")
	v6 := netip.MustParseAddrPort("[2001:db8::7]:40002")
	dst := netip.MustParseAddrPort("10.0.0.1:8190")
	dst6 := netip.MustParseAddrPort("[fd00::1]:8190")
	const after = "GET / HTTP/1.1\r\n"
	for _, tc := range []struct {
		desc   string
		in     []byte
		want   string // "" for no address (the peer stands)
		failed bool
	}{
		{desc: "TCP over IPv4", in: proxyV2(1, 0x11, v4, dst, nil), want: "203.0.113.7:40001"},
		{desc: "TCP over IPv6 with TLVs", in: proxyV2(1, 0x21, v6, dst6, []byte{0x04, 0, 1, 'x'}), want: "[2001:db8::7]:40002"},
		{desc: "LOCAL", in: proxyV2(0, 0x11, v4, dst, nil)},
		{desc: "UNSPEC", in: proxyV2(1, 0x00, v4, dst, nil)},
		{desc: "plain HTTP", in: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), failed: true},
		{desc: "version 1 text", in: []byte("PROXY TCP4 203.0.113.7 10.0.0.1 40001 8190\r\n"), failed: true},
		{desc: "short IPv4 block", in: func() []byte {
			h := proxyV2(1, 0x11, v4, dst, nil)[:16]
			binary.BigEndian.PutUint16(h[14:], 4)
			return append(h, 1, 2, 3, 4)
		}(), failed: true},
		{desc: "bad command", in: proxyV2(7, 0x11, v4, dst, nil), failed: true},
	} {
		r := bytes.NewReader(append(append([]byte(nil), tc.in...), after...))
		src, ok, err := readProxyHeader(r)
		if tc.failed {
			if !errors.Is(err, ErrProxyHeader) {
				t.Errorf("%s: err %v, want ErrProxyHeader", tc.desc, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.desc, err)
			continue
		}
		got := ""
		if ok {
			got = src.String()
		}
		if got != tc.want {
			t.Errorf("%s: source %q, want %q", tc.desc, got, tc.want)
		}
		if rest, _ := io.ReadAll(r); string(rest) != after {
			t.Errorf("%s: left %q after the header, want the request untouched", tc.desc, rest)
		}
	}
	for _, n := range []int{5, 16, 20} {
		if _, _, err := readProxyHeader(bytes.NewReader(proxyV2(1, 0x11, v4, dst, nil)[:n])); !errors.Is(err, ErrProxyHeader) {
			t.Errorf("header cut at %d bytes: err %v, want ErrProxyHeader", n, err)
		}
	}
	if _, _, err := readProxyHeader(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("closed at once: %v, want io.EOF (no refusal)", err)
	}
}
