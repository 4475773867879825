package isolation

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/stack"
	"github.com/fasthttp/websocket"
)

var sampleN = flag.Int("isolation.n", 300, "generated requests TestIsolationProperty sends as key A")

const (
	keyA     = "isolation-key-a-0123456789"
	keyB     = "isolation-key-b-0123456789"
	keyAdmin = "isolation-admin-0123456789"
	// marker is in the names of B's files and in B's prompts' extra_data:
	// A never sends it, so an answer to A that holds it came from B.
	marker = "bsecretmarker"
)

// world is B's work and A's socket on one running gateway.
type world struct {
	st *stack.Stack

	own      string   // A's own prompt, waiting
	running  []string // B's prompts, running for the simulators' Delay
	pending  []string // B's prompts waiting behind them
	done     []string // B's prompts in history
	job      string   // B's job
	client   string   // B's clientId, with a live socket
	upload   string   // B's uploaded input
	baseline snapshot

	bClosed  atomic.Bool // B's socket was closed
	aMu      sync.Mutex
	aEvents  [][]byte // what A's socket received
	aClosers []io.Closer
}

// snapshot is what B sees of its own work.
type snapshot struct {
	Running, Pending, History string // sorted ids of B's, joined
	Job                       string // the job's status
	Upload                    [32]byte
	SocketClosed              bool
}

func bearer(key string) http.Header { return http.Header{"Authorization": {"Bearer " + key}} }

var client = &http.Client{Timeout: 10 * time.Second}

func do(tb testing.TB, method, url, key, contentType string, body []byte) (int, []byte) {
	tb.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func prompt(color int, prefix string, slow bool) map[string]any {
	p := map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": color}},
		"2": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"1", 0}, "filename_prefix": prefix}},
	}
	if slow {
		p["3"] = map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}}
		p["2"].(map[string]any)["inputs"].(map[string]any)["images"] = []any{"3", 0}
	}
	return p
}

func submit(tb testing.TB, w *world, key string, body map[string]any) string {
	tb.Helper()
	b, _ := json.Marshal(body)
	status, out := do(tb, "POST", w.st.URL+"/prompt", key, "application/json", b)
	var a struct {
		PromptID string `json:"prompt_id"`
	}
	if status != http.StatusOK || json.Unmarshal(out, &a) != nil || a.PromptID == "" {
		tb.Fatalf("POST /prompt: %d %s", status, out)
	}
	return a.PromptID
}

// queueOf is the ids of key's running and waiting prompts.
func queueOf(tb testing.TB, w *world, key string) (running, pending []string) {
	tb.Helper()
	status, body := do(tb, "GET", w.st.URL+"/queue", key, "", nil)
	var q struct {
		Running [][]json.RawMessage `json:"queue_running"`
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &q) != nil {
		tb.Fatalf("GET /queue: %d %s", status, body)
	}
	ids := func(items [][]json.RawMessage) []string {
		var out []string
		for _, it := range items {
			var id string
			if len(it) > 1 && json.Unmarshal(it[1], &id) == nil {
				out = append(out, id)
			}
		}
		return out
	}
	return ids(q.Running), ids(q.Pending)
}

func sortedJoin(ids []string) string {
	c := slices.Clone(ids)
	slices.Sort(c)
	return strings.Join(c, ",")
}

func (w *world) snapshot(tb testing.TB) snapshot {
	tb.Helper()
	var s snapshot
	r, p := queueOf(tb, w, keyB)
	s.Running, s.Pending = sortedJoin(r), sortedJoin(p)
	status, body := do(tb, "GET", w.st.URL+"/history", keyB, "", nil)
	var h map[string]json.RawMessage
	if status != http.StatusOK || json.Unmarshal(body, &h) != nil {
		tb.Fatalf("B's GET /history: %d %s", status, body)
	}
	var ids []string
	for id := range h {
		ids = append(ids, id)
	}
	s.History = sortedJoin(ids)
	status, body = do(tb, "GET", w.st.URL+"/api/jobs/"+w.job+"/status", keyB, "", nil)
	var j struct {
		Status string `json:"status"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &j) != nil {
		tb.Fatalf("B's job status: %d %s", status, body)
	}
	s.Job = j.Status
	status, body = do(tb, "GET", w.st.URL+"/view?type=input&filename="+w.upload, keyB, "", nil)
	if status != http.StatusOK {
		tb.Fatalf("B's /view of its upload: %d %s", status, body)
	}
	s.Upload = sha256.Sum256(body)
	s.SocketClosed = w.bClosed.Load()
	return s
}

func upload(tb testing.TB, w *world, key, name string, content []byte) (int, []byte) {
	tb.Helper()
	body, ctype := multipartUpload(name, content)
	return do(tb, "POST", w.st.URL+"/upload/image", key, ctype, body)
}

func multipartUpload(name string, content []byte) ([]byte, string) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="image"; filename=%q`, name))
	h.Set("Content-Type", "image/png")
	fw, _ := mw.CreatePart(h)
	_, _ = fw.Write(content)
	_ = mw.WriteField("overwrite", "true")
	_ = mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

// start builds B's world (and A's socket) on a new gateway.
func start(tb testing.TB) *world {
	tb.Helper()
	st := stack.Start(tb, stack.Options{
		Instances: 2,
		// Light nodes run for Delay: B's slow prompts hold both instances
		// for the whole run, so its waiting prompts stay waiting.
		Sim:  comfysim.Options{Delay: 10 * time.Minute},
		Jobs: true,
		Config: func(c *config.Config) {
			c.Auth.Keys = []string{keyA, keyB}
			c.Auth.AdminKeys = []string{keyAdmin}
			c.Jobs.Timeout = time.Hour
		},
	})
	w := &world{st: st, client: "b-client-" + marker}

	dial := func(key, clientID string, onMsg func([]byte)) {
		c, _, err := websocket.DefaultDialer.Dial(st.WSURL(clientID), bearer(key))
		if err != nil {
			tb.Fatalf("WebSocket of %s: %v", clientID, err)
		}
		w.aMu.Lock()
		w.aClosers = append(w.aClosers, c)
		w.aMu.Unlock()
		go func() {
			for {
				_, msg, err := c.ReadMessage()
				if err != nil {
					onMsg(nil)
					return
				}
				onMsg(msg)
			}
		}()
	}
	dial(keyB, w.client, func(msg []byte) {
		if msg == nil {
			w.bClosed.Store(true)
		}
	})
	dial(keyA, "a-client", func(msg []byte) {
		if msg == nil {
			return
		}
		w.aMu.Lock()
		if len(w.aEvents) < 100000 {
			w.aEvents = append(w.aEvents, msg)
		}
		w.aMu.Unlock()
	})
	tb.Cleanup(func() {
		w.aMu.Lock()
		defer w.aMu.Unlock()
		for _, c := range w.aClosers {
			_ = c.Close()
		}
	})

	extra := map[string]any{"note": marker}
	for i := range 2 {
		w.done = append(w.done, submit(tb, w, keyB, map[string]any{"prompt": prompt(0x100+i, marker+"_done", false), "client_id": w.client, "extra_data": extra}))
	}
	testkit.Eventually(tb, "B's finished prompts in B's history", func() bool {
		_, body := do(tb, "GET", w.st.URL+"/history", keyB, "", nil)
		return bytes.Contains(body, []byte(w.done[0])) && bytes.Contains(body, []byte(w.done[1]))
	})
	status, body := upload(tb, w, keyB, marker+"-upload.png", testkit.PNG(4, 4))
	var up struct {
		Name string `json:"name"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &up) != nil || up.Name == "" {
		tb.Fatalf("B's upload: %d %s", status, body)
	}
	w.upload = up.Name
	for i := range 4 {
		body := map[string]any{"prompt": prompt(0x200+i, marker+"_slow", true), "client_id": w.client, "extra_data": extra}
		if i == 1 {
			// Without a client_id ComfyUI broadcasts a prompt's progress
			// events to every socket on its instance: none may reach A.
			delete(body, "client_id")
		}
		submit(tb, w, keyB, body) // running or waiting: read back from B's queue below
	}
	testkit.Eventually(tb, "B's slow prompts running on both instances", func() bool {
		r, p := queueOf(tb, w, keyB)
		w.running, w.pending = r, p
		return len(r) == 2 && len(p) == 2
	})
	jb, _ := json.Marshal(map[string]any{"image_base64": base64.StdEncoding.EncodeToString(testkit.PNG(4, 4))})
	status, body = do(tb, "POST", w.st.URL+"/api/remove-background", keyB, "application/json", jb)
	var j struct {
		JobID string `json:"job_id"`
	}
	if status != http.StatusAccepted || json.Unmarshal(body, &j) != nil || j.JobID == "" {
		tb.Fatalf("B's job: %d %s", status, body)
	}
	w.job = j.JobID
	w.own = submit(tb, w, keyA, map[string]any{"prompt": prompt(0x300, "a_own", false), "client_id": "a-client"})
	// The job's prompt (under the job's id) waits in an instance's queue:
	// both instances run B's slow prompts. Until it is there, its
	// dispatch may change B's queue under an attack.
	var last snapshot
	testkit.Eventually(tb, "B's world settled", func() bool {
		s := w.snapshot(tb)
		same := s == last && strings.Contains(s.Pending, w.job)
		last = s
		return same
	})
	w.baseline = last
	if w.baseline.SocketClosed {
		tb.Fatal("B's socket closed before any attack")
	}
	return w
}

// secrets are the strings that identify B's work.
func (w *world) secrets() []string {
	out := []string{marker, w.job, w.client, w.upload}
	out = append(out, w.running...)
	out = append(out, w.pending...)
	return append(out, w.done...)
}

// attack is one generated request of A's: each field picks one value of
// one dimension (taken modulo its size).
type attack struct {
	Route, ID, Value, Form, Path, Query, Frame uint8
}

func (a attack) String() string {
	return fmt.Sprintf("attack{Route:%d ID:%d Value:%d Form:%d Path:%d Query:%d Frame:%d}", a.Route, a.ID, a.Value, a.Form, a.Path, a.Query, a.Frame)
}

// target picks the id an attack names.
func (w *world) target(a attack) string {
	ids := []string{w.own, w.running[0], w.pending[0], w.done[0], w.job, "00000000-0000-4000-8000-000000000000", "", strings.ToUpper(w.pending[1]), w.running[1] + " "}
	return ids[int(a.ID)%len(ids)]
}

// field spells a JSON member name: exact, in another case, or twice with
// A's own value and the target in both orders (Python keeps the last).
func field(a attack, name, value, own string) string {
	switch a.Form % 6 {
	case 1:
		return fmt.Sprintf("%q: %s", strings.ToUpper(name), value)
	case 2:
		return fmt.Sprintf("%q: %s", strings.ToUpper(name[:1])+name[1:], value)
	case 3:
		return fmt.Sprintf("%q: %s, %q: %s", name, own, name, value)
	case 4:
		return fmt.Sprintf("%q: %s, %q: %s", name, value, name, own)
	case 5:
		return fmt.Sprintf("%q: %s, \"extra\": {\"%s\": [1, 2]}", name, value, name)
	}
	return fmt.Sprintf("%q: %s", name, value)
}

// list spells id as a list element of several types.
func list(a attack, id, other string) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	forms := []string{
		"[" + q(id) + "]", "[" + q(id) + ", 1]", "[1, " + q(id) + "]", "[" + q(id) + ", null]",
		"[[" + q(id) + "]]", q(id), "{" + q(id) + ": 1}", "[" + q(id) + ", " + q(other) + "]", "[" + q(id) + ", 1.5e300, true]",
	}
	return forms[int(a.Value)%len(forms)]
}

// truthy is a "clear" value: true and false ones, and one Python reads
// (NaN) that Go's JSON does not.
func truthy(a attack) string {
	vs := []string{"true", "1", `"yes"`, "[0]", `{"a": 1}`, "false", "NaN", "null", "0.0", `""`}
	return vs[int(a.Value)%len(vs)]
}

// routeNames is for failure messages only.
var routeNames = []string{
	"POST /interrupt", "POST /queue delete", "POST /queue clear", "POST /history delete", "POST /history clear",
	"POST /api/jobs/cancel", "POST /api/jobs/{id}/cancel", "DELETE /api/jobs/{id}", "GET /api/jobs/{id}",
	"GET /api/jobs/{id}/status", "GET /api/jobs/{id}/result", "GET /api/jobs/{id}/outputs", "GET /api/jobs/{id}/outputs/0",
	"GET /history/{id}", "GET /history?max_items", "GET /queue", "GET /api/jobs?source=comfygate", "GET /api/jobs",
	"POST /free", "POST /prompt", "GET /ws", "POST /upload/image", "GET /view", "GET /api/jobs/{id}/events",
	"GET /api/history", "POST /api/prompt",
}

// request builds an attack's method, path, query and body.
func (w *world) request(a attack) (method, path, query, ctype string, body []byte) {
	id := w.target(a)
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	own := q(w.own)
	other := w.pending[1]
	switch int(a.Route) % len(routeNames) {
	case 0:
		return "POST", "/interrupt", "", "application/json", []byte("{" + field(a, "prompt_id", q(id), own) + "}")
	case 1:
		return "POST", "/queue", "", "application/json", []byte("{" + field(a, "delete", list(a, id, other), "["+own+"]") + "}")
	case 2:
		return "POST", "/queue", "", "application/json", []byte("{" + field(a, "clear", truthy(a), "false") + "}")
	case 3:
		return "POST", "/history", "", "application/json", []byte("{" + field(a, "delete", list(a, id, other), "["+own+"]") + "}")
	case 4:
		return "POST", "/history", "", "application/json", []byte("{" + field(a, "clear", truthy(a), "false") + "}")
	case 5:
		return "POST", "/api/jobs/cancel", "", "application/json", []byte("{" + field(a, "job_ids", list(a, id, other), "["+own+"]") + "}")
	case 6:
		return "POST", "/api/jobs/" + id + "/cancel", "", "", nil
	case 7:
		return "DELETE", "/api/jobs/" + id, "", "", nil
	case 8:
		return "GET", "/api/jobs/" + id, "", "", nil
	case 9:
		return "GET", "/api/jobs/" + id + "/status", "", "", nil
	case 10:
		return "GET", "/api/jobs/" + id + "/result", "", "", nil
	case 11:
		return "GET", "/api/jobs/" + id + "/outputs", "", "", nil
	case 12:
		return "GET", "/api/jobs/" + id + "/outputs/0", "", "", nil
	case 13:
		return "GET", "/history/" + id, "", "", nil
	case 14:
		return "GET", "/history", w.query(a, "max_items", "1", "0"), "", nil
	case 15:
		return "GET", "/queue", "", "", nil
	case 16:
		return "GET", "/api/jobs", w.query(a, "source", "comfygate", "comfyui"), "", nil
	case 17:
		return "GET", "/api/jobs", w.query(a, "limit", "1", "0"), "", nil
	case 18:
		return "POST", "/free", "", "application/json", []byte(`{"unload_models": true, "free_memory": true}`)
	case 19:
		cid := []string{w.client, strings.ToUpper(w.client), "a-client", w.client + " "}[int(a.Value)%4]
		return "POST", "/prompt", "", "application/json", []byte(`{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}}}, ` +
			field(a, "client_id", q(cid), `"a-client"`) + `, "prompt_id": ` + q(id) + `, "extra_data": {"client_id": ` + q(w.client) + `}}`)
	case 20:
		return "GET", "/ws", w.query(a, "clientId", w.client, "a-client"), "", nil
	case 21:
		body, ct := multipartUpload(w.upload, []byte("A's bytes, not B's"))
		return "POST", "/upload/image", "", ct, body
	case 22:
		return "GET", "/view", "type=input&" + w.query(a, "filename", w.upload, "a.png"), "", nil
	case 23:
		return "GET", "/api/jobs/" + id + "/events", "", "", nil
	case 24:
		return "GET", "/api/history", w.query(a, "max_items", "1", "0"), "", nil
	default:
		return "POST", "/api/prompt", "", "application/json", []byte(`{"prompt": {}, "client_id": ` + q(w.client) + `}`)
	}
}

// query spells one query parameter: plainly, twice (both orders), with an
// encoded or differently cased name, or beside a token parameter.
func (w *world) query(a attack, name, value, own string) string {
	switch a.Query % 6 {
	case 1:
		return name + "=" + own + "&" + name + "=" + value
	case 2:
		return name + "=" + value + "&" + name + "=" + own
	case 3:
		return "%" + fmt.Sprintf("%02X", name[0]) + name[1:] + "=" + value
	case 4:
		return strings.ToUpper(name[:1]) + name[1:] + "=" + value + "&" + name + "=" + own
	case 5:
		return name + "=" + value + "&token=" + keyB[:8]
	}
	return name + "=" + value
}

// pathForm rewrites a path the ways a path can be spelled.
func pathForm(a attack, p string) string {
	api := strings.HasPrefix(p, "/api/")
	switch a.Path % 10 {
	case 1:
		if !api {
			return "/api" + p
		}
		return strings.TrimPrefix(p, "/api")
	case 2:
		if i := strings.IndexByte(p[1:], '/'); i >= 0 {
			return p[:i+1] + "/" + p[i+1:]
		}
		return "/" + p
	case 3:
		return "/." + p
	case 4:
		return "/zz/.." + p
	case 5:
		if i := strings.LastIndexByte(p, '/'); i > 0 {
			return p[:i] + "%2F" + p[i+1:]
		}
		return p
	case 6:
		return p + "/"
	case 7:
		return "/" + fmt.Sprintf("%%%02x", p[1]) + p[2:]
	case 8:
		return "/" + p
	case 9:
		return strings.Replace(p, "/", "/%2e/", 2)
	}
	return p
}

// send writes the attack exactly as built, in its framing, and reads the
// answer (a stream for at most a moment).
func (w *world) send(tb testing.TB, a attack) (raw []byte, reqText string) {
	tb.Helper()
	method, path, query, ctype, body := w.request(a)
	target := pathForm(a, path)
	if query != "" {
		target += "?" + query
	}
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n", method, target, w.st.Addr, keyA)
	if path == "/ws" {
		req.WriteString("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
	}
	if ctype != "" {
		fmt.Fprintf(&req, "Content-Type: %s\r\n", ctype)
	}
	switch a.Frame % 4 {
	case 0:
		fmt.Fprintf(&req, "Content-Length: %d\r\n\r\n", len(body))
		req.Write(body)
	case 1, 2:
		req.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		chunks := [][]byte{body}
		if a.Frame%4 == 2 && len(body) > 1 {
			chunks = [][]byte{body[:1], body[1:]}
		}
		for _, c := range chunks {
			if len(c) > 0 {
				fmt.Fprintf(&req, "%x\r\n%s\r\n", len(c), c)
			}
		}
		req.WriteString("0\r\n\r\n")
	case 3:
		// No framing at all: a request without Content-Length or
		// Transfer-Encoding has no body, so the body bytes that follow
		// are a second request's garbage.
		req.WriteString("\r\n")
		req.Write(body)
	}
	c, err := net.DialTimeout("tcp", w.st.Addr, 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(req.Bytes()); err != nil {
		tb.Fatalf("%v: write: %v", a, err)
	}
	// Read whatever arrives: answers are small; a stream (SSE, a
	// WebSocket) is cut after a moment.
	var out bytes.Buffer
	br := bufio.NewReader(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		chunk := make([]byte, 32<<10)
		n, err := br.Read(chunk)
		out.Write(chunk[:n])
		if err != nil || out.Len() > 4<<20 {
			break
		}
	}
	return out.Bytes(), req.String()
}

// check sends one attack and reports every way B's world changed or
// leaked to A.
func (w *world) check(tb testing.TB, a attack) {
	tb.Helper()
	raw, reqText := w.send(tb, a)
	for _, s := range w.secrets() {
		if s != "" && bytes.Contains(raw, []byte(s)) && !strings.Contains(reqText, s) {
			tb.Fatalf("%v (%s): A's answer carries B's %q:\nrequest:\n%s\nanswer:\n%.2000s", a, routeNames[int(a.Route)%len(routeNames)], s, reqText, raw)
		}
	}
	if got := w.snapshot(tb); got != w.baseline {
		tb.Fatalf("%v (%s) changed B's world:\nrequest:\n%s\nanswer:\n%.1000s\nbefore: %+v\nafter:  %+v", a, routeNames[int(a.Route)%len(routeNames)], reqText, raw, w.baseline, got)
	}
	w.aMu.Lock()
	defer w.aMu.Unlock()
	for _, msg := range w.aEvents {
		for _, s := range w.secrets() {
			if s != "" && bytes.Contains(msg, []byte(s)) {
				tb.Fatalf("after %v, A's socket received B's %q: %s", a, s, msg)
			}
		}
	}
	w.aEvents = w.aEvents[:0]
}

// TestIsolationProperty sends every route in its plain form, then
// -isolation.n generated requests (a fixed seed), each checked.
func TestIsolationProperty(t *testing.T) {
	w := start(t)
	for r := range len(routeNames) {
		for id := range 9 {
			w.check(t, attack{Route: uint8(r), ID: uint8(id)})
		}
	}
	rng := rand.New(rand.NewPCG(16, 17))
	for range *sampleN {
		var a attack
		for _, f := range []*uint8{&a.Route, &a.ID, &a.Value, &a.Form, &a.Path, &a.Query, &a.Frame} {
			*f = uint8(rng.UintN(256))
		}
		w.check(t, a)
	}
}

// FuzzIsolation lets the fuzzer pick A's requests.
func FuzzIsolation(f *testing.F) {
	for r := range len(routeNames) {
		f.Add(uint8(r), uint8(1), uint8(0), uint8(0), uint8(0), uint8(0), uint8(0))
		f.Add(uint8(r), uint8(2), uint8(1), uint8(1), uint8(2), uint8(1), uint8(1))
	}
	f.Add(uint8(0), uint8(0), uint8(0), uint8(1), uint8(0), uint8(0), uint8(0))  // {"PROMPT_ID": own}
	f.Add(uint8(2), uint8(0), uint8(0), uint8(0), uint8(0), uint8(0), uint8(1))  // chunked clear
	f.Add(uint8(1), uint8(2), uint8(1), uint8(0), uint8(0), uint8(0), uint8(0))  // ["B", 1]
	f.Add(uint8(10), uint8(4), uint8(0), uint8(0), uint8(2), uint8(0), uint8(0)) // /api/jobs//B/result
	f.Add(uint8(20), uint8(0), uint8(0), uint8(0), uint8(0), uint8(1), uint8(0)) // clientId twice
	w := start(f)
	f.Fuzz(func(t *testing.T, route, id, value, form, path, query, frame uint8) {
		w.check(t, attack{route, id, value, form, path, query, frame})
	})
}
