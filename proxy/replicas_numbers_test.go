package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/stack"
	"github.com/comfygate/comfygate/state"
)

// numberedSubmit posts prompt (with extra fields) to st and returns the
// answer's prompt_id and number.
func numberedSubmit(t *testing.T, st *stack.Stack, prompt map[string]any, extra map[string]any) (string, string) {
	t.Helper()
	m := map[string]any{"prompt": prompt}
	for k, v := range extra {
		m[k] = v
	}
	body, _ := json.Marshal(m)
	a := postRaw(t, st, body)
	if a.code != http.StatusOK || a.promptID == "" {
		t.Fatalf("POST /prompt on %s: %+v", st.Addr, a)
	}
	return a.promptID, a.number
}

// pendingOf is st's GET /queue pending list: each item's prompt id and
// number as JSON.
func pendingOf(t *testing.T, st *stack.Stack) (ids, numbers []string) {
	t.Helper()
	resp, err := http.Get(st.URL + "/queue")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var q struct {
		Pending [][]json.RawMessage `json:"queue_pending"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &q) != nil {
		t.Fatalf("GET /queue on %s: %d %s", st.Addr, resp.StatusCode, raw)
	}
	for _, it := range q.Pending {
		var id string
		_ = json.Unmarshal(it[1], &id)
		ids, numbers = append(ids, id), append(numbers, string(it[0]))
	}
	return ids, numbers
}

// metricOf is the value of the sample line (name with its labels) in
// st's /metrics, 0 when absent.
func metricOf(t *testing.T, st *stack.Stack, sample string) float64 {
	t.Helper()
	resp, err := http.Get(st.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			var f float64
			_, _ = fmt.Sscan(v, &f)
			return f
		}
	}
	return 0
}

// TestQueueNumbersAcrossReplicas: prompts submitted alternately on two
// replicas take their numbers from the shared counter, distinct and in
// submission order; /queue on either replica lists both replicas' pending
// prompts in that order with those numbers; "front" negates the shared
// number; with Redis gone a prompt is still answered 200, numbered by its
// replica after the numbers it drew, and the failed draw is counted.
func TestQueueNumbersAcrossReplicas(t *testing.T) {
	t.Parallel()
	state.SetLogger(slog.New(slog.DiscardHandler)) // the client's failed dials once Redis is gone
	a, b, rdb := replicasWith(t, nil)
	a.Sims[0].SetPaused(true) // every prompt stays pending
	t.Cleanup(func() { a.Sims[0].SetPaused(false) })

	var ids, numbers []string
	for i := range 6 {
		on := []*stack.Stack{a, b}[i%2]
		id, n := numberedSubmit(t, on, testkit.Workflow(0x100+i, "qn"), nil)
		if want := fmt.Sprint(i); n != want {
			t.Fatalf("prompt %d (on %s): number %s, want %s (one counter for both replicas)", i, on.Addr, n, want)
		}
		ids, numbers = append(ids, id), append(numbers, n)
	}
	frontID, frontN := numberedSubmit(t, b, testkit.Workflow(0x200, "qn"), map[string]any{"front": true})
	if frontN != "-6" {
		t.Fatalf("front on B: number %s, want -6", frontN)
	}
	if got, err := rdb.Get(context.Background(), state.Prefix+"queue_number").Int64(); err != nil || got != 7 {
		t.Errorf("%squeue_number = %d, %v; want 7 numbers taken", state.Prefix, got, err)
	}

	wantIDs := append([]string{frontID}, ids...)
	wantNumbers := append([]string{frontN}, numbers...)
	for _, st := range []*stack.Stack{a, b} {
		var gotIDs, gotNumbers []string
		testkit.Eventually(t, "/queue lists every replica's pending prompt", func() bool {
			gotIDs, gotNumbers = pendingOf(t, st)
			return len(gotIDs) == len(wantIDs)
		})
		if !slices.Equal(gotIDs, wantIDs) || !slices.Equal(gotNumbers, wantNumbers) {
			t.Errorf("/queue on %s: pending %v numbered %v; want %v numbered %v", st.Addr, gotIDs, gotNumbers, wantIDs, wantNumbers)
		}
	}

	// Redis gone: A numbers the prompt itself, after the numbers it drew.
	_ = rdb.ShutdownNoSave(context.Background()).Err()
	testkit.Eventually(t, "redis-server gone", func() bool { return rdb.Ping(context.Background()).Err() != nil })
	if _, n := numberedSubmit(t, a, testkit.Workflow(0x300, "qn"), nil); n != "5" {
		// A drew 0, 2 and 4: its own counter goes on from 5.
		t.Errorf("with Redis gone: number %s, want 5 (A's own counter, after the numbers it drew)", n)
	}
	if n := metricOf(t, a, `comfygate_state_index_errors_total{op="number"}`); n != 1 {
		t.Errorf("failed draws counted: %v, want 1", n)
	}
}
