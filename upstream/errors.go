package upstream

import "errors"

// Sentinel errors; proxy maps them to status codes in one place.
var (
	// ErrNoUpstream: no healthy instance with a closed (or probing) breaker.
	ErrNoUpstream = errors.New("no healthy ComfyUI instance")
)
