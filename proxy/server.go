package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
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
type Server struct {
	cfg     *config.Config
	pool    *upstream.Pool
	prompts *prompts.Table
	jobs    JobRoutes
	m       *metrics.Metrics
	log     *slog.Logger
	version string
	started time.Time

	cat    *catalogue.Store
	reload Reloader
	shared *state.Store       // the state replicas share (state.url)
	policy *placement.Policy  // where prompts may and had better run (fleet.go)
	bodies *limits.BodyBudget // request bodies held in memory (readClientBody)

	hub *Hub
	sec security // API keys, owners, rate limits (authz.go)
	// settingsMu holds one *sync.Mutex per key name: a key's settings
	// writes read, merge and write back its file one at a time (userdata.go).
	settingsMu sync.Map

	answerMu     sync.Mutex            // guards afterAnswers
	afterAnswers map[net.Conn][]func() // run once the connection's answer is out (answerfirst.go)
	// answersWaiting counts the functions in afterAnswers.
	answersWaiting atomic.Int64

	dashStreams atomic.Int32  // dashboard event streams open (dashboard.go)
	dashMu      sync.Mutex    // guards dashCh, dashDoc
	dashCh      chan struct{} // closed (and replaced) by pokeDashboard
	dashDoc     *dashDoc      // the streams' last document (dashboardDoc)

	// trusted is server.trusted_proxies (clientaddr.go).
	trusted trustedProxies
	srv     *fasthttp.Server
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
	s := &Server{
		cfg:     o.Config,
		pool:    o.Pool,
		prompts: o.Prompts,
		jobs:    o.Jobs,
		m:       o.Metrics,
		log:     log,
		version: o.Version,
		started: time.Now(),
		cat:     o.Catalogue,
		reload:  o.Reload,
		shared:  o.State,
	}
	if s.shared == nil {
		s.shared = state.Memory()
	}
	s.bodies = o.BodyBudget
	if s.bodies == nil {
		s.bodies = limits.NewBodyBudget(o.Config.Limits.MaxBufferedBodyBytes)
	}
	s.policy = o.Placement
	if s.policy == nil {
		s.policy = placement.New(o.Pool, o.Catalogue, o.Config.Routing.AffinityMargin, o.Metrics.Affinity)
	}
	s.trusted = trustedProxies(o.Config.Server.TrustedPrefixes())
	if err := s.initSecurity(); err != nil {
		return nil, err
	}
	s.hub = newHub(s.cfg, s.pool, s.m, log.With("component", "ws"))
	if s.sec.keys.On() && s.cfg.Auth.Isolation {
		s.hub.isolate(s.sec.owners)
	}
	s.prompts.SetListener(s.hub)
	s.afterAnswers = map[net.Conn][]func(){}
	s.srv = &fasthttp.Server{
		Handler:                      s.handle,
		ConnState:                    s.connState,
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
		ErrorHandler:    s.serverError,
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
		Uncapped:       s.uncapped,
		ProxyProtocol:  s.proxyProtocol(),
		MaxHeaderBytes: s.cfg.Limits.MaxHeaderBytes,
		OnRefuse:       s.refused,
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
