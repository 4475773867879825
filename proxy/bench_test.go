package proxy

import (
	"bytes"
	"mime/multipart"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/valyala/fasthttp"
)

// BenchmarkProxyGETSystemStats measures GET /system_stats against one
// simulated ComfyUI directly and through comfygate, one client at a time
// (serial: ns/op is the latency) and with parallel clients (ns/op is the
// inverse throughput). The difference is comfygate's cost per request.
// bench/cmd/compare adds nginx and HAProxy to the same comparison.
func BenchmarkProxyGETSystemStats(b *testing.B) {
	sim := testkit.Sim(b, comfysim.Options{})
	g := startGate(b, []string{sim.Addr()}, nil)
	for _, target := range []struct{ name, addr string }{
		{"direct", sim.Addr()},
		{"comfygate", strings.TrimPrefix(g.base, "http://")},
	} {
		c := &fasthttp.HostClient{Addr: target.addr, MaxConns: 512}
		get := func(b *testing.B, req *fasthttp.Request, resp *fasthttp.Response) {
			if err := c.Do(req, resp); err != nil {
				b.Fatal(err)
			}
			if resp.StatusCode() != 200 || len(resp.Body()) == 0 {
				b.Fatalf("status %d", resp.StatusCode())
			}
		}
		newReq := func() *fasthttp.Request {
			req := fasthttp.AcquireRequest()
			req.SetRequestURI("/system_stats")
			req.Header.SetHost(target.addr)
			return req
		}
		b.Run(target.name+"/serial", func(b *testing.B) {
			req, resp := newReq(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			b.ReportAllocs()
			for b.Loop() {
				get(b, req, resp)
			}
		})
		b.Run(target.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				req, resp := newReq(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				for pb.Next() {
					get(b, req, resp)
				}
			})
		})
	}
}

// BenchmarkForwardView measures streaming a 1 MiB /view answer through
// comfygate (throughput in MB/s).
func BenchmarkForwardView(b *testing.B) {
	sim := testkit.Sim(b, comfysim.Options{})
	g := startGate(b, []string{sim.Addr()}, nil)
	const size = 1 << 20
	c := &fasthttp.HostClient{Addr: strings.TrimPrefix(g.base, "http://")}
	// A 1 MiB input file, uploaded through comfygate so the pool knows it.
	body, ct := multipartFile(b, "bench.bin", make([]byte, size))
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("/upload/image")
	req.Header.SetHost("comfygate")
	req.Header.SetMethod("POST")
	req.Header.SetContentType(ct)
	req.SetBody(body)
	if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 {
		b.Fatalf("upload: %v %d %s", err, resp.StatusCode(), resp.Body())
	}
	req.Reset()
	req.SetRequestURI("/view?filename=bench.bin&type=input&subfolder=")
	req.Header.SetHost("comfygate")
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 || len(resp.Body()) != size {
			b.Fatalf("view: %v %d %d", err, resp.StatusCode(), len(resp.Body()))
		}
	}
}

// multipartFile builds an /upload/image body holding one file.
func multipartFile(tb testing.TB, name string, data []byte) ([]byte, string) {
	tb.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("image", name)
	if err != nil {
		tb.Fatal(err)
	}
	_, _ = fw.Write(data)
	_ = mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}
