package testkit

import (
	"testing"
)

// toolTB records how Tool ended a test: skipped or failed, and with what.
type toolTB struct {
	testing.TB
	skipped, failed string
}

func (f *toolTB) Helper()           {}
func (f *toolTB) Skip(args ...any)  { f.skipped = args[0].(string) }
func (f *toolTB) Fatal(args ...any) { f.failed = args[0].(string) }

// TestTool: a program on the PATH is found by any of its names; a missing
// one skips the test, saying what to install, unless CI is set, where it
// fails it.
func TestTool(t *testing.T) {
	if p := Tool(t, "coreutils", "a test", "no-such-program-comfygate", "sh"); p == "" {
		t.Fatal("sh not found on the PATH by its second name")
	}
	t.Setenv("CI", "")
	skipped := &toolTB{TB: t}
	Tool(skipped, "no-such-package", "the test needs it", "no-such-program-comfygate")
	if skipped.failed != "" || skipped.skipped != "no-such-package is not installed (apt-get install no-such-package): the test needs it" {
		t.Errorf("without CI: skipped %q, failed %q", skipped.skipped, skipped.failed)
	}
	t.Setenv("CI", "true")
	failed := &toolTB{TB: t}
	Tool(failed, "no-such-package", "the test needs it", "no-such-program-comfygate")
	if failed.skipped != "" || failed.failed == "" {
		t.Errorf("with CI: skipped %q, failed %q", failed.skipped, failed.failed)
	}
}
