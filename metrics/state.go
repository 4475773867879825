package metrics

import "github.com/prometheus/client_golang/prometheus"

// stateCollectors count the shared prompt index's troubles (state.url):
// what a replica could not write for the others, or read from them, and
// the prompts it adopted from replicas that stopped.
type stateCollectors struct {
	indexErrors *prometheus.CounterVec
	adopted     prometheus.Counter
}

func (m *Metrics) registerState() {
	m.state.indexErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "state_index_errors_total",
		Help: "Failed operations on the replicas' shared prompt index and file pins, by op: write (a batch not written), read (a lookup that failed), dropped (a record not queued: the writer was full or stopped, or the replica held no liveness lease), stale (records refused: the liveness lease that fenced them is gone), number (a prompt numbered by its replica: the shared queue number counter did not answer)."}, []string{"op"})
	m.state.adopted = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "state_prompts_adopted_total",
		Help: "Prompts this replica adopted from replicas whose liveness lease expired."})
	m.reg.MustRegister(m.state.indexErrors, m.state.adopted)
}

// StateIndexError counts one failed operation on the shared prompt index:
// op is "write", "read", "dropped", "stale" or "number".
func (m *Metrics) StateIndexError(op string) {
	if m == nil {
		return
	}
	m.state.indexErrors.WithLabelValues(op).Inc()
}

// PromptAdopted counts one prompt adopted from a replica that stopped.
func (m *Metrics) PromptAdopted() {
	if m == nil {
		return
	}
	m.state.adopted.Inc()
}
