package upstream

// Warm-up gate: an instance configured with a warm-up workflow runs it
// when it joins and each time it comes back (a restarted ComfyUI loads its
// models on the first prompt, which then takes several times longer),
// before it gets client traffic. Until the run succeeds the instance is
// "cold": not Available. A failed run keeps it out, says why in its
// status, and is tried again at the next passed health check. The pool
// holds the gate and the state; running the workflow is a prompt, so the
// subscriber that runs prompts does it (EventWarmup, WarmupDone).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/comfyapi"
)

// Warm-up states shown in InstanceStatus.Warmup.
const (
	warmupPending = "pending"
	warmupRunning = "running"
	warmupOK      = "ok"
)

// warmups holds each instance's warm-up workflow.
type warmups struct {
	mu     sync.Mutex // guards graphs, active
	graphs map[*Instance]json.RawMessage
	active map[*Instance]bool // a run is under way
}

// WarmupState is "" (no warm-up configured), "pending", "running", "ok"
// or "failed: <why>".
func (i *Instance) WarmupState() string {
	if s := i.fleet.warmup.Load(); s != nil {
		return *s
	}
	return ""
}

func (i *Instance) setWarmup(s string) { i.fleet.warmup.Store(&s) }

// prepareWarmup reads ci's warm-up workflow for inst and keeps inst cold
// until it ran. A file that cannot be read (it was checked at load) fails
// the warm-up, which keeps the instance out and says why.
func (p *Pool) prepareWarmup(inst *Instance, ci config.Instance) {
	p.warmups.mu.Lock()
	defer p.warmups.mu.Unlock()
	if ci.Warmup == "" {
		if p.warmups.graphs[inst] != nil {
			delete(p.warmups.graphs, inst)
			inst.fleet.warmup.Store(nil)
			inst.fleet.cold.Store(false)
		}
		return
	}
	graph, err := readWarmup(p.cfg.Path(ci.Warmup))
	if p.warmups.graphs == nil {
		p.warmups.graphs, p.warmups.active = map[*Instance]json.RawMessage{}, map[*Instance]bool{}
	}
	if err != nil {
		p.warmups.graphs[inst] = json.RawMessage("null")
		inst.fleet.cold.Store(true)
		inst.setWarmup("failed: " + err.Error())
		return
	}
	p.warmups.graphs[inst] = graph
	inst.fleet.cold.Store(true)
	inst.setWarmup(warmupPending)
}

// readWarmup reads an API-format workflow: a JSON object of nodes, or a
// whole POST /prompt body whose "prompt" is one.
func readWarmup(path string) (json.RawMessage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("warm-up workflow: %w", err)
	}
	body, err := comfyapi.ParsePromptRequest(data)
	if err != nil {
		return nil, fmt.Errorf("warm-up workflow %s: not a JSON object: %w", path, err)
	}
	if body.HasPrompt() {
		return body.Prompt, nil
	}
	return data, nil
}

// coldAgain makes inst cold when it has a warm-up: called when it turns
// healthy again (it may have restarted and lost its loaded models).
func (p *Pool) coldAgain(inst *Instance) {
	p.warmups.mu.Lock()
	defer p.warmups.mu.Unlock()
	if p.warmups.graphs[inst] != nil && !p.warmups.active[inst] {
		inst.fleet.cold.Store(true)
		inst.setWarmup(warmupPending)
	}
}

// maybeWarm asks for inst's warm-up (EventWarmup) when it is cold,
// healthy and none is under way; WarmupDone ends it.
func (p *Pool) maybeWarm(inst *Instance) {
	if !inst.fleet.cold.Load() || !inst.healthy.Load() {
		return
	}
	p.warmups.mu.Lock()
	graph := p.warmups.graphs[inst]
	if graph == nil || p.warmups.active[inst] {
		p.warmups.mu.Unlock()
		return
	}
	p.warmups.active[inst] = true
	p.warmups.mu.Unlock()
	inst.setWarmup(warmupRunning)
	p.publish(EventWarmup, inst)
}

// WarmupWorkflow is inst's warm-up workflow (API format), nil when it has
// none. A workflow file that could not be read is JSON null.
func (p *Pool) WarmupWorkflow(inst *Instance) json.RawMessage {
	p.warmups.mu.Lock()
	defer p.warmups.mu.Unlock()
	return p.warmups.graphs[inst]
}

// WarmupDone ends the warm-up EventWarmup asked for: nil lets inst take
// work; an error keeps it out and its status says why (the next passed
// health check asks again), except a context error (the runner stopped:
// nothing is recorded).
func (p *Pool) WarmupDone(inst *Instance, took time.Duration, err error) {
	p.warmups.mu.Lock()
	delete(p.warmups.active, inst)
	p.warmups.mu.Unlock()
	switch {
	case errors.Is(err, context.Canceled):
	case err != nil:
		inst.setWarmup("failed: " + err.Error())
		p.log.Warn("upstream: warm-up failed; the instance gets no work", "instance", inst.Name, "error", err)
	default:
		inst.setWarmup(warmupOK)
		inst.fleet.cold.Store(false)
		p.availabilityChanged()
		p.log.Info("upstream: warm-up done; the instance takes work", "instance", inst.Name, "took", took)
	}
}
