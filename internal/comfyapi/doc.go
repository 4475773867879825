// Package comfyapi is ComfyUI's wire protocol as comfygate reads and writes
// it: the shapes of POST /prompt answers and bodies, GET /queue items,
// POST /queue and /history bodies, /history entries, WebSocket text and
// binary messages, comfyui_version strings, and Python's truth value of a
// JSON value. Every package that talks to or about ComfyUI parses through
// here, so one reading of the protocol holds everywhere.
//
// The parsers take untrusted input (instances and clients): they never
// panic, and they read what they need leniently, the way ComfyUI's own
// Python would, rather than rejecting a whole document for one odd field.
//
// Reference: ComfyUI's server.py and execution.py (see the comments at each
// shape for the version that introduced it), and the real captures in
// comfysim/testdata/comfyui-traces.
package comfyapi
