package jobs

import (
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/catalogue"
	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/placement"
	"github.com/comfygate/comfygate/upstream"
)

// fakePlacer refuses prompts that use class, and places the rest on
// their labels.
type fakePlacer struct {
	class string
	be    backend
}

func (f fakePlacer) Place(r placement.Request) (placement.Decision, *placement.Refusal) {
	for _, nd := range catalogue.PromptNeeds(r.Graph).Nodes {
		if nd.Class == f.class {
			return placement.Decision{}, &placement.Refusal{Labels: r.Labels, Verdict: catalogue.Verdict{Nowhere: []string{`node class "` + f.class + `"`}}}
		}
	}
	return placement.New(f.be, nil, -1, nil).Place(r)
}

func (fakePlacer) Ran(*upstream.Instance, placement.Decision) {}

// TestWorkflowLabelsAndPlacement: a workflow with labels runs only on
// instances carrying them; a workflow no instance can run fails with why.
func TestWorkflowLabelsAndPlacement(t *testing.T) {
	t.Parallel()
	h := newHarnessWith(t, 3, comfysim.Options{Delay: 0}, func(c *config.Config) {
		c.Instances[2].Labels = map[string]string{"pool": "upscale"}
		c.Workflows = map[string]config.Workflow{"upscale-image": {Labels: map[string]string{"pool": "upscale"}}}
	}, func(s *Service) { s.SetPlacer(fakePlacer{class: "Image Rembg (Remove Background)", be: s.eng.be}) })
	img := testPNG(t, 8, 8)
	for range 4 {
		v := h.waitStatus(h.submit("/api/upscale-image", img, nil), 20*time.Second, statusCompleted, statusFailed)
		if v.Status != statusCompleted || v.Instance == nil || *v.Instance != "sim3" {
			t.Fatalf("labelled workflow: status %s on %v, want completed on sim3", v.Status, deref(v.Instance))
		}
	}
	v := h.waitStatus(h.submit("/api/remove-background", img, nil), 20*time.Second, statusCompleted, statusFailed)
	if v.Status != statusFailed || !strings.Contains(deref(v.Error), "no instance can run workflow remove-background") {
		t.Fatalf("unrunnable workflow: %s %q", v.Status, deref(v.Error))
	}
}
