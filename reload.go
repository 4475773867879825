package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"sync"
	"syscall"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/proxy"
	"github.com/comfygate/comfygate/upstream"
)

// reloader re-reads the configuration (SIGHUP, POST /admin/reload) and
// applies what can change while comfygate runs: the instance list with
// each instance's labels, weight and warm-up, and the job workflows.
// Other changed keys are
// reported as needing a restart and keep their running values. A file
// that does not load is refused whole, with the errors start-up would
// give, and the running configuration stays.
type reloader struct {
	load func() (*config.Config, error)
	pool *upstream.Pool
	// workflows checks a configuration's job workflows and returns what
	// makes them current (jobs.Service.LoadWorkflows); nil: not reloaded.
	workflows func(*config.Config) (func(), error)
	// routing applies a reloaded routing section (proxy.Server.SetRouting);
	// nil: not reloaded.
	routing func(config.Routing)
	m       *metrics.Metrics
	log     *slog.Logger

	mu  sync.Mutex     // one reload at a time; guards cur
	cur *config.Config // what runs: the start-up config with reloaded instances
}

func (r *reloader) reload(ctx context.Context) (proxy.ReloadResult, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg, err := r.load()
	if err != nil {
		r.m.ConfigReload(false)
		r.log.Error("config reload refused; the running configuration stays", "error", err)
		return proxy.ReloadResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return proxy.ReloadResult{}, err
	}
	applyWorkflows := func() {}
	if r.workflows != nil {
		if applyWorkflows, err = r.workflows(cfg); err != nil {
			r.m.ConfigReload(false)
			r.log.Error("config reload refused; the running configuration stays", "error", err)
			return proxy.ReloadResult{}, err
		}
	}
	res, err := r.pool.Fleet().Reconfigure(cfg)
	if err != nil {
		r.m.ConfigReload(false)
		r.log.Error("config reload refused; the running configuration stays", "error", err)
		return proxy.ReloadResult{}, err
	}
	applyWorkflows()
	next := *r.cur
	next.Instances = cfg.Instances
	if r.workflows != nil {
		next.Workflows = cfg.Workflows
	}
	if r.routing != nil {
		r.routing(cfg.Routing)
		// The warm-up timeout is the pool's and applies at the next start.
		next.Routing = cfg.Routing
		next.Routing.WarmupTimeout = r.cur.Routing.WarmupTimeout
	}
	r.cur = &next
	out := proxy.ReloadResult{Added: res.Added, Removed: res.Removed, Changed: res.Changed, Restart: restartKeys(r.cur, cfg)}
	r.m.ConfigReload(true)
	r.log.Info("config reloaded", "added", res.Added, "removed", res.Removed, "changed", res.Changed,
		"restart_needed", out.Restart)
	return out, nil
}

// restartKeys lists the top-level keys whose new value differs from the
// running one: they apply at the next start.
func restartKeys(running, next *config.Config) []string {
	var out []string
	rv, nv := reflect.ValueOf(running).Elem(), reflect.ValueOf(next).Elem()
	t := rv.Type()
	for i := range t.NumField() {
		key := t.Field(i).Tag.Get("yaml")
		if key == "" || key == "-" || key == "instances" {
			continue
		}
		if !reflect.DeepEqual(rv.Field(i).Interface(), nv.Field(i).Interface()) {
			out = append(out, key)
		}
	}
	return out
}

// watchHangup reloads on every SIGHUP until ctx ends.
func (r *reloader) watchHangup(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				r.log.Info("SIGHUP: reloading the configuration")
				if _, err := r.reload(ctx); err != nil {
					fmt.Fprintln(os.Stderr, "comfygate: config reload refused:", err)
				}
			}
		}
	}()
}
