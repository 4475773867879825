package proxy

import (
	"bufio"
	"mime"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/prompts"
)

// FuzzServeRequest sends arbitrary raw requests (request lines with
// targets of any form and scheme, headers, prompt bodies, multipart
// uploads, /view queries, job bodies) to a running comfygate in front of
// one fake instance. Whatever arrives: comfygate answers or closes without
// waiting, never panics, and the instance only ever sees its own Host and
// an origin-form target. Seeds are in testdata/fuzz/FuzzServeRequest.
func FuzzServeRequest(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET evil.com://attacker.internal/secret HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST x://any/prompt HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}",
		"GET http://a/view?filename=a.png&subfolder=%40i0&type=output HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /prompt HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 95\r\n\r\n" +
			`{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png [output]"}}}, "client_id": "c"}`,
		"POST /upload/mask HTTP/1.1\r\nHost: h\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 152\r\n\r\n" +
			"--b\r\nContent-Disposition: form-data; name=\"original_ref\"\r\n\r\n{\"filename\": \"a.png\", \"subfolder\": \"@i0\", \"type\": \"output\"}\r\n--b--\r\n",
		"POST /api/jobs/cancel HTTP/1.1\r\nHost: h\r\nContent-Length: 16\r\n\r\n{\"job_ids\": [1]}",
		"GET //x/a?b=http://y/ HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /x HTTP/1.1\nHost: h\n\n",
		"POST /queue HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n0\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	fake := testkit.Mini(f, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	})
	g := startGate(f, []string{fake.Addr()}, func(c *config.Config) {
		c.Limits.HeaderTimeout = 2 * time.Second
		c.Limits.BodyTimeout = 2 * time.Second
		c.Timeout = 2 * time.Second
	})
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := net.Dial("tcp", g.addr)
		if err != nil {
			t.Skip(err) // the machine ran out of ports or the like
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write(raw)
		_ = c.(*net.TCPConn).CloseWrite() // no more bytes: the server must answer or close
		br := bufio.NewReader(c)
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatalf("no answer and no close within 10 s for %q", raw)
				}
				break
			}
			if resp.StatusCode == http.StatusSwitchingProtocols {
				break
			}
			_ = resp.Body.Close()
		}
		for _, r := range fake.Requests() {
			if r.Host != fake.Addr() || !strings.HasPrefix(r.RequestURI, "/") || strings.HasPrefix(r.RequestURI, "//") {
				t.Fatalf("the instance saw %s %q with Host %q", r.Method, r.RequestURI, r.Host)
			}
		}
	})
}

// FuzzNormalizeTarget: a target normalizeTarget accepts is origin form
// and reads back, Host included, exactly as comfygate routes it.
func FuzzNormalizeTarget(f *testing.F) {
	for _, s := range []string{"/", "/a?b", "http://h/p", "HTTPS://h", "evil.com://a/b", "//a/b?c=http://d", "*", "a:1", "http://h?x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		if strings.ContainsAny(target, " \r\n\x00") {
			return
		}
		ctx := requestCtxFrom(t, "GET "+target+" HTTP/1.1\r\nHost: gate:1\r\n\r\n")
		if ctx == nil {
			return
		}
		if !normalizeTarget(ctx) {
			if ctx.Response.StatusCode() != 400 {
				t.Fatalf("%q refused with %d", target, ctx.Response.StatusCode())
			}
			return
		}
		got := string(ctx.Request.Header.RequestURI())
		if !strings.HasPrefix(got, "/") || strings.HasPrefix(got, "//") {
			t.Fatalf("%q normalized to %q", target, got)
		}
		if h := string(ctx.Request.URI().Host()); h != "gate:1" {
			t.Fatalf("%q: the URI's host is %q", target, h)
		}
	})
}

// FuzzClientFrame: whatever text a client sends on its WebSocket, the
// feature_flags reader does not panic and reads flags only from a
// feature_flags message.
func FuzzClientFrame(f *testing.F) {
	f.Add([]byte(`{"type":"feature_flags","data":{"supports_preview_metadata":true,"supports_manager_v4_ui":true}}`))
	f.Add([]byte(`{"type":"feature_flags","data":[]}`))
	f.Add([]byte(`{"type":"other"}`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		meta, ok := comfyapi.ParseFeatureFlags(msg)
		if meta && !ok {
			t.Fatalf("%q: metadata without a feature_flags message", msg)
		}
		if ok && !strings.Contains(string(msg), "feature_flags") {
			t.Fatalf("%q read as feature_flags", msg)
		}
	})
}

// FuzzMaskUpload: whatever multipart body a mask upload carries, reading
// its original_ref and rewriting it never panics, and a rewritten body
// reads back with the new reference and the same other fields.
func FuzzMaskUpload(f *testing.F) {
	f.Add([]byte("--b\r\nContent-Disposition: form-data; name=\"original_ref\"\r\n\r\n{\"filename\": \"a.png\", \"subfolder\": \"@i0\", \"type\": \"output\"}\r\n"+
		"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"m.png\"\r\n\r\nPNG\r\n--b--\r\n"), []byte("b"))
	f.Add([]byte("--x\r\n\r\n--x--"), []byte("x"))
	f.Add([]byte(""), []byte(""))
	f.Fuzz(func(t *testing.T, body, boundary []byte) {
		if _, ok := originalRef(body, boundary); !ok {
			return
		}
		ref := prompts.FileRef{Filename: "new.png", Subfolder: "s", Type: "input"}
		out, ct, err := replaceOriginalRef(body, boundary, ref)
		if err != nil {
			return // a body whose later parts are broken: refused
		}
		_, params, perr := mime.ParseMediaType(ct)
		if perr != nil {
			t.Fatalf("content type %q: %v", ct, perr)
		}
		got, ok := originalRef(out, []byte(params["boundary"]))
		if !ok || got != ref {
			t.Fatalf("rewritten body reads back %+v %v, want %+v", got, ok, ref)
		}
	})
}
