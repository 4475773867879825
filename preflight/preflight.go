// Package preflight checks a configuration and its environment the way
// comfygate's start-up does, without serving anything. Start-up loads its
// configuration through Load, and `comfygate check` (Command) through
// Read, so the two cannot disagree on what is valid. With -connect the
// check also reaches every configured instance (Connect).
package preflight

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/comfygate/comfygate/auth"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/jobs"
)

// Load reads the configuration at path (empty: the built-in defaults)
// with the environment overrides of environ (nil: the process's) and runs
// every check start-up makes before it serves. The error joins every
// problem found, each starting with its key; the configuration is nil
// whenever there is one.
func Load(path string, environ []string) (*config.Config, error) {
	cfg, err := Read(path, environ)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// Read is Load that returns the configuration it read even when it finds
// problems (nil only when the file cannot be read as YAML), for a caller
// that reports them. Besides config.Read's keys and values it checks:
// the API keys (COMFYGATE_*_KEYS and auth.keys_file), the job workflows,
// S3 and the default webhook URL (jobs.Check), and that the log and job
// state directories can be created and written. It binds no address:
// listen and metrics_listen may be in use by the comfygate being checked.
func Read(path string, environ []string) (*config.Config, error) {
	cfg, err := config.Read(path, environ)
	if cfg == nil {
		return nil, err
	}
	errs := []error{err}
	if _, err := auth.Load(cfg); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, jobs.Check(cfg))
	if d := cfg.Log.Directory; d != "" {
		errs = append(errs, writableDir("log.directory (LOG_DIRECTORY)", d))
	}
	if d := cfg.Jobs.StateDir; d != "" {
		errs = append(errs, writableDir("jobs.state_dir (COMFYGATE_STATE_DIR)", d))
	}
	// The same mistake can be found by two checks (a workflow setting is
	// checked by config and by jobs): each message is reported once.
	var out []error
	seen := map[string]bool{}
	for _, e := range Errors(errors.Join(errs...)) {
		if msg := e.Error(); !seen[msg] {
			seen[msg] = true
			out = append(out, e)
		}
	}
	return cfg, errors.Join(out...)
}

// Errors returns the problems err holds, one per error joined into it
// (errors.Join, at any depth); nil for nil.
func Errors(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, Errors(e)...)
		}
		return out
	}
	return []error{err}
}

// writableDir reports whether start-up can create dir (os.MkdirAll) and
// write in it: dir must be a directory if it exists, and the nearest
// directory that exists, dir or above it, must take a new file (one is
// created and removed again).
func writableDir(key, dir string) error {
	p := dir
	for {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s: %q: %s is not a directory", key, dir, p)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %q: %w", key, dir, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("%s: %q: %w", key, dir, err)
		}
		p = parent
	}
	f, err := os.CreateTemp(p, ".comfygate-check-*")
	if err != nil {
		what := "not writable"
		if p != dir {
			what = "cannot be created"
		}
		return fmt.Errorf("%s: %q %s: %w", key, dir, what, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// oneLine makes a message one line: what a wrapped multi-line error
// holds is joined with "; ".
func oneLine(msg string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", " ; ")), " ")
}
