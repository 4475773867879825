// Package logging builds comfygate's structured logger: log/slog, JSON by
// default (text for a terminal), every line carrying service=comfygate, and,
// when a directory is configured, combined.log (every line) and error.log
// (errors only) there, rotated by size with lumberjack.
package logging

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/natefinch/lumberjack.v2"
)

// Service is the value of the "service" attribute on every line.
const Service = "comfygate"

// File names written in Config.Directory.
const (
	CombinedFile = "combined.log"
	ErrorFile    = "error.log"
)

// Config configures New. The zero value logs JSON at info level to stdout.
type Config struct {
	// Level is debug, info, warn or error (LOG_LEVEL). Default info.
	Level string
	// Format of the Stdout stream: json or text (LOG_FORMAT). Default json.
	// Files are always JSON, for log shippers.
	Format string
	// Directory, when set, also receives combined.log and error.log
	// (LOG_DIRECTORY). It is created if missing. Empty: stdout only.
	Directory string
	// MaxSizeMB is the size in megabytes at which a log file is rotated.
	// 0: lumberjack's default, 100.
	MaxSizeMB int
	// MaxBackups is how many rotated files to keep per log. 0: all.
	MaxBackups int
	// MaxAgeDays is how many days to keep rotated files. 0: no age limit.
	MaxAgeDays int
	// Stdout receives every line in Format. Nil: os.Stdout.
	Stdout io.Writer
}

// Files is the io.Closer New returns. Close flushes nothing (writes are
// unbuffered) and closes the log files; Rotate starts new files, e.g. on
// SIGHUP. Both do nothing when no Directory was configured.
type Files struct {
	files []*lumberjack.Logger
}

// Close closes the log files. The logger must not be used afterwards
// with files (lumberjack would reopen them).
func (f *Files) Close() error {
	if f == nil {
		return nil
	}
	var errs []error
	for _, l := range f.files {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// Rotate moves the current log files aside and starts new ones.
func (f *Files) Rotate() error {
	if f == nil {
		return nil
	}
	var errs []error
	for _, l := range f.files {
		errs = append(errs, l.Rotate())
	}
	return errors.Join(errs...)
}

// ParseLevel turns debug, info, warn (or warning) and error into a level;
// "" is info.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
}

// New builds the logger described by cfg. The returned Closer (a *Files)
// closes the log files; call it last, at shutdown.
func New(cfg Config) (*slog.Logger, io.Closer, error) {
	level, err := ParseLevel(cfg.Level)
	if err != nil {
		return nil, nil, err
	}
	out := cfg.Stdout
	if out == nil {
		out = os.Stdout
	}
	opts := &slog.HandlerOptions{Level: level}
	var handlers []slog.Handler
	switch strings.ToLower(strings.TrimSpace(cfg.Format)) {
	case "", "json":
		handlers = append(handlers, slog.NewJSONHandler(out, opts))
	case "text":
		handlers = append(handlers, slog.NewTextHandler(out, opts))
	default:
		return nil, nil, fmt.Errorf("log format %q: want json or text", cfg.Format)
	}

	files := &Files{}
	if cfg.Directory != "" {
		if err := os.MkdirAll(cfg.Directory, 0o755); err != nil {
			return nil, nil, fmt.Errorf("log directory: %w", err)
		}
		for _, f := range []struct {
			name  string
			level slog.Level
		}{
			{CombinedFile, level},
			{ErrorFile, max(level, slog.LevelError)},
		} {
			lj := &lumberjack.Logger{
				Filename:   filepath.Join(cfg.Directory, f.name),
				MaxSize:    cfg.MaxSizeMB,
				MaxBackups: cfg.MaxBackups,
				MaxAge:     cfg.MaxAgeDays,
			}
			// Why an empty write: lumberjack opens lazily; opening now makes
			// the files appear at start-up and a bad directory fail fast.
			if _, err := lj.Write(nil); err != nil {
				_ = files.Close()
				return nil, nil, fmt.Errorf("log file %s: %w", lj.Filename, err)
			}
			files.files = append(files.files, lj)
			handlers = append(handlers, slog.NewJSONHandler(lj, &slog.HandlerOptions{Level: f.level}))
		}
	}

	var h slog.Handler = handlers[0]
	if len(handlers) > 1 {
		h = fanout(handlers)
	}
	return slog.New(h).With(slog.String("service", Service)), files, nil
}

// fanout sends each record to every handler that is enabled for its level.
type fanout []slog.Handler

func (f fanout) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range f {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, h := range f {
		if h.Enabled(ctx, r.Level) {
			errs = append(errs, h.Handle(ctx, r.Clone()))
		}
	}
	return errors.Join(errs...)
}

func (f fanout) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithAttrs(attrs)
	}
	return out
}

func (f fanout) WithGroup(name string) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithGroup(name)
	}
	return out
}

// Err returns the attribute to log err with: a group "error" holding its
// message ("msg"), its dynamic type ("type") and, when it wraps other
// errors, the cause chain ("chain": each cause as "type: message", outermost
// first, joined errors depth-first). A nil err gives an empty attribute,
// which handlers drop.
//
//	logger.Error("forward prompt", logging.Err(err))
func Err(err error) slog.Attr {
	if err == nil {
		return slog.Attr{}
	}
	attrs := []any{
		slog.String("msg", err.Error()),
		slog.String("type", fmt.Sprintf("%T", err)),
	}
	if chain := causes(err); len(chain) > 0 {
		attrs = append(attrs, slog.Any("chain", chain))
	}
	return slog.Group("error", attrs...)
}

// maxChain bounds the chain so a cyclic or pathological Unwrap cannot hang
// or flood a log line.
const maxChain = 32

// causes lists what err wraps, outermost first, as "type: message".
func causes(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		var next []error
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			if n := u.Unwrap(); n != nil {
				next = []error{n}
			}
		case interface{ Unwrap() []error }:
			next = u.Unwrap()
		}
		for _, n := range next {
			if n == nil || len(out) >= maxChain {
				continue
			}
			out = append(out, fmt.Sprintf("%T: %s", n, n.Error()))
			walk(n)
		}
	}
	walk(err)
	return out
}
