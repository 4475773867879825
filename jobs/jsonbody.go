package jobs

// A JSON submission read as a stream: {"image_base64": "...", "inputs":
// {...}, "webhook_url": ..., <parameter>: ...}. The image's base64 text is
// decoded as it arrives (into a file of the input store when the service
// spools, else into memory); every other member is small and is held,
// within a bound and charged to the body budget, to be decoded by
// encoding/json exactly as a whole-body json.Unmarshal would.

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"unicode/utf8"
)

// streamBufSize is the read buffer of a streamed JSON body.
const streamBufSize = 32 << 10

// errNotJSON ends a read of a body that is not one JSON object.
var errNotJSON = errors.New("not a JSON object")

// jsonObject reads one JSON object member by member from br.
type jsonObject struct {
	br    *bufio.Reader
	first bool // no member read yet
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// skipSpace consumes JSON whitespace and returns the next byte, unread.
func (o *jsonObject) skipSpace() (byte, error) {
	for {
		c, err := o.br.ReadByte()
		if err != nil {
			return 0, err
		}
		if !isSpace(c) {
			return c, o.br.UnreadByte()
		}
	}
}

// begin reads the object's '{'.
func (o *jsonObject) begin() error {
	c, err := o.skipSpace()
	if err != nil {
		return readErr(err)
	}
	if c != '{' {
		return errNotJSON
	}
	_, _ = o.br.ReadByte()
	o.first = true
	return nil
}

// next reads the next member's key and its ':' (more is false at the
// object's '}', after which only whitespace may follow).
func (o *jsonObject) next(mem *bodyMem) (key string, more bool, err error) {
	c, err := o.skipSpace()
	if err != nil {
		return "", false, readErr(err)
	}
	switch {
	case c == '}':
		_, _ = o.br.ReadByte()
		return "", false, o.end()
	case !o.first && c == ',':
		_, _ = o.br.ReadByte()
		if c, err = o.skipSpace(); err != nil {
			return "", false, readErr(err)
		}
	case !o.first:
		return "", false, errNotJSON
	}
	o.first = false
	if c != '"' {
		return "", false, errNotJSON
	}
	raw, err := o.value(maxFieldBytes, mem)
	if err != nil {
		return "", false, err
	}
	if err := json.Unmarshal(raw, &key); err != nil {
		return "", false, errNotJSON
	}
	if c, err = o.skipSpace(); err != nil {
		return "", false, readErr(err)
	}
	if c != ':' {
		return "", false, errNotJSON
	}
	_, _ = o.br.ReadByte()
	_, err = o.skipSpace()
	return key, true, readErr(err)
}

// end checks that nothing but whitespace follows the object.
func (o *jsonObject) end() error {
	_, err := o.skipSpace()
	switch {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return err
	}
	return errNotJSON
}

// peek is the first byte of the next value (skipSpace ran).
func (o *jsonObject) peek() byte {
	b, _ := o.br.Peek(1)
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// value reads one JSON value whole, at most limit bytes of it, each byte
// charged to mem, and checks it is valid JSON.
func (o *jsonObject) value(limit int64, mem *bodyMem) (json.RawMessage, error) {
	var buf []byte
	add := func(c byte) error {
		if int64(len(buf)) >= limit {
			return errFieldTooLarge
		}
		if len(buf) == cap(buf) {
			grow := max(512, cap(buf))
			if !mem.take(int64(grow)) {
				return errBodyBudget
			}
			buf = append(make([]byte, 0, cap(buf)+grow), buf...)
		}
		buf = append(buf, c)
		return nil
	}
	depth, inStr, esc := 0, false, false
	for {
		c, err := o.br.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) && depth == 0 && !inStr && len(buf) > 0 {
				break // a literal at the very end: the object's '}' is missing
			}
			return nil, readErr(err)
		}
		if !inStr && depth == 0 && len(buf) > 0 && (c == ',' || c == '}' || c == ']' || c == ':' || isSpace(c)) {
			_ = o.br.UnreadByte() // the end of a literal (number, true, ...)
			break
		}
		if err := add(c); err != nil {
			return nil, err
		}
		switch {
		case inStr:
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			if !inStr && depth == 0 {
				return checkJSON(buf)
			}
		case c == '"':
			inStr = true
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
			if depth < 0 {
				return nil, errNotJSON
			}
			if depth == 0 {
				return checkJSON(buf)
			}
		}
	}
	return checkJSON(buf)
}

func checkJSON(b []byte) (json.RawMessage, error) {
	if !json.Valid(b) {
		return nil, errNotJSON
	}
	return b, nil
}

// errFieldTooLarge ends a member longer than its bound.
var errFieldTooLarge = errors.New("JSON member too large")

// errBodyBudget ends a read that would hold more request bodies in
// memory than limits.max_buffered_body_bytes allows.
var errBodyBudget = errors.New("body budget exhausted")

// readErr maps a premature end of the body to errNotJSON.
func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errNotJSON
	}
	return err
}

// jsonString reads the contents of a JSON string value whose opening
// quote is next in br, unescaped, up to (not including) its closing quote.
type jsonString struct {
	br      *bufio.Reader
	started bool
	done    bool
	pending []byte // unescaped bytes not yet returned
	scratch [utf8.UTFMax]byte
}

func (s *jsonString) Read(p []byte) (int, error) {
	if !s.started {
		if c, err := s.br.ReadByte(); err != nil || c != '"' {
			return 0, errNotJSON
		}
		s.started = true
	}
	n := 0
	for n < len(p) {
		if len(s.pending) > 0 {
			k := copy(p[n:], s.pending)
			s.pending = s.pending[k:]
			n += k
			continue
		}
		if s.done {
			break
		}
		if n > 0 && s.br.Buffered() == 0 {
			return n, nil // what is there now; no blocking read with bytes in hand
		}
		c, err := s.br.ReadByte()
		if err != nil {
			return n, readErr(err)
		}
		switch {
		case c == '"':
			s.done = true
		case c < 0x20:
			return n, errNotJSON
		case c == '\\':
			b, err := s.escape()
			if err != nil {
				return n, err
			}
			s.pending = b
		default:
			p[n] = c
			n++
		}
	}
	if n == 0 && s.done {
		return 0, io.EOF
	}
	return n, nil
}

// escape reads one escape sequence after its backslash.
func (s *jsonString) escape() ([]byte, error) {
	c, err := s.br.ReadByte()
	if err != nil {
		return nil, readErr(err)
	}
	switch c {
	case '"', '\\', '/':
		s.scratch[0] = c
	case 'b':
		s.scratch[0] = '\b'
	case 'f':
		s.scratch[0] = '\f'
	case 'n':
		s.scratch[0] = '\n'
	case 'r':
		s.scratch[0] = '\r'
	case 't':
		s.scratch[0] = '\t'
	case 'u':
		var hex [4]byte
		if _, err := io.ReadFull(s.br, hex[:]); err != nil {
			return nil, readErr(err)
		}
		r, err := strconv.ParseUint(string(hex[:]), 16, 16)
		if err != nil {
			return nil, errNotJSON
		}
		// Anything outside ASCII is no base64 character: its exact
		// decoding (surrogate pairs) does not matter, only that it fails.
		return s.scratch[:utf8.EncodeRune(s.scratch[:], rune(r))], nil
	default:
		return nil, errNotJSON
	}
	return s.scratch[:1], nil
}

// drain reads the rest of the string (to its closing quote).
func (s *jsonString) drain() error {
	_, err := io.Copy(io.Discard, s)
	return err
}

// base64Text is the text of an image_base64 value as a reader of
// standard, padded base64 for encoding/base64's stream decoder: leading
// and trailing whitespace and line breaks inside are dropped, a
// "data:<type>;base64," prefix is taken off, the URL-safe alphabet is
// mapped to the standard one (never both in one value), and missing
// padding is added at the end. It accepts what decodeBase64Image accepts.
type base64Text struct {
	r       io.Reader
	head    bool // the prefix is read
	raw     int64
	chars   int64 // base64 characters (not padding) passed on
	pads    int
	std     bool // '+' or '/' seen
	url     bool // '-' or '_' seen
	end     bool // '\v' or '\f' seen: only whitespace may follow
	eof     bool
	tail    []byte // padding to add at the end
	invalid error
}

// errBadBase64 and errDataURL end a base64 text that cannot be decoded.
var (
	errBadBase64 = errors.New("not valid base64")
	errDataURL   = errors.New("data: URL not base64")
)

// maxDataURLHead bounds the "data:<type>;base64," prefix.
const maxDataURLHead = 1 << 10

func (b *base64Text) Read(p []byte) (int, error) {
	if b.invalid != nil {
		return 0, b.invalid
	}
	if !b.head {
		if err := b.readHead(); err != nil {
			b.invalid = err
			return 0, err
		}
		b.head = true
	}
	for {
		if b.eof {
			if len(b.tail) == 0 {
				return 0, io.EOF
			}
			n := copy(p, b.tail)
			b.tail = b.tail[n:]
			return n, nil
		}
		n, err := b.r.Read(p)
		b.raw += int64(n)
		out := 0
		for _, c := range p[:n] {
			switch {
			case isSpace(c):
				continue
			case c == '\v' || c == '\f':
				b.end = true // trimmed at the end, as strings.TrimSpace does
				continue
			case b.end:
				b.invalid = errBadBase64
			case c == '=':
				b.pads++
				if b.pads > 2 {
					b.invalid = errBadBase64
				}
			case b.pads > 0:
				b.invalid = errBadBase64 // data after the padding
			case c == '-' || c == '_':
				b.url = true
				if c == '-' {
					c = '+'
				} else {
					c = '/'
				}
				b.chars++
			case c == '+' || c == '/':
				b.std = true
				b.chars++
			default:
				b.chars++
			}
			if b.url && b.std {
				b.invalid = errBadBase64
			}
			if b.invalid != nil {
				return 0, b.invalid
			}
			p[out] = c
			out++
		}
		if errors.Is(err, io.EOF) {
			b.eof = true
			if b.pads == 0 && b.chars%4 != 0 {
				b.tail = []byte("===")[:4-b.chars%4]
			}
		} else if err != nil {
			return out, err
		}
		if out > 0 {
			return out, nil
		}
	}
}

// readHead takes leading whitespace and a data: URL's prefix off.
func (b *base64Text) readHead() error {
	br := bufio.NewReaderSize(b.r, 64)
	b.r = br
	for {
		c, err := br.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		b.raw++
		if !isSpace(c) && c != '\v' && c != '\f' {
			_ = br.UnreadByte()
			b.raw--
			break
		}
	}
	if head, _ := br.Peek(5); string(head) != "data:" {
		return nil
	}
	var meta []byte
	for len(meta) <= maxDataURLHead {
		c, err := br.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errDataURL
			}
			return err
		}
		b.raw++
		if c == ',' {
			if !bytes.HasSuffix(meta, []byte(";base64")) {
				return errDataURL
			}
			return nil
		}
		meta = append(meta, c)
	}
	return errDataURL
}

// decodeBase64Stream decodes the base64 text r (an image_base64 value)
// into w, at most maxBytes bytes. raw is the length of the text: 0 for an
// empty value, which callers may treat as absent.
func decodeBase64Stream(w io.Writer, r io.Reader, maxBytes int64) (n, raw int64, aerr *apiError) {
	t := &base64Text{r: r}
	dec := base64.NewDecoder(base64.StdEncoding, t)
	out := &recordingWriter{w: w}
	n, err := io.Copy(out, io.LimitReader(dec, maxBytes+1))
	raw = t.raw
	switch {
	case err != nil && out.err != nil:
		return n, raw, &apiError{status: 503, typ: errNoUpstream, msg: "comfygate cannot store the image now", retryAfter: 5}
	case errors.Is(err, errBodyBudget):
		return n, raw, budgetError()
	case errors.Is(err, errBodyTooLarge):
		return n, raw, badRequest(errImageTooLarge, "request body too large (images up to %d bytes)", maxBytes)
	case errors.Is(err, errNotJSON):
		return n, raw, badRequest(errInvalidRequest, "body is not a JSON object {\"image_base64\": ..., \"inputs\": {...}}")
	case errors.Is(err, errDataURL):
		return n, raw, badRequest(errInvalidImage, "image_base64: a data: URL must be base64 encoded (data:image/png;base64,...)")
	case err != nil && (errors.Is(err, errBadBase64) || isCorrupt(err) || errors.Is(err, io.ErrUnexpectedEOF)):
		return n, raw, badRequest(errInvalidImage, "image_base64 is not valid base64")
	case err != nil:
		return n, raw, badRequest(errInvalidRequest, "cannot read the request body")
	case n > maxBytes:
		return n, raw, badRequest(errImageTooLarge, "image too large: more than %d bytes, the limit", maxBytes)
	case n == 0 && t.chars == 0:
		return n, raw, badRequest(errMissingImage, "image_base64 is empty")
	}
	return n, raw, nil
}

// recordingWriter remembers its writer's error, to tell a failed write
// (comfygate's disk) from a failed read (the client's body).
type recordingWriter struct {
	w   io.Writer
	err error
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	n, err := r.w.Write(p)
	if err != nil {
		r.err = err
	}
	return n, err
}

func isCorrupt(err error) bool {
	var c base64.CorruptInputError
	return errors.As(err, &c)
}
