package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// maxSmallAnswer caps an instance's answer that comfygate reads whole to
// rewrite it (history, queue, jobs, upload answers). ComfyUI's history of
// 10000 entries with embedded workflows can be large; past this the answer
// is refused with 502 rather than held in memory.
const maxSmallAnswer = 256 << 20

// forwardClients holds the HostClient comfygate forwards client requests
// with, one per instance.
//
// Why not Instance.HostClient: fasthttp applies a request's timeout as an
// absolute deadline on the connection, and that deadline stays while a
// streamed body is read. COMFYUI_TIMEOUT must bound how long an instance
// may keep us waiting, not how long a 500 MB /view or upload may take.
// These clients dial idleConn, which turns every deadline fasthttp sets
// into an idle timeout renewed before each read or write: a hung instance
// is cut after COMFYUI_TIMEOUT of silence, a slow but moving stream never is.
type forwardClients struct {
	maxConns int
	timeout  time.Duration

	mu      sync.Mutex // guards clients
	clients map[*upstream.Instance]*fasthttp.HostClient
}

func newForwardClients(maxConns int, timeout time.Duration) *forwardClients {
	return &forwardClients{maxConns: maxConns, timeout: timeout, clients: map[*upstream.Instance]*fasthttp.HostClient{}}
}

// get returns inst's client, creating it on first use. Clients of
// instances that discovery removed are dropped once the map has grown
// past the live set (their idle connections close by MaxIdleConnDuration).
func (f *forwardClients) get(inst *upstream.Instance, live func() []*upstream.Instance) *fasthttp.HostClient {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.clients[inst]; ok {
		return c
	}
	if live != nil && len(f.clients) >= 16 {
		keep := map[*upstream.Instance]bool{}
		for _, i := range live() {
			keep[i] = true
		}
		for i := range f.clients {
			if !keep[i] {
				delete(f.clients, i)
			}
		}
	}
	dialTimeout := min(f.timeout, 5*time.Second)
	c := &fasthttp.HostClient{
		Addr:     inst.Addr,
		Name:     "comfygate",
		IsTLS:    inst.TLS,
		MaxConns: f.maxConns,
		// Waiting for one of comfygate's own MaxConns ends before the
		// request's deadline: fasthttp then says ErrNoFreeConns (comfygate
		// busy: 503, not the instance's fault) rather than ErrTimeout.
		MaxConnWaitTimeout:            f.timeout / 2,
		StreamResponseBody:            true,
		DisablePathNormalizing:        true, // %2F must reach ComfyUI undecoded
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: false,
		MaxIdleConnDuration:           30 * time.Second,
		ReadBufferSize:                16 << 10,
		WriteBufferSize:               16 << 10,
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
				return nil, &dialError{addr: addr, err: err}
			}
			return &idleConn{Conn: c}, nil
		},
	}
	f.clients[inst] = c
	return c
}

// staleConn is the HostClient's RetryIfErr: retry once, on a new
// connection, when the instance closed or reset the connection before
// answering a byte. That is what a keep-alive connection looks like after
// the instance restarted or dropped it while idle; the request did not run
// (ComfyUI answers every request it reads). Timeouts and dial errors are
// never retried here.
func staleConn(_ *fasthttp.Request, attempts int, err error) (resetTimeout, retry bool) {
	if attempts > 1 || isTimeout(err) || isDialError(err) {
		return false, false
	}
	return false, errors.Is(err, fasthttp.ErrConnectionClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// idleConn turns the absolute deadlines fasthttp sets into idle timeouts:
// SetReadDeadline(t) remembers t-now, and every Read pushes the deadline
// that far ahead of itself first (same for writes).
type idleConn struct {
	net.Conn
	readIdle  atomic.Int64 // nanoseconds; 0: no deadline
	writeIdle atomic.Int64
}

func (c *idleConn) SetDeadline(t time.Time) error {
	c.remember(&c.readIdle, t)
	c.remember(&c.writeIdle, t)
	return c.Conn.SetDeadline(t)
}

func (c *idleConn) SetReadDeadline(t time.Time) error {
	c.remember(&c.readIdle, t)
	return c.Conn.SetReadDeadline(t)
}

func (c *idleConn) SetWriteDeadline(t time.Time) error {
	c.remember(&c.writeIdle, t)
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

// forwardOpts changes what forward sends, or what it does with the answer.
// The zero value forwards the client's request unchanged.
type forwardOpts struct {
	// uri replaces the client's raw request URI (pinned routes put the
	// instance's prompt id in it).
	uri []byte
	// body, with setBody, replaces the client's body (already read).
	body    []byte
	setBody bool
	// rewrite, when set, reads the answer whole (up to maxSmallAnswer) and
	// returns what goes to the client instead; the status and headers stay.
	rewrite func(inst *upstream.Instance, status int, body []byte) []byte
}

// errClientBody marks a failure reading the client's own request body: the
// client went away, nothing the instance is to blame for.
var errClientBody = errors.New("read client body")

// clientBody is the client's streamed request body as the upstream request
// reads it. It hides any Close (the server owns the stream) and remembers
// a read error so it is not blamed on the instance.
type clientBody struct {
	r   io.Reader
	err error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// forward sends the client's request to inst and relays the answer:
// method, raw request URI, headers (see copyRequestHeaders) and status
// unchanged, both bodies streamed. It goes through the instance's breaker:
// a connection error, a timeout or a 5xx counts as a failure.
//
// It returns an error only when nothing was written for the client, so the
// caller answers (writeError) or, for a *dialError, may try another instance.
func (s *Server) forward(ctx *fasthttp.RequestCtx, inst *upstream.Instance, o *forwardOpts) error {
	if o == nil {
		o = &forwardOpts{}
	}
	setInstance(ctx, inst)
	done, err := inst.Allow()
	if err != nil {
		return fmt.Errorf("upstream %s: %w", inst.Name, err)
	}
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()

	req.Header.SetMethodBytes(ctx.Method())
	uri := o.uri
	if uri == nil {
		uri = rawRequestURI(ctx)
	}
	req.Header.SetRequestURIBytes(uri)
	copyRequestHeaders(ctx, &req.Header, inst)
	// Host stays the instance's, whatever fasthttp reads into the URI.
	req.UseHostHeader = true
	if o.rewrite != nil {
		// The answer is parsed and rewritten: ask for it uncompressed
		// (ComfyUI's --enable-compress-response-body).
		req.Header.Del("Accept-Encoding")
	}
	if inst.TLS {
		req.URI().SetScheme("https")
	}
	var cb *clientBody
	switch {
	case o.setBody:
		req.SetBody(o.body)
	default:
		if cl := ctx.Request.Header.ContentLength(); cl > 0 || cl == -1 {
			if bs := ctx.RequestBodyStream(); bs != nil {
				cb = &clientBody{r: bs}
				req.SetBodyStream(cb, cl)
			} else {
				req.SetBody(ctx.Request.Body())
			}
		}
	}
	err = s.clients.get(inst, s.pool.Instances).DoTimeout(req, resp, s.cfg.Timeout)
	fasthttp.ReleaseRequest(req)
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		if cb != nil && cb.err != nil {
			done(false)
			return fmt.Errorf("%w: %w", errClientBody, cb.err)
		}
		// Our own connection cap says nothing of the instance's health.
		done(!errors.Is(err, fasthttp.ErrNoFreeConns))
		return fmt.Errorf("forward to %s: %w", inst.Name, err)
	}
	status := resp.StatusCode()
	done(status >= 500)

	if o.rewrite != nil {
		body, err := readAnswer(resp, maxSmallAnswer)
		if err != nil {
			fasthttp.ReleaseResponse(resp)
			return fmt.Errorf("read answer of %s: %w", inst.Name, err)
		}
		copyResponseHeaders(&resp.Header, &ctx.Response.Header)
		ctx.Response.SetStatusCode(status)
		ctx.Response.SetBody(o.rewrite(inst, status, body))
		fasthttp.ReleaseResponse(resp)
		return nil
	}

	copyResponseHeaders(&resp.Header, &ctx.Response.Header)
	ctx.Response.SetStatusCode(status)
	if bs := resp.BodyStream(); bs != nil {
		cl := resp.Header.ContentLength()
		if cl < 0 {
			cl = -1 // chunked or close-delimited upstream: chunked to the client
		}
		ctx.Response.SetBodyStream(&upstreamBody{r: bs, resp: resp}, cl)
		return nil
	}
	ctx.Response.SetBody(resp.Body())
	if ctx.IsHead() {
		if cl := resp.Header.ContentLength(); cl >= 0 {
			ctx.Response.Header.SetContentLength(cl)
		}
	}
	fasthttp.ReleaseResponse(resp)
	return nil
}

// upstreamBody is an instance's streamed answer body as the server writes
// it to the client. fasthttp closes it once the body is written (or the
// client is gone); Close then returns the upstream connection to its pool
// (or closes it when the body was not read to the end) and releases the
// upstream response.
type upstreamBody struct {
	r    io.Reader
	resp *fasthttp.Response
}

func (b *upstreamBody) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *upstreamBody) Close() error {
	if b.resp == nil {
		return nil
	}
	err := b.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(b.resp)
	b.resp, b.r = nil, nil
	return err
}

// readAnswer reads an answer body whole, up to limit bytes, and closes
// its stream.
func readAnswer(resp *fasthttp.Response, limit int64) ([]byte, error) {
	bs := resp.BodyStream()
	if bs == nil {
		return append([]byte(nil), resp.Body()...), nil
	}
	defer resp.CloseBodyStream()
	b, err := io.ReadAll(io.LimitReader(bs, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, errBodyTooLarge
	}
	return b, nil
}

// rawRequestURI is the request URI exactly as the client sent it (path
// still percent-encoded, query untouched), in origin form.
func rawRequestURI(ctx *fasthttp.RequestCtx) []byte {
	return originForm(ctx.Request.Header.RequestURI())
}

// originForm cuts an absolute-form request target (http://host/path) to
// its path and query; other forms are returned as they are.
func originForm(u []byte) []byte {
	// An absolute-form target (http://host/path) is cut to its path.
	if len(u) > 0 && u[0] != '/' {
		for _, p := range [][]byte{[]byte("http://"), []byte("https://")} {
			if len(u) >= len(p) && equalFoldASCII(u[:len(p)], p) {
				rest := u[len(p):]
				for i, c := range rest {
					if c == '/' || c == '?' {
						if c == '?' {
							return append([]byte("/"), rest[i:]...)
						}
						return rest[i:]
					}
				}
				return []byte("/")
			}
		}
	}
	return u
}

func equalFoldASCII(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
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
