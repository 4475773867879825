package jobs

import (
	"encoding/json"
	"strings"

	"github.com/comfygate/comfygate/catalogue"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/upstream"
)

// Placer decides where a prompt may run (catalogue.Store does): on the
// instances, among those among accepts, that have its node classes and
// models.
type Placer interface {
	Decide(n catalogue.Needs, among func(*upstream.Instance) bool) catalogue.Verdict
}

// workflows returns the current workflows (do not modify the map).
func (s *Service) workflows() map[string]*workflow {
	s.wfsMu.RLock()
	defer s.wfsMu.RUnlock()
	return s.wfs
}

// LoadWorkflows reads cfg's workflows with start-up's checks and returns
// the function that makes them current; on error nothing changes. Jobs
// already accepted keep the workflow they were accepted with.
func (s *Service) LoadWorkflows(cfg *config.Config) (apply func(), err error) {
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

// SetPlacer makes jobs run only on instances that can run their workflow
// (nil: any instance carrying the workflow's labels). Call before Start.
func (s *Service) SetPlacer(p Placer) { s.placer = p }

// eligible returns where a job's prompt may run: instances carrying its
// workflow's labels (workflows.<name>.labels) that have what the prompt
// names. ok is false, with why, when no instance can run it.
func (s *Service) eligible(j *job, prompt json.RawMessage) (fn func(*upstream.Instance) bool, why string, ok bool) {
	labels := j.wf.cfg.Labels
	if len(labels) > 0 {
		fn = func(inst *upstream.Instance) bool { return inst.HasLabels(labels) }
	}
	if s.placer == nil {
		return fn, "", true
	}
	v := s.placer.Decide(catalogue.PromptNeeds(prompt), fn)
	if v.Runnable {
		return v.Eligible, "", true
	}
	why = "no instance can run workflow " + j.wf.name
	if len(v.Nowhere) > 0 {
		why += ": no instance has " + strings.Join(v.Nowhere, ", ")
	}
	for _, m := range v.Missing {
		why += "; " + m.Instance + " lacks " + strings.Join(m.Lacks, ", ")
	}
	if len(v.Missing) == 0 && len(v.Nowhere) == 0 && len(labels) > 0 {
		why += ": no instance carries its labels"
	}
	return nil, why, false
}
