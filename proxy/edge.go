package proxy

import (
	"log/slog"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
)

// edge is what every request meets before routing and after its answer:
// the client's address behind trusted proxies (clientaddr.go), the
// request-target and body-size guards and the HTTP server's own errors
// (guard.go), and the access log (accesslog.go).
type edge struct {
	cfg     *config.Config
	m       *metrics.Metrics // may be nil
	log     *slog.Logger
	trusted trustedProxies // server.trusted_proxies
}
