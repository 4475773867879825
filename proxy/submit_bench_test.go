package proxy

import (
	"bytes"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// BenchmarkSubmit measures POST /prompt through comfygate (metrics on, as
// in production) in front of two simulated instances with no delay: a
// small workflow (EmptyImage → ImageInvert → SaveImage), a different
// color each time so the instances cache nothing. serial: ns/op is the
// round trip, one prompt after the other; parallel: 8 clients per core,
// ns/op is the inverse throughput; paced: one prompt every 4 ms, as
// bench/cmd/compare's submit row sends them (the instances' queues stay
// short, comfygate's goroutines are idle between prompts), reporting the
// p50 of the answers' latencies. The instances run every prompt in the
// same process, so their work is part of what the figures measure.
//
//	go test -run '^$' -bench BenchmarkSubmit -benchmem ./proxy/
//	go test -run '^$' -bench 'BenchmarkSubmit/serial' -cpuprofile cpu.out ./proxy/
func BenchmarkSubmit(b *testing.B) {
	sims := testkit.Sims(b, 2, comfysim.Options{})
	g := startGateMetrics(b, testkit.Addrs(sims), nil, metrics.New("bench"), nil)
	var seed atomic.Int64
	// Each measurement starts with the instances idle and comfygate's
	// queue count settled: the prompts of the one before would otherwise
	// run (and send their events) during it.
	idle := func(b *testing.B) {
		ok := testkit.Poll(time.Minute, func() bool {
			for _, s := range sims {
				if r, p := s.Queue(); r+p > 0 {
					return false
				}
			}
			return g.pool.QueueRemaining() == 0
		})
		if !ok {
			b.Fatal("instances still busy after a minute")
		}
	}
	for _, target := range []struct{ name, addr string }{
		{"direct", sims[0].Addr()},
		{"comfygate", g.addr},
	} {
		// The prompts' client listens on its socket, as a ComfyUI client
		// does: so the instance sends every event to a socket in both
		// cases (directly, to the client's; through comfygate, to
		// comfygate's, which routes it to the client's).
		listen(b, target.addr)
		c := &fasthttp.HostClient{Addr: target.addr, MaxConns: 512, ReadTimeout: 10 * time.Second}
		newReq := func() *fasthttp.Request {
			req := fasthttp.AcquireRequest()
			req.SetRequestURI("/prompt")
			req.Header.SetMethod(fasthttp.MethodPost)
			req.Header.SetHost(target.addr)
			req.Header.SetContentType("application/json")
			return req
		}
		submit := func(b *testing.B, req *fasthttp.Request, resp *fasthttp.Response, body []byte) []byte {
			body = appendPromptBody(body[:0], seed.Add(1))
			req.SetBodyRaw(body)
			if err := c.Do(req, resp); err != nil {
				b.Fatal(err)
			}
			if resp.StatusCode() != 200 || !bytes.Contains(resp.Body(), []byte(`"prompt_id"`)) {
				b.Fatalf("status %d, body %.120q", resp.StatusCode(), resp.Body())
			}
			return body
		}
		b.Run(target.name+"/serial", func(b *testing.B) {
			req, resp := newReq(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			var body []byte
			idle(b)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				body = submit(b, req, resp, body)
			}
		})
		b.Run(target.name+"/parallel", func(b *testing.B) {
			idle(b)
			b.ResetTimer()
			b.ReportAllocs()
			b.SetParallelism(8)
			defer reportCPU(b)()
			b.RunParallel(func(pb *testing.PB) {
				req, resp := newReq(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				var body []byte
				for pb.Next() {
					body = submit(b, req, resp, body)
				}
			})
		})
		b.Run(target.name+"/paced", func(b *testing.B) {
			const spacing = 4 * time.Millisecond
			req, resp := newReq(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			var body []byte
			lats := make([]time.Duration, 0, 1024)
			idle(b)
			b.ReportAllocs()
			next := time.Now()
			for b.Loop() {
				time.Sleep(time.Until(next))
				next = next.Add(spacing)
				t0 := time.Now()
				body = submit(b, req, resp, body)
				lats = append(lats, time.Since(t0))
			}
			slices.Sort(lats)
			b.ReportMetric(float64(lats[len(lats)/2].Nanoseconds())/1e3, "p50-µs")
		})
	}
}

// listen connects the prompts' client ("bench-submit") to addr's /ws and
// reads what comes until the benchmark ends.
func listen(b *testing.B, addr string) {
	b.Helper()
	conn, _, err := (&websocket.Dialer{HandshakeTimeout: 5 * time.Second}).Dial("ws://"+addr+"/ws?clientId=bench-submit", nil)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, _, err := conn.NextReader(); err != nil {
				return
			}
		}
	}()
	b.Cleanup(func() {
		_ = conn.Close()
		<-done
	})
}

// appendPromptBody appends a POST /prompt body whose EmptyImage color is
// seed, so that no two prompts are alike. Its image goes to a folder of at
// most 256 prompts: the instance lists the folder to number each file it
// saves, which would otherwise cost more with every prompt.
func appendPromptBody(dst []byte, seed int64) []byte {
	dst = append(dst, `{"client_id":"bench-submit","prompt":{"1":{"class_type":"EmptyImage","inputs":{"width":8,"height":8,"batch_size":1,"color":`...)
	dst = strconv.AppendInt(dst, seed%16777216, 10)
	dst = append(dst, `}},"2":{"class_type":"ImageInvert","inputs":{"image":["1",0]}},`+
		`"3":{"class_type":"SaveImage","inputs":{"images":["2",0],"filename_prefix":"bench/`...)
	dst = strconv.AppendInt(dst, seed>>8, 10)
	return append(dst, `/img"}}}}`...)
}
