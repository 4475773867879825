package proxy_test

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/ids"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/stack"
)

// progressValue is the value of a progress message m of prompt id, false
// for any other message.
func progressValue(m xMsg, id string) (float64, bool) {
	if m.binary || m.typ() != "progress" {
		return 0, false
	}
	var v struct {
		Data struct {
			Value    float64 `json:"value"`
			PromptID string  `json:"prompt_id"`
		} `json:"data"`
	}
	if json.Unmarshal(m.data, &v) != nil || v.Data.PromptID != id {
		return 0, false
	}
	return v.Data.Value, true
}

// namesPrompt reports a text message of type typ that names prompt id.
func namesPrompt(m xMsg, typ, id string) bool {
	return !m.binary && m.typ() == typ && bytes.Contains(m.data, []byte(`"`+id+`"`))
}

// TestAdoptedPromptEventsAfterReplicaStops: replica A's prompt is running
// (progress steps, each with a preview) when A stops without a word to
// Redis, its client's socket being on B. B adopts it and listens at the
// instance under the client_id A sent it with, so the client gets the
// rest of the run from B: the later progress steps with their previews,
// `executed` with the output and the end, once each, in ComfyUI's order.
// The instance's execution is held from A's stop until B listens, so the
// rest of the run comes after the adoption. Once the prompt ended, B
// closes that socket, and no second end follows.
func TestAdoptedPromptEventsAfterReplicaStops(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	ttl := func(c *config.Config) { c.State.LeaseTTL = adoptTTL }
	const steps = 8
	stA := adoptStore(t, url)
	a := stack.Start(t, stack.Options{Instances: 1, Config: ttl, State: stA,
		Sim: comfysim.Options{Delay: 800 * time.Millisecond, Steps: steps, RecordRuns: true}})
	b := stack.Start(t, stack.Options{Addrs: []string{a.Sims[0].Addr()}, Config: ttl, State: adoptStore(t, url)})
	sim := a.Sims[0]

	const client = "borrow-client"
	c := xDial(t, b, client, "")
	id := ids.UUID()
	if code, err := adoptSubmit(a, client, id, "borrow-0", xUpscale(3), testkit.WaitBound); err != nil || code != 200 {
		t.Fatalf("submit on A: %d %v", code, err)
	}
	// A's events reach the socket on B through Redis: a preview, then a
	// progress step.
	previewed := false
	before := 0.0
	c.until(func(m xMsg) bool {
		previewed = previewed || m.binary
		v, ok := progressValue(m, id)
		before = max(before, v)
		return ok && previewed
	})
	sim.SetFrozen(true)
	sockA := a.Pool().Instances()[0].SocketClientID()
	_ = stA.Close()
	a.Stop()
	testkit.Eventually(t, "B adopted the prompt and listens under A's client_id", func() bool {
		pr, ok := b.Prompts().Prompt(id)
		return ok && pr.Instance() != nil && slices.Contains(sim.SocketIDs(), sockA)
	})
	sim.SetFrozen(false)

	after := c.until(func(m xMsg) bool { return m.end(id) })
	last, lastAt, executedAt, successAt, previewAt := before, -1, -1, -1, -1
	executed, successes, progresses := 0, 0, 0
	for i, m := range after {
		if v, ok := progressValue(m, id); ok {
			if v <= last {
				t.Errorf("progress %v after %v", v, last)
			}
			last, lastAt = v, i
			progresses++
		}
		switch {
		case m.binary && last >= steps-1 && previewAt < 0:
			previewAt = i
		case namesPrompt(m, "executed", id):
			executed++
			executedAt = i
			if !bytes.Contains(m.data, []byte(`"images"`)) {
				t.Errorf("executed without its output: %s", m)
			}
		case namesPrompt(m, "execution_success", id):
			successes++
			successAt = i
		case m.end(id) && i != len(after)-1:
			t.Errorf("an end before the last message: %d of %d", i, len(after))
		}
	}
	if progresses < 2 || last != steps {
		t.Errorf("after A stopped: %d progress steps, the last %v; want at least 2, up to %d (%d before)", progresses, last, steps, int(before))
	}
	if previewAt < 0 {
		t.Error("no preview after A stopped")
	}
	if executed != 1 || successes != 1 {
		t.Errorf("after A stopped: executed %d times, execution_success %d times; want once each", executed, successes)
	}
	if !(lastAt < executedAt && executedAt < successAt && successAt < len(after)-1) {
		t.Errorf("out of order: last progress at %d, executed at %d, execution_success at %d, the end at %d", lastAt, executedAt, successAt, len(after)-1)
	}

	testkit.Eventually(t, "B gave A's client_id back", func() bool { return !slices.Contains(sim.SocketIDs(), sockA) })
	// A prompt sent afterwards ends on the same socket: nothing more of the
	// first one came before.
	id2 := xSubmit(t, b, "", client, map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": 5}},
		"2": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"1", 0}, "filename_prefix": "borrow"}},
	})
	for _, m := range c.until(func(m xMsg) bool { return m.end(id2) }) {
		if m.end(id) || namesPrompt(m, "execution_success", id) {
			t.Errorf("the adopted prompt's end came again: %s", m)
		}
	}
	if n := runsOf(a.Sims, "borrow-0"); n != 1 {
		t.Errorf("the adopted prompt ran %d times", n)
	}
}
