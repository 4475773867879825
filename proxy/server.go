package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/catalogue"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/limits"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/placement"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// Options are what New needs. Config, Pool, Prompts and Logger are
// required (Logger may be nil: logs are discarded); Jobs and Metrics may be nil.
type Options struct {
	Config *config.Config
	Pool   *upstream.Pool
	// Prompts is the prompt table attached to Pool.
	Prompts *prompts.Table
	Jobs    JobRoutes        // may be nil: the job facade's routes then pass through
	Metrics *metrics.Metrics // may be nil
	Logger  *slog.Logger
	Version string
	// Catalogue, when not nil, routes each prompt to an instance that has
	// its node classes and models and answers /object_info and /models for
	// the fleet; nil: every instance is taken to run everything.
	Catalogue *catalogue.Store
	// BodyBudget bounds the request bodies held in memory over every
	// request (limits.max_buffered_body_bytes), shared with the job API;
	// nil: one of the server's own.
	BodyBudget *limits.BodyBudget
	// Placement is the placement policy, shared with the job API; nil: one
	// of the server's own over Catalogue.
	Placement *placement.Policy
	// Reload serves POST /admin/reload; nil: 501.
	Reload Reloader
	// State is the state store the replicas share (state.url): the
	// owners of clientIds live there. nil: this process's memory.
	State *state.Store
}

// Server is comfygate's HTTP front: ComfyUI's API over the instance pool,
// the WebSocket bridge, and comfygate's own /health, /metrics and /stats.
// It routes each request (router.go) to the part that serves it and owns
// the HTTP server's life; the parts hold only what they use.
type Server struct {
	cfg  *config.Config
	pool *upstream.Pool
	jobs JobRoutes // may be nil
	hub  *Hub      // the WebSocket bridge (ws*.go)

	// The parts requests are routed to, each holding only what it uses.
	edge     *edge         // client address, request guards, access log (edge.go)
	answers  *answerWaits  // what waits for a connection's answer (answerfirst.go)
	authn    *authn        // the key a request presents, /login (login.go)
	keys     *keyGuard     // what that key may do: isolation, rate limits (authz.go)
	fwd      *forwarder    // to instances, and errors (forward.go, errors.go)
	files    *fileRoutes   // /view and uploads (files.go, keyfiles.go)
	userData *userData     // user data per key (userdata.go)
	submit   *submitter    // POST and GET /prompt (prompt.go)
	merged   *mergedViews  // /queue, /history, /api/jobs merged (merge.go)
	pinned   *pinnedRoutes // routes naming a prompt (pinned.go)
	fleet    *fleetRoutes  // placement, catalogue answers, admin (fleet.go)
	dash     *dashboard    // /dashboard and the /stats document (dashboard.go)
	ops      *operator     // /health, /metrics, /stats (health.go)

	srv *fasthttp.Server
}

// Server limits come from the limits section of the configuration. With
// StreamRequestBody fasthttp reads at most 8 KiB of a body before calling
// the handler, whatever MaxRequestBodySize says, and never enforces it on
// the stream: comfygate refuses a Content-Length over limits.max_body_bytes
// itself (bodyWithinLimit), and caps the routes where it must read the
// body whole (maxPromptBody, maxMaskBody).

// New builds the server (and the WebSocket hub, registered as the prompt
// table's listener). Nothing is served until Serve. o.Config is used as it is:
// it must come from config.Load or config.Default (defaults are set, and
// checked, there only).
func New(o Options) (*Server, error) {
	if o.Config == nil {
		return nil, errors.New("proxy: Options.Config is required")
	}
	if o.Pool == nil {
		return nil, errors.New("proxy: Options.Pool is required")
	}
	if o.Prompts == nil {
		return nil, errors.New("proxy: Options.Prompts is required")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	started := time.Now()
	shared := o.State
	if shared == nil {
		shared = state.Memory()
	}
	// The prompt table records its prompts' routing and file pins for the
	// other replicas, and consults theirs on a miss (nothing in memory).
	o.Prompts.ShareIndex(shared.PromptIndex())
	if shared.Shared() {
		// One counter of queue numbers for the replicas (in memory the
		// table's own).
		o.Prompts.ShareNumbers(shared.QueueNumbers())
	}
	budget := o.BodyBudget
	if budget == nil {
		budget = limits.NewBodyBudget(o.Config.Limits.MaxBufferedBodyBytes)
	}
	policy := o.Placement
	if policy == nil {
		policy = placement.New(o.Pool, o.Catalogue, o.Config.Routing.AffinityMargin, o.Metrics.Affinity)
	}
	keys, err := newKeyGuard(o.Config, o.Metrics, o.Jobs, o.Prompts, shared, log)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: o.Config, pool: o.Pool, jobs: o.Jobs, keys: keys}
	s.edge = &edge{cfg: o.Config, m: o.Metrics, log: log, trusted: trustedProxies(o.Config.Server.TrustedPrefixes())}
	s.answers = newAnswerWaits()
	s.authn = &authn{cfg: o.Config, m: o.Metrics, apiKeys: keys.sec.keys, sessions: keys.sec.sessions}
	s.hub = newHub(o.Config, o.Pool, o.Metrics, log.With("component", "ws"))
	if keys.sec.keys.On() && o.Config.Auth.Isolation {
		s.hub.isolate(keys.sec.owners)
	}
	if shared.Shared() {
		s.hub.crossReplicas(shared.Events(state.EventOptions{
			Window: o.Config.WebSocket.BacklogGrace, MaxLen: o.Config.WebSocket.BacklogSize,
			Failed: o.Metrics.CrossReplicaFailed, Log: log.With("component", "ws"),
		}))
	}
	s.fwd = &forwarder{cfg: o.Config, pool: o.Pool, log: log}
	bodies := &clientBodies{budget: budget, edge: s.edge}
	s.files = &fileRoutes{cfg: o.Config, pool: o.Pool, prompts: o.Prompts, log: log, fwd: s.fwd, bodies: bodies, keys: keys}
	s.userData = &userData{pool: o.Pool, m: o.Metrics, fwd: s.fwd, keys: keys}
	s.dash = &dashboard{pool: o.Pool, prompts: o.Prompts, jobs: o.Jobs, m: o.Metrics, cat: o.Catalogue}
	s.fleet = &fleetRoutes{pool: o.Pool, m: o.Metrics, cat: o.Catalogue, policy: policy, reload: o.Reload, dash: s.dash}
	s.ops = &operator{pool: o.Pool, m: o.Metrics, cat: o.Catalogue, version: o.Version, started: started, dash: s.dash,
		shared: shared, log: log}
	s.submit = &submitter{pool: o.Pool, prompts: o.Prompts, policy: policy, hub: s.hub, fwd: s.fwd, bodies: bodies,
		keys: keys, files: s.files, fleet: s.fleet, answers: s.answers}
	rw := &rewriter{prompts: o.Prompts}
	s.merged = &mergedViews{pool: o.Pool, fwd: s.fwd, keys: keys, rw: rw}
	s.pinned = &pinnedRoutes{cfg: o.Config, pool: o.Pool, prompts: o.Prompts, jobs: o.Jobs, log: log,
		fwd: s.fwd, bodies: bodies, keys: keys, rw: rw}
	o.Prompts.SetListener(s.hub)
	if shared.Shared() {
		// The replica's liveness and instance leases: the prompts of a
		// replica that stops are adopted by the others (docs/state.md).
		o.Prompts.KeepLeases(shared.Leases(), o.Config.State.LeaseTTL, s.hub.sinkFor)
	}
	s.srv = &fasthttp.Server{
		Handler:                      s.handle,
		ConnState:                    s.answers.connState,
		Name:                         "comfygate",
		NoDefaultServerHeader:        true, // the instance's Server header passes through
		NoDefaultContentType:         true,
		DisablePreParseMultipartForm: true, // uploads stream through untouched
		StreamRequestBody:            true,
		// A WebSocket's hijack handler returns at once and the socket
		// lives on in the hub, which closes it: the request context and
		// the 16 KiB request reader are not held for the socket's life
		// (see Hub.ServeWS).
		KeepHijackedConns:  true,
		MaxRequestBodySize: math.MaxInt,
		// Header names are normalized (Comfy-User, Content-Type, ...): HTTP
		// header names are case-insensitive and aiohttp treats them so.
		DisableHeaderNamesNormalizing: false,
		ReadTimeout:                   s.cfg.Limits.HeaderTimeout,
		IdleTimeout:                   s.cfg.Limits.IdleTimeout,
		HeaderReceived: func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
			return fasthttp.RequestConfig{ReadTimeout: s.cfg.Limits.BodyTimeout}
		},
		// The read buffer bounds a request's header block (431 beyond);
		// the web UI's requests carry large headers (cookies, long URLs).
		ReadBufferSize:  s.cfg.Limits.MaxHeaderBytes,
		WriteBufferSize: 16 << 10,
		ErrorHandler:    s.edge.serverError,
		Logger:          fasthttpLogger{log},
		// fasthttp's parse errors otherwise quote the request's bytes,
		// an Authorization header (an API key) included.
		SecureErrorLogMessage: true,
	}
	return s, nil
}

// Handler returns the request handler, for tests and for serving on a
// listener of the caller's own.
func (s *Server) Handler() fasthttp.RequestHandler { return s.handle }

// Serve serves on ln until Shutdown. Every accepted connection gets an
// idle write timeout of COMFYUI_TIMEOUT (see writeIdleConn).
func (s *Server) Serve(ln net.Listener) error {
	ll := limits.Listen(ln, limits.ListenerOptions{
		MaxConnsPerIP:  s.cfg.Limits.MaxConnsPerIP,
		Uncapped:       s.edge.uncapped,
		ProxyProtocol:  s.edge.proxyProtocol(),
		MaxHeaderBytes: s.cfg.Limits.MaxHeaderBytes,
		OnRefuse:       s.edge.refused,
	})
	return s.srv.Serve(writeIdleListener{Listener: ll, idle: s.cfg.ClientWriteTimeout()})
}

// writeIdleListener wraps each accepted connection in a writeIdleConn.
type writeIdleListener struct {
	net.Listener
	idle time.Duration
}

func (l writeIdleListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &writeIdleConn{Conn: c, idle: l.idle}, nil
}

// writeIdleConn cuts a client that stops reading: before every Write the
// write deadline moves to now+idle, so a slow but moving reader is never
// cut and a stalled one is after idle. Without it, a client that stops
// reading a big /view blocks the server's write forever and holds the
// instance connection it streams from (max_connections_per_instance).
// A deadline the code sets itself (the WebSocket side, on hijacked
// connections) is kept as set until it is cleared with the zero time.
type writeIdleConn struct {
	net.Conn
	idle     time.Duration
	explicit atomic.Bool // a non-zero write deadline was set by the caller
}

func (c *writeIdleConn) SetDeadline(t time.Time) error {
	c.explicit.Store(!t.IsZero())
	return c.Conn.SetDeadline(t)
}

func (c *writeIdleConn) SetWriteDeadline(t time.Time) error {
	c.explicit.Store(!t.IsZero())
	return c.Conn.SetWriteDeadline(t)
}

// NetConn is the connection under c (to set socket options on it).
func (c *writeIdleConn) NetConn() net.Conn { return c.Conn }

func (c *writeIdleConn) Write(p []byte) (int, error) {
	if !c.explicit.Load() && c.idle > 0 {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.idle)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(p)
}

// OperatorHandler serves /health, /metrics, /stats and the dashboard, and
// nothing else, without API keys: the handler of metrics_listen, an
// address only operators and scrapers reach.
func (s *Server) OperatorHandler() fasthttp.RequestHandler { return s.ops.operatorHandler() }

// SetRouting applies a reloaded routing section: the affinity margin
// and the catalogue's re-read interval (the warm-up timeout applies at
// the next start).
func (s *Server) SetRouting(r config.Routing) { s.fleet.setRouting(r) }

// Shutdown stops accepting connections, lets in-flight requests finish
// (streams included) until ctx ends, then closes every client WebSocket.
// It returns ctx's error when requests were still running at its end.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.ShutdownWithContext(ctx)
	s.hub.Close()
	return err
}

// fasthttpLogger routes fasthttp's own error messages to slog at debug
// level (they are mostly clients that went away).
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("fasthttp", "msg", fmt.Sprintf(format, args...))
	}
}
