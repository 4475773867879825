package upstream

// Warm-up: an instance configured with a warm-up workflow runs it when it
// joins and each time it comes back (a restarted ComfyUI loads its models
// on the first prompt, which then takes several times longer), before it
// gets client traffic. Until the run succeeds the instance is "cold": not
// Available. A failed run keeps it out, says why in its status, and is
// tried again at the next passed health check.

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
	"github.com/comfygate/comfygate/internal/ids"
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

// maybeWarm starts inst's warm-up when it is cold, healthy and none runs.
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
	started := p.goAsync(func(ctx context.Context) {
		defer func() {
			p.warmups.mu.Lock()
			delete(p.warmups.active, inst)
			p.warmups.mu.Unlock()
		}()
		inst.setWarmup(warmupRunning)
		start := time.Now()
		if err := p.runWarmup(ctx, inst, graph); err != nil {
			if ctx.Err() != nil {
				return
			}
			inst.setWarmup("failed: " + err.Error())
			p.log.Warn("upstream: warm-up failed; the instance gets no work", "instance", inst.Name, "error", err)
			return
		}
		inst.setWarmup(warmupOK)
		inst.fleet.cold.Store(false)
		p.availabilityChanged()
		p.log.Info("upstream: warm-up done; the instance takes work", "instance", inst.Name, "took", time.Since(start))
	})
	if !started {
		p.warmups.mu.Lock()
		delete(p.warmups.active, inst)
		p.warmups.mu.Unlock()
	}
}

// errWarmupTimeout: the warm-up did not finish within routing.warmup_timeout.
var errWarmupTimeout = errors.New("did not finish within routing.warmup_timeout")

// runWarmup submits graph to inst alone (no client sees it: its client_id
// has no socket) and waits for its history entry.
func (p *Pool) runWarmup(ctx context.Context, inst *Instance, graph json.RawMessage) error {
	if string(graph) == "null" {
		return errors.New("no workflow")
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Routing.WarmupTimeout)
	defer cancel()
	body, _ := json.Marshal(map[string]any{
		"prompt":    graph,
		"client_id": "comfygate-warmup-" + ids.Random(4),
		"prompt_id": ids.UUID(),
	})
	status, resp, err := inst.Call(ctx, "POST", "/prompt", map[string]string{"Content-Type": "application/json"}, body)
	if err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	if status != 200 {
		return fmt.Errorf("submit: status %d: %.300s", status, resp)
	}
	ans, err := comfyapi.ParsePromptAnswer(resp)
	id := ans.ID()
	if err != nil || id == "" {
		return fmt.Errorf("submit: answer without prompt_id: %.300s", resp)
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return errWarmupTimeout
			}
			return ctx.Err()
		case <-tick.C:
		}
		status, resp, err := inst.Call(ctx, "GET", "/history/"+id, nil, nil)
		if err != nil || status != 200 {
			continue
		}
		h, err := comfyapi.ParseHistory(resp)
		if err != nil || h[id] == nil {
			continue
		}
		e, err := comfyapi.ParseHistoryEntry(h[id])
		if err != nil {
			continue
		}
		switch o := e.Outcome(); o {
		case comfyapi.OutcomeSuccess, comfyapi.OutcomeUnknown:
			return nil
		default:
			return fmt.Errorf("the workflow ended with %s", o)
		}
	}
}
