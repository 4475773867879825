package limits

import (
	"bytes"
	"fmt"
	"testing"
)

func TestFramer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc   string
		stream string
		bareLF bool
		pass   bool // the framer stops following
	}{
		{desc: "one request", stream: "GET / HTTP/1.1\r\nHost: a\r\n\r\n"},
		{desc: "bare LF request line", stream: "GET / HTTP/1.1\nHost: a\n\n", bareLF: true},
		{desc: "bare LF header line", stream: "GET / HTTP/1.1\r\nHost: a\n\r\n", bareLF: true},
		{desc: "leading empty lines", stream: "\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"},
		{desc: "body with bare LFs, then bare LF request", stream: "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n\n\n\n\nGET / HTTP/1.1\n\n", bareLF: true},
		{desc: "body with bare LFs, then a good request", stream: "POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\n\n\n\n\nGET / HTTP/1.1\r\n\r\n"},
		{desc: "chunked body with bare LFs", stream: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\n\n\n\n\n\r\n0\r\nT: v\r\n\r\nGET / HTTP/1.1\n\n", bareLF: true},
		{desc: "chunked body, good next", stream: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n\n\n\n\n\n\n\n\n\n\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"},
		{desc: "upgrade", stream: "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\n\n", pass: true},
		{desc: "two lengths", stream: "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n\n\n", pass: true},
		{desc: "length and chunked", stream: "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n\n\n", pass: true},
		{desc: "folded line", stream: "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n\n\n", pass: true},
		{desc: "odd chunk size", stream: "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\n\n", pass: true},
		{desc: "oversized header", stream: "GET / HTTP/1.1\r\nA: " + string(bytes.Repeat([]byte("a"), 100)) + "\r\n\r\n", pass: true},
	} {
		for _, split := range []int{1, 3, 1 << 20} {
			f := newFramer(64)
			var err error
			s := []byte(tc.stream)
			for len(s) > 0 && err == nil {
				n := min(split, len(s))
				err = f.feed(s[:n])
				s = s[n:]
			}
			if (err != nil) != tc.bareLF {
				t.Errorf("%s (split %d): err %v, want bare LF %v", tc.desc, split, err, tc.bareLF)
			}
			if (f.st == stPass) != tc.pass {
				t.Errorf("%s (split %d): state %d, want pass %v", tc.desc, split, f.st, tc.pass)
			}
		}
	}
}

// FuzzFramer: any byte stream, in any split, never panics, never keeps
// more than its bounds, and a stream of well-formed CRLF requests (of any
// bodies) is never refused.
func FuzzFramer(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), []byte("a\n\nb"), uint8(3))
	f.Add([]byte("POST / HTTP/1.1\nHost: a\n\n"), []byte("\n"), uint8(1))
	f.Add([]byte("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab\n\nc\r\n0\r\n\r\n"), []byte{}, uint8(7))
	f.Fuzz(func(t *testing.T, raw, body []byte, split uint8) {
		step := int(split%16) + 1
		fr := newFramer(256)
		for i := 0; i < len(raw); i += step {
			if fr.feed(raw[i:min(i+step, len(raw))]) != nil {
				break
			}
			if len(fr.hdr) > 256 || len(fr.line) > 4096 {
				t.Fatalf("framer holds %d header and %d line bytes", len(fr.hdr), len(fr.line))
			}
		}
		// Well-formed requests with this body, by length and chunked.
		good := fmt.Sprintf("POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s", len(body), body) +
			fmt.Sprintf("POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(body)+1, append([]byte{'x'}, body...)) +
			"GET / HTTP/1.1\r\n\r\n"
		fr = newFramer(256)
		for i := 0; i < len(good); i += step {
			if err := fr.feed([]byte(good[i:min(i+step, len(good))])); err != nil {
				t.Fatalf("well-formed stream refused: %v", err)
			}
		}
		if fr.st != stStart {
			t.Fatalf("after well-formed requests the framer is in state %d, want %d", fr.st, stStart)
		}
	})
}
