package upstream

// One call path to an instance: its Transport's Do. Every request comfygate sends
// to an instance (forwarded client requests, its own calls, file copies,
// health checks and file look-ups) goes through it, over the instance's
// one HostClient, inside the instance's breaker bracket, and has its
// outcome classified once here (classify).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/valyala/fasthttp"
)

// Transport is an instance's one way to be called (Instance.Transport):
// its HTTP client, the connection slots traffic takes, and its breaker.
type Transport struct {
	inst *Instance // whom it calls: name, address, health, configured timeout

	// client is the instance's one HTTP client (Do): MaxConns =
	// max_connections_per_instance, answers streamed, idle deadlines.
	client *fasthttp.HostClient
	// slots holds a token per connection traffic uses; its capacity
	// leaves connections free for probes (connShares).
	slots   chan struct{}
	breaker *breaker.Breaker
}

// ErrClientBody wraps a failure reading the client's own request body
// while it was being sent (the client went away, stalled, or sent a broken
// chunked body): nothing the instance is to blame for.
var ErrClientBody = errors.New("read client body")

// DialError marks a failure to open a connection to an instance: nothing
// was sent, so the request may go to another instance.
type DialError struct {
	Addr string
	Err  error
}

func (e *DialError) Error() string { return fmt.Sprintf("dial upstream %s: %v", e.Addr, e.Err) }
func (e *DialError) Unwrap() error { return e.Err }

// NotSent reports whether err means the request never reached the
// instance: a failed dial, an open breaker, or all of comfygate's
// connections to it busy. Any request may then go to another instance.
func NotSent(err error) bool {
	var d *DialError
	return errors.As(err, &d) || errors.Is(err, breaker.ErrOpen) || errors.Is(err, fasthttp.ErrNoFreeConns)
}

// NoAnswer reports whether err means the instance gave no answer at all:
// not sent (NotSent), no response within the timeout, or the connection
// closed or reset before the first byte of an answer. A request that is
// safe to replay (an idempotent read) may then go to another instance.
// Client body errors and cancellations by the caller are not "no answer".
func NoAnswer(err error) bool {
	if err == nil || errors.Is(err, ErrClientBody) || errors.Is(err, context.Canceled) {
		return false
	}
	return NotSent(err) || IsTimeout(err) || closedEarly(err)
}

// IsTimeout reports a deadline that passed: ours, fasthttp's or the network's.
func IsTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, fasthttp.ErrTimeout) ||
		errors.Is(err, fasthttp.ErrDialTimeout) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// closedEarly reports a connection the instance closed or reset before it
// answered a byte.
func closedEarly(err error) bool {
	return errors.Is(err, fasthttp.ErrConnectionClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// Source says who wrote a request, which decides who an error answer blames.
type Source uint8

const (
	// ByGate: comfygate composed the request itself (its calls, copies,
	// probes). A 5xx answer is the instance failing.
	ByGate Source = iota
	// ByClient: a client wrote the request (its path, query or body). A
	// 4xx/5xx answer is the client's request failing (ComfyUI answers 500
	// to a body its handler cannot parse), except 502/503/504, which
	// ComfyUI never sends itself: they come from a proxy in front of a
	// dead instance.
	ByClient
)

// DoOpts say how Do sends one request.
type DoOpts struct {
	// Source decides what an error answer blames.
	Source Source
	// Probe marks a health check or file look-up: it uses the connections
	// kept apart for probes, so a saturated instance still answers its
	// health check, and it runs even while the breaker refuses (Always).
	Probe bool
	// Always runs the request even while the breaker refuses traffic,
	// reporting nothing then. For comfygate's own requests (ByGate), which
	// are how it learns an instance's state and repairs it (a health check,
	// reading its queue, deleting prompts that moved off it before it gets
	// work again): the breaker keeps clients' requests and new work away
	// from a failing instance, not comfygate's own look.
	Always bool
	// Pinned marks a client's request that only this instance can answer
	// (a prompt's history, a file it holds): while the breaker refuses
	// traffic (open, or half-open with its trial requests taken) it still
	// runs if the instance passes its health checks, reporting nothing
	// then. Refused, the client would have nowhere else to go, and the
	// health check that just passed says the instance answers.
	Pinned bool
	// Timeout bounds how long the instance may stay silent (no byte read
	// or written) on this request, the streamed body included; 0 is the
	// configured timeout (COMFYUI_TIMEOUT). A shorter timeout that passes
	// is the caller's choice, not a verdict on the instance (excluded),
	// unless the request is a probe.
	Timeout time.Duration
	// Body, if not nil, is the client's request body, streamed to the
	// instance; BodySize is its length, -1 for chunked. A read error of
	// it is the client's (ErrClientBody, excluded).
	Body     io.Reader
	BodySize int
}

// Answer is an instance's answer: status and headers read, the body
// possibly still streaming. Close it: that ends the body (returning the
// connection to the pool when it was read to the end) and frees the
// connection slot. An Answer is also its body as an io.ReadCloser, so a
// proxy can hand it to the client's response as the body stream as it is.
type Answer struct {
	resp *fasthttp.Response
	tr   *Transport
	slot bool // holds one of tr's traffic slots until Close
}

// Response is the instance's answer. Its body may stream (BodyStream).
// It is valid until Close.
func (a *Answer) Response() *fasthttp.Response { return a.resp }

// StatusCode is the answer's status.
func (a *Answer) StatusCode() int { return a.resp.StatusCode() }

// ReadAll reads the body whole, up to limit bytes (ErrBodyTooLarge past
// it), and closes the answer.
func (a *Answer) ReadAll(limit int64) ([]byte, error) {
	defer a.Close()
	bs := a.resp.BodyStream()
	if bs == nil {
		b := a.resp.Body()
		if int64(len(b)) > limit {
			return nil, fasthttp.ErrBodyTooLarge
		}
		return append([]byte(nil), b...), nil
	}
	b, err := io.ReadAll(io.LimitReader(bs, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fasthttp.ErrBodyTooLarge
	}
	return b, nil
}

// Close ends the answer; later calls do nothing.
func (a *Answer) Close() error {
	if a.resp == nil {
		return nil
	}
	err := a.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(a.resp)
	a.resp = nil
	if a.slot {
		a.slot = false
		a.tr.release()
	}
	return err
}

// Read reads the body (io.EOF at its end, and after Close).
func (a *Answer) Read(p []byte) (int, error) {
	if a.resp == nil {
		return 0, io.EOF
	}
	if bs := a.resp.BodyStream(); bs != nil {
		return bs.Read(p)
	}
	return 0, io.EOF
}

// copyBufSize is the buffer WriteTo moves a streamed body with: a 500 MB
// /view goes in reads and writes of up to 256 KiB, not in the 4-16 KiB
// pieces of the connections' own buffers, which cuts the system calls per
// byte by about four (64 KiB cut them less: 15% more CPU per byte). A
// buffer is held only while a body moves, so the memory is bounded by the
// connection slots (max_connections_per_instance).
const copyBufSize = 256 << 10

var copyBufs = sync.Pool{New: func() any { return new([copyBufSize]byte) }}

// SupportsBodyWriteTo tells fasthttp's server to write a response whose
// body stream is the Answer with WriteTo, chunked bodies included.
func (a *Answer) SupportsBodyWriteTo() bool { return true }

// WriteTo writes the body to w through a pooled buffer (see copyBufSize).
// The HTTP server uses it when the Answer is a response's body stream.
func (a *Answer) WriteTo(w io.Writer) (int64, error) {
	if a.resp == nil {
		return 0, nil
	}
	bs := a.resp.BodyStream()
	if bs == nil {
		n, err := w.Write(a.resp.Body())
		return int64(n), err
	}
	return copyThrough(w, bs)
}

// copyThrough copies r to w through a pooled copyBufSize buffer, each
// read written whole before the next.
func copyThrough(w io.Writer, r io.Reader) (int64, error) {
	buf := copyBufs.Get().(*[copyBufSize]byte)
	defer copyBufs.Put(buf)
	var n int64
	for {
		nr, rerr := r.Read(buf[:])
		if nr > 0 {
			nw, werr := w.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, werr
			}
			if nw != nr {
				return n, io.ErrShortWrite
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

// Call does one non-streaming request through Do, bounded by the
// configured timeout and ctx. path includes the query. Headers are set as
// given. POST /prompt and uploads carry what a client wrote (ByClient: an
// error answer is the client's request failing); every other Call is
// comfygate's own request (ByGate). Fetch says it explicitly.
func (tr *Transport) Call(ctx context.Context, method, path string, header map[string]string, body []byte) (status int, respBody []byte, err error) {
	return tr.Fetch(ctx, Request{Method: method, Path: path, Header: header, Body: body, Source: callSource(method, path)})
}

// Fetch does r through Do and reads the answer whole. comfygate's own
// requests (ByGate) run even while the breaker refuses traffic
// (DoOpts.Always); a client's request gets ErrOpen then.
func (tr *Transport) Fetch(ctx context.Context, r Request) (status int, body []byte, err error) {
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(r.Method)
	req.SetRequestURI(r.Path)
	for k, v := range r.Header {
		req.Header.Set(k, v)
	}
	if r.Body != nil {
		req.SetBody(r.Body)
	}
	a, err := tr.Do(ctx, req, DoOpts{Source: r.Source, Timeout: r.Timeout, Always: r.Source == ByGate})
	if err != nil {
		return 0, nil, err
	}
	status = a.StatusCode()
	body, err = a.ReadAll(maxCallAnswer)
	if err != nil {
		return 0, nil, fmt.Errorf("call %s %s: read answer: %w", tr.inst.Name, r.Method, err)
	}
	return status, body, nil
}

// Do sends req to the instance and returns its answer once the status and
// headers are in. Do takes req over: it sets Host (unless set) and the
// scheme, and releases it. The body, if o.Body is set, streams from it.
//
// The breaker is asked first (ErrOpen while it refuses, unless o.Always)
// and told the outcome once, when the headers are in or the request
// failed: Failure for what the instance is to blame for (connection
// refused or reset, a timeout of the configured length, 502/503/504, a 5xx
// to comfygate's own request), Excluded for what it is not (the caller's
// ctx, comfygate's own connection cap, the client's body, an error answer
// to the client's own request, a shorter timeout the caller chose),
// Success otherwise.
//
// ctx may cancel the wait (Excluded); the request then ends by its own
// deadline and releases what it holds.
func (tr *Transport) Do(ctx context.Context, req *fasthttp.Request, o DoOpts) (*Answer, error) {
	if err := ctx.Err(); err != nil {
		fasthttp.ReleaseRequest(req)
		return nil, err
	}
	configured := tr.timeout()
	timeout, own := configured, true
	if o.Timeout > 0 && o.Timeout < timeout {
		// A probe's timeout is configured (health_check.timeout): its
		// passing is the instance's failure. Others are the caller's choice.
		timeout, own = o.Timeout, o.Probe
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout, own = time.Until(d), false
	}

	done, err := tr.allow(o.Probe || o.Always || (o.Pinned && tr.inst.state.healthy.Load()))
	if err != nil {
		fasthttp.ReleaseRequest(req)
		return nil, fmt.Errorf("upstream %s: %w", tr.inst.Name, err)
	}
	slot := !o.Probe
	if slot {
		if err = tr.acquire(ctx, configured/2); err != nil {
			fasthttp.ReleaseRequest(req)
			done.report(breaker.Excluded)
			return nil, fmt.Errorf("upstream %s: %w", tr.inst.Name, err)
		}
	}

	if len(req.Header.Host()) == 0 {
		req.Header.SetHost(tr.inst.Addr)
	}
	if tr.inst.TLS {
		req.URI().SetScheme("https")
	}
	var cb *clientBody
	if o.Body != nil {
		cb = &clientBody{r: o.Body, size: o.BodySize}
		req.SetBodyStream(cb, o.BodySize)
	}
	resp := fasthttp.AcquireResponse()
	if ctx.Done() == nil {
		// The common case (every forwarded request) runs inline, with
		// no goroutine and no closure.
		err = tr.client.DoTimeout(req, resp, timeout)
		fasthttp.ReleaseRequest(req)
	} else {
		var cancelled bool
		if cancelled, err = tr.doCtx(ctx, req, resp, timeout, slot); cancelled {
			done.report(breaker.Excluded)
			return nil, fmt.Errorf("call %s: %w", tr.inst.Name, err)
		}
	}
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		if slot {
			tr.release()
		}
		switch {
		case cb != nil && cb.err != nil:
			done.report(breaker.Excluded)
			return nil, fmt.Errorf("%w: %w", ErrClientBody, cb.err)
		case errors.Is(err, fasthttp.ErrNoFreeConns):
			// comfygate's own connection cap: nothing reached the instance.
			done.report(breaker.Excluded)
		case IsTimeout(err):
			if own {
				done.report(breaker.Failure)
			} else {
				done.report(breaker.Excluded)
			}
			return nil, fmt.Errorf("call %s: %w (%w)", tr.inst.Name, context.DeadlineExceeded, err)
		default:
			done.report(breaker.Failure)
		}
		return nil, fmt.Errorf("call %s: %w", tr.inst.Name, err)
	}
	done.report(classify(resp.StatusCode(), o.Source))
	return &Answer{resp: resp, tr: tr, slot: slot}, nil
}

// doCtx runs the request in a goroutine so that ctx can end the wait. When
// ctx ends first it returns cancelled and ctx's error at once and leaves
// the request to end by its own deadline: that goroutine then releases the
// response and frees the connection slot (slot). Otherwise it returns the
// request's error and the caller owns resp.
func (tr *Transport) doCtx(ctx context.Context, req *fasthttp.Request, resp *fasthttp.Response, timeout time.Duration, slot bool) (cancelled bool, err error) {
	ch := make(chan error, 1)
	go func() {
		err := tr.client.DoTimeout(req, resp, timeout)
		fasthttp.ReleaseRequest(req)
		ch <- err
	}()
	select {
	case err := <-ch:
		return false, err
	case <-ctx.Done():
		go func() {
			if <-ch == nil {
				_ = resp.CloseBodyStream()
			}
			fasthttp.ReleaseResponse(resp)
			if slot {
				tr.release()
			}
		}()
		return true, ctx.Err()
	}
}

// allow asks the breaker. A request that runs always (DoOpts.Always) and
// that the breaker refuses runs anyway, reporting nothing to it.
func (tr *Transport) allow(always bool) (outcomeReport, error) {
	r := outcomeReport{tr: tr}
	if tr.breaker != nil {
		t, err := tr.breaker.Allow()
		switch {
		case err == nil:
			r.ticket = t
		case !always:
			return r, err
		}
	}
	return r, nil
}

// timeout is the configured call timeout (COMFYUI_TIMEOUT).
func (tr *Transport) timeout() time.Duration { return tr.inst.reg.cfg.Timeout }

// acquire takes one of the connections traffic may use, waiting at most
// wait (and ctx) for one to free up: past that, fasthttp.ErrNoFreeConns.
// The caller gives it back with release, once.
func (tr *Transport) acquire(ctx context.Context, wait time.Duration) error {
	select {
	case tr.slots <- struct{}{}:
		return nil
	default:
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case tr.slots <- struct{}{}:
		return nil
	case <-timer.C:
		return fasthttp.ErrNoFreeConns
	case <-ctx.Done():
		return ctx.Err()
	}
}

// release gives back a slot acquire took.
func (tr *Transport) release() { <-tr.slots }

// maxCallAnswer caps an answer Call reads whole.
const maxCallAnswer = 256 << 20

// Request is one non-streaming request for Fetch.
type Request struct {
	Method string
	// Path includes the query.
	Path   string
	Header map[string]string
	Body   []byte
	// Source is who wrote it (DoOpts.Source).
	Source Source
	// Timeout, if shorter than the configured one, bounds the instance's
	// silence for this request; its passing is then not held against the
	// instance (DoOpts.Timeout).
	Timeout time.Duration
}

// callSource is who wrote a Call: the client for POST /prompt (its graph)
// and uploads (its file), comfygate otherwise.
func callSource(method, path string) Source {
	if method != fasthttp.MethodPost {
		return ByGate
	}
	p, _, _ := strings.Cut(path, "?")
	p = strings.TrimPrefix(p, "/api")
	if p == "/prompt" || strings.HasPrefix(p, "/upload/") {
		return ByClient
	}
	return ByGate
}

// classify is the outcome of an answer with status code, for a request
// written by src.
func classify(code int, src Source) breaker.Outcome {
	switch {
	case code == fasthttp.StatusBadGateway || code == fasthttp.StatusServiceUnavailable || code == fasthttp.StatusGatewayTimeout:
		return breaker.Failure
	case code >= 400 && src == ByClient:
		return breaker.Excluded
	case code >= 500:
		return breaker.Failure
	default:
		return breaker.Success
	}
}

// outcomeReport tells one request's outcome to the instance's breaker
// (when it let the request through) and counts it in
// comfygate_upstream_requests_total.
type outcomeReport struct {
	tr     *Transport
	ticket breaker.Ticket
}

func (r outcomeReport) report(o breaker.Outcome) {
	r.ticket.Done(o)
	if r.tr.inst.reg != nil {
		r.tr.inst.reg.m.IncUpstreamOutcome(r.tr.inst.Name, o.String())
	}
}

// connShares splits max_connections_per_instance between traffic and the
// connections kept for probes (health checks, file look-ups), which
// traffic never holds, so that a saturated instance is still checked: 1
// of them from 2 up, 2 from 8 up. With 1, the probe gets a connection of
// its own on top (2 in all): a single connection held by a long download
// would otherwise fail every health check.
func connShares(maxConns int) (traffic, probes int) {
	switch {
	case maxConns >= 8:
		return maxConns - 2, 2
	case maxConns >= 2:
		return maxConns - 1, 1
	default:
		return 1, 1
	}
}

// clientBody is the client's streamed request body as the upstream request
// reads it. It hides any Close (the server owns the stream) and remembers
// a read error (an early EOF included) so it is not blamed on the instance.
type clientBody struct {
	r    io.Reader
	size int // -1: chunked
	n    int
	err  error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += n
	switch {
	case err == nil:
	case err == io.EOF:
		if b.size >= 0 && b.n < b.size {
			b.err = io.ErrUnexpectedEOF
		}
	default:
		b.err = err
	}
	return n, err
}

// SupportsBodyWriteTo tells fasthttp's client to send the body with
// WriteTo, chunked bodies included.
func (b *clientBody) SupportsBodyWriteTo() bool { return true }

// WriteTo sends the body to w in reads of up to copyBufSize (an upload
// goes in large writes, not in the pieces of the connections' buffers).
// Read errors are remembered as with Read.
func (b *clientBody) WriteTo(w io.Writer) (int64, error) { return copyThrough(w, b) }

// newHostClient returns the one client of an instance: maxConns
// connections at most, answers streamed, and every deadline an idle
// deadline (idleConn), so that a timeout bounds the instance's silence,
// not how long a large body takes.
func newHostClient(addr string, tls bool, maxConns int, timeout time.Duration) *fasthttp.HostClient {
	dialTimeout := min(timeout, 5*time.Second)
	return &fasthttp.HostClient{
		Addr:     addr,
		Name:     "comfygate",
		IsTLS:    tls,
		MaxConns: maxConns,
		// Only probes wait here: traffic waits for its slot in Do.
		MaxConnWaitTimeout:       timeout / 2,
		StreamResponseBody:       true,
		DisablePathNormalizing:   true, // %2F must reach ComfyUI undecoded
		NoDefaultUserAgentHeader: true,
		// Shorter than the default health-check interval: an idle
		// instance holds no connection (nor fasthttp's cleaner goroutine)
		// between checks.
		MaxIdleConnDuration: 10 * time.Second,
		// Each instance's client keeps its own pool of these buffers, so
		// in a fleet of 200 they are most of an idle instance's memory.
		// Bodies move through copyBufSize buffers, not these; the read
		// buffer bounds an answer's header (8 KiB, as nginx's default).
		ReadBufferSize:  8 << 10,
		WriteBufferSize: 4 << 10,
		// A second attempt only for a pooled keep-alive connection the
		// instance had closed (see staleConn); fasthttp never replays a
		// streamed body. Other instances are comfygate's own decision.
		MaxIdemponentCallAttempts: 2,
		RetryIfErr:                staleConn,
		DialTimeout: func(addr string, timeout time.Duration) (net.Conn, error) {
			if timeout <= 0 || timeout > dialTimeout {
				timeout = dialTimeout
			}
			c, err := net.DialTimeout("tcp", addr, timeout)
			if err != nil {
				return nil, &DialError{Addr: addr, Err: err}
			}
			return &idleConn{Conn: c}, nil
		},
	}
}

// staleConn is the HostClient's RetryIfErr: retry once, on a new
// connection, when the instance closed or reset the connection before
// answering a byte. That is what a keep-alive connection looks like after
// the instance restarted or dropped it while idle; the request did not run
// (ComfyUI answers every request it reads). Timeouts and dial errors are
// never retried here, and neither is POST /prompt: a prompt that may have
// been read is never sent twice (the prompt owner settles it).
func staleConn(req *fasthttp.Request, attempts int, err error) (resetTimeout, retry bool) {
	if attempts > 1 || IsTimeout(err) || errors.As(err, new(*DialError)) {
		return false, false
	}
	if req.Header.IsPost() && strings.HasSuffix(string(req.URI().Path()), "/prompt") {
		return false, false
	}
	return false, closedEarly(err)
}

// idleConn turns the absolute deadlines fasthttp sets into idle timeouts:
// SetReadDeadline(t) remembers t-now, and every Read pushes the deadline
// that far ahead of itself first (same for writes). fasthttp applies a
// request's timeout as an absolute deadline that stays while a streamed
// body is read; COMFYUI_TIMEOUT must bound how long an instance may keep
// us waiting, not how long a 500 MB /view or upload may take: a hung
// instance is cut after the timeout of silence, a slow but moving stream
// never is.
//
// fasthttp sets one deadline for a request's write and then its read. The
// read deadline arrives after the body was written, when an upload that
// took longer than the timeout has left it in the past; it gets the idle
// length the write deadline had.
type idleConn struct {
	net.Conn
	readIdle  atomic.Int64 // nanoseconds; 0: no deadline
	writeIdle atomic.Int64

	lastWrite atomic.Int64 // the last non-zero write deadline set, in Unix nanoseconds
}

func (c *idleConn) SetDeadline(t time.Time) error {
	c.remember(&c.readIdle, t)
	c.remember(&c.writeIdle, t)
	return c.Conn.SetDeadline(t)
}

func (c *idleConn) SetReadDeadline(t time.Time) error {
	if w := c.lastWrite.Load(); w != 0 && !t.IsZero() && t.UnixNano() == w {
		d := c.writeIdle.Load()
		c.readIdle.Store(d)
		return c.Conn.SetReadDeadline(time.Now().Add(time.Duration(d)))
	}
	c.remember(&c.readIdle, t)
	return c.Conn.SetReadDeadline(t)
}

func (c *idleConn) SetWriteDeadline(t time.Time) error {
	c.remember(&c.writeIdle, t)
	if t.IsZero() {
		c.lastWrite.Store(0)
	} else {
		c.lastWrite.Store(t.UnixNano())
	}
	return c.Conn.SetWriteDeadline(t)
}

func (c *idleConn) remember(d *atomic.Int64, t time.Time) {
	if t.IsZero() {
		d.Store(0)
		return
	}
	d.Store(int64(max(time.Until(t), time.Millisecond)))
}

func (c *idleConn) Read(p []byte) (int, error) {
	if d := c.readIdle.Load(); d > 0 {
		if err := c.Conn.SetReadDeadline(time.Now().Add(time.Duration(d))); err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(p)
}

func (c *idleConn) Write(p []byte) (int, error) {
	if d := c.writeIdle.Load(); d > 0 {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(time.Duration(d))); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(p)
}
