package proxy

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/comfygate/comfygate/catalogue"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// operator serves what operators and scrapers read: /health, /metrics,
// /stats and the dashboard (also alone, on metrics_listen).
type operator struct {
	pool    *upstream.Pool
	m       *metrics.Metrics // may be nil
	cat     *catalogue.Store // may be nil
	version string
	started time.Time
	dash    *dashboard
	shared  *state.Store // the state replicas share: /health reports it when it is Redis
	log     *slog.Logger
}

// healthInstance is one instance in /health: the basic fields (host,
// healthy, active_jobs, last_check) plus comfygate's detail.
type healthInstance struct {
	Host       string  `json:"host"`
	Healthy    bool    `json:"healthy"`
	ActiveJobs int64   `json:"active_jobs"`
	LastCheck  *string `json:"last_check"` // RFC 3339; null before the first check
	Name       string  `json:"name"`
	Breaker    string  `json:"breaker"`
	Socket     bool    `json:"socket"`
	QueueDepth int64   `json:"queue_depth"`
	Version    string  `json:"version,omitempty"`
	Draining   bool    `json:"draining,omitempty"`
	// Drained: draining and nothing left to finish (safe to stop).
	Drained  bool              `json:"drained,omitempty"`
	Removing bool              `json:"removing,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Weight   int               `json:"weight,omitempty"`
	// Warmup: "pending", "running", "ok" or "failed: <why>" (omitted without one).
	Warmup    string            `json:"warmup,omitempty"`
	Catalogue *catalogue.Status `json:"catalogue,omitempty"`
}

// healthBody is the /health answer.
type healthBody struct {
	Status    string           `json:"status"` // healthy | unhealthy
	Timestamp string           `json:"timestamp"`
	Uptime    float64          `json:"uptime"` // seconds since New
	Version   string           `json:"version,omitempty"`
	Instances []healthInstance `json:"comfyui_instances"`
	// State is the shared state store's health; omitted in memory.
	State *healthState `json:"state,omitempty"`
}

// healthState is the shared state store in /health: whether Redis
// answered a PING within healthPingTimeout. Its error stays in the logs.
type healthState struct {
	Store string `json:"store"` // "redis"
	OK    bool   `json:"ok"`
}

// healthPingTimeout bounds /health's PING of the shared state store.
const healthPingTimeout = time.Second

// serveHealth answers /health: 200 when at least one instance passes its
// health check, 503 when none does. It asks no instance anything: it
// reports the state the health checks and the traffic left.
func (s *operator) serveHealth(ctx *fasthttp.RequestCtx) {
	now := time.Now()
	b := healthBody{
		Status:    "unhealthy",
		Timestamp: now.UTC().Format(time.RFC3339),
		Uptime:    float64(now.Sub(s.started).Milliseconds()) / 1000,
		Version:   s.version,
		Instances: []healthInstance{},
	}
	for _, inst := range s.pool.Instances() {
		st := inst.Status()
		hi := healthInstance{
			Host:       st.Addr,
			Healthy:    st.Healthy,
			ActiveJobs: st.Inflight,
			Name:       st.Name,
			Breaker:    st.Breaker,
			Socket:     st.SocketUp,
			QueueDepth: st.QueueDepth,
			Version:    st.Version,
			Draining:   st.Draining,
			Drained:    st.Drained,
			Removing:   st.Removing,
			Labels:     st.Labels,
			Weight:     st.Weight,
			Warmup:     st.Warmup,
		}
		if s.cat != nil {
			cs := s.cat.Status(inst)
			hi.Catalogue = &cs
		}
		if !st.LastCheck.IsZero() {
			lc := st.LastCheck.UTC().Format(time.RFC3339)
			hi.LastCheck = &lc
		}
		if st.Healthy {
			b.Status = "healthy"
		}
		b.Instances = append(b.Instances, hi)
	}
	if s.shared.Shared() {
		// The replica still serves ComfyUI's routes without the store, so
		// its loss is reported, not made a 503.
		c, cancel := context.WithTimeout(context.Background(), healthPingTimeout)
		err := s.shared.Ping(c)
		cancel()
		if err != nil {
			s.log.Warn("shared state store does not answer", slog.Any("error", err))
		}
		b.State = &healthState{Store: "redis", OK: err == nil}
	}
	body, _ := json.Marshal(b) // plain structs: cannot fail
	ctx.Response.Header.Set("Cache-Control", "no-store")
	ctx.SetContentType(jsonContentType)
	if b.Status != "healthy" {
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
	}
	ctx.SetBody(body)
}

// operatorHandler is Server.OperatorHandler.
func (s *operator) operatorHandler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if p := ctx.Path(); isDashboard(p) {
			s.dash.serveDashboard(ctx, p, true)
			return
		}
		switch string(ctx.Path()) {
		case "/health":
			s.serveHealth(ctx)
		case "/metrics":
			if s.m == nil {
				writeJSONError(ctx, fasthttp.StatusNotFound, "not_found", "metrics are disabled")
				return
			}
			s.serveMetrics(ctx)
		case "/stats":
			s.serveStats(ctx)
		default:
			writeJSONError(ctx, fasthttp.StatusNotFound, "not_found", "this address serves /health, /metrics, /stats and /dashboard")
		}
	}
}

// serveMetrics answers /metrics (Prometheus text format).
func (s *operator) serveMetrics(ctx *fasthttp.RequestCtx) { s.m.Handler()(ctx) }

// serveStats answers /stats (the JSON stats view, statsDoc).
func (s *operator) serveStats(ctx *fasthttp.RequestCtx) {
	if s.m == nil {
		writeJSONError(ctx, fasthttp.StatusNotFound, "not_found", "metrics are disabled")
		return
	}
	body, _ := json.Marshal(s.dash.statsDoc()) // plain structs: cannot fail
	ctx.SetContentType(jsonContentType)
	ctx.Response.Header.Set("Cache-Control", "no-store")
	ctx.SetBody(body)
}
