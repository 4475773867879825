package prompts

import (
	"testing"

	"github.com/comfygate/comfygate/internal/comfyapi"
)

// TestRunningAfter: the prompt a socket's instance executes, followed
// frame by frame as the instance's own socket and a borrowed one do; the
// re-sync `executing` that names no prompt is given the running one's id.
func TestRunningAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc     string
		running  string
		msg      string
		want     string
		wantUID  string
		wantNull bool
	}{
		{"execution_start", "", `{"type": "execution_start", "data": {"prompt_id": "p1", "timestamp": 1}}`, "p1", "p1", false},
		{"executing a node", "", `{"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": "p1"}}`, "p1", "p1", false},
		{"the re-sync names no prompt", "p1", `{"type": "executing", "data": {"node": "3"}}`, "p1", "p1", false},
		{"executing null ends it", "p1", `{"type": "executing", "data": {"node": null, "prompt_id": "p1"}}`, "", "p1", true},
		{"executing null of another", "p2", `{"type": "executing", "data": {"node": null, "prompt_id": "p1"}}`, "p2", "p1", true},
		{"execution_success ends it", "p1", `{"type": "execution_success", "data": {"prompt_id": "p1", "timestamp": 1}}`, "", "p1", false},
		{"execution_interrupted ends it", "p1", `{"type": "execution_interrupted", "data": {"prompt_id": "p1", "node_id": "3", "node_type": "X", "executed": [], "timestamp": 1}}`, "", "p1", false},
		{"a blocker's execution_error does not", "p1", `{"type": "execution_error", "data": {"prompt_id": "p1", "exception_type": "` + comfyapi.ExceptionExecutionBlocked + `"}}`, "p1", "p1", false},
		{"execution_error ends it", "p1", `{"type": "execution_error", "data": {"prompt_id": "p1", "exception_type": "RuntimeError"}}`, "", "p1", false},
		{"progress leaves it", "p1", `{"type": "progress", "data": {"value": 1, "max": 4, "prompt_id": "p1", "node": "3"}}`, "p1", "p1", false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			msg, err := comfyapi.ParseWSText([]byte(tc.msg))
			if err != nil {
				t.Fatal(err)
			}
			f := textFrame(msg, []byte(tc.msg))
			got := runningAfter(tc.running, &f)
			// nodeNull means something for `executing` only.
			if got != tc.want || f.uid != tc.wantUID || (f.typ == comfyapi.TypeExecuting && f.nodeNull != tc.wantNull) {
				t.Errorf("running %q, frame uid %q null %v; want %q, %q, %v", got, f.uid, f.nodeNull, tc.want, tc.wantUID, tc.wantNull)
			}
		})
	}
}
