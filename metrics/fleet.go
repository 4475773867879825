package metrics

import "github.com/prometheus/client_golang/prometheus"

// fleetCollectors count what fleet-aware routing and live reconfiguration
// did. Label values come from fixed sets.
type fleetCollectors struct {
	unrunnable prometheus.Counter
	reloads    *prometheus.CounterVec
	affinity   *prometheus.CounterVec
}

func (m *Metrics) registerFleet() {
	m.fleet.unrunnable = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "prompts_unrunnable_total",
		Help: "Prompts refused with 400 because no instance has every node class and model file they name (or the labels they ask for)."})
	m.fleet.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "config_reloads_total",
		Help: "Configuration reloads (SIGHUP, POST /admin/reload), by result (ok, refused)."}, []string{"result"})
	m.fleet.affinity = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "affinity_decisions_total",
		Help: "Prompts that load models, by whether an instance that last ran the same models was preferred (hit) or none was free enough (miss)."}, []string{"result"})
	m.reg.MustRegister(m.fleet.unrunnable, m.fleet.reloads, m.fleet.affinity)
}

// PromptUnrunnable counts one prompt no instance could run.
func (m *Metrics) PromptUnrunnable() {
	if m == nil {
		return
	}
	m.fleet.unrunnable.Inc()
}

// ConfigReload counts one reload; ok false: the file was refused.
func (m *Metrics) ConfigReload(ok bool) {
	if m == nil {
		return
	}
	r := "refused"
	if ok {
		r = "ok"
	}
	m.fleet.reloads.WithLabelValues(r).Inc()
}

// Affinity counts one routing decision for a prompt that loads models.
func (m *Metrics) Affinity(hit bool) {
	if m == nil {
		return
	}
	r := "miss"
	if hit {
		r = "hit"
	}
	m.fleet.affinity.WithLabelValues(r).Inc()
}
