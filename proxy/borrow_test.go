package proxy_test

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/ids"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/fasthttp/websocket"
)

// adoptSteps is the progress steps of the adopted prompt's upscale node.
const adoptSteps = 8

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
// closes that socket, and no second end follows. When another socket
// under that client_id closes at the instance meanwhile (the close race:
// ComfyUI unregisters B's socket with it), the client gets the end alone,
// once, from the instance's history.
func TestAdoptedPromptEventsAfterReplicaStops(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc string
		deaf bool // B's borrowed socket is unregistered before the run goes on
	}{
		{desc: "the rest of the run"},
		{desc: "the end alone when the borrowed socket is unregistered", deaf: true},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			adoptedPromptEvents(t, tc.deaf)
		})
	}
}

// adoptedPromptEvents runs one case of TestAdoptedPromptEventsAfterReplicaStops.
func adoptedPromptEvents(t *testing.T, deaf bool) {
	const steps = adoptSteps
	a, b, stA := adoptPair(t, 1, false, comfysim.Options{Delay: 800 * time.Millisecond, Steps: steps, RecordRuns: true})
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
	if deaf {
		// A socket under the same id registers and closes: ComfyUI pops
		// whatever is registered under it, B's.
		conn, _, err := websocket.DefaultDialer.Dial("ws://"+sim.Addr()+"/ws?clientId="+sockA, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _, _ = conn.ReadMessage() // its status: registered
		_ = conn.Close()
		testkit.Eventually(t, "no socket under A's client_id", func() bool { return !slices.Contains(sim.SocketIDs(), sockA) })
	}
	sim.SetFrozen(false)

	r := seenAfter(t, c.until(func(m xMsg) bool { return m.end(id) }), id, before)
	switch {
	case deaf && (r.progresses != 0 || r.previews != 0 || r.executed != 0 || r.successes != 1 || r.successAt != r.endAt-1):
		t.Errorf("from the history: %+v; want the end alone", r)
	case !deaf && (r.progresses < 2 || r.last != adoptSteps):
		t.Errorf("after A stopped: %d progress steps, the last %v; want at least 2, up to %d (%v before)", r.progresses, r.last, adoptSteps, before)
	case !deaf && r.previewAt < 0:
		t.Error("no preview among the last steps after A stopped")
	case !deaf && (r.executed != 1 || r.successes != 1):
		t.Errorf("after A stopped: executed %d times, execution_success %d times; want once each", r.executed, r.successes)
	case !deaf && !(r.lastAt < r.executedAt && r.executedAt < r.successAt && r.successAt < r.endAt):
		t.Errorf("out of order: %+v", r)
	}

	if !deaf {
		testkit.Eventually(t, "B gave A's client_id back", func() bool { return !slices.Contains(sim.SocketIDs(), sockA) })
	}
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

// runSeen is what a client got of prompt id after its replica stopped:
// how many of each message, and where (index in what it read; -1: none).
type runSeen struct {
	progresses, previews, executed int
	successes                      int
	last                           float64 // the last progress value
	lastAt, previewAt              int     // the last progress; a preview among the last two steps
	executedAt, successAt, endAt   int
}

// seenAfter tallies msgs, which end with the end of prompt id, after
// progress value before; a progress that does not go up is an error.
func seenAfter(t *testing.T, msgs []xMsg, id string, before float64) runSeen {
	t.Helper()
	r := runSeen{last: before, lastAt: -1, previewAt: -1, executedAt: -1, successAt: -1, endAt: len(msgs) - 1}
	for i, m := range msgs {
		if v, ok := progressValue(m, id); ok {
			if v <= r.last {
				t.Errorf("progress %v after %v", v, r.last)
			}
			r.last, r.lastAt = v, i
			r.progresses++
		}
		if m.binary {
			r.previews++
		}
		switch {
		case m.binary && r.last >= adoptSteps-1 && r.previewAt < 0:
			r.previewAt = i
		case namesPrompt(m, "executed", id):
			r.executed++
			r.executedAt = i
			if !bytes.Contains(m.data, []byte(`"images"`)) {
				t.Errorf("executed without its output: %s", m)
			}
		case namesPrompt(m, "execution_success", id):
			r.successes++
			r.successAt = i
		case m.end(id) && i != r.endAt:
			t.Errorf("an end before the last message: %d of %d", i, len(msgs))
		}
	}
	return r
}
