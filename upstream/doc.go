// Package upstream owns the set of ComfyUI instances behind comfygate: each
// instance's state (health, breaker, in-flight prompts, reported queue
// depth, version), the active health checks, the one persistent WebSocket
// per instance that carries its events, instance selection, DNS discovery,
// and the pin tables that tie prompts, output files and uploads to the
// instance that holds them. It also keeps every prompt it forwarded until
// the prompt finishes, so it can resubmit it elsewhere when its instance dies.
package upstream
