package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// TestForwardPassesRequestUnchanged checks the generic forward: the raw
// request-target (with %2F) reaches the instance as sent, hop-by-hop
// headers are dropped both ways, Host/Origin point at the instance,
// Sec-Fetch-* are gone, X-Forwarded-* describe the client, and status,
// headers and body come back unchanged.
func TestForwardPassesRequestUnchanged(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Custom", "kept")
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "dropped")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(207)
		_, _ = io.WriteString(w, `{"ok": true}`)
	})
	g := startGate(t, []string{fake.Addr()}, nil)

	const target = "/api/userdata/workflows%2Fmy%20flow.json?overwrite=true&full_info=true&dir=a%2Fb"
	hdr := http.Header{}
	hdr.Set("Host", g.addr)
	hdr.Set("Origin", "http://"+g.addr)
	hdr.Set("Sec-Fetch-Site", "same-origin")
	hdr.Set("Sec-Fetch-Mode", "cors")
	hdr.Set("Connection", "X-Drop")
	hdr.Set("X-Drop", "1")
	hdr.Set("Keep-Alive", "timeout=1")
	hdr.Set("X-Forwarded-For", "6.6.6.6")
	hdr["Comfy-User"] = []string{"alice"}
	hdr.Set("Cookie", "a=b")
	hdr.Set("Authorization", "Bearer token")
	hdr.Set("X-Custom-Req", "yes")
	status, rh, body := gateDo(t, "POST", g.base+target, hdr, strings.NewReader(`{"nodes": []}`))

	if status != 207 || string(body) != `{"ok": true}` {
		t.Fatalf("answer = %d %q, want 207 and the instance's body", status, body)
	}
	if rh.Get("X-Custom") != "kept" || rh.Get("X-Hop") != "" || rh.Get("Keep-Alive") != "" {
		t.Errorf("response headers: X-Custom=%q X-Hop=%q Keep-Alive=%q; want kept, dropped, dropped", rh.Get("X-Custom"), rh.Get("X-Hop"), rh.Get("Keep-Alive"))
	}
	reqs := fake.Requests()
	if len(reqs) != 1 {
		t.Fatalf("instance saw %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	checks := []struct {
		desc, got, want string
	}{
		{"method", r.Method, "POST"},
		{"request-target", r.RequestURI, target},
		{"Host", r.Host, fake.Addr()},
		{"Origin", r.Header.Get("Origin"), "http://" + fake.Addr()},
		{"Sec-Fetch-Site", r.Header.Get("Sec-Fetch-Site"), ""},
		{"Sec-Fetch-Mode", r.Header.Get("Sec-Fetch-Mode"), ""},
		{"X-Drop (named in Connection)", r.Header.Get("X-Drop"), ""},
		{"Keep-Alive", r.Header.Get("Keep-Alive"), ""},
		{"X-Forwarded-For (client's own not trusted)", r.Header.Get("X-Forwarded-For"), "127.0.0.1"},
		{"X-Forwarded-Host", r.Header.Get("X-Forwarded-Host"), g.addr},
		{"X-Forwarded-Proto", r.Header.Get("X-Forwarded-Proto"), "http"},
		{"Comfy-User", r.Header.Get("Comfy-User"), "alice"},
		{"Cookie", r.Header.Get("Cookie"), "a=b"},
		{"Authorization", r.Header.Get("Authorization"), "Bearer token"},
		{"X-Custom-Req", r.Header.Get("X-Custom-Req"), "yes"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.desc, c.got, c.want)
		}
	}
}

// TestForwardBodies checks request bodies of both framings arrive whole.
func TestForwardBodies(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%d %s", n, hex.EncodeToString(h.Sum(nil)))
	})
	g := startGate(t, []string{fake.Addr()}, nil)
	payload := bytes.Repeat([]byte("comfygate "), 300_000) // 3 MB
	sum := sha256.Sum256(payload)
	want := fmt.Sprintf("%d %s", len(payload), hex.EncodeToString(sum[:]))
	for _, tc := range []struct {
		desc string
		body io.Reader
	}{
		{"content-length", bytes.NewReader(payload)},
		{"chunked", io.MultiReader(bytes.NewReader(payload))}, // unknown length: net/http chunks it
		{"small", strings.NewReader("x")},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			w := want
			if tc.desc == "small" {
				s := sha256.Sum256([]byte("x"))
				w = "1 " + hex.EncodeToString(s[:])
			}
			status, _, body := gateDo(t, "POST", g.base+"/api/userdata/big.bin", nil, tc.body)
			if status != 200 || string(body) != w {
				t.Fatalf("got %d %q, want 200 %q", status, body, w)
			}
		})
	}
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// heapWatch samples HeapInuse to find the peak above a baseline.
type heapWatch struct {
	base, peak uint64
}

func newHeapWatch() *heapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return &heapWatch{base: ms.HeapInuse, peak: ms.HeapInuse}
}

func (h *heapWatch) sample() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	h.peak = max(h.peak, ms.HeapInuse)
}

func (h *heapWatch) growth() uint64 { return h.peak - min(h.base, h.peak) }

// maxHeapGrowth bounds how much comfygate's heap may grow while 200 MB pass.
const maxHeapGrowth = 64 << 20

const bigSize = 200 << 20

// TestLargeBodiesStream checks that a 200 MB /view and a 200 MB upload go
// through without comfygate's heap growing anywhere near their size
// (memory assertion, not a timing one). Not parallel: it measures the
// process's heap.
func TestLargeBodiesStream(t *testing.T) {
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/view":
			if r.Header.Get("Range") != "" { // the pool asking who has it
				w.Header().Set("Content-Range", "bytes 0-0/"+strconv.Itoa(bigSize))
				w.WriteHeader(http.StatusPartialContent)
				_, _ = w.Write([]byte{0})
				return
			}
			w.Header().Set("Content-Type", "image/png")
			w.Header().Set("Content-Length", strconv.Itoa(bigSize))
			_, _ = io.CopyN(w, zeros{}, bigSize)
		case "/upload/image":
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, `{"name": "big_%d.png", "subfolder": "", "type": "input"}`, n)
		default:
			http.NotFound(w, r)
		}
	})
	// An upload over ComfyUI's default 100 MB, for an instance started
	// with a larger --max-upload-size.
	g := startGate(t, []string{fake.Addr()}, func(c *config.Config) { c.Limits.MaxBodyBytes = 2 * bigSize })

	t.Run("view", func(t *testing.T) {
		hw := newHeapWatch()
		resp, err := gateClient.Get(g.base + "/view?filename=big.png&type=output&subfolder=")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		buf := make([]byte, 1<<20)
		var n int64
		for i := 0; ; i++ {
			k, err := resp.Body.Read(buf)
			n += int64(k)
			if i%16 == 0 {
				hw.sample()
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		hw.sample()
		if n != bigSize {
			t.Fatalf("read %d bytes, want %d", n, bigSize)
		}
		t.Logf("heap growth while streaming 200 MB /view: %.1f MB", float64(hw.growth())/(1<<20))
		if hw.growth() > maxHeapGrowth {
			t.Fatalf("heap grew %d MB streaming a 200 MB /view, want < %d MB", hw.growth()>>20, maxHeapGrowth>>20)
		}
	})

	t.Run("upload", func(t *testing.T) {
		hw := newHeapWatch()
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					hw.sample()
				}
			}
		}()
		req, err := http.NewRequest("POST", g.base+"/upload/image", io.LimitReader(zeros{}, bigSize))
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = bigSize
		req.Header.Set("Content-Type", "multipart/form-data; boundary=x")
		resp, err := gateClient.Do(req)
		close(stop)
		<-sampled
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf(`{"name": "big_%d.png", "subfolder": "", "type": "input"}`, bigSize)
		if resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, want)
		}
		t.Logf("heap growth while streaming a 200 MB upload: %.1f MB", float64(hw.growth())/(1<<20))
		if hw.growth() > maxHeapGrowth {
			t.Fatalf("heap grew %d MB streaming a 200 MB upload, want < %d MB", hw.growth()>>20, maxHeapGrowth>>20)
		}
	})
}

// TestHungInstanceAnswers504 checks that an instance that accepts the
// request and never answers costs the client COMFYUI_TIMEOUT, not forever.
func TestHungInstanceAnswers504(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() { close(release) })
	g := startGate(t, []string{fake.Addr()}, func(c *config.Config) { c.Timeout = 300 * time.Millisecond })
	for _, path := range []string{"/object_info", "/api/userdata/x.json", "/settings"} {
		status, _, body := gateDo(t, "GET", g.base+path, nil, nil)
		if status != http.StatusGatewayTimeout || !bytes.Contains(body, []byte(`"upstream_timeout"`)) {
			t.Errorf("GET %s on a hung instance = %d %s, want 504 upstream_timeout", path, status, body)
		}
	}
}

// TestNoInstance503 checks the answer when no instance can take a request.
func TestNoInstance503(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(nil)
	g := startGate(t, []string{fake.Addr()}, nil)
	fake.Kill() // gone: health checks fail
	testkit.Eventually(t, "instance unhealthy", func() bool { return len(g.pool.Healthy()) == 0 })
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/object_info", ""},
		{"GET", "/", ""},
		{"POST", "/prompt", `{"prompt": {}}`},
		{"GET", "/queue", ""},
		{"GET", "/history", ""},
		{"POST", "/interrupt", ""},
	} {
		status, h, body := gateDo(t, tc.method, g.base+tc.path, nil, strings.NewReader(tc.body))
		if status != http.StatusServiceUnavailable || h.Get("Retry-After") == "" ||
			!bytes.Contains(body, []byte(`"no_upstream"`)) || !bytes.Contains(body, []byte("no healthy ComfyUI instance")) {
			t.Errorf("%s %s with no instance = %d Retry-After=%q %s; want 503, Retry-After and a no_upstream error",
				tc.method, tc.path, status, h.Get("Retry-After"), body)
		}
	}
	status, _, body := gateDo(t, "GET", g.base+"/health", nil, nil)
	if status != http.StatusServiceUnavailable || !bytes.Contains(body, []byte(`"status":"unhealthy"`)) {
		t.Errorf("/health = %d %s, want 503 unhealthy", status, body)
	}
}

func TestRawRequestURI(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"/api/userdata/a%2Fb.json?x=1", "/api/userdata/a%2Fb.json?x=1"},
		{"http://host:1/view?filename=a", "/view?filename=a"},
		{"HTTP://host", "/"},
		{"https://host?x=1", "/?x=1"},
		{"*", "*"},
	} {
		if got := string(originForm([]byte(tc.in))); got != tc.want {
			t.Errorf("originForm(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestForwardStreamsChunks: an answer without Content-Length reaches the
// client chunk by chunk: the instance sends its second chunk only once the
// client has read the first, which a buffering proxy would never deliver.
func TestForwardStreamsChunks(t *testing.T) {
	t.Parallel()
	firstRead := make(chan struct{})
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first;")
		w.(http.Flusher).Flush()
		select {
		case <-firstRead:
		case <-time.After(10 * time.Second):
			return
		}
		_, _ = io.WriteString(w, "second")
	})
	g := startGate(t, []string{fake.Addr()}, nil)
	resp, err := gateClient.Get(g.base + "/extensions/pack/stream.js")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, len("first;"))
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first;" {
		t.Fatalf("first chunk: %q %v", buf, err)
	}
	close(firstRead)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "second" {
		t.Fatalf("rest: %q %v", rest, err)
	}
	if resp.ContentLength != -1 {
		t.Errorf("ContentLength = %d, want chunked (-1)", resp.ContentLength)
	}
}
