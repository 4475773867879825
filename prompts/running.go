package prompts

import (
	"time"

	"github.com/comfygate/comfygate/upstream"
)

// Running is what one instance is executing, as its event socket reports it.
type Running struct {
	// PromptID is the client-facing prompt id ("" for a prompt comfygate
	// does not know: one of an earlier process).
	PromptID string
	// Since is when its execution_start (or first event) arrived.
	Since time.Time
	// Node is the node executing ("" before the first executing message).
	Node string
	// Value and Max are that node's last progress message (0 when none).
	Value, Max float64
}

// Running returns what inst is executing now; ok is false when it runs
// nothing of comfygate's, or its socket is not open.
func (t *Table) Running(inst *upstream.Instance) (r Running, ok bool) {
	s := t.owners.get(inst)
	if s == nil {
		return Running{}, false
	}
	// Asked of the owner, whose fields these are.
	var uid string
	s.box.do(func() {
		uid = s.running
		r = Running{Since: s.runSince, Node: s.runNode, Value: s.runValue, Max: s.runMax}
	})
	if uid == "" {
		return Running{}, false
	}
	if pr := t.idx.getUpstream(inst, uid); pr != nil {
		r.PromptID = pr.ID
	}
	return r, true
}
