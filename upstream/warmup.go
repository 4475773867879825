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
	"log/slog"
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

// warmups holds each instance's warm-up workflow and keeps an instance
// cold until its warm-up ran.
type warmups struct {
	cfg   *config.Config // resolves a workflow's path
	log   *slog.Logger
	bus   *bus          // EventWarmup
	avail *availability // a warm instance may take work

	mu     sync.Mutex // guards graphs, active
	graphs map[*Instance]json.RawMessage
	active map[*Instance]bool // a run is under way
}

// prepare reads ci's warm-up workflow for inst and keeps inst cold
// until it ran. A file that cannot be read (it was checked at load) fails
// the warm-up, which keeps the instance out and says why.
func (w *warmups) prepare(inst *Instance, ci config.Instance) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ci.Warmup == "" {
		if w.graphs[inst] != nil {
			delete(w.graphs, inst)
			inst.state.warmup.Store(nil)
			inst.state.cold.Store(false)
		}
		return
	}
	graph, err := readWarmup(w.cfg.Path(ci.Warmup))
	if w.graphs == nil {
		w.graphs, w.active = map[*Instance]json.RawMessage{}, map[*Instance]bool{}
	}
	if err != nil {
		w.graphs[inst] = json.RawMessage("null")
		inst.state.cold.Store(true)
		inst.state.setWarmup("failed: " + err.Error())
		return
	}
	w.graphs[inst] = graph
	inst.state.cold.Store(true)
	inst.state.setWarmup(warmupPending)
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
func (w *warmups) coldAgain(inst *Instance) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.graphs[inst] != nil && !w.active[inst] {
		inst.state.cold.Store(true)
		inst.state.setWarmup(warmupPending)
	}
}

// maybeWarm asks for inst's warm-up (EventWarmup) when it is cold,
// healthy and none is under way; WarmupDone ends it.
func (w *warmups) maybeWarm(inst *Instance) {
	if !inst.state.cold.Load() || !inst.state.healthy.Load() {
		return
	}
	w.mu.Lock()
	graph := w.graphs[inst]
	if graph == nil || w.active[inst] {
		w.mu.Unlock()
		return
	}
	w.active[inst] = true
	w.mu.Unlock()
	inst.state.setWarmup(warmupRunning)
	w.bus.publish(EventWarmup, inst)
}

// workflow is inst's warm-up workflow (Pool.WarmupWorkflow).
func (w *warmups) workflow(inst *Instance) json.RawMessage {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.graphs[inst]
}

// done ends the warm-up EventWarmup asked for (Pool.WarmupDone).
func (w *warmups) done(inst *Instance, took time.Duration, err error) {
	w.mu.Lock()
	delete(w.active, inst)
	w.mu.Unlock()
	switch {
	case errors.Is(err, context.Canceled):
	case err != nil:
		inst.state.setWarmup("failed: " + err.Error())
		w.log.Warn("upstream: warm-up failed; the instance gets no work", "instance", inst.Name, "error", err)
	default:
		inst.state.setWarmup(warmupOK)
		inst.state.cold.Store(false)
		w.avail.changed()
		w.log.Info("upstream: warm-up done; the instance takes work", "instance", inst.Name, "took", took)
	}
}
