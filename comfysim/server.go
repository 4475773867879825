package comfysim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options configures a simulated ComfyUI.
type Options struct {
	// InputDir, OutputDir and TempDir are ComfyUI's input, output and temp
	// directories. "" creates a fresh temporary directory, removed by Close.
	// Directories given here are created if missing and never removed.
	InputDir, OutputDir, TempDir string
	// Delay is how long each image-processing node takes (ImageInvert,
	// ImageScale, ImageScaleBy, ImageBlur, ImageUpscaleWithModel and the
	// background-removal node). Loaders, EmptyImage and savers take no time.
	// Negative values count as 0. The CLI's default is 100ms.
	Delay time.Duration
	// Steps is the number of progress steps (each with a binary preview) that
	// the heavy nodes (ImageUpscaleWithModel, background removal) report;
	// Delay is split evenly over them. 0 or less means 4.
	Steps int
	// Version is the emulated ComfyUI version, default DefaultVersion
	// ("0.3.65"). See the version rules in the package documentation.
	Version string
	// EnableCORSHeader replaces the origin check with permissive CORS headers,
	// like ComfyUI's --enable-cors-header (with no origin, i.e. "*").
	EnableCORSHeader bool
	// FailAfter > 0 wedges the HTTP server after that many accepted prompts
	// (POST /prompt answered 200): every later HTTP request, WebSocket
	// handshakes included, is accepted by the kernel but never answered
	// (it hangs until the client gives up, or Kill/Close). Already open
	// WebSockets and the queue keep running. Restart clears the count.
	FailAfter int
	// RecordRuns keeps a record of every successful execution (its prompt
	// id and extra_data) for Runs and RunsByExtra. Off by default: the
	// record grows with every prompt.
	RecordRuns bool
	// UpscaleModels lists the files in models/upscale_models; nil means
	// DefaultUpscaleModels.
	UpscaleModels []string
	// Nodes are the node classes it has (what /object_info lists and
	// validation accepts), like a container with some custom node packs
	// only; nil means every class it implements. An unknown name fails New.
	Nodes []string
	// Models lists the files of model folders (/models/{folder}, and the
	// loaders' combos): a folder given here replaces its default (empty,
	// and UpscaleModels for upscale_models).
	Models map[string][]string
	// ModelLoadTime is what a loader charges the first time it loads a
	// model file (ComfyUI's first prompt after a start, or after another
	// model pushed it out of VRAM). 0: loading is free.
	ModelLoadTime time.Duration
	// ModelSlots is how many model files stay loaded at once (least
	// recently used goes first); 0 means no limit: each model costs
	// ModelLoadTime once.
	ModelSlots int
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
}

// Server is one simulated ComfyUI process. Its methods are safe for
// concurrent use.
type Server struct {
	opts          Options
	ver           version
	log           *slog.Logger
	defs          map[string]*nodeDef
	upscaleModels []string
	models        map[string][]string
	delay         time.Duration
	steps         int

	fileDirs    // input, output and temp directories (files.go)
	runLog      // what ran (Runs, PromptsExecuted)
	modelMemory // model files loaded (exec.go)
	userStore   // the user directory (userdata.go)

	fail500 atomic.Bool
	paused  atomic.Bool // SetPaused: the worker starts no prompt

	mu      sync.Mutex // guards inst, addr, closed, hang, frozen
	inst    *instance
	addr    string
	closed  bool
	hang    chan struct{} // non-nil while SetHang(true); closed by SetHang(false)
	frozen  chan struct{} // non-nil while SetFrozen(true); closed by SetFrozen(false)
	closeCh chan struct{} // closed by Close

}

// runLog counts what a Server executed, across Kill and Restart.
type runLog struct {
	executed atomic.Int64 // prompts that finished executing, any outcome
	record   bool         // Options.RecordRuns

	runsMu sync.Mutex  // guards runs
	runs   []runRecord // with record: every successful execution
}

// modelMemory is which model files a Server holds loaded, as VRAM would.
type modelMemory struct {
	loadMu sync.Mutex // guards loaded
	loaded []string   // model files in memory, least recently used first

	modelLoads atomic.Int64 // loads that paid ModelLoadTime
}

// userStore is a Server's user directory (userdata.go).
type userStore struct {
	userMu   sync.Mutex           // guards userdata
	userdata map[string]*userFile // by path under the user directory
}

// fileDirs are a Server's input, output and temp directories, and the
// ones it created (removed by Close).
type fileDirs struct {
	inputDir  string
	outputDir string
	tempDir   string
	ownDirs   []string
}

// runRecord is one successful execution.
type runRecord struct {
	id    string
	extra *rawObj
}

// New validates opts and prepares the directories; it does not listen.
func New(opts Options) (*Server, error) {
	ver, err := parseVersion(opts.Version)
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:    opts,
		ver:     ver,
		log:     opts.Logger,
		defs:    nodeDefs(),
		delay:   max(opts.Delay, 0),
		steps:   opts.Steps,
		closeCh: make(chan struct{}),
		runLog:  runLog{record: opts.RecordRuns},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.steps <= 0 {
		s.steps = 4
	}
	s.upscaleModels = opts.UpscaleModels
	if s.upscaleModels == nil {
		s.upscaleModels = DefaultUpscaleModels
	}
	s.models = map[string][]string{"upscale_models": s.upscaleModels}
	for f, files := range opts.Models {
		s.models[f] = files
	}
	s.upscaleModels = s.models["upscale_models"]
	if opts.Nodes != nil {
		keep := make(map[string]*nodeDef, len(opts.Nodes))
		for _, n := range opts.Nodes {
			d := s.defs[n]
			if d == nil {
				return nil, fmt.Errorf("comfysim: unknown node class %q", n)
			}
			keep[n] = d
		}
		s.defs = keep
	}
	for _, d := range []struct {
		dst   *string
		given string
		name  string
	}{{&s.inputDir, opts.InputDir, "input"}, {&s.outputDir, opts.OutputDir, "output"}, {&s.tempDir, opts.TempDir, "temp"}} {
		if d.given == "" {
			p, err := os.MkdirTemp("", "comfysim-"+d.name+"-")
			if err != nil {
				s.removeOwnDirs()
				return nil, fmt.Errorf("comfysim: create %s dir: %w", d.name, err)
			}
			s.ownDirs = append(s.ownDirs, p)
			*d.dst = p
			continue
		}
		abs, err := filepath.Abs(d.given)
		if err == nil {
			err = os.MkdirAll(abs, 0o755)
		}
		if err != nil {
			s.removeOwnDirs()
			return nil, fmt.Errorf("comfysim: %s dir %q: %w", d.name, d.given, err)
		}
		*d.dst = abs
	}
	return s, nil
}

func (d *fileDirs) removeOwnDirs() {
	for _, dir := range d.ownDirs {
		_ = os.RemoveAll(dir)
	}
	d.ownDirs = nil
}

// Start listens on addr (e.g. "127.0.0.1:0") and serves in the background.
func (s *Server) Start(addr string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("comfysim: server closed")
	}
	if s.inst != nil {
		return errors.New("comfysim: already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("comfysim: listen %s: %w", addr, err)
	}
	s.addr = ln.Addr().String()
	s.inst = s.newInstance(ln)
	s.log.Info("comfysim listening", "addr", s.addr, "version", s.ver.raw)
	return nil
}

// Addr is the address actually bound, like "127.0.0.1:41234".
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// URL is "http://" + Addr().
func (s *Server) URL() string { return "http://" + s.Addr() }

// InputDir is ComfyUI's input directory (uploads, LoadImage).
func (d *fileDirs) InputDir() string { return d.inputDir }

// OutputDir is ComfyUI's output directory (SaveImage).
func (d *fileDirs) OutputDir() string { return d.outputDir }

// TempDir is ComfyUI's temp directory (PreviewImage).
func (d *fileDirs) TempDir() string { return d.tempDir }

// Version is the emulated ComfyUI version.
func (s *Server) Version() string { return s.ver.raw }

// PromptsExecuted counts prompts that finished executing, with any outcome
// (success, error, interrupt), since the Server was created. Prompts aborted
// by Kill are not counted.
func (r *runLog) PromptsExecuted() int { return int(r.executed.Load()) }

// Up reports whether the simulated process runs: started and not killed
// (or restarted since) nor closed.
func (s *Server) Up() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inst != nil
}

// Queue returns how many prompts are running (0 or 1) and pending, as
// GET /queue would list them; both are 0 while killed.
func (s *Server) Queue() (running, pending int) {
	s.mu.Lock()
	in := s.inst
	s.mu.Unlock()
	if in == nil {
		return 0, 0
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.running != nil {
		running = 1
	}
	return running, len(in.queue)
}

// SocketIDs returns the clientIds that have a WebSocket registered now,
// sorted: the ones the instance's send_sync would reach.
func (s *Server) SocketIDs() []string {
	s.mu.Lock()
	in := s.inst
	s.mu.Unlock()
	if in == nil {
		return nil
	}
	in.mu.Lock()
	ids := make([]string, 0, len(in.sockets))
	for sid := range in.sockets {
		ids = append(ids, sid)
	}
	in.mu.Unlock()
	slices.Sort(ids)
	return ids
}

// Runs returns, with Options.RecordRuns, for every prompt id this Server
// executed to success (status "success" in its history) since it was
// created, how many times it did: across Kill and Restart, a count above 1
// means the same prompt ran twice here. Prompts that failed, were
// interrupted or were abandoned by Kill are not counted.
func (r *runLog) Runs() map[string]int {
	r.runsMu.Lock()
	defer r.runsMu.Unlock()
	out := map[string]int{}
	for _, run := range r.runs {
		out[run.id]++
	}
	return out
}

// RunsByExtra is Runs keyed by the string value of extra_data[key] instead
// of the prompt id (runs without it are left out): a client that tags its
// prompts there counts them whatever prompt id a proxy gave them.
func (r *runLog) RunsByExtra(key string) map[string]int {
	r.runsMu.Lock()
	defer r.runsMu.Unlock()
	out := map[string]int{}
	for _, run := range r.runs {
		if run.extra == nil {
			continue
		}
		raw, ok := run.extra.get(key)
		var v string
		if !ok || json.Unmarshal(raw, &v) != nil {
			continue
		}
		out[v]++
	}
	return out
}

func (r *runLog) countRun(it *queueItem) {
	if !r.record {
		return
	}
	r.runsMu.Lock()
	defer r.runsMu.Unlock()
	r.runs = append(r.runs, runRecord{id: it.id, extra: it.extra})
}

// Close stops serving, drops every connection, and removes the directories
// New created. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closeCh)
	if s.hang != nil {
		close(s.hang)
		s.hang = nil
	}
	if s.frozen != nil {
		close(s.frozen)
		s.frozen = nil
	}
	in := s.inst
	s.inst = nil
	s.mu.Unlock()
	if in != nil {
		in.shutdown()
	}
	s.removeOwnDirs()
	return nil
}

// Kill simulates a crashed process: the listener and every HTTP and WebSocket
// connection are closed abruptly, the running prompt is abandoned (no further
// messages, no history), and the queue, history, cache and socket table are
// lost. Directories and their files are kept. Restart brings it back.
func (s *Server) Kill() {
	s.mu.Lock()
	in := s.inst
	s.inst = nil
	s.mu.Unlock()
	if in != nil {
		in.shutdown()
		s.log.Info("comfysim killed", "addr", s.addr)
	}
}

// Restart listens again on the same address after Kill, with fresh
// in-memory state, like a restarted ComfyUI (queue number back at 0).
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("comfysim: server closed")
	}
	if s.inst != nil {
		return errors.New("comfysim: restart: still running (call Kill first)")
	}
	if s.addr == "" {
		return errors.New("comfysim: restart: never started")
	}
	var ln net.Listener
	var err error
	for range 50 { // the old socket may take a moment to let go of the port
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("comfysim: restart listen %s: %w", s.addr, err)
	}
	s.inst = s.newInstance(ln)
	s.log.Info("comfysim restarted", "addr", s.addr)
	return nil
}

// SetHang makes every HTTP request (WebSocket handshakes included) block
// while on; blocked requests continue normally once it is turned off, and are
// dropped by Close or Kill.
func (s *Server) SetHang(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case on && s.hang == nil && !s.closed:
		s.hang = make(chan struct{})
	case !on && s.hang != nil:
		close(s.hang)
		s.hang = nil
	}
}

// SetPaused holds the queue while on: the worker starts no new prompt
// (the running one, if any, finishes), so POST /prompt keeps queueing and
// GET /queue shows everything pending. Tests use it to look at a queue
// without racing the executor. Off resumes; it survives Kill and Restart.
func (s *Server) SetPaused(on bool) {
	s.paused.Store(on)
	if on {
		return
	}
	s.mu.Lock()
	in := s.inst
	s.mu.Unlock()
	if in != nil {
		in.nudge()
	}
}

// SetFrozen stops the clock of execution while on, as SIGSTOP stops a
// process: the worker starts no prompt and the running node does not finish
// (its remaining run time starts again after the thaw). HTTP and WebSocket
// traffic are not affected: put a network fault (SetHang, or a TCP proxy
// that forwards nothing) beside it to model a stopped process completely.
// Off resumes; Close thaws; it survives Kill and Restart.
func (s *Server) SetFrozen(on bool) {
	s.mu.Lock()
	switch {
	case on && s.frozen == nil && !s.closed:
		s.frozen = make(chan struct{})
	case !on && s.frozen != nil:
		close(s.frozen)
		s.frozen = nil
	}
	in := s.inst
	s.mu.Unlock()
	if !on && in != nil {
		in.nudge()
	}
}

// thawed returns nil when execution may go on, or a channel that is closed
// when SetFrozen(false) (or Close) lets it.
func (s *Server) thawed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.frozen
}

// SetFail500 makes every HTTP request answer aiohttp's plain-text 500 while on.
func (s *Server) SetFail500(on bool) { s.fail500.Store(on) }

// BroadcastCustom sends {"type": msgType, "data": data} with no sid to every
// registered socket, as a custom node's send_sync(..., None) does.
func (s *Server) BroadcastCustom(msgType string, data any) {
	s.mu.Lock()
	in := s.inst
	s.mu.Unlock()
	if in == nil {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.sendLocked(msgType, data, nil)
}

// ---- HTTP plumbing ----

const serverHeader = "Python/3.11 aiohttp/3.8.4"

const body500 = "500 Internal Server Error\n\nServer got itself in trouble"

// maxUploadSize is ComfyUI's default --max-upload-size (100 MB), applied to
// every request body.
const maxUploadSize = 100 << 20

func writeJSON(w http.ResponseWriter, status int, v any) {
	body := pyJSON(v)
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeEmpty(w http.ResponseWriter, status int) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", "0")
	w.WriteHeader(status)
}

func writeText(w http.ResponseWriter, status int, text string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", fmt.Sprint(len(text)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, text)
}

func write500(w http.ResponseWriter) { writeText(w, http.StatusInternalServerError, body500) }

// readBody reads a request body within the upload limit. It writes the 413
// itself and returns ok=false when the body is too large or unreadable.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxUploadSize))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeText(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("Maximum request body size %d exceeded, actual body size %d", maxUploadSize, r.ContentLength))
			return nil, false
		}
		write500(w)
		return nil, false
	}
	return data, true
}

// ServeHTTP runs the instance's middleware chain: failure injection, then
// ComfyUI's origin check (or CORS headers), then routing.
func (in *instance) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := in.s
	if !in.waitHang(r) {
		// Abort without writing: the client sees the connection drop.
		panic(http.ErrAbortHandler)
	}
	w.Header().Set("Server", serverHeader)
	if s.fail500.Load() {
		write500(w)
		return
	}
	if s.opts.EnableCORSHeader {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", "POST, GET, DELETE, PUT, OPTIONS")
		if s.ver.is2026() {
			h.Set("Access-Control-Allow-Methods", "POST, GET, DELETE, PUT, OPTIONS, PATCH")
		}
		h.Set("Access-Control-Allow-Headers", "Content-Type, Authorization")
		h.Set("Access-Control-Allow-Credentials", "true")
	} else if s.originBlocked(r) {
		s.log.Warn("request with non matching host and origin, returning 403", "host", r.Host)
		writeEmpty(w, http.StatusForbidden)
		return
	}
	if r.Method == http.MethodOptions {
		writeEmpty(w, http.StatusOK)
		return
	}
	in.route(w, r)
}

// waitHang blocks while SetHang is on or FailAfter has wedged the server.
// It returns false when the request should be dropped unanswered.
func (in *instance) waitHang(r *http.Request) bool {
	s := in.s
	for {
		s.mu.Lock()
		ch, closed := s.hang, s.closed
		s.mu.Unlock()
		if closed {
			return false
		}
		wedged := in.wedged.Load()
		if ch == nil && !wedged {
			return true
		}
		select {
		case <-ch: // nil while only wedged: blocks until the others fire
		case <-r.Context().Done():
			return false
		case <-in.ctx.Done():
			return false
		case <-s.closeCh:
			return false
		}
	}
}

// originBlocked is ComfyUI's origin-only middleware (and, in 2026 mode, the
// Sec-Fetch-Site check). Host names other than IP literals and "localhost"
// are not resolved: they count as non-loopback.
func (s *Server) originBlocked(r *http.Request) bool {
	if s.ver.is2026() && r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return true
	}
	origins, hasOrigin := r.Header["Origin"]
	if !hasOrigin || r.Host == "" {
		return false
	}
	origin := ""
	if len(origins) > 0 {
		origin = origins[0]
	}
	hostDomain := strings.ToLower(r.Host)
	hp, err := url.Parse("//" + hostDomain)
	if err != nil {
		return false
	}
	op, err := url.Parse(origin)
	if err != nil {
		return false
	}
	originDomain := strings.ToLower(op.Host)
	loopback := isLoopback(hp.Hostname())
	if op.Port() == "" {
		hostDomain = hp.Hostname()
	}
	if hp.Port() == "" {
		originDomain = strings.ToLower(op.Hostname())
	}
	return loopback && hostDomain != "" && originDomain != "" && hostDomain != originDomain
}

func isLoopback(host string) bool {
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	h := strings.TrimSuffix(strings.ToLower(host), ".")
	return h == "localhost" || strings.HasSuffix(h, ".localhost")
}

// route is a tiny aiohttp-like router: path match first, then method; 404
// and 405 bodies are aiohttp's.
type route struct {
	method  string
	pattern []string
	handler func(w http.ResponseWriter, r *http.Request, p map[string]string)
}

func (in *instance) routes() []route {
	type def struct {
		method, path string
		h            func(w http.ResponseWriter, r *http.Request, p map[string]string)
	}
	s := in.s
	prompts, hist, info, files := promptRoutes{in}, historyRoutes{in}, infoRoutes{in}, fileRoutes{in}
	users, socks, jobs := userdataRoutes{in}, socketRoutes{in}, jobRoutes{in}
	defs := []def{
		{"GET", "/ws", socks.handleWS},
		{"GET", "/embeddings", info.getEmbeddings},
		{"GET", "/models", info.getModels},
		{"GET", "/models/{folder}", info.getModelFolder},
		{"GET", "/extensions", info.getExtensions},
		{"POST", "/upload/image", files.postUploadImage},
		{"POST", "/upload/mask", files.postUploadMask},
		{"GET", "/view", files.getView},
		{"GET", "/system_stats", info.getSystemStats},
		{"GET", "/prompt", prompts.getPrompt},
		{"POST", "/prompt", prompts.postPrompt},
		{"GET", "/object_info", info.getObjectInfo},
		{"GET", "/object_info/{class}", info.getObjectInfoClass},
		{"GET", "/history", hist.getHistory},
		{"GET", "/history/{id}", hist.getHistoryID},
		{"POST", "/history", hist.postHistory},
		{"GET", "/queue", prompts.getQueue},
		{"POST", "/queue", prompts.postQueue},
		{"POST", "/interrupt", prompts.postInterrupt},
		{"POST", "/free", prompts.postFree},
		{"GET", "/users", info.getUsers},
		{"GET", "/settings", info.getSettings},
		{"GET", "/settings/{id}", info.getSetting},
		{"POST", "/settings", info.postSettings},
		{"POST", "/settings/{id}", info.postSettings},
		{"GET", "/userdata", users.listUserData},
		{"GET", "/v2/userdata", users.listUserDataV2},
		{"GET", "/userdata/{file}", users.getUserData},
		{"POST", "/userdata/{file}", users.postUserData},
		{"DELETE", "/userdata/{file}", users.deleteUserData},
		{"POST", "/userdata/{file}/move/{dest}", users.moveUserData},
	}
	if s.ver.hasFeatures() {
		defs = append(defs, def{"GET", "/features", info.getFeatures})
	}
	if s.ver.is2026() {
		defs = append(defs,
			def{"GET", "/api/jobs", jobs.getJobs},
			def{"GET", "/api/jobs/{id}", jobs.getJob},
			def{"POST", "/api/jobs/{id}/cancel", jobs.postJobCancel},
			def{"POST", "/api/jobs/cancel", jobs.postJobsCancel},
		)
	}
	var rs []route
	for _, d := range defs {
		// add_routes registers "/api"+path first, then the plain path.
		for _, p := range []string{"/api" + d.path, d.path} {
			rs = append(rs, route{method: d.method, pattern: strings.Split(strings.Trim(p, "/"), "/"), handler: d.h})
		}
	}
	return rs
}

func matchPattern(pattern, segs []string) (map[string]string, bool) {
	if len(pattern) != len(segs) {
		return nil, false
	}
	var params map[string]string
	for i, p := range pattern {
		if strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}") {
			if segs[i] == "" {
				return nil, false
			}
			if params == nil {
				params = map[string]string{}
			}
			params[p[1:len(p)-1]] = segs[i]
			continue
		}
		if p != segs[i] {
			return nil, false
		}
	}
	return params, true
}

func (in *instance) route(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	raw := strings.Split(strings.Trim(path, "/"), "/")
	segs := make([]string, len(raw))
	for i, sgm := range raw {
		u, err := url.PathUnescape(sgm)
		if err != nil {
			u = sgm
		}
		segs[i] = u
	}
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	var allowed []string
	for _, rt := range in.routeTable {
		params, ok := matchPattern(rt.pattern, segs)
		if !ok {
			continue
		}
		if rt.method == method {
			rt.handler(w, r, params)
			return
		}
		allowed = append(allowed, rt.method)
	}
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ","))
		writeText(w, http.StatusMethodNotAllowed, "405: Method Not Allowed")
		return
	}
	if path == "/" && method == http.MethodGet {
		const index = "<!doctype html><title>ComfyUI (simulated)</title><p>comfysim: a simulated ComfyUI for tests; no frontend is bundled.</p>\n"
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Type", "text/html")
		w.Header().Set("Content-Length", fmt.Sprint(len(index)))
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, index)
		return
	}
	writeText(w, http.StatusNotFound, "404: Not Found")
}

// shutdownTimeout bounds how long Kill/Close wait for the worker and sockets.
const shutdownTimeout = 5 * time.Second

func waitOrTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}
