package proxy

import (
	"context"
	"errors"
	"fmt"
	"github.com/comfygate/comfygate/config"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// maxSmallAnswer caps an instance's answer that comfygate reads whole to
// rewrite it (history, queue, jobs, upload answers). ComfyUI's history of
// 10000 entries with embedded workflows can be large; past this the answer
// is refused with 502 rather than held in memory.
const maxSmallAnswer = 256 << 20

// forwarder sends client requests to instances and relays the answers:
// to one picked instance with retries elsewhere (forwardPicked), to the
// one a prompt is pinned to (forwardTo), or comfygate's own call to every
// instance (callAll); writeError answers for what went wrong.
type forwarder struct {
	cfg  *config.Config
	pool *upstream.Pool
	log  *slog.Logger
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
	// bodyStream, when set, is the body sent instead of the client's,
	// chunked (a form rewritten as it streams, keyfiles.go).
	bodyStream io.Reader
	// rewrite, when set, reads the answer whole (up to maxSmallAnswer) and
	// returns what goes to the client instead; the status and headers stay.
	rewrite func(inst *upstream.Instance, status int, body []byte) []byte
	// timeout, if set, bounds the instance's silence on this try instead of
	// COMFYUI_TIMEOUT (a read that another instance may answer instead).
	timeout time.Duration
	// pinned: no other instance can answer (upstream.DoOpts.Pinned).
	pinned bool
}

// forward sends the client's request to inst and relays the answer:
// method, raw request URI, headers (see copyRequestHeaders) and status
// unchanged, both bodies streamed. It goes through its transport's Do, which asks the
// instance's breaker and tells it the outcome: the request is the
// client's, so only what the instance is to blame for counts (see
// upstream.Transport.Do).
//
// It returns an error only when nothing was written for the client, so the
// caller answers (writeError) or, when upstream.NotSent (or NoAnswer for a
// read), may try another instance.
func (s *forwarder) forward(ctx *fasthttp.RequestCtx, inst *upstream.Instance, o *forwardOpts) error {
	if o == nil {
		o = &forwardOpts{}
	}
	setInstance(ctx, inst)
	req := fasthttp.AcquireRequest()
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
	do := upstream.DoOpts{Source: upstream.ByClient, Timeout: o.timeout, Pinned: o.pinned}
	switch {
	case o.setBody:
		req.SetBody(o.body)
	case o.bodyStream != nil:
		do.Body, do.BodySize = o.bodyStream, -1
	default:
		if cl := ctx.Request.Header.ContentLength(); cl > 0 || cl == -1 {
			if bs := ctx.RequestBodyStream(); bs != nil {
				do.Body, do.BodySize = &stallGuard{r: bs, conn: ctx.Conn(), idle: s.cfg.Timeout}, cl
			} else {
				req.SetBody(ctx.Request.Body())
			}
		}
	}
	a, err := inst.Transport().Do(context.Background(), req, do)
	if err != nil {
		return fmt.Errorf("forward to %s: %w", inst.Name, err)
	}
	resp := a.Response()
	status := resp.StatusCode()

	copyResponseHeaders(&resp.Header, &ctx.Response.Header)
	ctx.Response.SetStatusCode(status)
	if o.rewrite != nil {
		body, err := a.ReadAll(maxSmallAnswer) // closes a
		if err != nil {
			ctx.Response.Reset()
			return fmt.Errorf("read answer of %s: %w", inst.Name, err)
		}
		ctx.Response.SetBody(o.rewrite(inst, status, body))
		return nil
	}
	if resp.BodyStream() != nil {
		cl := resp.Header.ContentLength()
		if cl < 0 {
			cl = -1 // chunked or close-delimited upstream: chunked to the client
		}
		// The answer is the body stream: fasthttp closes it once the body
		// is written (or the client is gone), which returns the upstream
		// connection to its pool (or closes it when the body was not read
		// to the end), releases the upstream response and frees the
		// connection slot.
		ctx.Response.SetBodyStream(a, cl)
		return nil
	}
	ctx.Response.SetBody(resp.Body())
	if ctx.IsHead() {
		if cl := resp.Header.ContentLength(); cl >= 0 {
			ctx.Response.Header.SetContentLength(cl)
		}
	}
	_ = a.Close()
	return nil
}

// stallGuard is the client's streamed request body as the upstream request
// reads it. Before each read it gives the client idle more time on its
// connection: a client that stops sending its body for that long is cut
// (a timeout read error, the client's: 408), while a slow but moving
// upload never is. It hides any Close (the server owns the stream).
type stallGuard struct {
	r    io.Reader
	conn net.Conn
	idle time.Duration
}

func (g *stallGuard) Read(p []byte) (int, error) {
	if g.conn != nil && g.idle > 0 {
		_ = g.conn.SetReadDeadline(time.Now().Add(g.idle))
	}
	return g.r.Read(p)
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

// home picks the home instance: the first available one in configuration
// order, skipping exclude (instances that could not be reached just now).
func (s *forwarder) home(exclude ...*upstream.Instance) (*upstream.Instance, error) {
	var buf [8]*upstream.Instance
next:
	for _, inst := range s.pool.Selector().AppendHealthy(buf[:0]) {
		for _, e := range exclude {
			if e == inst {
				continue next
			}
		}
		return inst, nil
	}
	return nil, upstream.ErrNoUpstream
}

// forwardPicked forwards the request to the instance pick chooses. When
// the request was not sent (the instance cannot be reached, its breaker
// is open, or all of comfygate's connections to it are busy), it asks pick
// again without it; when pick has none left the client gets 503.
//
// A read (GET or HEAD without a body) is also tried elsewhere when the
// instance gave no answer at all (upstream.NoAnswer: a hung instance, a
// connection closed before the first byte): replaying it is safe and
// nothing reached the client yet. While another instance is left to try,
// a read waits for the instance's first byte only readTimeout
// (health_check.timeout); the last instance gets the full COMFYUI_TIMEOUT,
// so a fleet that is merely slow still answers.
func (s *forwarder) forwardPicked(ctx *fasthttp.RequestCtx, pick func(exclude ...*upstream.Instance) (*upstream.Instance, error), o *forwardOpts) {
	// -2: no Content-Length and not chunked, which for a request is no body.
	cl := ctx.Request.Header.ContentLength()
	read := (ctx.IsGet() || ctx.IsHead()) && (cl == 0 || cl == -2)
	var tried []*upstream.Instance
	var last error // why the previous instance was passed over
	for range s.pool.Len() + 1 {
		inst, err := pick(tried...)
		if err != nil {
			if last != nil && !isDialError(last) {
				err = last // busy (503), silent (504), closed early (502)
			}
			s.writeError(ctx, err)
			return
		}
		try := o
		if read && s.othersLeft(inst, tried) {
			t := forwardOpts{}
			if o != nil {
				t = *o
			}
			t.timeout = s.readTimeout()
			try = &t
		}
		err = s.forward(ctx, inst, try)
		if err == nil {
			return
		}
		if !upstream.NotSent(err) && !(read && upstream.NoAnswer(err)) {
			s.writeError(ctx, err)
			return
		}
		s.log.Info("instance unreachable, busy or silent, trying another", "instance", inst.Name, "err", err)
		tried = append(tried, inst)
		last = err
	}
	if last == nil {
		last = upstream.ErrNoUpstream
	}
	s.writeError(ctx, last)
}

// readTimeout is how long a read waits for an instance's first byte while
// another instance could answer it instead: health_check.timeout, the time
// a healthy instance has to answer /system_stats, capped by COMFYUI_TIMEOUT.
func (s *forwarder) readTimeout() time.Duration {
	d := s.cfg.HealthCheck.Timeout
	if d <= 0 || d > s.cfg.Timeout {
		d = s.cfg.Timeout
	}
	return d
}

// othersLeft reports whether an instance other than inst and those tried
// is healthy, so a read that inst does not answer can go there.
func (s *forwarder) othersLeft(inst *upstream.Instance, tried []*upstream.Instance) bool {
	var buf [8]*upstream.Instance
next:
	for _, h := range s.pool.Selector().AppendHealthy(buf[:0]) {
		if h == inst {
			continue
		}
		for _, t := range tried {
			if h == t {
				continue next
			}
		}
		return true
	}
	return false
}

// forwardTo forwards to one given instance (a pinned route): no other
// instance can answer for it.
func (s *forwarder) forwardTo(ctx *fasthttp.RequestCtx, inst *upstream.Instance, o *forwardOpts) {
	pinned := forwardOpts{}
	if o != nil {
		pinned = *o
	}
	pinned.pinned = true
	if err := s.forward(ctx, inst, &pinned); err != nil {
		s.writeError(ctx, err)
	}
}

// callResult is one instance's answer to a fanned-out call.
type callResult struct {
	inst   *upstream.Instance
	status int
	body   []byte
	err    error
}

// errNotInTime is the result of an instance left out of a merged view
// because it did not answer within readTimeout while others did.
var errNotInTime = errors.New("no answer in time for a merged view")

// callAll sends one non-streaming request to every instance of insts in
// parallel (each bounded by COMFYUI_TIMEOUT) and returns the answers in
// the order of insts.
//
// A GET is comfygate's own read for a merged view: once at least one
// instance answered and readTimeout has passed, callAll stops waiting for
// the others, which are left out (their result says they did not answer
// in time; their calls end by their own timeout). A hung instance then
// costs a merged /queue or /history readTimeout, not COMFYUI_TIMEOUT,
// while a fleet that is merely slow is still waited for. A POST carries
// the client's request (an action on every instance): every answer is
// waited for.
func (s *forwarder) callAll(insts []*upstream.Instance, method, path string, header map[string]string, body []byte) []callResult {
	out := make([]callResult, len(insts))
	src := upstream.ByClient
	if method == fasthttp.MethodGet {
		src = upstream.ByGate
	}
	type answer struct {
		k int
		r callResult
	}
	ch := make(chan answer, len(insts))
	for k, inst := range insts {
		out[k] = callResult{inst: inst, err: fmt.Errorf("%s %s at %s: %w", method, path, inst.Name, errNotInTime)}
		go func() {
			defer func() {
				if r := recover(); r != nil {
					ch <- answer{k, callResult{inst: inst, err: errors.New("panic in upstream call")}}
					s.log.Error("panic in upstream call", "instance", inst.Name, "panic", r)
				}
			}()
			st, b, err := inst.Transport().Fetch(context.Background(), upstream.Request{Method: method, Path: path, Header: header, Body: body, Source: src})
			ch <- answer{k, callResult{inst: inst, status: st, body: b, err: err}}
		}()
	}
	var grace <-chan time.Time
	if method == fasthttp.MethodGet && len(insts) > 1 {
		t := time.NewTimer(s.readTimeout())
		defer t.Stop()
		grace = t.C
	}
	answered, graceOver := false, false
	for left := len(insts); left > 0; {
		select {
		case a := <-ch:
			out[a.k] = a.r
			left--
			answered = answered || (a.r.err == nil && a.r.status == fasthttp.StatusOK)
		case <-grace:
			graceOver, grace = true, nil
		}
		if graceOver && answered && left > 0 {
			s.log.Info("merged view without the instances that did not answer in time", "path", path, "missing", left)
			break
		}
	}
	return out
}
