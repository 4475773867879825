package comfysim

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// Command is `comfygate sim`: it runs one simulated ComfyUI until ctx is
// cancelled, printing its URL to stdout once it listens.
//
// Flags: -listen (default 127.0.0.1:8188), -input-dir, -output-dir, -temp-dir
// (temporary directories by default), -delay (per image node, default 100ms),
// -steps (progress steps per heavy node, default 4), -comfy-version (default
// 0.3.65), -enable-cors-header, -fail-after N (wedge HTTP after N accepted
// prompts), -v (logs through slog.Default).
// default slog handler).
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
	s, err := New(Options{
		InputDir: *inputDir, OutputDir: *outputDir, TempDir: *tempDir,
		Delay: *delay, Steps: *steps, Version: *version,
		EnableCORSHeader: *cors, FailAfter: *failAfter, Logger: logger,
	})
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	if err := s.Start(*listen); err != nil {
		_ = s.Close()
		return fmt.Errorf("sim: %w", err)
	}
	fmt.Fprintf(stdout, "comfysim (ComfyUI %s) listening on %s\ninput: %s\noutput: %s\n", s.Version(), s.URL(), s.InputDir(), s.OutputDir())
	<-ctx.Done()
	return s.Close()
}
