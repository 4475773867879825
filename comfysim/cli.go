package comfysim

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Command is `comfygate sim`: it runs one simulated ComfyUI until ctx is
// cancelled, printing its URL to stdout once it listens.
//
// Flags: -listen (default 127.0.0.1:8188), -input-dir, -output-dir, -temp-dir
// (temporary directories by default), -delay (per image node, default 100ms),
// -steps (progress steps per heavy node, default 4), -comfy-version (default
// 0.3.65), -enable-cors-header, -fail-after N (wedge HTTP after N accepted
// prompts), -instances N (N simulated instances in this one process, on
// consecutive ports from -listen's, or each on a free port when that is 0;
// each its own directories, under -input-dir/<i> and so on when given),
// -v (logs through slog.Default).
func Command(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(stdout)
	listen := fs.String("listen", "127.0.0.1:8188", "address to listen on (host:port)")
	inputDir := fs.String("input-dir", "", "ComfyUI input directory (default: a temporary directory)")
	outputDir := fs.String("output-dir", "", "ComfyUI output directory (default: a temporary directory)")
	tempDir := fs.String("temp-dir", "", "ComfyUI temp directory (default: a temporary directory)")
	delay := fs.Duration("delay", 100*time.Millisecond, "run time of each image node (0s for benchmarks)")
	steps := fs.Int("steps", 4, "progress steps (with previews) per heavy node")
	version := fs.String("comfy-version", DefaultVersion, "emulated ComfyUI version (e.g. 0.3.40, 0.3.65, 0.38.0)")
	cors := fs.Bool("enable-cors-header", false, "replace the origin check with permissive CORS headers")
	failAfter := fs.Int("fail-after", 0, "stop answering HTTP after N accepted prompts (0: never)")
	nodes := fs.String("nodes", "", "comma-separated node classes it has (default: every class it implements)")
	models := fs.String("models", "", "comma-separated model files as folder/file (e.g. upscale_models/4x.pth); a folder named here lists only these")
	modelLoad := fs.Duration("model-load", 0, "time a loader takes the first time it loads a model file")
	modelSlots := fs.Int("model-slots", 0, "model files kept loaded at once (0: no limit)")
	instances := fs.Int("instances", 1, "simulated instances in this process, on consecutive ports from -listen's (port 0: each on a free port)")
	verbose := fs.Bool("v", false, "log requests and prompts to stderr")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("sim: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("sim: unexpected arguments %q", fs.Args())
	}
	var logger *slog.Logger
	if *verbose {
		logger = slog.Default()
	}
	if *instances < 1 {
		return fmt.Errorf("sim: -instances %d: want at least 1", *instances)
	}
	host, portText, err := net.SplitHostPort(*listen)
	if err != nil {
		return fmt.Errorf("sim: -listen %q: %w", *listen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 0 || port+*instances-1 > 65535 {
		return fmt.Errorf("sim: -listen %q: want a port from 0 to %d for %d instances", *listen, 65536-*instances, *instances)
	}
	var servers []*Server
	defer func() {
		for _, s := range servers {
			_ = s.Close()
		}
	}()
	for i := range *instances {
		dir := func(d string) string {
			if d == "" || *instances == 1 {
				return d
			}
			return filepath.Join(d, strconv.Itoa(i))
		}
		s, err := New(Options{
			InputDir: dir(*inputDir), OutputDir: dir(*outputDir), TempDir: dir(*tempDir),
			Delay: *delay, Steps: *steps, Version: *version,
			EnableCORSHeader: *cors, FailAfter: *failAfter, Logger: logger,
			Nodes: splitList(*nodes), Models: modelList(*models),
			ModelLoadTime: *modelLoad, ModelSlots: *modelSlots,
		})
		if err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		servers = append(servers, s)
		p := port
		if port != 0 {
			p = port + i
		}
		if err := s.Start(net.JoinHostPort(host, strconv.Itoa(p))); err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		fmt.Fprintf(stdout, "comfysim (ComfyUI %s) listening on %s\ninput: %s\noutput: %s\n", s.Version(), s.URL(), s.InputDir(), s.OutputDir())
	}
	<-ctx.Done()
	var errs []error
	for _, s := range servers {
		errs = append(errs, s.Close())
	}
	servers = nil
	return errors.Join(errs...)
}

// splitList splits a comma-separated flag; nil when empty.
func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// modelList reads "folder/file,..." into files per folder; nil when empty.
func modelList(s string) map[string][]string {
	var out map[string][]string
	for _, x := range splitList(s) {
		folder, file, ok := strings.Cut(x, "/")
		if !ok || folder == "" || file == "" {
			continue
		}
		if out == nil {
			out = map[string][]string{}
		}
		out[folder] = append(out[folder], file)
	}
	return out
}
