package prompts

import (
	"testing"

	"github.com/comfygate/comfygate/internal/testkit"
)

// TestRunning: what an instance runs follows its socket's events: the
// prompt's client-facing id once it starts, the node and its progress,
// a new node resets the progress, and nothing once the prompt ended.
func TestRunning(t *testing.T) {
	t.Parallel()
	f := testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f)
	inst := p.Instances()[0]
	if r, ok := p.prompts.Running(inst); ok {
		t.Fatalf("idle instance runs %+v", r)
	}
	id := newUUID()
	res := submit(t, p, id, newRecSink())
	uid := upstreamIDOf(t, res)
	running := func(what string, want func(Running) bool) {
		t.Helper()
		var last Running
		testkit.Eventually(t, what, func() bool {
			r, ok := p.prompts.Running(inst)
			last = r
			return ok && want(r)
		})
		if last.PromptID != id || last.Since.IsZero() {
			t.Errorf("%s: %+v, want prompt %s with its start", what, last, id)
		}
	}
	f.Start(uid)
	running("running on node 1", func(r Running) bool { return r.Node == "1" && r.Max == 0 })
	f.Emit(`{"type": "progress", "data": {"value": 3, "max": 8, "prompt_id": %q, "node": "1"}}`, uid)
	running("progress 3/8", func(r Running) bool { return r.Value == 3 && r.Max == 8 })
	f.Emit(`{"type": "executing", "data": {"node": "9", "display_node": "9", "prompt_id": %q}}`, uid)
	running("node 9, progress reset", func(r Running) bool { return r.Node == "9" && r.Value == 0 && r.Max == 0 })
	f.Finish(uid, "out.png")
	testkit.Eventually(t, "nothing running after the end", func() bool {
		_, ok := p.prompts.Running(inst)
		return !ok
	})
}
