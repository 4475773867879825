package upstream

import (
	"strings"
	"time"

	"github.com/comfygate/comfygate/breaker"
	"github.com/comfygate/comfygate/internal/comfyapi"
)

// newInstance builds an instance of r; its breaker's state changes go to
// r.breakerChanged.
func newInstance(r *registry, name, addr string, tls bool) *Instance {
	inst := &Instance{
		Name: name,
		Addr: addr,
		TLS:  tls,
		reg:  r,
	}
	inst.RenewSocketClientID()
	inst.state.inst = inst
	inst.workload.inst = inst
	inst.transport.inst = inst
	inst.id = endpointID(inst.Endpoint())
	traffic, probes := connShares(r.cfg.MaxConnectionsPerInstance)
	inst.transport.client = newHostClient(addr, tls, traffic+probes, r.cfg.Timeout)
	inst.transport.slots = make(chan struct{}, traffic)
	inst.transport.breaker = breaker.New(name, breaker.Settings{
		ConsecutiveFailures: uint32(max(r.cfg.Breaker.ConsecutiveFailures, 0)),
		OpenTimeout:         r.cfg.Breaker.OpenTimeout,
		Interval:            r.cfg.Breaker.Interval,
		Clock:               r.clk,
	}, func(_ string, from, to breaker.State) { r.breakerChanged(inst, from, to) })
	return inst
}

// Status returns a snapshot.
func (i *Instance) Status() InstanceStatus {
	st := InstanceStatus{
		Name:       i.Name,
		Addr:       i.Addr,
		Healthy:    i.state.healthy.Load(),
		Breaker:    "closed",
		SocketUp:   i.state.socketUp.Load(),
		Inflight:   i.workload.inflight.Load(),
		QueueDepth: i.workload.queueDepth.Load(),
		Version:    i.Version(),
		Draining:   i.state.draining.Load() || i.state.held.Load(),
		Removing:   i.state.draining.Load(),
		Labels:     i.Labels(),
		Weight:     i.Weight(),
		Warmup:     i.state.WarmupState(),
	}
	st.Drained = st.Draining && st.Inflight <= 0 && st.QueueDepth <= 0
	if i.transport.breaker != nil {
		st.Breaker = i.transport.breaker.State().String()
	}
	if ns := i.state.lastCheck.Load(); ns != 0 {
		st.LastCheck = time.Unix(0, ns)
	}
	return st
}

// SupportsClientPromptID reports v0.3.45+ (accepts a client-supplied prompt_id).
// An unknown or unparsable version is assumed recent.
func (i *Instance) SupportsClientPromptID() bool {
	return comfyapi.SupportsClientPromptID(i.Version())
}

// parseVersion is comfyapi.ParseVersion as [major, minor, patch].
func parseVersion(s string) (v [3]int, ok bool) {
	cv, ok := comfyapi.ParseVersion(s)
	return [3]int{cv.Major, cv.Minor, cv.Patch}, ok
}

// URL returns the instance's absolute URL for path (which may carry a query).
func (i *Instance) URL(path string) string {
	scheme := "http://"
	if i.TLS {
		scheme = "https://"
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return scheme + i.Addr + path
}

// ConfirmedDown reports what the pool fails prompts over on (signalDown,
// SocketLost): the instance's socket is down and its health check
// failed or its breaker is open. A hung instance whose socket still
// answers is not down.
func (i *Instance) ConfirmedDown() bool {
	return !i.state.socketUp.Load() && (!i.state.healthy.Load() || (i.transport.breaker != nil && !i.transport.breaker.Ready()))
}
