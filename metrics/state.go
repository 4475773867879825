package metrics

import "github.com/prometheus/client_golang/prometheus"

// stateCollectors count the shared prompt index's troubles (state.url):
// what a replica could not write for the others, or read from them.
type stateCollectors struct {
	indexErrors *prometheus.CounterVec
}

func (m *Metrics) registerState() {
	m.state.indexErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "state_index_errors_total",
		Help: "Failed operations on the replicas' shared prompt index and file pins, by op: write (a batch not written), read (a lookup that failed), dropped (a record not queued: the writer was full or stopped)."}, []string{"op"})
	m.reg.MustRegister(m.state.indexErrors)
}

// StateIndexError counts one failed operation on the shared prompt index:
// op is "write", "read" or "dropped".
func (m *Metrics) StateIndexError(op string) {
	if m == nil {
		return
	}
	m.state.indexErrors.WithLabelValues(op).Inc()
}
