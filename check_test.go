package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/preflight"
	"go.yaml.in/yaml/v3"
)

// TestConfigDefaultsPrintsTheDefaults checks that `comfygate config
// defaults` prints the repository's config.yaml and that it holds exactly
// config.Default(): every key the YAML schema has, with the same value.
func TestConfigDefaultsPrintsTheDefaults(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"config", "defaults"}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), onDisk) {
		t.Fatal("config defaults does not print the repository's config.yaml")
	}
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := config.Load(p, []string{})
	if err != nil {
		t.Fatalf("the printed defaults do not load: %v", err)
	}
	want := config.Default()
	got.Dir = want.Dir
	// Marshalled, an absent list and an empty one are the same document.
	g, err := yaml.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := yaml.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g, w) {
		t.Fatalf("config.yaml and config.Default() differ:\nconfig.yaml:\n%s\nDefault():\n%s", g, w)
	}
}

func TestCheckAndConfigAreDispatched(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"check", "-config", filepath.Join(t.TempDir(), "missing.yaml")}, &out, &errOut)
	var exit preflight.ExitError
	if !errors.As(err, &exit) || exit.Code != 1 || !strings.Contains(errOut.String(), "missing.yaml") {
		t.Fatalf("check of a missing file: %v, stderr %q; want exit 1 naming the file", err, errOut.String())
	}
	err = run(context.Background(), []string{"config"}, &out, &errOut)
	if !errors.As(err, &exit) || exit.Code != 2 {
		t.Fatalf("config without a subcommand: %v; want exit 2", err)
	}
}

// TestCheckExitCodes runs the built binary: the exit codes are what
// scripts and CI see.
func TestCheckExitCodes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "comfygate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body+"jobs:\n  state_dir: "+filepath.Join(dir, "jobs")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	valid := write("valid.yaml", "instances:\n  - address: 127.0.0.1:8188\n")
	invalid := write("invalid.yaml", "listen: nowhere\nlog:\n  format: xml\n")
	cases := []struct {
		desc       string
		args       []string
		code       int
		stdout     string
		errorLines int
	}{
		{"valid", []string{"check", "-config", valid}, 0, valid + ": valid, 1 instance\n", 0},
		{"invalid", []string{"check", "-config", invalid}, 1, "", 2},
		{"unknown flag", []string{"check", "-frobnicate"}, 2, "", -1},
		{"unknown config subcommand", []string{"config", "show"}, 2, "", -1},
	}
	for _, tc := range cases {
		cmd := exec.Command(bin, tc.args...)
		cmd.Env = []string{} // no overrides from the test's environment
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", tc.desc, err)
		}
		if code != tc.code || stdout.String() != tc.stdout {
			t.Errorf("%s: exit %d, stdout %q; want %d, %q (stderr %q)", tc.desc, code, stdout.String(), tc.code, tc.stdout, stderr.String())
		}
		if tc.errorLines >= 0 && strings.Count(stderr.String(), "\n") != tc.errorLines {
			t.Errorf("%s: stderr %q, want %d lines", tc.desc, stderr.String(), tc.errorLines)
		}
	}

	cmd := exec.Command(bin, "config", "defaults")
	cmd.Env = []string{}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("config defaults: %v", err)
	}
	if onDisk, _ := os.ReadFile("config.yaml"); !bytes.Equal(out, onDisk) {
		t.Error("the binary's config defaults is not the repository's config.yaml")
	}
}
