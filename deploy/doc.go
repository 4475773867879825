// Package deploy holds comfygate's deployment files (Dockerfile, compose
// stacks, HAProxy configuration, Prometheus rules, Grafana dashboard,
// Kubernetes manifests) and the tests that keep them valid; it has no Go
// code of its own. See README.md.
package deploy
