package preflight

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/state"
)

// ExitError ends a command with Code, its reasons already written to
// stderr: 1 for what the command found wrong, 2 for a usage mistake.
type ExitError struct{ Code int }

func (e ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Command is `comfygate check [-config FILE] [-connect]`: it checks the
// configuration file and the environment as start-up does (Read) and
// writes every problem to stderr, one per line starting with its key. A
// valid configuration gets one summary line on stdout. With -connect it
// then reaches every instance (Connect): one line each, on stdout for an
// instance that answered and whose catalogue was read, else on stderr.
// It returns nil when all is well, else an ExitError.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("comfygate check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "configuration file (YAML); default: built-in defaults")
	connect := fs.Bool("connect", false, "also reach every instance: version, health, catalogue")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: comfygate check [-config FILE] [-connect]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return ExitError{Code: 2}
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "comfygate check: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return ExitError{Code: 2}
	}
	name := *configPath
	if name == "" {
		name = "built-in defaults"
	}

	cfg, err := Read(*configPath, nil)
	if err != nil {
		for _, e := range Errors(err) {
			fmt.Fprintln(stderr, oneLine(e.Error()))
		}
		return ExitError{Code: 1}
	}
	noun := "instances"
	if len(cfg.Instances) == 1 {
		noun = "instance"
	}
	fmt.Fprintf(stdout, "%s: valid, %d %s\n", name, len(cfg.Instances), noun)
	if !*connect {
		return nil
	}
	failed := false
	for _, r := range Connect(ctx, cfg) {
		if r.OK() {
			fmt.Fprintln(stdout, r)
		} else {
			failed = true
			fmt.Fprintln(stderr, r)
		}
	}
	if cfg.State.URL != "" {
		if line, err := reachState(ctx, cfg.State); err != nil {
			failed = true
			fmt.Fprintln(stderr, oneLine(err.Error()))
		} else {
			fmt.Fprintln(stdout, line)
		}
	}
	if failed {
		return ExitError{Code: 1}
	}
	return nil
}

// reachState opens the shared state store as start-up does (a PING
// within its bound) and says what answered.
func reachState(ctx context.Context, cfg config.State) (string, error) {
	st, err := state.Open(ctx, cfg)
	if err != nil {
		return "", err
	}
	defer st.Close()
	return "state.url: redis at " + st.Addr() + " answered", nil
}

// ConfigCommand is `comfygate config defaults`: it writes defaults, the
// documented default config.yaml the binary carries.
func ConfigCommand(args []string, defaults []byte, stdout, stderr io.Writer) error {
	if len(args) != 1 || args[0] != "defaults" {
		fmt.Fprintln(stderr, "usage: comfygate config defaults   (print the documented default config.yaml)")
		return ExitError{Code: 2}
	}
	_, err := stdout.Write(defaults)
	return err
}
