package jobs

import (
	"encoding/json"
	"sync"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/placement"
	"github.com/comfygate/comfygate/upstream"
)

// Placer is the placement policy (placement.Policy, the one the proxy's
// POST /prompt uses): where a job's prompt may run (its workflow's labels,
// the fleet's catalogue) and had better run (model affinity).
type Placer interface {
	Place(placement.Request) (placement.Decision, *placement.Refusal)
	Ran(*upstream.Instance, placement.Decision)
}

// catalog holds the workflows jobs run (replaced whole by a reload) and
// the placement policy their prompts are placed with.
type catalog struct {
	be backend
	// wfsMu guards wfs, which a reload replaces (LoadWorkflows); a job
	// keeps the workflow it was accepted with.
	wfsMu sync.RWMutex
	wfs   map[string]*workflow
	// placer places prompts (SetPlacer); nil: on labels only.
	placer Placer
}

// workflows returns the current workflows (do not modify the map).
func (s *catalog) workflows() map[string]*workflow {
	s.wfsMu.RLock()
	defer s.wfsMu.RUnlock()
	return s.wfs
}

// LoadWorkflows reads cfg's workflows with start-up's checks and returns
// the function that makes them current; on error nothing changes. Jobs
// already accepted keep the workflow they were accepted with.
func (s *Service) LoadWorkflows(cfg *config.Config) (apply func(), err error) {
	return s.cat.loadWorkflows(cfg)
}

// loadWorkflows is Service.LoadWorkflows.
func (s *catalog) loadWorkflows(cfg *config.Config) (apply func(), err error) {
	wfs, err := loadWorkflows(cfg)
	if err != nil {
		return nil, err
	}
	return func() {
		s.wfsMu.Lock()
		s.wfs = wfs
		s.wfsMu.Unlock()
	}, nil
}

// SetPlacer makes jobs place their prompts with p (by default: on their
// workflow's labels alone). Call before Start.
func (s *Service) SetPlacer(p Placer) { s.cat.setPlacer(p) }

// setPlacer is Service.SetPlacer.
func (s *catalog) setPlacer(p Placer) { s.placer = p }

// place decides where a job's prompt may and had better run. ok is false,
// with why, when no instance can run it.
func (s *catalog) place(j *job, prompt json.RawMessage) (d placement.Decision, why string, ok bool) {
	placer := s.placer
	if placer == nil {
		placer = placement.New(s.be, nil, -1, nil)
	}
	d, refused := placer.Place(placement.Request{Graph: prompt, Labels: j.wf.cfg.Labels})
	if refused != nil {
		return d, "no instance can run workflow " + j.wf.name + refused.Detail(), false
	}
	return d, "", true
}

// ran tells the placer that an instance took a prompt it placed.
func (s *catalog) ran(inst *upstream.Instance, d placement.Decision) {
	if s.placer != nil {
		s.placer.Ran(inst, d)
	}
}
