package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/valyala/fasthttp"
)

// healthcheckCommand asks a running comfygate's /health and fails unless it
// answers 200: a HEALTHCHECK for images that have no curl or wget.
func healthcheckCommand(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("comfygate healthcheck", flag.ContinueOnError)
	url := fs.String("url", "http://127.0.0.1:8190/health", "health URL to ask")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(*url)
	if err := fasthttp.DoTimeout(req, resp, *timeout); err != nil {
		return fmt.Errorf("health check %s: %w", *url, err)
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		return fmt.Errorf("health check %s: status %d: %s", *url, resp.StatusCode(), resp.Body())
	}
	fmt.Fprintln(stdout, "healthy")
	return nil
}
