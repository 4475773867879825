package testkit

import (
	"os"
	"os/exec"
	"testing"
)

// Tool returns the path of the first of names on the PATH: a real
// program a test runs (Debian's package pkg). Without it the test is
// skipped, saying why it needs it, unless CI is set: .ci/run installs
// every such package, so there a missing one fails the test instead of
// letting it pass unseen.
func Tool(t testing.TB, pkg, why string, names ...string) string {
	t.Helper()
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := pkg + " is not installed (apt-get install " + pkg + "): " + why
	if ci := os.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
		t.Fatal("CI is set and " + msg + "; .ci/run installs it")
		return ""
	}
	t.Skip(msg)
	return ""
}
