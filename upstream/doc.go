// Package upstream owns the set of ComfyUI instances behind comfygate: each
// instance's state (health, breaker, in-flight count, reported queue
// depth, version), its one transport (Instance.Do, which classifies every
// outcome for the breaker), the active health checks, instance selection,
// DNS discovery, operator drains, labels, weights and warm-up, and
// reconfiguration of the instance list.
//
// What runs on the instances (prompts, their event sockets, failover, file
// pins) belongs to package prompts, which uses this package; the pool
// reaches it only through the PromptOwner that prompts attaches (Attach).
package upstream
