package metrics

import "github.com/prometheus/client_golang/prometheus"

// jobCacheCollectors measure the job result cache: lookups by outcome
// and the bytes it holds.
type jobCacheCollectors struct {
	hits   *prometheus.CounterVec
	misses *prometheus.CounterVec
	bytes  prometheus.Gauge
}

func (m *Metrics) registerJobCache() {
	m.jobCache.hits = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "job_cache_hits_total",
		Help: "Job submissions completed at once from the result cache, by workflow."}, []string{"workflow"})
	m.jobCache.misses = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "job_cache_misses_total",
		Help: "Job submissions of a cached workflow that the result cache could not answer (they run), by workflow."}, []string{"workflow"})
	m.jobCache.bytes = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "job_cache_bytes",
		Help: "Bytes of job outputs the result cache holds (bounded by jobs.cache_max_bytes)."})
	m.reg.MustRegister(m.jobCache.hits, m.jobCache.misses, m.jobCache.bytes)
}

// JobCacheLookup counts one result cache lookup for a job of workflow:
// a hit (the job completed from the cache) or a miss (it runs).
func (m *Metrics) JobCacheLookup(workflow string, hit bool) {
	if m == nil {
		return
	}
	c := m.jobCache.misses
	if hit {
		c = m.jobCache.hits
	}
	c.WithLabelValues(m.workflows.bound(workflow)).Inc()
}

// SetJobCacheBytes sets the bytes the result cache holds.
func (m *Metrics) SetJobCacheBytes(n int64) {
	if m == nil {
		return
	}
	m.jobCache.bytes.Set(float64(n))
}
