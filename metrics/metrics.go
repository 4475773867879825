package metrics

import (
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

const namespace = "comfygate"

// Label values used when the caller's value is outside the bounded set.
const (
	// NoInstance is the "upstream" label value of requests comfygate answered
	// itself (ObserveRequest with instance "").
	NoInstance = "none"
	// Other replaces any label value outside its fixed set.
	Other = "other"
)

// Breaker states, as gobreaker's State.String() spells them.
const (
	BreakerClosed   = "closed"
	BreakerHalfOpen = "half-open"
	BreakerOpen     = "open"
)

var breakerStates = [...]string{BreakerClosed, BreakerHalfOpen, BreakerOpen}

// Limits on distinct values of labels whose values the caller supplies.
// A value beyond the limit is counted as "other"; why: a bug that passes a
// raw path or a user-chosen workflow name must not blow up the series count.
const (
	maxRoutes    = 64
	maxWorkflows = 64
)

// DurationBuckets fit GPU workflows from 0.1 s to 10 min (seconds).
var DurationBuckets = []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// LatencyBuckets fit HTTP requests and health checks from 1 ms to 10 s (seconds).
var LatencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Metrics holds comfygate's collectors, registered on a registry of its own.
// The zero value is not usable; build it with New. A nil *Metrics is valid
// and every method on it does nothing.
type Metrics struct {
	reg     *prometheus.Registry
	version string
	start   time.Time
	now     func() time.Time // time.Now; tests shift it
	recent  recent           // finished prompts of the last minutes (Stats.Recent)

	// instances
	upstreamUp       *prometheus.GaugeVec
	upstreamInfo     *prometheus.GaugeVec
	breakerState     *prometheus.GaugeVec
	breakerTrans     *prometheus.CounterVec
	inflight         *prometheus.GaugeVec
	queueDepth       *prometheus.GaugeVec
	socketConnected  *prometheus.GaugeVec
	draining         *prometheus.GaugeVec
	reconnects       *prometheus.CounterVec
	outcomes         *prometheus.CounterVec
	healthCheck      *prometheus.HistogramVec
	requests         *prometheus.CounterVec
	requestDuration  *prometheus.HistogramVec
	promptsSubmitted *prometheus.CounterVec
	promptsFinished  *prometheus.CounterVec
	promptDuration   *prometheus.HistogramVec
	resubmissions    *prometheus.CounterVec
	ranTwice         *prometheus.CounterVec
	repeats          *prometheus.CounterVec
	wsClients        prometheus.Gauge
	eventsRouted     *prometheus.CounterVec
	slowDropped      prometheus.Counter
	backlogReplayed  prometheus.Counter
	xFailed          prometheus.Counter
	jobsSubmitted    *prometheus.CounterVec
	jobsFinished     *prometheus.CounterVec
	jobRunDuration   *prometheus.HistogramVec
	jobWaitDuration  *prometheus.HistogramVec
	waitLine         prometheus.Gauge
	jobsInFlight     prometheus.Gauge
	sec              securityCollectors
	jobAPI           jobAPICollectors
	jobCache         jobCacheCollectors
	fleet            fleetCollectors
	state            stateCollectors

	routes    labelSet
	workflows labelSet

	// stateMu guards breakerLast and hosts.
	stateMu     sync.Mutex
	breakerLast map[string]string // instance -> last breaker state set
	hosts       map[string]string // instance -> host address
}

// New builds Metrics on a fresh registry that also carries the Go runtime and
// process collectors and comfygate_build_info{version,goversion}.
func New(version string) *Metrics {
	if version == "" {
		version = "unknown"
	}
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg:         reg,
		version:     version,
		now:         time.Now,
		routes:      labelSet{max: maxRoutes},
		workflows:   labelSet{max: maxWorkflows},
		breakerLast: make(map[string]string),
		hosts:       make(map[string]string),
	}
	m.start = m.now()

	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	histogram := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets}, labels)
	}

	buildInfo := gauge("build_info", "comfygate build information; the value is always 1.", "version", "goversion")
	buildInfo.WithLabelValues(version, runtime.Version()).Set(1)

	m.upstreamUp = gauge("upstream_up", "Whether the ComfyUI instance passes health checks (1) or not (0).", "upstream")
	m.upstreamInfo = gauge("upstream_info", "Address of each ComfyUI instance; the value is always 1.", "upstream", "host")
	m.breakerState = gauge("breaker_state", "Circuit breaker state per instance, one-hot over closed, half-open and open.", "upstream", "state")
	m.breakerTrans = counter("breaker_transitions_total", "Circuit breaker state changes per instance, by the state entered.", "upstream", "state")
	m.inflight = gauge("upstream_inflight_prompts", "Prompts comfygate sent to the instance that have not finished.", "upstream")
	m.queueDepth = gauge("upstream_queue_depth", "Queue length the instance itself reports (queue_remaining).", "upstream")
	m.socketConnected = gauge("upstream_socket_connected", "Whether comfygate's monitoring WebSocket to the instance is connected (1) or not (0).", "upstream")
	m.draining = gauge("upstream_draining", "Whether the instance gets no new work because an operator drained it or it is leaving the pool (1) or not (0).", "upstream")
	m.reconnects = counter("upstream_socket_reconnects_total", "Reconnections of comfygate's monitoring WebSocket to the instance.", "upstream")
	m.outcomes = counter("upstream_requests_total", "Requests comfygate sent to the instance, by how they were judged for its circuit breaker: success, failure (the instance is to blame), excluded (the client's or comfygate's own doing).", "upstream", "outcome")
	m.healthCheck = histogram("health_check_duration_seconds", "Duration of active health checks per instance, by result (ok, fail).", LatencyBuckets, "upstream", "result")
	m.requests = counter("http_requests_total", "HTTP requests served, by route template, method, status code and the instance that answered (none: comfygate itself).", "route", "method", "code", "upstream")
	m.requestDuration = histogram("http_request_duration_seconds", "Time to serve an HTTP request, until the response started streaming to the client or a WebSocket was upgraded.", LatencyBuckets, "route", "method", "upstream")
	m.promptsSubmitted = counter("prompts_submitted_total", "Prompts forwarded to and accepted by the instance.", "upstream")
	m.promptsFinished = counter("prompts_finished_total", "Prompts finished per instance, by outcome (success, error, interrupted, lost).", "upstream", "outcome")
	m.promptDuration = histogram("prompt_duration_seconds", "Time from submission to the end of a prompt on the instance, by outcome.", DurationBuckets, "upstream", "outcome")
	m.resubmissions = counter("prompt_resubmissions_total", "Accepted prompts resubmitted from a failed instance to another, by result (ok, failed).", "from", "to", "result")
	m.ranTwice = counter("prompts_ran_twice_total", "Prompts that ran to success on an instance after they had moved off it and already ended elsewhere: the prompt running when its instance hung, which runs on when the instance wakes. By the instance where it ran again.", "upstream")
	m.repeats = counter("prompt_repeats_total", "POST /prompt requests that repeated a prompt comfygate already took (the same prompt_id, body and API key), answered as that prompt and not sent again, by answer: accepted (200 with its id and number), pending (503 prompt_pending: its first send had not settled).", "answer")
	m.wsClients = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "ws_clients", Help: "Client WebSocket connections currently open."})
	m.eventsRouted = counter("ws_events_routed_total", "WebSocket messages routed to clients, by kind (text, binary, broadcast).", "kind")
	m.slowDropped = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "ws_slow_clients_dropped_total", Help: "Client WebSockets closed because they did not keep up."})
	m.backlogReplayed = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "ws_backlog_replayed_messages_total", Help: "Buffered WebSocket messages replayed to clients that (re)connected."})
	m.xFailed = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "ws_cross_replica_failures_total", Help: "WebSocket events for a client on another replica that could not be published (state.url): a full queue, or Redis not answering."})
	m.jobsSubmitted = counter("jobs_submitted_total", "Async jobs accepted, by workflow.", "workflow")
	m.jobsFinished = counter("jobs_finished_total", "Async jobs finished, by workflow and status (completed, failed, cancelled).", "workflow", "status")
	m.jobRunDuration = histogram("job_run_duration_seconds", "Time an async job ran on an instance, by workflow and status.", DurationBuckets, "workflow", "status")
	m.jobWaitDuration = histogram("job_wait_duration_seconds", "Time an async job waited in comfygate's wait line before it was submitted, by workflow.", DurationBuckets, "workflow")
	m.waitLine = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "wait_line_length", Help: "Async jobs waiting in comfygate for an instance to take them."})
	m.jobsInFlight = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "jobs_in_flight", Help: "Async jobs submitted to an instance and not finished."})

	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo,
		m.upstreamUp, m.upstreamInfo, m.breakerState, m.breakerTrans, m.inflight,
		m.queueDepth, m.socketConnected, m.draining, m.reconnects, m.outcomes, m.healthCheck,
		m.requests, m.requestDuration,
		m.promptsSubmitted, m.promptsFinished, m.promptDuration, m.resubmissions, m.ranTwice, m.repeats,
		m.wsClients, m.eventsRouted, m.slowDropped, m.backlogReplayed, m.xFailed,
		m.jobsSubmitted, m.jobsFinished, m.jobRunDuration, m.jobWaitDuration,
		m.waitLine, m.jobsInFlight,
	)
	m.registerSecurity()
	m.registerJobAPI()
	m.registerJobCache()
	m.registerFleet()
	m.registerState()
	return m
}

// Registry returns the registry all collectors are on; nil for a nil Metrics.
// Other packages may register collectors of their own on it.
func (m *Metrics) Registry() *prometheus.Registry {
	if m == nil {
		return nil
	}
	return m.reg
}

// Handler serves the registry in the Prometheus exposition format (for
// /metrics). On a nil Metrics it answers 404.
func (m *Metrics) Handler() fasthttp.RequestHandler {
	if m == nil {
		return func(ctx *fasthttp.RequestCtx) {
			ctx.Error("metrics disabled", fasthttp.StatusNotFound)
		}
	}
	h := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		// Registry makes scrape errors visible as promhttp_metric_handler_errors_total.
		Registry:      m.reg,
		ErrorHandling: promhttp.ContinueOnError,
	})
	return fasthttpadaptor.NewFastHTTPHandler(h)
}

// SetInstanceHost records the address (host:port) of an instance; it shows in
// comfygate_upstream_info and in Stats. A new host replaces the old one.
func (m *Metrics) SetInstanceHost(instance, host string) {
	if m == nil {
		return
	}
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	if old, ok := m.hosts[instance]; ok {
		if old == host {
			return
		}
		m.upstreamInfo.DeleteLabelValues(instance, old)
	}
	m.hosts[instance] = host
	m.upstreamInfo.WithLabelValues(instance, host).Set(1)
}

// SetInstanceUp records whether the instance passes health checks.
func (m *Metrics) SetInstanceUp(instance string, up bool) {
	if m == nil {
		return
	}
	m.upstreamUp.WithLabelValues(instance).Set(b2f(up))
}

// SetBreakerState records the instance's breaker state ("closed",
// "half-open" or "open"): the state gauge is one-hot, and a change from the
// previously recorded state counts one transition into the new state. Any
// other state sets all three to 0.
func (m *Metrics) SetBreakerState(instance, state string) {
	if m == nil {
		return
	}
	state = strings.ToLower(state)
	known := false
	for _, s := range breakerStates {
		on := s == state
		known = known || on
		m.breakerState.WithLabelValues(instance, s).Set(b2f(on))
	}
	m.stateMu.Lock()
	prev, seen := m.breakerLast[instance]
	m.breakerLast[instance] = state
	m.stateMu.Unlock()
	if known && seen && prev != state {
		m.breakerTrans.WithLabelValues(instance, state).Inc()
	}
}

// SetInflight records how many prompts comfygate sent to the instance that
// have not finished.
func (m *Metrics) SetInflight(instance string, n int) {
	if m == nil {
		return
	}
	m.inflight.WithLabelValues(instance).Set(float64(n))
}

// SetQueueDepth records the queue_remaining the instance reports.
func (m *Metrics) SetQueueDepth(instance string, n int) {
	if m == nil {
		return
	}
	m.queueDepth.WithLabelValues(instance).Set(float64(n))
}

// SetUpstreamSocket records whether comfygate's monitoring WebSocket to the
// instance is connected.
func (m *Metrics) SetUpstreamSocket(instance string, connected bool) {
	if m == nil {
		return
	}
	m.socketConnected.WithLabelValues(instance).Set(b2f(connected))
}

// SetDraining records whether the instance gets no new work because an
// operator drained it or it is leaving the pool.
func (m *Metrics) SetDraining(instance string, draining bool) {
	if m == nil {
		return
	}
	m.draining.WithLabelValues(instance).Set(b2f(draining))
}

// IncUpstreamReconnect counts one reconnection of the monitoring WebSocket.
func (m *Metrics) IncUpstreamReconnect(instance string) {
	if m == nil {
		return
	}
	m.reconnects.WithLabelValues(instance).Inc()
}

// IncUpstreamOutcome counts one request to the instance by how it was
// judged: "success", "failure" or "excluded".
func (m *Metrics) IncUpstreamOutcome(instance, outcome string) {
	if m == nil {
		return
	}
	m.outcomes.WithLabelValues(instance, outcome).Inc()
}

// ObserveHealthCheck records one active health check and whether it passed.
func (m *Metrics) ObserveHealthCheck(instance string, d time.Duration, ok bool) {
	if m == nil {
		return
	}
	result := "fail"
	if ok {
		result = "ok"
	}
	m.healthCheck.WithLabelValues(instance, result).Observe(d.Seconds())
}

// RemoveInstance deletes every series labelled with the instance, for an
// instance discovery drained. Counters of a returning instance restart at 0,
// which rate() handles.
func (m *Metrics) RemoveInstance(instance string) {
	if m == nil {
		return
	}
	byUpstream := prometheus.Labels{"upstream": instance}
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{
		m.upstreamUp, m.upstreamInfo, m.breakerState, m.breakerTrans, m.inflight,
		m.queueDepth, m.socketConnected, m.draining, m.reconnects, m.outcomes, m.healthCheck,
		m.requests, m.requestDuration,
		m.promptsSubmitted, m.promptsFinished, m.promptDuration, m.ranTwice,
	} {
		v.DeletePartialMatch(byUpstream)
	}
	m.resubmissions.DeletePartialMatch(prometheus.Labels{"from": instance})
	m.resubmissions.DeletePartialMatch(prometheus.Labels{"to": instance})
	m.stateMu.Lock()
	delete(m.breakerLast, instance)
	delete(m.hosts, instance)
	m.stateMu.Unlock()
}

// ObserveRequest records one HTTP request. route is a template from the
// proxy's fixed set ("/prompt", "/view", "/ws", "other", ...), never a raw
// path; instance is "" when comfygate answered itself. Methods outside the
// standard set count as "other", codes outside 100-599 as "0".
func (m *Metrics) ObserveRequest(route, method string, code int, instance string, d time.Duration) {
	if m == nil {
		return
	}
	route = m.routes.bound(route)
	method = sanitizeMethod(method)
	if instance == "" {
		instance = NoInstance
	}
	m.requests.WithLabelValues(route, method, sanitizeCode(code), instance).Inc()
	m.requestDuration.WithLabelValues(route, method, instance).Observe(d.Seconds())
}

// PromptSubmitted counts one prompt the instance accepted.
func (m *Metrics) PromptSubmitted(instance string) {
	if m == nil {
		return
	}
	m.promptsSubmitted.WithLabelValues(instance).Inc()
}

// Prompt outcomes for PromptFinished.
const (
	OutcomeSuccess     = "success"
	OutcomeError       = "error"
	OutcomeInterrupted = "interrupted"
	OutcomeLost        = "lost"
)

// PromptFinished records the end of a prompt on the instance: its outcome
// (success, error, interrupted, lost; anything else counts as "other") and
// the time from submission to the end.
func (m *Metrics) PromptFinished(instance, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	switch outcome {
	case OutcomeSuccess, OutcomeError, OutcomeInterrupted, OutcomeLost:
	default:
		outcome = Other
	}
	m.promptsFinished.WithLabelValues(instance, outcome).Inc()
	m.promptDuration.WithLabelValues(instance, outcome).Observe(d.Seconds())
	m.recent.add(m.now(), outcome != OutcomeSuccess)
}

// IncResubmission counts one failover of an accepted prompt from one
// instance to another, and whether the other instance accepted it.
func (m *Metrics) IncResubmission(from, to string, ok bool) {
	if m == nil {
		return
	}
	result := "failed"
	if ok {
		result = "ok"
	}
	m.resubmissions.WithLabelValues(from, to, result).Inc()
}

// PromptRepeated counts one POST /prompt answered as the prompt it
// repeats: accepted, or pending while its first send settles.
func (m *Metrics) PromptRepeated(accepted bool) {
	if m == nil {
		return
	}
	answer := "pending"
	if accepted {
		answer = "accepted"
	}
	m.repeats.WithLabelValues(answer).Inc()
}

// PromptRanTwice counts one prompt that ran to success on instance after
// it had moved off it and already ended elsewhere.
func (m *Metrics) PromptRanTwice(instance string) {
	if m == nil {
		return
	}
	m.ranTwice.WithLabelValues(instance).Inc()
}

// AddWSClients adds delta (negative on disconnect) to the open client
// WebSocket count.
func (m *Metrics) AddWSClients(delta int) {
	if m == nil {
		return
	}
	m.wsClients.Add(float64(delta))
}

// IncEventsRouted counts one WebSocket message routed to a client; kind is
// "text", "binary" or "broadcast" (anything else counts as "other").
func (m *Metrics) IncEventsRouted(kind string) {
	if m == nil {
		return
	}
	switch kind {
	case "text", "binary", "broadcast":
	default:
		kind = Other
	}
	m.eventsRouted.WithLabelValues(kind).Inc()
}

// IncSlowClientDropped counts one client WebSocket closed for not keeping up.
func (m *Metrics) IncSlowClientDropped() {
	if m == nil {
		return
	}
	m.slowDropped.Inc()
}

// CrossReplicaFailed counts n WebSocket events that could not cross to
// the other replicas (state.url): a full queue, or Redis not answering.
func (m *Metrics) CrossReplicaFailed(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.xFailed.Add(float64(n))
}

// IncBacklogReplayed counts n buffered messages replayed to a client.
func (m *Metrics) IncBacklogReplayed(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.backlogReplayed.Add(float64(n))
}

// JobSubmitted counts one async job accepted for the named workflow (a name
// from configuration; past 64 distinct names, "other").
func (m *Metrics) JobSubmitted(workflow string) {
	if m == nil {
		return
	}
	m.jobsSubmitted.WithLabelValues(m.workflows.bound(workflow)).Inc()
}

// JobFinished records the end of an async job: status completed, failed or
// cancelled (anything else counts as "other"), how long it ran on an
// instance and how long it waited in comfygate before that.
func (m *Metrics) JobFinished(workflow, status string, run, wait time.Duration) {
	if m == nil {
		return
	}
	workflow = m.workflows.bound(workflow)
	switch status {
	case "completed", "failed", "cancelled":
	default:
		status = Other
	}
	m.jobsFinished.WithLabelValues(workflow, status).Inc()
	m.jobRunDuration.WithLabelValues(workflow, status).Observe(run.Seconds())
	m.jobWaitDuration.WithLabelValues(workflow).Observe(wait.Seconds())
}

// SetWaitLine records how many async jobs wait in comfygate for an instance.
func (m *Metrics) SetWaitLine(n int) {
	if m == nil {
		return
	}
	m.waitLine.Set(float64(n))
}

// SetJobsInFlight records how many async jobs run on instances.
func (m *Metrics) SetJobsInFlight(n int) {
	if m == nil {
		return
	}
	m.jobsInFlight.Set(float64(n))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

var methods = [...]string{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}

// sanitizeMethod keeps the standard methods (in upper case) and folds the
// rest into "other".
func sanitizeMethod(method string) string {
	for _, std := range methods {
		if method == std {
			return std
		}
	}
	for _, std := range methods {
		if strings.EqualFold(method, std) {
			return std
		}
	}
	return Other
}

// codeLabels holds "100".."599" so the hot path does not format numbers.
var codeLabels = func() (s [500]string) {
	for i := range s {
		s[i] = strconv.Itoa(i + 100)
	}
	return s
}()

func sanitizeCode(code int) string {
	if code < 100 || code > 599 {
		return "0"
	}
	return codeLabels[code-100]
}

// labelSet bounds the distinct values of a caller-supplied label.
type labelSet struct {
	max int
	// mu guards seen.
	mu   sync.RWMutex
	seen map[string]string // value -> its own copy
}

// bound returns v while fewer than max distinct values were seen (or v is
// one of them), else Other. The empty value is Other too.
func (s *labelSet) bound(v string) string {
	if v == "" {
		return Other
	}
	s.mu.RLock()
	own, ok := s.seen[v]
	n := len(s.seen)
	s.mu.RUnlock()
	if ok {
		return own
	}
	if n >= s.max {
		return Other
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if own, ok := s.seen[v]; ok {
		return own
	}
	if len(s.seen) >= s.max {
		return Other
	}
	if s.seen == nil {
		s.seen = make(map[string]string)
	}
	// Why a copy: the caller's string may alias a buffer fasthttp reuses.
	own = strings.Clone(v)
	s.seen[own] = own
	return own
}
