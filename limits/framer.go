package limits

import (
	"bytes"
	"errors"
	"strconv"
)

// ErrBareLF is returned by a Conn's Read when a request's header block ends
// its lines with a bare LF. fasthttp waits for CRLFCRLF before it parses a
// header block, so without this such a request would wait for the read
// timeout before its 400; fasthttp's ErrorHandler turns this error into a
// 400 at once.
var ErrBareLF = errors.New("request header line ends with a bare LF")

// framer follows HTTP/1.1 request framing on one connection (header block,
// then a Content-Length or chunked body, then the next header block) just
// well enough to know when bytes belong to a header block. Its only verdict
// is ErrBareLF on a header line ending in a bare LF. Whenever the stream is
// anything it does not follow exactly (an upgrade, obsolete line folding,
// conflicting lengths, unusual chunk syntax, an oversized header), it stops
// looking for the rest of the connection: the server's own parser, which
// remains the authority, then answers as it would have anyway.
type framer struct {
	st        frameState
	maxHeader int
	hdr       []byte // the current header block, up to maxHeader
	prev      byte   // the byte before the current one in header or chunk lines
	remaining int64  // body or chunk-data bytes still to come
	line      []byte // the current chunk-size or trailer line
}

type frameState uint8

const (
	stStart     frameState = iota // before a request line: CR and LF are skipped, as the server does
	stHeader                      // in a header block
	stBody                        // in a Content-Length body
	stChunkSize                   // in a chunk-size line
	stChunkData                   // in chunk data
	stChunkEnd                    // in the CRLF after chunk data
	stTrailer                     // in the trailer section after the last chunk
	stPass                        // not following any more
)

func newFramer(maxHeader int) *framer { return &framer{maxHeader: maxHeader} }

// feed follows p, the next bytes the client sent.
func (f *framer) feed(p []byte) error {
	for i := 0; i < len(p) && f.st != stPass; {
		switch f.st {
		case stStart:
			c := p[i]
			i++
			if c == '\r' || c == '\n' {
				continue
			}
			f.st, f.hdr, f.prev = stHeader, append(f.hdr[:0], c), c
		case stHeader:
			c := p[i]
			i++
			if c == '\n' && f.prev != '\r' {
				return ErrBareLF
			}
			if len(f.hdr) >= f.maxHeader {
				f.pass() // the server answers 431 for it
				continue
			}
			f.hdr = append(f.hdr, c)
			f.prev = c
			if c == '\n' && bytes.HasSuffix(f.hdr, crlfcrlf) {
				f.endHeader()
			}
		case stBody:
			n := min(int64(len(p)-i), f.remaining)
			i += int(n)
			f.remaining -= n
			if f.remaining == 0 {
				f.st = stStart
			}
		case stChunkData:
			n := min(int64(len(p)-i), f.remaining)
			i += int(n)
			f.remaining -= n
			if f.remaining == 0 {
				f.st, f.line = stChunkEnd, f.line[:0]
			}
		case stChunkSize, stChunkEnd, stTrailer:
			c := p[i]
			i++
			if len(f.line) >= 4096 {
				f.pass()
				continue
			}
			f.line = append(f.line, c)
			if c == '\n' {
				f.endLine()
			}
		}
	}
	return nil
}

var (
	crlf     = []byte("\r\n")
	crlfcrlf = []byte("\r\n\r\n")
)

func (f *framer) pass() {
	f.st, f.hdr, f.line = stPass, nil, nil
}

// endHeader reads the framing of the body that follows a complete header block.
func (f *framer) endHeader() {
	// The header lines after the request line, walked in place.
	_, rest, _ := bytes.Cut(f.hdr[:len(f.hdr)-4], crlf)
	length, chunked, sawLength := int64(0), false, false
	for rest != nil { // Cut leaves rest nil after the last line
		var l []byte
		l, rest, _ = bytes.Cut(rest, crlf)
		if len(l) == 0 || l[0] == ' ' || l[0] == '\t' {
			f.pass() // obsolete line folding
			return
		}
		name, value, ok := bytes.Cut(l, []byte(":"))
		if !ok {
			f.pass()
			return
		}
		value = bytes.TrimSpace(value)
		switch {
		case asciiEqualFold(name, "Content-Length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if sawLength || err != nil || n < 0 {
				f.pass()
				return
			}
			length, sawLength = n, true
		case asciiEqualFold(name, "Transfer-Encoding"):
			switch {
			case asciiEqualFold(value, "chunked"):
				chunked = true
			case asciiEqualFold(value, "identity"):
			default:
				f.pass()
				return
			}
		case asciiEqualFold(name, "Upgrade"):
			f.pass() // the connection may be hijacked: not HTTP any more
			return
		}
	}
	switch {
	case chunked && sawLength:
		f.pass() // the server closes such a connection after its answer
	case chunked:
		f.st, f.line = stChunkSize, f.line[:0]
	case length > 0:
		f.st, f.remaining = stBody, length
	default:
		f.st = stStart
	}
}

// endLine handles a complete chunk-size, chunk-end or trailer line.
func (f *framer) endLine() {
	l := f.line
	if !bytes.HasSuffix(l, []byte("\r\n")) {
		f.pass()
		return
	}
	l = l[:len(l)-2]
	f.line = f.line[:0]
	switch f.st {
	case stChunkEnd:
		if len(l) != 0 {
			f.pass()
			return
		}
		f.st = stChunkSize
	case stChunkSize:
		if i := bytes.IndexByte(l, ';'); i >= 0 {
			l = l[:i]
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(l)), 16, 64)
		if err != nil || n < 0 || len(l) == 0 {
			f.pass()
			return
		}
		if n == 0 {
			f.st = stTrailer
			return
		}
		f.st, f.remaining = stChunkData, n
	case stTrailer:
		if len(l) == 0 {
			f.st = stStart
		}
	}
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
