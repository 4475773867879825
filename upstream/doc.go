// Package upstream owns the set of ComfyUI instances behind comfygate: each
// instance's state (health, breaker, in-flight count, reported queue
// depth, version), its one transport (Instance.Transport().Do, which
// classifies every outcome for the breaker), the active health checks, instance selection,
// DNS discovery, operator drains, labels, weights, the warm-up gate (an
// instance stays cold until its warm-up ran) and reconfiguration of the
// instance list.
//
// It knows instances only. What runs on them (prompts, their event
// sockets, failover and when it starts, warm-up runs, file pins) belongs to
// package prompts, which uses this package and is never called by it: the
// pool publishes what happens to its instances on subscriptions
// (Pool.Subscribe, InstanceEvent: added, removed, drained, up, unhealthy,
// suspect, back, down, changed, warmup), in order and without waiting for
// a subscriber; a comeback passes the gate set with SetComebackGate; a
// warm-up run is reported with WarmupDone. Whoever starts the pool starts
// and closes its subscribers too.
//
// The Pool wires parts that each have one job and hold only what that job
// uses: the registry of instances (registry.go), health checks and the
// breakers' state changes (health.go), the event bus with the comeback
// gate (events.go), selection (Selector, select.go; where a prompt may
// run is package placement's policy, passed in as a filter), the warm-up
// gate (warmup.go), DNS discovery (discovery.go), operator changes (Fleet,
// fleet.go) and the background goroutines (run.go). What the prompt
// owner and the proxy call most is on Pool and handed to its part; drains
// and reloads go through Pool.Fleet, the less used selection calls
// through Pool.Selector.
//
// An Instance is which machine it is and how it is configured (name,
// address, endpoint and ID, version, labels, weight); its parts each have
// one job: State (state.go) its health and lifecycle flags (healthy,
// suspect, event socket, leaving, held, warm-up, comebacks), Workload
// (workload.go) what it has to do (in flight, reported queue), and
// Transport (transport.go) how it is called (its client, connection
// slots and breaker; Do, Fetch, Call). Predicates that combine them
// (Available, ConfirmedDown) and the Status snapshot stay on Instance.
package upstream
