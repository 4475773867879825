package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/stack"
	"github.com/comfygate/comfygate/state"
)

// haproxyBin is Debian's haproxy. Without it the test fails when CI is set
// (.ci/run installs it) and is skipped otherwise, as testkit.Redis does.
func haproxyBin(t *testing.T) string {
	t.Helper()
	return testkit.Tool(t, "haproxy", "the shipped haproxy.cfg is checked with the real one", "haproxy")
}

// TestHAProxyChecksTheShippedConfig runs haproxy -c on haproxy.cfg as
// shipped. The replicas' names resolve only in Docker, so the only
// warnings allowed are about those names.
func TestHAProxyChecksTheShippedConfig(t *testing.T) {
	t.Parallel()
	bin := haproxyBin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-c", "-f", "haproxy/haproxy.cfg").CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "[WARNING]") && !strings.Contains(line, "could not resolve address 'comfygate-") {
			t.Errorf("haproxy -c warns: %s", line)
		}
		if strings.Contains(line, "[ALERT]") {
			t.Errorf("haproxy -c alerts: %s", line)
		}
	}
}

// syncBuffer is an io.Writer the test reads while others write to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// accessLog returns the access log lines ("request") in a replica's JSON log.
func accessLog(log *syncBuffer) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(log.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "request" {
			out = append(out, m)
		}
	}
	return out
}

// servedBy waits until exactly one replica's access log has a request with
// user agent ua and returns that replica's index and its log line.
func servedBy(t *testing.T, logs []*syncBuffer, ua string) (int, map[string]any) {
	t.Helper()
	who, line, n := -1, map[string]any(nil), 0
	testkit.Poll(10*time.Second, func() bool {
		who, n = -1, 0
		for i, l := range logs {
			for _, m := range accessLog(l) {
				if m["user_agent"] == ua {
					who, line = i, m
					n++
				}
			}
		}
		return n > 0
	})
	if n != 1 {
		t.Fatalf("%d replicas logged the request of %s, want 1", n, ua)
	}
	return who, line
}

// haproxyFor writes haproxy.cfg as shipped with its frontend bound to
// 127.0.0.1:port and its servers comfygate-0, comfygate-1, ... (in every
// backend) at backends[0], backends[1], ..., and returns its path.
func haproxyFor(t *testing.T, port int, backends []string) string {
	t.Helper()
	b, err := os.ReadFile("haproxy/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	bind := regexp.MustCompile(`(?m)^(\s*bind\s+)\S+`)
	if n := len(bind.FindAllString(cfg, -1)); n != 1 {
		t.Fatalf("haproxy.cfg has %d bind lines, want 1", n)
	}
	cfg = bind.ReplaceAllString(cfg, "${1}127.0.0.1:"+strconv.Itoa(port))
	server := regexp.MustCompile(`(?m)^(\s*server\s+(\S+)\s+)\S+`)
	names := map[string]bool{}
	cfg = server.ReplaceAllStringFunc(cfg, func(s string) string {
		m := server.FindStringSubmatch(s)
		i, err := strconv.Atoi(strings.TrimPrefix(m[2], "comfygate-"))
		if err != nil || i >= len(backends) {
			t.Fatalf("haproxy.cfg has server %s; the test runs replicas comfygate-0..%d", m[2], len(backends)-1)
		}
		names[m[2]] = true
		return m[1] + backends[i]
	})
	if len(names) != len(backends) {
		t.Fatalf("haproxy.cfg names servers %v, the test runs %d replicas", names, len(backends))
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startHAProxy runs haproxy in the foreground with the shipped
// configuration in front of backends, on a free loopback port, until the
// test ends; it returns the address.
func startHAProxy(t *testing.T, bin string, backends []string) string {
	t.Helper()
	var last string
	for range 3 { // the free port may be taken before haproxy binds it
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		out := &syncBuffer{}
		cmd := exec.Command(bin, "-db", "-f", haproxyFor(t, port, backends))
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		gone := false
		up := testkit.Poll(10*time.Second, func() bool {
			select {
			case <-exited:
				gone = true
				return true
			default:
			}
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		if up && !gone {
			t.Cleanup(func() {
				_ = cmd.Process.Kill()
				<-exited
				if t.Failed() {
					t.Logf("haproxy's log:\n%s", out.String())
				}
			})
			return addr
		}
		if !gone {
			_ = cmd.Process.Kill()
			<-exited
		}
		last = out.String()
	}
	t.Fatalf("haproxy did not start; its output:\n%s", last)
	return ""
}

// TestHAProxyInFrontOfReplicas runs the real haproxy with the shipped
// configuration in front of two comfygate replicas that share a real
// redis-server and one simulated ComfyUI: requests alternate between the
// replicas, each replica sees the client's own address (haproxy's
// X-Forwarded-For, trusted from haproxy only), /health passes through, and
// a WebSocket through haproxy gets the events of a prompt that haproxy sent
// to the other replica.
func TestHAProxyInFrontOfReplicas(t *testing.T) {
	t.Parallel()
	bin := haproxyBin(t)
	url := testkit.Redis(t)
	logs := []*syncBuffer{{}, {}}
	replica := func(i int, opts stack.Options) *stack.Stack {
		st, err := state.Open(context.Background(), config.State{URL: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		opts.State = st
		opts.Logger = slog.New(slog.NewJSONHandler(logs[i], nil))
		opts.Config = func(c *config.Config) { c.Server.TrustedProxies = []string{"127.0.0.1"} }
		return stack.Start(t, opts)
	}
	a := replica(0, stack.Options{Instances: 1, Sim: comfysim.Options{Delay: 200 * time.Millisecond, Steps: 3}, Jobs: true})
	b := replica(1, stack.Options{Addrs: []string{a.Sims[0].Addr()}, Jobs: true})
	lb := startHAProxy(t, bin, []string{a.Addr, b.Addr})

	// The client connects from 127.0.0.5; haproxy reaches the replicas
	// from 127.0.0.1, the trusted proxy.
	const clientIP = "127.0.0.5"
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}}).DialContext,
	}}
	do := func(method, path, ua string, body []byte) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+lb+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("User-Agent", ua)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s through haproxy: %v", method, path, err)
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, got
	}

	code, body := do("GET", "/health", "probe", nil)
	if code != http.StatusOK || !strings.Contains(string(body), `"comfyui_instances"`) {
		t.Fatalf("/health through haproxy = %d %s", code, body)
	}

	served := []int{0, 0}
	for i := range 4 {
		ua := fmt.Sprintf("round-robin-%d", i)
		if code, body := do("GET", "/queue", ua, nil); code != http.StatusOK {
			t.Fatalf("GET /queue through haproxy = %d %s", code, body)
		}
		who, line := servedBy(t, logs, ua)
		served[who]++
		if line["client"] != clientIP {
			t.Errorf("replica %d logged client %v, want %s (X-Forwarded-For from the trusted haproxy)", who, line["client"], clientIP)
		}
	}
	if served[0] != 2 || served[1] != 2 {
		t.Fatalf("4 requests went %v to the replicas, want 2 each (round robin)", served)
	}

	// A socket through haproxy, then a prompt through haproxy: round robin
	// sends the POST to the replica that does not hold the socket.
	const clientID = "through-haproxy"
	hdr := http.Header{"User-Agent": {"ws-" + clientID}}
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+lb+"/ws?clientId="+clientID, hdr)
	if err != nil {
		t.Fatalf("WebSocket through haproxy: %v", err)
	}
	defer conn.Close()
	read := func() (string, map[string]any) {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		for {
			kind, data, err := conn.ReadMessage()
			if err != nil {
				t.Fatalf("WebSocket through haproxy: %v", err)
			}
			if kind != websocket.TextMessage {
				continue // previews
			}
			var m struct {
				Type string         `json:"type"`
				Data map[string]any `json:"data"`
			}
			if err := json.Unmarshal(data, &m); err != nil {
				t.Fatalf("WebSocket message %s: %v", data, err)
			}
			return m.Type, m.Data
		}
	}
	if typ, _ := read(); typ != "status" {
		t.Fatalf("first message %q, want status", typ)
	}
	socketAt, _ := servedBy(t, logs, "ws-"+clientID)

	prompt := map[string]any{"client_id": clientID, "prompt": map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 64, "height": 64, "batch_size": 1, "color": 0}},
		"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
		"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": "lb"}},
	}}
	payload, _ := json.Marshal(prompt)
	code, body = do("POST", "/prompt", "post-"+clientID, payload)
	if code != http.StatusOK {
		t.Fatalf("POST /prompt through haproxy = %d %s", code, body)
	}
	var accepted struct {
		PromptID string `json:"prompt_id"`
	}
	if err := json.Unmarshal(body, &accepted); err != nil || accepted.PromptID == "" {
		t.Fatalf("POST /prompt answer %s: %v", body, err)
	}
	if postAt, _ := servedBy(t, logs, "post-"+clientID); postAt == socketAt {
		t.Fatalf("the socket and the POST both went to replica %d; round robin should have parted them", postAt)
	}

	seen := map[string]bool{}
	for !seen["execution_success"] {
		typ, data := read()
		if data["prompt_id"] == accepted.PromptID {
			seen[typ] = true
		}
	}
	for _, want := range []string{"execution_start", "executing", "executed"} {
		if !seen[want] {
			t.Errorf("the socket through haproxy got no %s of the prompt; got %v", want, seen)
		}
	}

	// A job and every request about it go to the replica that accepted it.
	jctx, jcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer jcancel()
	job := testkit.SubmitJob(jctx, client, "http://"+lb, "/api/remove-background", testkit.PNG(32, 32))
	if job.Err != nil || job.Code != http.StatusAccepted {
		t.Fatalf("job through haproxy: %d %s %v", job.Code, job.Body, job.Err)
	}
	if end := testkit.WaitJob(jctx, client, "http://"+lb, job.ID); end.Status != "completed" {
		t.Fatalf("job %s through haproxy ended %+v, want completed", job.ID, end)
	}
	jobAt := -1
	for i := range 4 {
		ua := fmt.Sprintf("job-result-%d", i)
		if code, body := do("GET", "/api/jobs/"+job.ID+"/result", ua, nil); code != http.StatusOK {
			t.Fatalf("GET /api/jobs/%s/result through haproxy = %d %s", job.ID, code, body)
		}
		who, _ := servedBy(t, logs, ua)
		if jobAt >= 0 && who != jobAt {
			t.Fatalf("one client's job requests went to replicas %d and %d", jobAt, who)
		}
		jobAt = who
	}

	// A replica that stops closes its listener: haproxy sends the next
	// requests to the other one, before and after its health check notices.
	b.Stop()
	for i := range 4 {
		ua := fmt.Sprintf("one-left-%d", i)
		if code, body := do("GET", "/queue", ua, nil); code != http.StatusOK {
			t.Fatalf("GET /queue through haproxy with one replica stopped = %d %s", code, body)
		}
		if who, _ := servedBy(t, logs, ua); who != 0 {
			t.Fatalf("request %s answered by the stopped replica", ua)
		}
	}
}
