package proxy

import (
	"context"
	"fmt"
	"io"
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
// unchanged, both bodies streamed. It goes through inst.Do, which asks the
// instance's breaker and tells it the outcome: the request is the
// client's, so only what the instance is to blame for counts (see
// upstream.Instance.Do).
//
// It returns an error only when nothing was written for the client, so the
// caller answers (writeError) or, when upstream.NotSent (or NoAnswer for a
// read), may try another instance.
func (s *Server) forward(ctx *fasthttp.RequestCtx, inst *upstream.Instance, o *forwardOpts) error {
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
	a, err := inst.Do(context.Background(), req, do)
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
