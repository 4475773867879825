package testkit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/ids"
	"github.com/fasthttp/websocket"
)

// MiniComfy is the scripted ComfyUI of comfygate's tests, where comfysim
// (a simulator that runs prompts by itself) does not fit: the test decides
// every answer and every event, and when it comes.
//
// Scripted routes: GET /system_stats (its version), /ws (a status message
// with the clientId as sid; a feature_flags answer to the first frame),
// POST /prompt (queued as pending; the id from the body from 0.3.45 on),
// GET /history and /history/{id}, GET /queue, POST /queue (delete),
// POST /interrupt, GET /view of its files (with a one-byte Range),
// POST /upload/image and POST /echo. Everything else is 404.
//
// The test scripts the rest: Handle overrides one route, Fallback answers
// every route but /system_stats and /ws; Emit sends an event on every
// socket, Start and Finish a prompt's run; BeforeAnswer and AfterAnswer
// send events around the answer to POST /prompt; Fail500 and Hang make
// every request fail or hang; Kill refuses connections until Restart.
// Counters and Requests tell what it was asked.
type MiniComfy struct {
	tb      testing.TB
	version string
	addr    string

	Fail500  atomic.Bool
	Hang     atomic.Bool
	Hanging  atomic.Int64 // requests held by Hang
	Checks   atomic.Int64 // /system_stats requests
	Views    atomic.Int64 // /view requests
	Ranged   atomic.Int64 // /view requests with a Range header
	Dials    atomic.Int64 // WebSocket connections accepted
	Accepted atomic.Int64 // TCP connections accepted

	srvMu sync.Mutex   // guards srv
	srv   *http.Server // nil while killed

	mu           sync.Mutex                   // guards the fields below
	files        map[string][]byte            // "type/subfolder/name" -> content
	routes       map[string]http.HandlerFunc  // Handle's overrides by path
	fallback     http.HandlerFunc             // Fallback's handler
	seen         []SeenRequest                // requests but /system_stats and /ws
	conns        map[*websocket.Conn]string   // open sockets -> clientId
	firstFrames  []string                     // each socket's first frame from the client
	bodies       []map[string]json.RawMessage // POST /prompt bodies
	history      map[string]json.RawMessage   // prompt id -> history entry
	running      []string                     // prompt ids running
	pending      []string                     // prompt ids pending
	posts        []string                     // "POST /queue <body>", "POST /interrupt <body>"
	number       int                          // the next prompt's number
	beforeAnswer func(id string)              // runs before POST /prompt answers
	afterAnswer  func(id string)              // runs once the answer is flushed
	answerStatus int                          // when not 0, POST /prompt fails with it
	wmu          sync.Mutex                   // serialises WebSocket writes
	hangDone     chan struct{}                // closed when the test ends
	upgrader     websocket.Upgrader           // accepts any Origin
	holdSockets  <-chan struct{}              // HoldSockets (nil: none)
}

// SeenRequest is a request the fake received: its method, raw
// request-target, Host and headers.
type SeenRequest struct {
	Method, RequestURI, Host string
	Header                   http.Header
}

// Mini starts a MiniComfy reporting version on a free loopback port and
// stops it when the test ends.
func Mini(tb testing.TB, version string) *MiniComfy {
	tb.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	f := &MiniComfy{
		tb: tb, version: version, addr: ln.Addr().String(),
		files: map[string][]byte{}, routes: map[string]http.HandlerFunc{},
		conns: map[*websocket.Conn]string{}, history: map[string]json.RawMessage{},
		hangDone: make(chan struct{}),
		upgrader: websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }},
	}
	f.serve(ln)
	tb.Cleanup(func() {
		close(f.hangDone)
		f.Kill()
	})
	return f
}

// Addr is its host:port.
func (f *MiniComfy) Addr() string { return f.addr }

// URL is "http://" + Addr.
func (f *MiniComfy) URL() string { return "http://" + f.addr }

func (f *MiniComfy) serve(ln net.Listener) {
	srv := &http.Server{
		Handler:           f,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				f.Accepted.Add(1)
			}
		},
	}
	f.srvMu.Lock()
	f.srv = srv
	f.srvMu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// Kill drops every connection and socket and stops listening, as a
// crashed instance does: new connections are refused.
func (f *MiniComfy) Kill() {
	f.srvMu.Lock()
	srv := f.srv
	f.srv = nil
	f.srvMu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
	f.DropSockets()
}

// Restart listens again on the same address with an empty queue and
// history (files and scripts stay).
func (f *MiniComfy) Restart() {
	f.tb.Helper()
	f.Kill()
	f.mu.Lock()
	f.history, f.running, f.pending = map[string]json.RawMessage{}, nil, nil
	f.mu.Unlock()
	var ln net.Listener
	var err error
	// The address may take a moment to be free again.
	Poll(time.Second, func() bool {
		ln, err = net.Listen("tcp4", f.addr)
		return err == nil
	})
	if err != nil {
		f.tb.Fatal(err)
	}
	f.serve(ln)
}

// DropSockets closes every WebSocket without a close frame.
func (f *MiniComfy) DropSockets() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		_ = c.Close()
	}
}

// SocketCount is the number of open WebSockets.
func (f *MiniComfy) SocketCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

// Handle makes h answer requests for path (exact match) instead of the
// script, /system_stats and /ws included.
func (f *MiniComfy) Handle(path string, h http.HandlerFunc) *MiniComfy {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[path] = h
	return f
}

// Fallback makes h answer every request Handle does not claim, except
// /system_stats and /ws, which keep the instance healthy and its socket up
// (nil restores the script).
func (f *MiniComfy) Fallback(h http.HandlerFunc) *MiniComfy {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fallback = h
	return f
}

// BeforeAnswer sets a function that runs inside POST /prompt, with the
// prompt's id, before the answer is written (nil: none).
func (f *MiniComfy) BeforeAnswer(fn func(id string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.beforeAnswer = fn
}

// AfterAnswer sets a function that runs once the answer to POST /prompt
// is flushed to the connection, with the prompt's id (nil: none).
func (f *MiniComfy) AfterAnswer(fn func(id string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.afterAnswer = fn
}

// AnswerStatus makes POST /prompt fail with status and ComfyUI's
// prompt_no_outputs error (0: accept prompts again).
func (f *MiniComfy) AnswerStatus(status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answerStatus = status
}

// Requests returns the requests it received, except /system_stats and /ws.
func (f *MiniComfy) Requests() []SeenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen)
}

// Posts returns the POST /queue and POST /interrupt requests it received,
// as "POST /queue <body>".
func (f *MiniComfy) Posts() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.posts)
}

// HoldSockets makes each socket accepted from now on wait, after its
// handshake, until release is closed before the fake registers it and
// sends its status, as ComfyUI registers a socket only after the handshake:
// what it emits meanwhile does not reach that socket.
func (f *MiniComfy) HoldSockets(release <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holdSockets = release
}

// FirstFrames returns the first frame each socket's client sent.
func (f *MiniComfy) FirstFrames() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.firstFrames)
}

// LastBody returns the last POST /prompt body (nil if none).
func (f *MiniComfy) LastBody() map[string]json.RawMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.bodies) == 0 {
		return nil
	}
	return f.bodies[len(f.bodies)-1]
}

// Bodies returns every POST /prompt body.
func (f *MiniComfy) Bodies() []map[string]json.RawMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.bodies)
}

// PromptCount is the number of prompts POSTed.
func (f *MiniComfy) PromptCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.bodies)
}

// SetRunning replaces its running prompts (as someone acting on the
// instance directly would); nil empties the list.
func (f *MiniComfy) SetRunning(ids []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running = slices.Clone(ids)
}

// SetPending replaces its pending prompts; nil empties the list.
func (f *MiniComfy) SetPending(ids []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending = slices.Clone(ids)
}

// AddPending queues id as pending.
func (f *MiniComfy) AddPending(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending = append(f.pending, id)
}

// RemovePending takes id out of the pending list.
func (f *MiniComfy) RemovePending(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending = slices.DeleteFunc(f.pending, func(x string) bool { return x == id })
}

// SetHistory sets id's /history entry (raw JSON).
func (f *MiniComfy) SetHistory(id string, entry json.RawMessage) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.history[id] = entry
}

// Emit sends a text event (format and args as fmt.Sprintf) on every socket.
func (f *MiniComfy) Emit(format string, args ...any) {
	f.EmitRaw(websocket.TextMessage, fmt.Appendf(nil, format, args...))
}

// EmitRaw sends a message of type mt on every socket.
func (f *MiniComfy) EmitRaw(mt int, data []byte) {
	f.mu.Lock()
	conns := make([]*websocket.Conn, 0, len(f.conns))
	for c := range f.conns {
		conns = append(conns, c)
	}
	f.mu.Unlock()
	for _, c := range conns {
		f.write(c, mt, data)
	}
}

// Start moves id from pending to running and sends its first events.
func (f *MiniComfy) Start(id string) {
	f.mu.Lock()
	f.pending = slices.DeleteFunc(f.pending, func(x string) bool { return x == id })
	f.running = append(f.running, id)
	f.mu.Unlock()
	f.Emit(`{"type": "execution_start", "data": {"prompt_id": %q, "timestamp": 1}}`, id)
	f.Emit(`{"type": "execution_cached", "data": {"nodes": [], "prompt_id": %q, "timestamp": 1}}`, id)
	f.Emit(`{"type": "executing", "data": {"node": "1", "display_node": "1", "prompt_id": %q}}`, id)
}

// Finish sends the rest of a successful run of id, with output file name
// file, and records it in the history.
func (f *MiniComfy) Finish(id, file string) {
	f.Emit(`{"type": "progress", "data": {"value": 1, "max": 1, "prompt_id": %q, "node": "1"}}`, id)
	f.Emit(`{"type": "executed", "data": {"node": "9", "display_node": "9", "output": {"images": [{"filename": %q, "subfolder": "", "type": "output"}]}, "prompt_id": %q}}`, file, id)
	f.mu.Lock()
	f.running = slices.DeleteFunc(f.running, func(x string) bool { return x == id })
	f.history[id] = fmt.Appendf(nil, `{"prompt": [], "outputs": {"9": {"images": [{"filename": %q, "subfolder": "", "type": "output"}]}}, "status": {"status_str": "success", "completed": true, "messages": [["execution_start", {"prompt_id": %q, "timestamp": 1}], ["execution_success", {"prompt_id": %q, "timestamp": 2}]]}, "meta": {}}`, file, id, id)
	q := len(f.running) + len(f.pending)
	f.mu.Unlock()
	f.Emit(`{"type": "execution_success", "data": {"prompt_id": %q, "timestamp": 2}}`, id)
	f.Emit(`{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": %d}}}}`, q)
	f.Emit(`{"type": "executing", "data": {"node": null, "prompt_id": %q}}`, id)
}

func (f *MiniComfy) write(c *websocket.Conn, mt int, data []byte) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	_ = c.WriteMessage(mt, data)
}

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

// ServeHTTP answers one request: Hang, Fail500, Handle's routes,
// Fallback, then the script.
func (f *MiniComfy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.Hang.Load() {
		f.Hanging.Add(1)
		select {
		case <-f.hangDone:
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
		return
	}
	if f.Fail500.Load() {
		http.Error(w, "boom", http.StatusInternalServerError)
		return
	}
	path := r.URL.Path
	own := path == "/system_stats" || path == "/ws"
	f.mu.Lock()
	route, fallback := f.routes[path], f.fallback
	if !own {
		f.seen = append(f.seen, SeenRequest{Method: r.Method, RequestURI: r.RequestURI, Host: r.Host, Header: r.Header.Clone()})
	}
	f.mu.Unlock()
	switch {
	case route != nil:
		route(w, r)
	case fallback != nil && !own:
		fallback(w, r)
	default:
		f.script(w, r)
	}
}

// script is the scripted ComfyUI.
func (f *MiniComfy) script(w http.ResponseWriter, r *http.Request) {
	path, method := r.URL.Path, r.Method
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	switch {
	case path == "/ws":
		f.socket(w, r)
	case path == "/system_stats":
		f.Checks.Add(1)
		fmt.Fprintf(w, `{"system": {"os": "posix", "comfyui_version": %q}, "devices": []}`, f.version)
	case path == "/prompt" && method == http.MethodPost:
		f.prompt(w, r)
	case path == "/history" && method == http.MethodGet:
		f.mu.Lock()
		b, _ := json.Marshal(f.history)
		f.mu.Unlock()
		_, _ = w.Write(b)
	case strings.HasPrefix(path, "/history/") && method == http.MethodGet:
		id := strings.TrimPrefix(path, "/history/")
		f.mu.Lock()
		h, ok := f.history[id]
		f.mu.Unlock()
		if !ok {
			_, _ = io.WriteString(w, `{}`)
			return
		}
		fmt.Fprintf(w, `{%q: %s}`, id, h)
	case path == "/queue" && method == http.MethodGet:
		item := func(ids []string) string {
			var parts []string
			for k, id := range ids {
				parts = append(parts, fmt.Sprintf(`[%d, %q, {}, {"client_id": "x"}, []]`, k, id))
			}
			return "[" + strings.Join(parts, ", ") + "]"
		}
		f.mu.Lock()
		fmt.Fprintf(w, `{"queue_running": %s, "queue_pending": %s}`, item(f.running), item(f.pending))
		f.mu.Unlock()
	case (path == "/queue" || path == "/interrupt") && method == http.MethodPost:
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.posts = append(f.posts, "POST "+path+" "+string(body))
		if path == "/queue" {
			var d struct {
				Delete []string `json:"delete"`
			}
			_ = json.Unmarshal(body, &d)
			f.pending = slices.DeleteFunc(f.pending, func(id string) bool { return slices.Contains(d.Delete, id) })
		}
		f.mu.Unlock()
	case path == "/view" && method == http.MethodGet:
		f.view(w, r)
	case path == "/upload/image" && method == http.MethodPost:
		f.upload(w, r)
	case path == "/echo":
		body, _ := io.ReadAll(r.Body)
		w.Header().Del("Content-Type")
		w.Header().Set("X-Got", r.Header.Get("X-Test"))
		_, _ = w.Write(bytes.ToUpper(body))
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func (f *MiniComfy) socket(w http.ResponseWriter, r *http.Request) {
	sid := r.URL.Query().Get("clientId")
	c, err := f.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	f.Dials.Add(1)
	f.mu.Lock()
	hold := f.holdSockets
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-f.hangDone:
			_ = c.Close()
			return
		}
	}
	f.mu.Lock()
	f.conns[c] = sid
	q := len(f.running) + len(f.pending)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
		_ = c.Close()
	}()
	f.write(c, websocket.TextMessage, fmt.Appendf(nil, `{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": %d}}, "sid": %q}}`, q, sid))
	first := true
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		if first {
			f.mu.Lock()
			f.firstFrames = append(f.firstFrames, string(data))
			f.mu.Unlock()
			f.write(c, websocket.TextMessage, []byte(`{"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": 104857600}}`))
		}
		first = false
	}
}

func (f *MiniComfy) prompt(w http.ResponseWriter, r *http.Request) {
	var body map[string]json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	f.mu.Lock()
	status := f.answerStatus
	f.mu.Unlock()
	if status != 0 {
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}, "node_errors": []}`)
		return
	}
	id := ""
	if v, ok := comfyapi.ParseVersion(f.version); ok && !v.Less(comfyapi.VersionClientPromptID) {
		_ = json.Unmarshal(body["prompt_id"], &id)
	}
	if id == "" {
		id = ids.UUID()
	}
	f.mu.Lock()
	f.bodies = append(f.bodies, body)
	f.pending = append(f.pending, id)
	n := f.number
	f.number++
	before, after := f.beforeAnswer, f.afterAnswer
	f.mu.Unlock()
	if before != nil {
		before(id)
	}
	// With its length set, the answer is whole on the connection once
	// flushed, while after runs.
	answer := fmt.Appendf(nil, `{"prompt_id": %q, "number": %d, "node_errors": {}}`, id, n)
	w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
	_, _ = w.Write(answer)
	if after != nil {
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
		after(id)
	}
}

func (f *MiniComfy) view(w http.ResponseWriter, r *http.Request) {
	f.Views.Add(1)
	q := r.URL.Query()
	b, ok := f.Get(q.Get("type"), q.Get("subfolder"), q.Get("filename"))
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	rng := r.Header.Get("Range")
	if rng != "" {
		f.Ranged.Add(1)
	}
	w.Header().Set("Content-Type", "image/png")
	// The one Range form the pool uses.
	if rng == "bytes=0-0" && len(b) > 0 {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-0/%d", len(b)))
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(b[:1])
		return
	}
	_, _ = w.Write(b)
}

func (f *MiniComfy) upload(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseMultipartForm(64 << 20); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fh := r.MultipartForm.File["image"]
	if len(fh) != 1 {
		http.Error(w, "no image", http.StatusBadRequest)
		return
	}
	typ, sub := "input", ""
	if v := r.MultipartForm.Value["type"]; len(v) > 0 {
		typ = v[0]
	}
	if v := r.MultipartForm.Value["subfolder"]; len(v) > 0 {
		sub = v[0]
	}
	rd, err := fh[0].Open()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	data, _ := io.ReadAll(rd)
	_ = rd.Close()
	f.Put(typ, sub, fh[0].Filename, data)
	fmt.Fprintf(w, `{"name":%q,"subfolder":%q,"type":%q}`, fh[0].Filename, sub, typ)
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
