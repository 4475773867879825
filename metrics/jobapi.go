package metrics

import "github.com/prometheus/client_golang/prometheus"

// jobAPICollectors measure the job API's back-end features: webhook
// deliveries, the output store and open event streams.
type jobAPICollectors struct {
	webhookAttempts *prometheus.CounterVec
	outputBytes     *prometheus.GaugeVec
	eventStreams    prometheus.Gauge
}

func (m *Metrics) registerJobAPI() {
	m.jobAPI.webhookAttempts = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "webhook_attempts_total",
		Help: "Job webhook delivery attempts by outcome: delivered (2xx), retry (failed, tried again later), gave_up (failed, the last attempt), progress (a non-terminal event, sent once)."},
		[]string{"outcome"})
	m.jobAPI.outputBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "job_output_bytes",
		Help: "Bytes of job outputs comfygate holds until their jobs expire, by store (memory, disk)."}, []string{"store"})
	m.jobAPI.eventStreams = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "job_event_streams",
		Help: "Open GET /api/jobs/{id}/events streams."})
	m.reg.MustRegister(m.jobAPI.webhookAttempts, m.jobAPI.outputBytes, m.jobAPI.eventStreams)
}

// WebhookAttempt counts one delivery attempt: delivered, retry, gave_up
// or progress (anything else counts as "other").
func (m *Metrics) WebhookAttempt(outcome string) {
	if m == nil {
		return
	}
	switch outcome {
	case "delivered", "retry", "gave_up", "progress":
	default:
		outcome = Other
	}
	m.jobAPI.webhookAttempts.WithLabelValues(outcome).Inc()
}

// SetOutputBytes sets the bytes of job outputs held in memory and on disk.
func (m *Metrics) SetOutputBytes(memory, disk int64) {
	if m == nil {
		return
	}
	m.jobAPI.outputBytes.WithLabelValues("memory").Set(float64(memory))
	m.jobAPI.outputBytes.WithLabelValues("disk").Set(float64(disk))
}

// AddEventStreams changes the number of open job event streams.
func (m *Metrics) AddEventStreams(delta int) {
	if m == nil {
		return
	}
	m.jobAPI.eventStreams.Add(float64(delta))
}
