package preflight

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/upstream"
)

// InstanceReport is what Connect found at one instance.
type InstanceReport struct {
	// Key is the instance's entry in the configuration ("instances[1]").
	Key  string
	Name string
	Addr string
	// Version is the comfyui_version /system_stats reports ("" unknown).
	Version string
	// Health is nil when GET /system_stats answered 200: the instance
	// would pass start-up's health check.
	Health error
	// NodeClasses is how many node classes /object_info lists.
	NodeClasses int
	// ModelFolders and ModelFiles count /models and the files of each
	// /models/{folder}; ModelFolders is -1 when the instance has no
	// /models (older than mid-2024).
	ModelFolders, ModelFiles int
	// Catalogue is nil when /object_info was read.
	Catalogue error
}

// OK reports whether the instance answered and its catalogue was read.
func (r InstanceReport) OK() bool { return r.Health == nil && r.Catalogue == nil }

// String is the report on one line, starting with the instance's key.
func (r InstanceReport) String() string {
	where := r.Key + " " + r.Name
	if r.Addr != "" && r.Addr != r.Name {
		where += " (" + r.Addr + ")"
	}
	if r.Health != nil {
		what := "unreachable"
		if errors.As(r.Health, new(statusError)) {
			what = "health error"
		}
		return fmt.Sprintf("%s: %s: %s", where, what, oneLine(r.Health.Error()))
	}
	version := r.Version
	if version == "" {
		version = "version unknown"
	}
	s := fmt.Sprintf("%s: ComfyUI %s, health answered", where, version)
	if r.Catalogue != nil {
		return s + ", catalogue error: " + oneLine(r.Catalogue.Error())
	}
	s += fmt.Sprintf(", %d node classes", r.NodeClasses)
	if r.ModelFolders >= 0 {
		s += fmt.Sprintf(", %d model files in %d folders", r.ModelFiles, r.ModelFolders)
	}
	return s
}

// Connect reaches every instance of cfg (the addresses of discover
// entries resolved once) through the transport start-up uses, and reads
// its /system_stats, bounded by health_check.timeout, then its
// /object_info and /models, bounded by timeout. Instances are reached in
// parallel; the reports are in configuration order.
func Connect(ctx context.Context, cfg *config.Config) []InstanceReport {
	var reports []InstanceReport
	probe := *cfg
	probe.Instances = nil
	for i, in := range cfg.Instances {
		key := fmt.Sprintf("instances[%d]", i)
		if !in.Discover {
			probe.Instances = append(probe.Instances, in)
			reports = append(reports, InstanceReport{Key: key, Name: in.Name, Addr: in.HostPort()})
			continue
		}
		// As the pool does: every address the name resolves to is an
		// instance named "<entry>/<ip>".
		host, port, _ := net.SplitHostPort(in.HostPort())
		lctx, cancel := context.WithTimeout(ctx, cfg.HealthCheck.Timeout)
		addrs, err := net.DefaultResolver.LookupHost(lctx, host)
		cancel()
		if err == nil && len(addrs) == 0 {
			err = fmt.Errorf("no address for %s", host)
		}
		if err != nil {
			reports = append(reports, InstanceReport{Key: key, Name: in.Name, Addr: in.HostPort(), Health: fmt.Errorf("discover: %w", err)})
			continue
		}
		for _, a := range addrs {
			d := in
			d.Discover = false
			d.Name = in.Name + "/" + a
			d.Address = net.JoinHostPort(a, port)
			if in.TLS() {
				d.Address = "https://" + d.Address
			}
			probe.Instances = append(probe.Instances, d)
			reports = append(reports, InstanceReport{Key: key, Name: d.Name, Addr: d.Address})
		}
	}
	if len(probe.Instances) == 0 {
		return reports
	}
	pool, err := upstream.New(&probe, metrics.New("check"), nil)
	if err != nil {
		for i := range reports {
			if reports[i].Health == nil {
				reports[i].Health = err
			}
		}
		return reports
	}
	defer pool.Close()
	var wg sync.WaitGroup
	for i := range reports {
		r := &reports[i]
		if r.Health != nil {
			continue
		}
		inst := pool.Instance(r.Name)
		if inst == nil {
			r.Health = fmt.Errorf("not in the pool built from the configuration")
			continue
		}
		r.Addr = inst.Addr
		wg.Add(1)
		go func() {
			defer wg.Done()
			reach(ctx, cfg, inst, r)
		}()
	}
	wg.Wait()
	return reports
}

// reach fills r from inst's answers.
func reach(ctx context.Context, cfg *config.Config, inst *upstream.Instance, r *InstanceReport) {
	body, err := fetch(ctx, inst, "/system_stats", cfg.HealthCheck.Timeout)
	if err != nil {
		r.Health = err
		return
	}
	r.Version = comfyapi.SystemStatsVersion(body)
	body, err = fetch(ctx, inst, "/object_info", cfg.Timeout)
	if err != nil {
		r.Catalogue = err
		return
	}
	classes, err := comfyapi.ObjectInfoClasses(body)
	if err != nil {
		r.Catalogue = fmt.Errorf("object_info: %w", err)
		return
	}
	r.NodeClasses = len(classes)

	// Models are counted as the catalogue reads them; an instance
	// without /models is not an error (ComfyUI added it in 2024).
	r.ModelFolders = -1
	body, err = fetch(ctx, inst, "/models", cfg.Timeout)
	if err != nil {
		return
	}
	folders, err := comfyapi.ParseModelList(body)
	if err != nil {
		return
	}
	r.ModelFolders = len(folders)
	for _, f := range folders {
		body, err := fetch(ctx, inst, "/models/"+url.PathEscape(f), cfg.Timeout)
		if err != nil {
			continue
		}
		if files, err := comfyapi.ParseModelList(body); err == nil {
			r.ModelFiles += len(files)
		}
	}
}

// fetch does one GET that must answer 200 within timeout.
func fetch(ctx context.Context, inst *upstream.Instance, path string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	status, body, err := inst.Transport().Fetch(ctx, upstream.Request{Method: "GET", Path: path, Header: map[string]string{"Accept": "application/json"}, Timeout: timeout})
	name := strings.TrimPrefix(path, "/")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if status != 200 {
		return nil, fmt.Errorf("%s: %w", name, statusError(status))
	}
	return body, nil
}

// statusError is an answer other than 200: the instance is reachable.
type statusError int

func (e statusError) Error() string { return fmt.Sprintf("status %d", int(e)) }
