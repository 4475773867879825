package proxy

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"syscall"

	"testing"
	"time"

	"github.com/comfygate/comfygate/metrics"
	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// minimalStats is what the minimal upstream answers to GET /system_stats:
// the size and shape of a real ComfyUI's answer, served from memory.
var minimalStats = []byte(`{"system":{"os":"linux","ram_total":67430866944,"ram_free":57430866944,` +
	`"comfyui_version":"0.3.75","required_frontend_version":"1.28.7","installed_templates_version":"0.1.95",` +
	`"required_templates_version":"0.1.95","python_version":"3.12.3 (main, Nov  6 2024, 18:32:19) [GCC 13.2.0]",` +
	`"pytorch_version":"2.8.0+cu128","embedded_python":false,"argv":["main.py","--listen","127.0.0.1","--port","8188"]},` +
	`"devices":[{"name":"cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync","type":"cuda","index":0,` +
	`"vram_total":25386352640,"vram_free":23850352640,"torch_vram_total":0,"torch_vram_free":0}]}`)

// minimalUpstream is an instance that costs next to nothing: fixed answers
// from memory for /system_stats, /queue and /history, /view streaming
// ?size= bytes (206 and one byte to a Range probe), and a /ws that sends
// one status frame and then only reads. It measures comfygate's own cost
// without a simulator competing for the CPU. It is a fasthttp server that
// allocates nothing per request, which testkit.Mini (net/http, so that the
// tests see requests exactly as sent) cannot be: TestProxiedGETAllocs
// counts the allocations of the whole process.
type minimalUpstream struct {
	addr     string
	accepted *atomic.Int64 // connections accepted so far
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func startMinimalUpstream(tb testing.TB) *minimalUpstream {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	up := websocket.FastHTTPUpgrader{CheckOrigin: func(*fasthttp.RequestCtx) bool { return true }}
	status := []byte(`{"type":"status","data":{"status":{"exec_info":{"queue_remaining":0}},"sid":"bench"}}`)
	srv := &fasthttp.Server{
		NoDefaultServerHeader: true,
		Handler: func(ctx *fasthttp.RequestCtx) {
			switch string(ctx.Path()) {
			case "/system_stats":
				ctx.SetContentType("application/json; charset=utf-8")
				ctx.SetBody(minimalStats)
			case "/queue":
				ctx.SetContentType("application/json; charset=utf-8")
				ctx.SetBodyString(`{"queue_running":[],"queue_pending":[]}`)
			case "/history":
				ctx.SetContentType("application/json; charset=utf-8")
				ctx.SetBodyString(`{}`)
			case "/view":
				if len(ctx.Request.Header.Peek("Range")) > 0 {
					ctx.SetStatusCode(fasthttp.StatusPartialContent)
					ctx.SetBodyString("x")
					return
				}
				size, _ := strconv.Atoi(string(ctx.QueryArgs().Peek("size")))
				ctx.SetContentType("application/octet-stream")
				ctx.SetBodyStream(&zeroReader{left: size}, size)
			case "/ws":
				_ = up.Upgrade(ctx, func(c *websocket.Conn) {
					defer c.Close()
					if c.WriteMessage(websocket.TextMessage, status) != nil {
						return
					}
					for {
						if _, _, err := c.ReadMessage(); err != nil {
							return
						}
					}
				})
			default:
				ctx.SetStatusCode(fasthttp.StatusNotFound)
			}
		},
	}
	accepted := new(atomic.Int64)
	done := make(chan struct{})
	go func() { _ = srv.Serve(countingListener{ln, accepted}); close(done) }()
	tb.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return &minimalUpstream{addr: ln.Addr().String(), accepted: accepted}
}

// zeroReader yields left zero bytes.
type zeroReader struct{ left int }

func (z *zeroReader) Read(p []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	n := min(len(p), z.left)
	clear(p[:n])
	z.left -= n
	return n, nil
}

// BenchmarkHotPath measures comfygate's own cost per proxied request in
// front of the minimal upstream: GET /system_stats (a small JSON answer)
// directly and through comfygate, serially (ns/op is the round trip) and
// with parallel clients (ns/op is the inverse throughput), and a 64 MiB
// /view streamed through (MB/s). The difference between direct and
// comfygate is what comfygate adds.
//
//	go test -run '^$' -bench BenchmarkHotPath -benchmem ./proxy/
//	go test -run '^$' -bench 'BenchmarkHotPath/comfygate/serial' -cpuprofile cpu.out ./proxy/
func BenchmarkHotPath(b *testing.B) {
	up := startMinimalUpstream(b)
	// Metrics on, as in production: their cost is part of the path.
	g := startGateMetrics(b, []string{up.addr}, nil, metrics.New("bench"), nil)
	for _, target := range []struct{ name, addr string }{
		{"direct", up.addr},
		{"comfygate", g.addr},
	} {
		c := &fasthttp.HostClient{Addr: target.addr, MaxConns: 512, ReadTimeout: 10 * time.Second}
		newReq := func(uri string) *fasthttp.Request {
			req := fasthttp.AcquireRequest()
			req.SetRequestURI(uri)
			req.Header.SetHost(target.addr)
			return req
		}
		get := func(b *testing.B, req *fasthttp.Request, resp *fasthttp.Response) {
			if err := c.Do(req, resp); err != nil {
				b.Fatal(err)
			}
			if resp.StatusCode() != 200 || !bytes.Equal(resp.Body(), minimalStats) {
				b.Fatalf("status %d, body %.80q", resp.StatusCode(), resp.Body())
			}
		}
		b.Run(target.name+"/serial", func(b *testing.B) {
			req, resp := newReq("/system_stats"), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				get(b, req, resp)
			}
		})
		b.Run(target.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(8)
			defer reportCPU(b)()
			b.RunParallel(func(pb *testing.PB) {
				req, resp := newReq("/system_stats"), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				for pb.Next() {
					get(b, req, resp)
				}
			})
		})
		b.Run(target.name+"/view64M", func(b *testing.B) {
			const size = 64 << 20
			req := newReq("/view?filename=bench.bin&type=output&subfolder=&size=" + strconv.Itoa(size))
			resp := fasthttp.AcquireResponse()
			resp.StreamBody = true
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			sc := &fasthttp.HostClient{Addr: target.addr, StreamResponseBody: true, ReadBufferSize: 64 << 10}
			buf := make([]byte, 256<<10)
			b.SetBytes(size)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if err := sc.Do(req, resp); err != nil || resp.StatusCode() != 200 {
					b.Fatalf("view: %v %d", err, resp.StatusCode())
				}
				n, err := io.CopyBuffer(io.Discard, onlyReader{resp.BodyStream()}, buf)
				_ = resp.CloseBodyStream()
				if err != nil || n != size {
					b.Fatalf("view: %d bytes, %v", n, err)
				}
			}
		})
	}
}

// reportCPU reports the process's CPU time (user and system) per
// operation, "cpu-ns/op", from its call to the call of the function it
// returns. Unlike ns/op it does not grow when other processes compete for
// the machine's cores; the difference between direct and comfygate is
// comfygate's own CPU cost per request.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		b.ReportMetric(float64((cpuTime()-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// onlyReader hides WriterTo/ReaderFrom so io.CopyBuffer uses the buffer.
type onlyReader struct{ io.Reader }
