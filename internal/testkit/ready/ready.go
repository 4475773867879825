// Package ready reports an upstream pool's instances as testkit.Start's
// wait for a ready fleet sees them. It is a package of its own because
// testkit cannot import upstream (upstream's own tests import testkit);
// the tests of prompts, jobs and proxy, and internal/testkit/stack, pass
// States as their Wiring's Instances.
package ready

import (
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/upstream"
)

// States is p's instances: healthy, available, event socket up.
func States(p *upstream.Pool) []testkit.InstanceState {
	insts := p.Instances()
	out := make([]testkit.InstanceState, len(insts))
	for i, inst := range insts {
		out[i] = testkit.InstanceState{Name: inst.Name, Healthy: inst.State().Healthy(), Available: inst.Available(), SocketUp: inst.Status().SocketUp}
	}
	return out
}
