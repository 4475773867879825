package metrics

import (
	"encoding/json"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/valyala/fasthttp"
)

// Stats is the JSON view served at /stats: the usual load-balancer stats
// fields (uptime, jobsProcessed, avgProcessingTime, errorRate,
// instanceStats) plus what an operator needs at a glance. Every
// number is read from the collectors /metrics exposes, so both views agree.
//
// JobsProcessed counts prompts that finished through comfygate, whatever
// their outcome (success, error, interrupted, lost). Async jobs run as
// prompts, so they are counted there once and not again; Jobs breaks them
// out. AvgProcessingTime is the mean prompt duration in milliseconds (0
// before any prompt finished) and ErrorRate the share of finished prompts
// whose outcome is not success (0..1).
type Stats struct {
	Version           string                   `json:"version"`
	Uptime            float64                  `json:"uptime"`            // seconds since New
	JobsProcessed     int64                    `json:"jobsProcessed"`     // prompts finished, all outcomes
	AvgProcessingTime float64                  `json:"avgProcessingTime"` // milliseconds
	ErrorRate         float64                  `json:"errorRate"`         // non-success / finished
	PromptsSubmitted  int64                    `json:"promptsSubmitted"`
	Outcomes          map[string]int64         `json:"outcomes"` // finished prompts by outcome
	Resubmissions     int64                    `json:"resubmissions"`
	ResubmitFailures  int64                    `json:"resubmitFailures"`
	InstancesUp       int                      `json:"instancesUp"`
	InstancesTotal    int                      `json:"instancesTotal"`
	InFlight          int64                    `json:"inFlight"`   // sum over instances
	QueueDepth        int64                    `json:"queueDepth"` // sum over instances
	Requests          int64                    `json:"requests"`   // HTTP requests served
	WSClients         int64                    `json:"wsClients"`
	WaitLine          int64                    `json:"waitLine"`
	JobsInFlight      int64                    `json:"jobsInFlight"`
	Jobs              JobStats                 `json:"jobs"`
	InstanceStats     map[string]InstanceStats `json:"instanceStats"`
	// Recent is the finished prompts of the last minutes, step by step.
	Recent Recent `json:"recent"`
}

// JobStats summarizes the async job facade.
type JobStats struct {
	Submitted  int64            `json:"submitted"`
	Finished   map[string]int64 `json:"finished"`   // by status
	AvgRunTime float64          `json:"avgRunTime"` // milliseconds
	AvgWait    float64          `json:"avgWait"`    // milliseconds
}

// InstanceStats is one instance's part of Stats, keyed by instance name.
type InstanceStats struct {
	Host              string  `json:"host,omitempty"`
	Up                bool    `json:"up"`
	Breaker           string  `json:"breaker,omitempty"` // closed, half-open, open
	SocketConnected   bool    `json:"socketConnected"`
	Draining          bool    `json:"draining"`
	InFlight          int64   `json:"inFlight"`
	QueueDepth        int64   `json:"queueDepth"`
	PromptsSubmitted  int64   `json:"promptsSubmitted"`
	JobsProcessed     int64   `json:"jobsProcessed"`     // prompts finished, all outcomes
	AvgProcessingTime float64 `json:"avgProcessingTime"` // milliseconds
	ErrorRate         float64 `json:"errorRate"`
	Requests          int64   `json:"requests"`
	Reconnects        int64   `json:"reconnects"`
	HealthCheckAvg    float64 `json:"healthCheckAvg"` // milliseconds
	HealthChecksFail  int64   `json:"healthChecksFailed"`
}

// Stats computes the stats view from the collectors. On a nil Metrics it
// returns empty stats.
func (m *Metrics) Stats() Stats {
	st := Stats{
		Outcomes:      map[string]int64{},
		Jobs:          JobStats{Finished: map[string]int64{}},
		InstanceStats: map[string]InstanceStats{},
	}
	if m == nil {
		return st
	}
	st.Version = m.version
	st.Uptime = m.now().Sub(m.start).Seconds()
	st.Recent = m.recent.read(m.now())

	inst := map[string]*InstanceStats{}
	get := func(name string) *InstanceStats {
		s, ok := inst[name]
		if !ok {
			s = &InstanceStats{}
			inst[name] = s
		}
		return s
	}
	promptTime := map[string]*avg{}
	healthTime := map[string]*avg{}
	var allPrompts, jobRun, jobWait avg

	for _, s := range collect(m.upstreamUp) {
		get(s.l["upstream"]).Up = s.v == 1
	}
	for _, s := range collect(m.upstreamInfo) {
		get(s.l["upstream"]).Host = s.l["host"]
	}
	for _, s := range collect(m.breakerState) {
		if s.v == 1 {
			get(s.l["upstream"]).Breaker = s.l["state"]
		} else {
			get(s.l["upstream"])
		}
	}
	for _, s := range collect(m.socketConnected) {
		get(s.l["upstream"]).SocketConnected = s.v == 1
	}
	for _, s := range collect(m.draining) {
		get(s.l["upstream"]).Draining = s.v == 1
	}
	for _, s := range collect(m.inflight) {
		get(s.l["upstream"]).InFlight = int64(s.v)
	}
	for _, s := range collect(m.queueDepth) {
		get(s.l["upstream"]).QueueDepth = int64(s.v)
	}
	for _, s := range collect(m.reconnects) {
		get(s.l["upstream"]).Reconnects = int64(s.v)
	}
	for _, s := range collect(m.promptsSubmitted) {
		get(s.l["upstream"]).PromptsSubmitted = int64(s.v)
		st.PromptsSubmitted += int64(s.v)
	}
	for _, s := range collect(m.promptsFinished) {
		is := get(s.l["upstream"])
		is.JobsProcessed += int64(s.v)
		st.JobsProcessed += int64(s.v)
		st.Outcomes[s.l["outcome"]] += int64(s.v)
		if s.l["outcome"] != OutcomeSuccess {
			// ErrorRate holds the failure count until the division below.
			is.ErrorRate += s.v
		}
	}
	for _, s := range collect(m.promptDuration) {
		addAvg(promptTime, s.l["upstream"], s)
		allPrompts.sum += s.sum
		allPrompts.count += s.count
	}
	for _, s := range collect(m.healthCheck) {
		name := s.l["upstream"]
		addAvg(healthTime, name, s)
		if s.l["result"] == "fail" {
			get(name).HealthChecksFail += int64(s.count)
		}
	}
	for _, s := range collect(m.requests) {
		st.Requests += int64(s.v)
		if name := s.l["upstream"]; name != NoInstance {
			get(name).Requests += int64(s.v)
		}
	}
	for _, s := range collect(m.resubmissions) {
		st.Resubmissions += int64(s.v)
		if s.l["result"] != "ok" {
			st.ResubmitFailures += int64(s.v)
		}
	}
	for _, s := range collect(m.jobsSubmitted) {
		st.Jobs.Submitted += int64(s.v)
	}
	for _, s := range collect(m.jobsFinished) {
		st.Jobs.Finished[s.l["status"]] += int64(s.v)
	}
	for _, s := range collect(m.jobRunDuration) {
		jobRun.sum += s.sum
		jobRun.count += s.count
	}
	for _, s := range collect(m.jobWaitDuration) {
		jobWait.sum += s.sum
		jobWait.count += s.count
	}
	st.WSClients = int64(gaugeValue(m.wsClients))
	st.WaitLine = int64(gaugeValue(m.waitLine))
	st.JobsInFlight = int64(gaugeValue(m.jobsInFlight))

	ms := func(a avg) float64 {
		if a.count == 0 {
			return 0
		}
		return a.sum / a.count * 1000
	}
	st.AvgProcessingTime = ms(allPrompts)
	st.Jobs.AvgRunTime = ms(jobRun)
	st.Jobs.AvgWait = ms(jobWait)
	if st.JobsProcessed > 0 {
		st.ErrorRate = float64(st.JobsProcessed-st.Outcomes[OutcomeSuccess]) / float64(st.JobsProcessed)
	}
	for name, is := range inst {
		if is.JobsProcessed > 0 {
			is.ErrorRate /= float64(is.JobsProcessed)
		} else {
			is.ErrorRate = 0
		}
		if a := promptTime[name]; a != nil {
			is.AvgProcessingTime = ms(*a)
		}
		if a := healthTime[name]; a != nil {
			is.HealthCheckAvg = ms(*a)
		}
		if is.Up {
			st.InstancesUp++
		}
		st.InFlight += is.InFlight
		st.QueueDepth += is.QueueDepth
		st.InstanceStats[name] = *is
	}
	st.InstancesTotal = len(inst)
	return st
}

// StatsHandler serves Stats as JSON (for /stats).
func (m *Metrics) StatsHandler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		body, err := json.Marshal(m.Stats())
		if err != nil {
			// Unreachable for these types; answer in comfygate's own error shape.
			ctx.SetStatusCode(fasthttp.StatusInternalServerError)
			body = []byte(`{"error":{"type":"internal_error","message":"stats unavailable"}}`)
		}
		ctx.SetContentType("application/json")
		ctx.Response.Header.Set("Cache-Control", "no-store")
		ctx.SetBody(body)
	}
}

// sample is one series read back from a collector.
// avg accumulates a histogram's sum and count for a mean.
type avg struct{ sum, count float64 }

// addAvg adds a histogram sample to the mean kept for name.
func addAvg(m map[string]*avg, name string, s sample) {
	a, ok := m[name]
	if !ok {
		a = &avg{}
		m[name] = a
	}
	a.sum += s.sum
	a.count += s.count
}

type sample struct {
	l          map[string]string
	v          float64 // gauge or counter value
	sum, count float64 // histogram
}

// collect reads every series of c.
func collect(c prometheus.Collector) []sample {
	ch := make(chan prometheus.Metric, 64)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	var out []sample
	for pm := range ch {
		var d dto.Metric
		if err := pm.Write(&d); err != nil {
			continue
		}
		s := sample{l: make(map[string]string, len(d.GetLabel()))}
		for _, lp := range d.GetLabel() {
			s.l[lp.GetName()] = lp.GetValue()
		}
		switch {
		case d.Counter != nil:
			s.v = d.GetCounter().GetValue()
		case d.Gauge != nil:
			s.v = d.GetGauge().GetValue()
		case d.Histogram != nil:
			s.sum = d.GetHistogram().GetSampleSum()
			s.count = float64(d.GetHistogram().GetSampleCount())
		}
		out = append(out, s)
	}
	return out
}

func gaugeValue(c prometheus.Collector) float64 {
	for _, s := range collect(c) {
		return s.v
	}
	return 0
}
