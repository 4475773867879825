// Package metrics owns comfygate's Prometheus collectors and the JSON stats
// view served at /stats.
//
// Everything an operator would ask about is a metric here: per upstream
// instance its health, breaker state, in-flight prompts, reported queue depth,
// upstream socket state and health-check latency; HTTP requests by route,
// method, code and instance; prompts by instance and outcome; failovers;
// WebSocket clients and routed events; async jobs; and build information.
//
// The package imports client_golang and fasthttp only, never another
// comfygate package: the others call its methods. Every method is safe on a
// nil *Metrics and then does nothing, so tests and tools may pass nil.
//
// Naming follows Prometheus conventions: the comfygate_ prefix, base units
// (seconds), _total on counters. Labels come from bounded sets only: the
// instance name from configuration (label "upstream", because Prometheus
// attaches its own target label "instance" at scrape time), a route template,
// a sanitized method, a status code, and fixed enumerations for outcomes and
// states. Never a prompt id, job id, file name or raw path.
//
// Stats is computed from the same collectors that /metrics exposes, so the
// two views agree.
package metrics
