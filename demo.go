package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os/exec"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
)

// demoCommand starts simulated ComfyUI instances on free loopback ports and
// comfygate in front of them: the whole product on a machine with no GPU.
// With -replicas N above 1 it runs N comfygate replicas over the same
// instances, sharing their state in a redis-server of its own
// (demo_replicas.go).
func demoCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("comfygate demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8190", "address comfygate serves clients on")
	n := fs.Int("instances", 2, "simulated ComfyUI instances to start")
	delay := fs.Duration("delay", 300*time.Millisecond, "run time of each image node in the simulator")
	logFormat := fs.String("log-format", "text", "json or text")
	replicas := fs.Int("replicas", 1, "comfygate replicas over the same instances, sharing state in a local redis-server")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *n < 1 {
		return fmt.Errorf("-instances %d: want at least 1", *n)
	}
	if *replicas < 1 {
		return fmt.Errorf("-replicas %d: want at least 1", *replicas)
	}
	redisBin := ""
	if *replicas > 1 {
		bin, err := exec.LookPath("redis-server")
		if err != nil {
			return fmt.Errorf("-replicas %d: the replicas share their state in Redis, and redis-server is not on the PATH; "+
				"install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or run one replica", *replicas)
		}
		redisBin = bin
	}

	var instances []config.Instance
	for i := 0; i < *n; i++ {
		sim, err := comfysim.New(comfysim.Options{Delay: *delay, Steps: 4})
		if err != nil {
			return err
		}
		if err := sim.Start("127.0.0.1:0"); err != nil {
			return err
		}
		defer sim.Close()
		instances = append(instances, config.Instance{Name: fmt.Sprintf("sim-%d", i+1), Address: sim.Addr()})
	}
	// demoConfig is one gateway's configuration (each replica gets its own).
	demoConfig := func() (*config.Config, error) {
		cfg := config.Default()
		cfg.Instances = append([]config.Instance(nil), instances...)
		cfg.Listen = *listen
		cfg.HealthCheck.Interval = 2 * time.Second
		cfg.Log.Format = *logFormat
		// The demo's simulated instances live and die with it: so do its jobs.
		cfg.Jobs.StateDir = ""
		return cfg, cfg.Validate()
	}
	if *replicas > 1 {
		return demoReplicas(ctx, demoConfig, *replicas, redisBin, *listen, stdout)
	}
	cfg, err := demoConfig()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	return serve(ctx, cfg, nil, ln, stdout, func(url string) {
		fmt.Fprintf(stdout, "\ncomfygate demo: %s in front of", url)
		for _, in := range cfg.Instances {
			fmt.Fprintf(stdout, " %s (%s)", in.Name, in.Address)
		}
		fmt.Fprintf(stdout, "\n\nRun a workflow (EmptyImage -> ImageInvert -> SaveImage):\n  %s\n", demoCurl(url))
		fmt.Fprintf(stdout, "Then: curl %s/history  ·  %s/health  ·  %s/metrics  ·  %s/stats\n", url, url, url, url)
		fmt.Fprintf(stdout, "Job API: curl -s -F image=@some.png %s/api/remove-background\n\n", url)
	})
}

func demoCurl(url string) string {
	return `curl -s -X POST ` + url + `/prompt -H 'Content-Type: application/json' -d '{"prompt":{"1":{"class_type":"EmptyImage","inputs":{"width":256,"height":256,"batch_size":1,"color":1193046}},"2":{"class_type":"ImageInvert","inputs":{"image":["1",0]}},"3":{"class_type":"SaveImage","inputs":{"images":["2",0],"filename_prefix":"demo"}}}}'`
}
