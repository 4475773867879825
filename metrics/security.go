package metrics

import "github.com/prometheus/client_golang/prometheus"

// securityCollectors count what comfygate's own limits, API keys and rate
// limits refused. Every label value comes from a fixed set of reasons.
type securityCollectors struct {
	limitRefused *prometheus.CounterVec
	authRefused  *prometheus.CounterVec
	rateLimited  *prometheus.CounterVec
}

func (m *Metrics) registerSecurity() {
	c := func(name, help, label string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, []string{label})
	}
	m.sec.limitRefused = c("limit_refused_total", "Requests and connections refused by one of comfygate's own limits, by reason (body_too_large, header_too_large, read_timeout, bare_lf, non_canonical_path, buffered_bodies, conns_per_ip, proxy_protocol, ws_frame_too_large, ws_message_rate).", "reason")
	m.sec.authRefused = c("auth_refused_total", "Requests refused for their API key, by reason (missing, invalid, forbidden, origin, bad_body).", "reason")
	m.sec.rateLimited = c("rate_limited_total", "Submissions refused with 429 by the rate limits, by kind (prompt, job, concurrent).", "kind")
	m.reg.MustRegister(m.sec.limitRefused, m.sec.authRefused, m.sec.rateLimited)
}

// LimitRefused counts one request or connection refused by a limit.
func (m *Metrics) LimitRefused(reason string) {
	if m == nil {
		return
	}
	m.sec.limitRefused.WithLabelValues(reason).Inc()
}

// AuthRefused counts one request refused for its key.
func (m *Metrics) AuthRefused(reason string) {
	if m == nil {
		return
	}
	m.sec.authRefused.WithLabelValues(reason).Inc()
}

// RateLimited counts one submission refused by a rate limit.
func (m *Metrics) RateLimited(kind string) {
	if m == nil {
		return
	}
	m.sec.rateLimited.WithLabelValues(kind).Inc()
}
