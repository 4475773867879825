package testkit

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// MiniComfy is a minimal ComfyUI for tests of the instance pool and of
// file handling: /system_stats with a version, /view of its files (with
// Range), /upload/image, /echo, and switches to answer 500 (Fail500) or
// hold every request (Hang).
type MiniComfy struct {
	t       testing.TB
	ln      net.Listener
	srv     *fasthttp.Server
	version string

	Fail500 atomic.Bool
	Hang    atomic.Bool
	Hanging atomic.Int64 // requests held by Hang
	Checks  atomic.Int64 // /system_stats requests
	Views   atomic.Int64 // /view requests
	Ranged  atomic.Int64 // /view requests with a Range header

	mu    sync.Mutex        // guards files
	files map[string][]byte // "type/subfolder/name" -> content

	hangDone chan struct{}
}

// Mini starts a MiniComfy reporting version on a free loopback port and
// stops it when the test ends.
func Mini(t testing.TB, version string) *MiniComfy {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &MiniComfy{t: t, ln: ln, version: version, files: map[string][]byte{}, hangDone: make(chan struct{})}
	f.srv = &fasthttp.Server{Handler: f.handle, MaxRequestBodySize: 64 << 20}
	go func() { _ = f.srv.Serve(ln) }()
	t.Cleanup(func() {
		close(f.hangDone)
		_ = f.srv.Shutdown()
	})
	return f
}

// Addr is its host:port.
func (f *MiniComfy) Addr() string { return f.ln.Addr().String() }

func miniKey(typ, sub, name string) string {
	if typ == "" {
		typ = "output"
	}
	return typ + "/" + strings.Trim(sub, "/") + "/" + name
}

// Put stores a file as an upload would.
func (f *MiniComfy) Put(typ, sub, name string, data []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.files[miniKey(typ, sub, name)] = data
}

// Get returns a stored file.
func (f *MiniComfy) Get(typ, sub, name string) ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.files[miniKey(typ, sub, name)]
	return b, ok
}

func (f *MiniComfy) handle(ctx *fasthttp.RequestCtx) {
	if f.Hang.Load() {
		f.Hanging.Add(1)
		select {
		case <-f.hangDone:
		case <-time.After(10 * time.Second):
		}
		return
	}
	if f.Fail500.Load() {
		ctx.Error("boom", fasthttp.StatusInternalServerError)
		return
	}
	switch string(ctx.Path()) {
	case "/system_stats":
		f.Checks.Add(1)
		ctx.SetContentType("application/json")
		fmt.Fprintf(ctx, `{"system":{"os":"posix","comfyui_version":%q},"devices":[]}`, f.version)
	case "/view":
		f.Views.Add(1)
		a := ctx.QueryArgs()
		b, ok := f.Get(string(a.Peek("type")), string(a.Peek("subfolder")), string(a.Peek("filename")))
		if !ok {
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			return
		}
		if len(ctx.Request.Header.Peek("Range")) > 0 {
			f.Ranged.Add(1)
		}
		ctx.SetContentType("image/png")
		// fasthttp's ServeFile handles Range; emulate the one form the pool uses.
		if string(ctx.Request.Header.Peek("Range")) == "bytes=0-0" && len(b) > 0 {
			ctx.SetStatusCode(fasthttp.StatusPartialContent)
			ctx.Response.Header.Set("Content-Range", fmt.Sprintf("bytes 0-0/%d", len(b)))
			ctx.SetBody(b[:1])
			return
		}
		ctx.SetBody(b)
	case "/upload/image":
		form, err := ctx.MultipartForm()
		if err != nil {
			ctx.Error(err.Error(), fasthttp.StatusBadRequest)
			return
		}
		fh := form.File["image"]
		if len(fh) != 1 {
			ctx.Error("no image", fasthttp.StatusBadRequest)
			return
		}
		typ, sub := "input", ""
		if v := form.Value["type"]; len(v) > 0 {
			typ = v[0]
		}
		if v := form.Value["subfolder"]; len(v) > 0 {
			sub = v[0]
		}
		r, err := fh[0].Open()
		if err != nil {
			ctx.Error(err.Error(), fasthttp.StatusInternalServerError)
			return
		}
		data, _ := io.ReadAll(r)
		_ = r.Close()
		f.Put(typ, sub, fh[0].Filename, data)
		ctx.SetContentType("application/json")
		fmt.Fprintf(ctx, `{"name":%q,"subfolder":%q,"type":%q}`, fh[0].Filename, sub, typ)
	case "/echo":
		ctx.Response.Header.Set("X-Got", string(ctx.Request.Header.Peek("X-Test")))
		ctx.SetBody(bytes.ToUpper(ctx.PostBody()))
	default:
		ctx.SetStatusCode(fasthttp.StatusNotFound)
	}
}

// ClosedAddr returns a loopback address nothing listens on: an instance
// that refuses every connection.
func ClosedAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	a := ln.Addr().String()
	_ = ln.Close()
	return a
}
