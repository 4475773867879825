// Command comfygate is a reverse-proxy sidecar for ComfyUI: it spreads
// prompts over several instances, pins each prompt to the instance that runs
// it, fails over when an instance dies, and adds an async job API.
//
//	comfygate [-config FILE] [-listen ADDR]   run the proxy
//	comfygate demo [-replicas N]              the proxy in front of two simulated instances
//	comfygate sim [-listen ADDR] ...          one simulated ComfyUI
//	comfygate healthcheck [-url URL]          exit 0 when /health says healthy (for containers)
//	comfygate check [-config FILE] [-connect] check the configuration as start-up does
//	comfygate config defaults                 print the documented default config.yaml
//	comfygate version
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/comfygate/comfygate/catalogue"
	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/jobs"
	"github.com/comfygate/comfygate/logging"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/placement"
	"github.com/comfygate/comfygate/preflight"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/proxy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// defaultConfig is the repository's config.yaml: every key with its
// default, documented (comfygate config defaults).
//
//go:embed config.yaml
var defaultConfig []byte

// shutdownGrace bounds how long in-flight requests may take to finish.
const shutdownGrace = 15 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		var exit preflight.ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.Code) // the command wrote why
		}
		fmt.Fprintln(os.Stderr, "comfygate:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := ""
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "", "serve":
		return serveCommand(ctx, args, stdout, stderr)
	case "demo":
		return demoCommand(ctx, args, stdout, stderr)
	case "sim":
		return comfysim.Command(ctx, args, stdout)
	case "healthcheck":
		return healthcheckCommand(ctx, args, stdout)
	case "check":
		return preflight.Command(ctx, args, stdout, stderr)
	case "config":
		return preflight.ConfigCommand(args, defaultConfig, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "comfygate", version)
		return nil
	default:
		return fmt.Errorf("unknown command %q: want serve, demo, sim, healthcheck, check, config or version", cmd)
	}
}

func serveCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("comfygate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "configuration file (YAML); default: built-in defaults")
	listen := fs.String("listen", "", "address to serve clients on (overrides listen:)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	load := func() (*config.Config, error) {
		cfg, err := preflight.Load(*configPath, nil)
		if err == nil && *listen != "" {
			cfg.Listen = *listen
		}
		return cfg, err
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	return serve(ctx, cfg, load, ln, stdout, nil)
}

// serve wires the gateway on ln and runs it until ctx ends, then shuts
// down gracefully: stop accepting, let in-flight requests finish (bounded),
// close sockets. load, if not nil, re-reads the configuration on SIGHUP
// and POST /admin/reload. ready, if not nil, is called once it accepts
// requests.
func serve(ctx context.Context, cfg *config.Config, load func() (*config.Config, error), ln net.Listener, stdout io.Writer, ready func(url string)) error {
	log, closeLog, err := logging.New(logging.Config{
		Level:      cfg.Log.Level,
		Format:     cfg.Log.Format,
		Directory:  cfg.Log.Directory,
		MaxSizeMB:  cfg.Log.MaxSizeMB,
		MaxBackups: cfg.Log.MaxBackups,
		MaxAgeDays: cfg.Log.MaxAgeDays,
		Stdout:     stdout,
	})
	if err != nil {
		ln.Close()
		return err
	}
	defer closeLog.Close()

	m := metrics.New(version)
	pool, err := upstream.New(cfg, m, log)
	if err != nil {
		ln.Close()
		return err
	}
	// The shared state (state.url): memory, or a Redis server that must
	// answer now, before anything depends on it.
	state.SetLogger(log)
	shared, err := state.Open(ctx, cfg.State)
	if err != nil {
		ln.Close()
		return err
	}
	defer shared.Close()
	if shared.Shared() {
		log.Info("shared state in redis", slog.String("addr", shared.Addr()))
	}
	table := prompts.New(pool, cfg, m, log)
	svc, err := jobs.New(cfg, pool, table, shared, m, log)
	if err != nil {
		ln.Close()
		return err
	}
	cat := catalogue.New(pool, cfg.Routing.CatalogueInterval, log)
	policy := placement.New(pool, cat, cfg.Routing.AffinityMargin, m.Affinity)
	svc.SetPlacer(policy)
	var rl *reloader
	var reload proxy.Reloader
	if load != nil {
		rl = &reloader{load: load, pool: pool, workflows: svc.LoadWorkflows, m: m, log: log, cur: cfg}
		reload = rl.reload
	}
	srv, err := proxy.New(proxy.Options{Config: cfg, Pool: pool, Prompts: table, Jobs: svc, Metrics: m, Logger: log, Version: version,
		Catalogue: cat, Placement: policy, BodyBudget: svc.BodyBudget(), Reload: reload, State: shared})
	if err != nil {
		ln.Close()
		return err
	}
	if rl != nil {
		rl.routing = srv.SetRouting
	}

	// The pool and the job dispatcher outlive the signal: in-flight requests
	// and sockets still need them while the server drains. They stop (in
	// the deferred calls below) only after Shutdown returned.
	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := pool.Start(runCtx); err != nil {
		ln.Close()
		return err
	}
	// The table hears of the instances the pool started with (their
	// sockets open) and stops after the pool: its goroutines no longer
	// publish instance events then.
	table.Start(runCtx)
	defer func() { pool.Close(); table.Close() }()
	svc.Start(runCtx)
	defer svc.Close()
	catCtx, stopCat := context.WithCancel(runCtx)
	catDone := make(chan struct{})
	go func() { defer close(catDone); cat.Run(catCtx) }()
	defer func() { stopCat(); <-catDone }()
	if rl != nil {
		rl.watchHangup(runCtx)
	}

	if cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("metrics_listen %s: %w", cfg.MetricsListen, err)
		}
		ops := &fasthttp.Server{Handler: srv.OperatorHandler(), Name: "comfygate", ReadTimeout: cfg.Limits.HeaderTimeout, IdleTimeout: cfg.Limits.IdleTimeout}
		go func() { _ = ops.Serve(mln) }()
		defer ops.Shutdown()
		log.Info("operator routes listening", slog.String("url", "http://"+mln.Addr().String()))
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	url := "http://" + ln.Addr().String()
	log.Info("comfygate listening", slog.String("url", url), slog.Int("instances", len(pool.Instances())), slog.String("version", version))
	if ready != nil {
		ready(url)
	}

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", slog.Duration("grace", shutdownGrace))
	shutdownCtx, done := context.WithTimeout(context.Background(), shutdownGrace)
	defer done()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
