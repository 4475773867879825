package proxy

import (
	"encoding/json"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
)

// slowPrompt is EmptyImage -> ImageInvert -> SaveImage: two nodes of the
// simulator's Delay each.
func slowPrompt(c int, prefix string) map[string]any {
	p := emptyImagePrompt(c, prefix)
	p["3"] = map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}}
	p["2"].(map[string]any)["inputs"].(map[string]any)["images"] = []any{"3", 0}
	return p
}

// postPrompt posts body to url and returns the answer's prompt_id and the
// raw "number".
func postPromptNumber(t *testing.T, url string, body map[string]any) (string, json.RawMessage) {
	t.Helper()
	var a struct {
		PromptID string          `json:"prompt_id"`
		Number   json.RawMessage `json:"number"`
	}
	if status, raw := postJSON(t, url, nil, body, &a); status != 200 || a.PromptID == "" {
		t.Fatalf("POST %s = %d %s", url, status, raw)
	}
	return a.PromptID, a.Number
}

// TestFleetQueueNumbers: through comfygate every prompt's number is the
// fleet's (0, 1, 2, ... across instances, where each instance counts from
// 0), in the POST /prompt answer, /queue, /history and /api/jobs; merged
// pending is sorted by it; a client's front and number show as ComfyUI
// shows them; a prompt comfygate did not submit keeps its instance's.
func TestFleetQueueNumbers(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{Delay: 20 * time.Millisecond, Version: "0.38.0"})
	g := startGate(t, addrsOf(ss), nil)
	// Held queues: every prompt is still pending when /queue is read, however
	// slowly the posts below go (timing alone lost that race under load).
	for _, s := range ss {
		s.SetPaused(true)
	}

	want := map[string]string{} // prompt id -> the number its client was told
	var ids []string
	for i := range 6 {
		id, n := postPromptNumber(t, g.base+"/prompt", map[string]any{"prompt": slowPrompt(i, "n")})
		if got, exp := string(n), string(rune('0'+i)); got != exp {
			t.Fatalf("prompt %d: answer number %s, want %s (one counter for the fleet)", i, got, exp)
		}
		want[id] = string(n)
		ids = append(ids, id)
	}
	id, n := postPromptNumber(t, g.base+"/prompt", map[string]any{"prompt": slowPrompt(6, "n"), "front": true})
	if string(n) != "-6" {
		t.Fatalf("front: answer number %s, want -6", n)
	}
	want[id] = string(n)
	ids = append(ids, id)
	id, n = postPromptNumber(t, g.base+"/prompt", map[string]any{"prompt": slowPrompt(7, "n"), "number": 100})
	if string(n) != "100.0" {
		t.Fatalf("client number: answer number %s, want ComfyUI's 100.0", n)
	}
	want[id] = string(n)
	ids = append(ids, id)
	// Straight to an instance: not comfygate's, so its own number stays.
	directID, directN := postPromptNumber(t, ss[0].URL()+"/prompt", map[string]any{"prompt": slowPrompt(8, "direct")})
	want[directID] = string(directN)

	_, _, body := gateDo(t, "GET", g.base+"/queue", nil, nil)
	var q struct {
		Running [][]json.RawMessage `json:"queue_running"`
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	if err := json.Unmarshal(body, &q); err != nil {
		t.Fatalf("GET /queue: %v: %s", err, body)
	}
	if len(q.Pending) != len(want) {
		t.Fatalf("paused instances: want all %d prompts pending: %s", len(want), body)
	}
	var pending []float64
	for _, it := range append(q.Running, q.Pending...) {
		var id string
		_ = json.Unmarshal(it[1], &id)
		if w, ok := want[id]; !ok || string(it[0]) != w {
			t.Errorf("queue item %s has number %s, want %s", id, it[0], w)
		}
	}
	for _, it := range q.Pending {
		var f float64
		_ = json.Unmarshal(it[0], &f)
		pending = append(pending, f)
	}
	if !sort.Float64sAreSorted(pending) {
		t.Errorf("pending not sorted by number: %v", pending)
	}
	for _, s := range ss {
		s.SetPaused(false)
	}

	for _, id := range ids {
		e := waitHistory(t, g, "", id)
		if len(e.Prompt) == 0 || string(e.Prompt[0]) != want[id] {
			t.Errorf("history of %s: number %s, want %s", id, e.Prompt[0], want[id])
		}
		var job struct {
			Priority json.RawMessage `json:"priority"`
		}
		status, _, raw := gateDo(t, "GET", g.base+"/api/jobs/"+id, http.Header{}, nil)
		if status != 200 || json.Unmarshal(raw, &job) != nil {
			t.Fatalf("GET /api/jobs/%s = %d %s", id, status, raw)
		}
		if string(job.Priority) != want[id] {
			t.Errorf("job %s: priority %s, want %s", id, job.Priority, want[id])
		}
	}
}
