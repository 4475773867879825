package preflight

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
)

// writeConfig writes body as config.yaml in a fresh directory; the job
// state directory goes to another fresh one unless body sets it.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	if !strings.Contains(body, "state_dir") {
		body += "jobs:\n  state_dir: " + filepath.Join(t.TempDir(), "jobs") + "\n"
	}
	p := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// check runs the command and returns its exit code and outputs.
func check(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := Command(context.Background(), args, &out, &errOut)
	var exit ExitError
	switch {
	case err == nil:
		code = 0
	case errors.As(err, &exit):
		code = exit.Code
	default:
		t.Fatalf("Command returned %v, want nil or an ExitError", err)
	}
	return code, out.String(), errOut.String()
}

func TestCheckValidConfigSaysSoOnOneLine(t *testing.T) {
	t.Parallel()
	p := writeConfig(t, "instances:\n  - {name: a, address: \"127.0.0.1:8188\"}\n  - {name: b, address: \"http://gpu1:8188\"}\n")
	code, out, errOut := check(t, "-config", p)
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q; want 0 and nothing", code, errOut)
	}
	if want := p + ": valid, 2 instances\n"; out != want {
		t.Fatalf("stdout %q, want %q", out, want)
	}
}

// TestCheckPrintsEveryErrorWithItsKey gives mistakes found at every stage
// of start-up (YAML types, unknown keys, environment, validation, the API
// keys file, a workflow file, directories): each is one line of stderr
// starting with its key, and the exit code is 1.
func TestCheckPrintsEveryErrorWithItsKey(t *testing.T) {
	dir := t.TempDir()
	notADir := filepath.Join(dir, "file")
	if err := os.WriteFile(notADir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys"), []byte("alice sha256:abcd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "wf.json"), []byte("[1, 2]"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "config.yaml")
	body := fmt.Sprintf(`timeout: soon
health_check:
  intervl: 5s
  unhealthy_threshold: 0
instances:
  - address: "ftp://x:1"
log:
  level: loud
auth:
  keys_file: keys
workflows:
  mine:
    file: wf.json
    output_node: "9"
jobs:
  state_dir: %s
`, filepath.Join(notADir, "jobs"))
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MAX_CONCURRENT_JOBS", "many")

	code, out, errOut := check(t, "-config", p)
	if code != 1 || out != "" {
		t.Fatalf("exit %d, stdout %q; want 1 and nothing", code, out)
	}
	lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
	want := []string{
		"timeout",
		"health_check.intervl",
		"MAX_CONCURRENT_JOBS",
		"instances[0].address",
		"health_check.unhealthy_threshold",
		"log.level (LOG_LEVEL)",
		"auth.keys_file",
		"workflows.mine",
		"jobs.state_dir (COMFYGATE_STATE_DIR)",
	}
	for _, key := range want {
		n := 0
		for _, l := range lines {
			if strings.HasPrefix(l, key+": ") {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d lines start with %q, want 1", n, key+": ")
		}
	}
	if len(lines) != len(want) {
		t.Errorf("%d lines, want %d (one per mistake)", len(lines), len(want))
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", errOut)
	}
}

func TestCheckUsageMistakesExitTwo(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-nope"}, {"extra"}, {"-config"}} {
		code, out, errOut := check(t, args...)
		if code != 2 || out != "" || !strings.Contains(errOut, "usage: comfygate check") {
			t.Errorf("check %q: exit %d, stdout %q, stderr %q; want 2 and the usage on stderr", args, code, out, errOut)
		}
	}
	var out, errOut bytes.Buffer
	if err := ConfigCommand([]string{"default"}, []byte("x"), &out, &errOut); !errors.Is(err, ExitError{Code: 2}) || out.Len() != 0 {
		t.Errorf("config default: %v, stdout %q; want exit 2 and nothing", err, out.String())
	}
}

func TestCheckDoesNotConnectUnlessAsked(t *testing.T) {
	t.Parallel()
	p := writeConfig(t, fmt.Sprintf("instances:\n  - address: %q\n", testkit.ClosedAddr(t)))
	if code, out, errOut := check(t, "-config", p); code != 0 || strings.Count(out, "\n") != 1 || errOut != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and only the summary", code, out, errOut)
	}
}

// nodeClasses counts the node classes a simulator's /object_info lists,
// read directly.
func nodeClasses(t *testing.T, s *comfysim.Server) int {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr() + "/object_info")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil || len(m) == 0 {
		t.Fatalf("object_info of the simulator: %v (%d classes)", err, len(m))
	}
	return len(m)
}

func TestCheckConnectReportsEveryInstance(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{Version: "0.3.60"})
	b := testkit.Sim(t, comfysim.Options{Version: "0.3.65"})
	classes := nodeClasses(t, a)
	p := writeConfig(t, fmt.Sprintf("instances:\n  - {name: sim-a, address: %q}\n  - {name: sim-b, address: \"http://%s\"}\n", a.Addr(), b.Addr()))

	code, out, errOut := check(t, "-config", p, "-connect")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q; want 0 and nothing\nstdout:\n%s", code, errOut, out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 3 || lines[0] != p+": valid, 2 instances" {
		t.Fatalf("stdout:\n%s\nwant the summary and one line per instance", out)
	}
	for i, want := range []struct{ name, version string }{{"sim-a", a.Version()}, {"sim-b", b.Version()}} {
		re := regexp.MustCompile(fmt.Sprintf(`^instances\[%d\] %s \(127\.0\.0\.1:\d+\): ComfyUI %s, health answered, %d node classes, \d+ model files in [1-9]\d* folders$`,
			i, want.name, regexp.QuoteMeta(want.version), classes))
		if !re.MatchString(lines[i+1]) {
			t.Errorf("line %q does not match %s", lines[i+1], re)
		}
	}
}

// TestCheckConnectReachesTheStateStore: with state.url, -connect PINGs
// the Redis server as start-up would, and fails naming state.url when it
// does not answer.
func TestCheckConnectReachesTheStateStore(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{})
	url := testkit.Redis(t)
	p := writeConfig(t, fmt.Sprintf("instances:\n  - {name: sim-a, address: %q}\nstate:\n  url: %q\n", a.Addr(), url))
	code, out, errOut := check(t, "-config", p, "-connect")
	if code != 0 || !strings.Contains(out, "state.url: redis at "+strings.TrimPrefix(url, "redis://")+" answered") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	p = writeConfig(t, fmt.Sprintf("instances:\n  - {name: sim-a, address: %q}\nstate:\n  url: \"redis://:pw-not-shown@%s\"\n", a.Addr(), testkit.ClosedAddr(t)))
	code, out, errOut = check(t, "-config", p, "-connect")
	if code != 1 || !strings.HasPrefix(errOut, "state.url: ") || strings.Contains(errOut+out, "pw-not-shown") {
		t.Fatalf("unreachable store: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

func TestCheckConnectFailsOnAnInstanceThatDoesNotAnswer(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{})
	closed := testkit.ClosedAddr(t)
	failing := testkit.Mini(t, "0.3.65")
	failing.Fail500.Store(true)
	p := writeConfig(t, fmt.Sprintf("instances:\n  - {name: up, address: %q}\n  - {name: down, address: %q}\n  - {name: sick, address: %q}\n",
		a.Addr(), closed, failing.Addr()))

	code, out, errOut := check(t, "-config", p, "-connect")
	if code != 1 {
		t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "instances[0] up (") || !strings.Contains(out, "ComfyUI "+a.Version()+", health answered") {
		t.Errorf("stdout does not report the instance that answered:\n%s", out)
	}
	if strings.Contains(out, "down") || strings.Contains(out, "sick") {
		t.Errorf("stdout reports an instance that failed:\n%s", out)
	}
	lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "instances[1] down ("+closed+"): unreachable: ") ||
		lines[1] != "instances[2] sick ("+failing.Addr()+"): health error: system_stats: status 500" {
		t.Errorf("stderr:\n%s\nwant instances[1] down (%s): unreachable: ... and instances[2] sick (%s): health error: system_stats: status 500",
			errOut, closed, failing.Addr())
	}
}

func TestWritableDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		desc, dir string
		ok        bool
	}{
		{"existing directory", dir, true},
		{"to be created below one", filepath.Join(dir, "a", "b"), true},
		{"a file", file, false},
		{"below a file", filepath.Join(file, "x"), false},
	}
	for _, tc := range cases {
		err := writableDir("k", tc.dir)
		if (err == nil) != tc.ok || err != nil && !strings.HasPrefix(err.Error(), "k: ") {
			t.Errorf("%s: writableDir = %v, want ok=%v and an error starting with its key", tc.desc, err, tc.ok)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("writableDir created the directory: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("writableDir left files behind: %v", entries)
	}
}

// TestCheckConnectReachesDiscoveredAddresses: a discover entry is reached
// at each address its name resolves to, named as the pool names them (an
// IP literal resolves to itself, so no DNS is needed).
func TestCheckConnectReachesDiscoveredAddresses(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{})
	p := writeConfig(t, fmt.Sprintf("instances:\n  - {name: fleet, address: %q, discover: true}\n", a.Addr()))
	code, out, errOut := check(t, "-config", p, "-connect")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q; want 0 and nothing", code, errOut)
	}
	if want := "instances[0] fleet/127.0.0.1 (" + a.Addr() + "): ComfyUI " + a.Version() + ", health answered"; !strings.Contains(out, want) {
		t.Fatalf("stdout:\n%s\nwant a line with %q", out, want)
	}
}
