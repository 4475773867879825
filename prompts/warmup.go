package prompts

// Warm-up runs: the pool holds each instance's warm-up gate and state and
// asks for a run (upstream.EventWarmup) when a cold instance is healthy;
// the table submits the workflow, waits for its end and reports it
// (upstream.Pool.WarmupDone).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/ids"
	"github.com/comfygate/comfygate/upstream"
)

// errWarmupTimeout: the warm-up did not finish within routing.warmup_timeout.
var errWarmupTimeout = errors.New("did not finish within routing.warmup_timeout")

// warmUp runs inst's warm-up in the background and reports its end.
func (t *instances) warmUp(inst *upstream.Instance) {
	started := t.run.goBackground(func(ctx context.Context) {
		start := time.Now()
		err := t.runWarmup(ctx, inst, t.p.WarmupWorkflow(inst))
		if err != nil && ctx.Err() != nil {
			err = context.Canceled // stopped, not failed
		}
		t.p.WarmupDone(inst, time.Since(start), err)
	})
	if !started {
		t.p.WarmupDone(inst, 0, context.Canceled)
	}
}

// runWarmup submits graph to inst alone (no client sees it: its client_id
// has no socket) and waits for its history entry.
func (t *instances) runWarmup(ctx context.Context, inst *upstream.Instance, graph json.RawMessage) error {
	if len(graph) == 0 || string(graph) == "null" {
		return errors.New("no workflow")
	}
	ctx, cancel := context.WithTimeout(ctx, t.cfg.Routing.WarmupTimeout)
	defer cancel()
	body, _ := json.Marshal(map[string]any{
		"prompt":    graph,
		"client_id": "comfygate-warmup-" + ids.Random(4),
		"prompt_id": ids.UUID(),
	})
	status, resp, err := inst.Transport().Call(ctx, "POST", "/prompt", map[string]string{"Content-Type": "application/json"}, body)
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
		status, resp, err := inst.Transport().Call(ctx, "GET", "/history/"+id, nil, nil)
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
