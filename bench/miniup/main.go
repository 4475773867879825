// Command miniup is the near-zero-cost upstream of the comparison bench
// (bench/cmd/compare): a fasthttp server standing in for a ComfyUI instance
// that answers the measured paths with the bytes a simulated instance
// answers, without doing the simulator's work, so a proxy in front of it is
// measured rather than the simulator behind it.
//
//	miniup -listen 127.0.0.1:A,127.0.0.1:B -capture http://127.0.0.1:SIM -files DIR -upload-answer FILE
//
// Every listener is one instance. A GET is answered from a cache filled
// once per URI from -capture (the simulator); /view serves files of -files
// (type output) with sendfile; POST /upload/image reads and discards the
// body and answers the bytes of -upload-answer; /ws speaks enough of
// ComfyUI's socket (the first status, the feature_flags answer) for a
// proxy to keep its socket up, and GET /bench/tick sends every socket of
// that listener a "bench.tick" event stamped with the sending time (Unix
// nanoseconds), from which a client reads the event's latency.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// maxCached bounds the captured answers kept (distinct GET URIs).
const maxCached = 256

type answer struct {
	status int
	ctype  []byte
	body   []byte
}

// instance is one listener: its sockets and its shared answer cache.
type instance struct {
	capture  *fasthttp.HostClient
	files    fasthttp.RequestHandler // nil: no /view
	upload   []byte
	cache    *sync.Map // URI -> *answer
	cached   *atomic.Int64
	upgrader websocket.FastHTTPUpgrader

	connsMu sync.Mutex // guards conns
	conns   map[*wsConn]struct{}
	seq     atomic.Int64
}

// wsConn is one client socket: one writer goroutine fed by out, as a
// ComfyUI server writes each socket in turn from its own send loop.
type wsConn struct {
	c   *websocket.Conn
	out chan []byte
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8188", "comma-separated addresses, one instance each")
	capture := flag.String("capture", "", "base URL of the instance whose GET answers are copied (http://host:port)")
	files := flag.String("files", "", "directory /view serves output files from")
	uploadAnswer := flag.String("upload-answer", "", "file holding the answer to POST /upload/image")
	flag.Parse()
	if err := run(*listen, *capture, *files, *uploadAnswer); err != nil {
		fmt.Fprintln(os.Stderr, "miniup:", err)
		os.Exit(1)
	}
}

func run(listen, capture, files, uploadAnswer string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var up []byte
	if uploadAnswer != "" {
		b, err := os.ReadFile(uploadAnswer)
		if err != nil {
			return err
		}
		up = b
	}
	var hc *fasthttp.HostClient
	if capture != "" {
		hc = &fasthttp.HostClient{Addr: strings.TrimPrefix(capture, "http://"), ReadTimeout: 30 * time.Second, MaxResponseBodySize: 64 << 20}
	}
	var fs fasthttp.RequestHandler
	if files != "" {
		abs, err := filepath.Abs(files)
		if err != nil {
			return err
		}
		fs = (&fasthttp.FS{Root: abs, AcceptByteRange: true, Compress: false, SkipCache: false,
			PathRewrite: func(ctx *fasthttp.RequestCtx) []byte {
				return append([]byte("/"), filepath.Base(string(ctx.QueryArgs().Peek("filename")))...)
			}}).NewRequestHandler()
	}
	cache, cached := &sync.Map{}, &atomic.Int64{}
	var servers []*fasthttp.Server
	errc := make(chan error, 8)
	for _, addr := range strings.Split(listen, ",") {
		ln, err := net.Listen("tcp", strings.TrimSpace(addr))
		if err != nil {
			return err
		}
		in := &instance{capture: hc, files: fs, upload: up, cache: cache, cached: cached, conns: map[*wsConn]struct{}{}}
		in.upgrader = websocket.FastHTTPUpgrader{CheckOrigin: func(*fasthttp.RequestCtx) bool { return true }}
		srv := &fasthttp.Server{Handler: in.serve, StreamRequestBody: true, MaxRequestBodySize: 200 << 20,
			NoDefaultServerHeader: true, Concurrency: 1 << 16}
		servers = append(servers, srv)
		go func() { errc <- srv.Serve(ln) }()
		fmt.Printf("miniup listening on http://%s\n", ln.Addr())
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	for _, s := range servers {
		_ = s.Shutdown()
	}
	return nil
}

func (in *instance) serve(ctx *fasthttp.RequestCtx) {
	path := string(ctx.Path())
	path = strings.TrimPrefix(path, "/api")
	switch {
	case path == "/ws":
		in.serveWS(ctx)
	case path == "/bench/tick":
		n := in.tick()
		ctx.SetBodyString(strconv.Itoa(n))
	case path == "/view" && in.files != nil:
		in.files(ctx)
	case path == "/upload/image" && ctx.IsPost():
		// Read the whole body and drop it: what an instance at least does.
		if r := ctx.RequestBodyStream(); r != nil {
			buf := make([]byte, 64<<10)
			for {
				if _, err := r.Read(buf); err != nil {
					break
				}
			}
		}
		ctx.SetContentType("application/json; charset=utf-8")
		ctx.SetBody(in.upload)
	case ctx.IsGet() || ctx.IsHead():
		in.cachedGet(ctx)
	default:
		ctx.SetStatusCode(fasthttp.StatusNotFound)
	}
}

// cachedGet answers a GET from the captured copy of the instance's answer.
func (in *instance) cachedGet(ctx *fasthttp.RequestCtx) {
	uri := string(ctx.RequestURI())
	v, ok := in.cache.Load(uri)
	if !ok {
		if in.capture == nil {
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			return
		}
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI("http://" + in.capture.Addr + uri)
		err := in.capture.Do(req, resp)
		fasthttp.ReleaseRequest(req)
		if err != nil {
			fasthttp.ReleaseResponse(resp)
			ctx.SetStatusCode(fasthttp.StatusBadGateway)
			return
		}
		a := &answer{status: resp.StatusCode(), ctype: bytes.Clone(resp.Header.ContentType()), body: bytes.Clone(resp.Body())}
		fasthttp.ReleaseResponse(resp)
		if in.cached.Add(1) <= maxCached {
			in.cache.Store(uri, a)
		}
		v = a
	}
	a := v.(*answer)
	ctx.SetStatusCode(a.status)
	ctx.Response.Header.SetContentTypeBytes(a.ctype)
	ctx.SetBody(a.body)
}

func (in *instance) serveWS(ctx *fasthttp.RequestCtx) {
	sid := string(ctx.QueryArgs().Peek("clientId"))
	if sid == "" {
		sid = strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	_ = in.upgrader.Upgrade(ctx, func(c *websocket.Conn) {
		wc := &wsConn{c: c, out: make(chan []byte, 1024)}
		wc.out <- []byte(`{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "` + sid + `"}}`)
		in.connsMu.Lock()
		in.conns[wc] = struct{}{}
		in.connsMu.Unlock()
		done := make(chan struct{})
		go func() {
			defer close(done)
			for m := range wc.out {
				_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if c.WriteMessage(websocket.TextMessage, m) != nil {
					_ = c.Close()
					for range wc.out {
					}
					return
				}
			}
		}()
		first := true
		for {
			typ, data, err := c.ReadMessage()
			if err != nil {
				break
			}
			if first && typ == websocket.TextMessage && bytes.Contains(data, []byte(`"feature_flags"`)) {
				wc.send([]byte(`{"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": 104857600}}`))
			}
			first = false
		}
		in.connsMu.Lock()
		delete(in.conns, wc)
		in.connsMu.Unlock()
		close(wc.out)
		<-done
		_ = c.Close()
	})
}

// send queues m, dropping it when the socket is that far behind.
func (wc *wsConn) send(m []byte) {
	select {
	case wc.out <- m:
	default:
	}
}

// tick sends every socket one stamped event and returns how many got it.
func (in *instance) tick() int {
	seq := in.seq.Add(1)
	in.connsMu.Lock()
	defer in.connsMu.Unlock()
	m := []byte(`{"type": "bench.tick", "data": {"seq": ` + strconv.FormatInt(seq, 10) + `, "t": ` + strconv.FormatInt(time.Now().UnixNano(), 10) + `}}`)
	for wc := range in.conns {
		wc.send(m)
	}
	return len(in.conns)
}
