// Package proxy owns comfygate's fasthttp server: routing of ComfyUI's API
// over the instance pool, HTTP forwarding with streamed bodies, the
// WebSocket bridge between clients and the instances' sockets, comfygate's
// own routes (/health, /metrics, /stats), the job API's routes, and request
// logging.
package proxy
