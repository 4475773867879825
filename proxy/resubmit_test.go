package proxy_test

// A POST /prompt sent again (same prompt_id, same body) is the same
// submission: answered as the first, never run twice.

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/ids"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/stack"
)

// resubmitAnswer is one POST /prompt's answer.
type resubmitAnswer struct {
	code       int
	retryAfter string
	promptID   string
	number     string
	errType    string
}

// postRaw posts body as POST /prompt to st.
func postRaw(t *testing.T, st *stack.Stack, body []byte) resubmitAnswer {
	t.Helper()
	return postRawAs(t, st, "", body)
}

// postRawAs is postRaw with API key key ("": none).
func postRawAs(t *testing.T, st *stack.Stack, key string, body []byte) resubmitAnswer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, st.URL+"/prompt", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	c := &http.Client{Timeout: testkit.WaitBound}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out struct {
		PromptID string          `json:"prompt_id"`
		Number   json.RawMessage `json:"number"`
		Error    struct {
			Type string `json:"type"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("POST /prompt on %s: %d %s", st.Addr, resp.StatusCode, raw)
	}
	return resubmitAnswer{code: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"),
		promptID: out.PromptID, number: string(out.Number), errType: out.Error.Type}
}

// postTwice posts body (naming prompt id) to first, then the same body to
// then: the second answer is the first's, 200 with id and its number.
func postTwice(t *testing.T, first, then *stack.Stack, body []byte, id string) {
	t.Helper()
	a := postRaw(t, first, body)
	if a.code != http.StatusOK || a.promptID != id {
		t.Fatalf("first POST, on %s: %+v", first.Addr, a)
	}
	again := postRaw(t, then, body)
	if again.code != http.StatusOK || again.promptID != id || again.number != a.number {
		t.Fatalf("the same POST on %s: %+v, want 200 with prompt_id %s and number %s", then.Addr, again, id, a.number)
	}
}

// promptBody is a POST /prompt body with id and tag (counted by the
// simulators' RunsByExtra("tag")).
func promptBody(id, tag string, color int) []byte {
	b, _ := json.Marshal(map[string]any{"prompt": xUpscale(color), "client_id": "resubmit-client", "prompt_id": id,
		"extra_data": map[string]any{"tag": tag}})
	return b
}

// TestResubmittedPrompt: on one gateway, a POST /prompt sent again with
// the same prompt_id and body is answered with the first one's id and
// number and runs once; the same id with another body gets an id of its
// own and runs too; a repeat while the first copy's POST is held on the
// way to its instance is answered 503 prompt_pending with Retry-After, and
// once the first copy is accepted the repeat gets its answer.
func TestResubmittedPrompt(t *testing.T) {
	t.Parallel()
	st := stack.Start(t, stack.Options{Instances: 1, Faults: true,
		Sim: comfysim.Options{Delay: 50 * time.Millisecond, RecordRuns: true}})

	id := ids.UUID()
	body := promptBody(id, "resubmit-0", 1)
	postTwice(t, st, st, body, id)
	other := postRaw(t, st, promptBody(id, "resubmit-other", 2))
	if other.code != http.StatusOK || other.promptID == id || other.promptID == "" {
		t.Fatalf("the same id with another body: %+v, want 200 with an id of its own", other)
	}
	testkit.Eventually(t, "both prompts ran", func() bool {
		return runsOf(st.Sims, "resubmit-0") > 0 && runsOf(st.Sims, "resubmit-other") > 0
	})
	if n := runsOf(st.Sims, "resubmit-0"); n != 1 {
		t.Errorf("the prompt sent twice ran %d times, want 1", n)
	}

	// The first copy's POST is held on the way to the instance.
	held := ids.UUID()
	heldBody := promptBody(held, "resubmit-held", 3)
	st.Faults[0].Hang()
	firstHeld := make(chan resubmitAnswer, 1)
	go func() { firstHeld <- postRaw(t, st, heldBody) }()
	testkit.Eventually(t, "the held prompt is in the table", func() bool {
		_, ok := st.Prompts().Prompt(held)
		return ok
	})
	pending := postRaw(t, st, heldBody)
	if pending.code != http.StatusServiceUnavailable || pending.errType != "prompt_pending" || pending.retryAfter != "1" {
		t.Errorf("a repeat while the first copy is on its way: %+v, want 503 prompt_pending with Retry-After: 1", pending)
	}
	st.Faults[0].Resume()
	if a := <-firstHeld; a.code != http.StatusOK || a.promptID != held {
		t.Fatalf("the held POST: %+v", a)
	}
	if a := postRaw(t, st, heldBody); a.code != http.StatusOK || a.promptID != held {
		t.Errorf("the repeat once the first copy was accepted: %+v", a)
	}
	testkit.Eventually(t, "the held prompt ran", func() bool { return runsOf(st.Sims, "resubmit-held") > 0 })
	if n := runsOf(st.Sims, "resubmit-held"); n != 1 {
		t.Errorf("the held prompt ran %d times, want 1", n)
	}
	if a, p := metricOf(t, st, `comfygate_prompt_repeats_total{answer="accepted"}`), metricOf(t, st, `comfygate_prompt_repeats_total{answer="pending"}`); a != 2 || p != 1 {
		t.Errorf("repeats counted: %v accepted, %v pending; want 2 and 1", a, p)
	}
}

// TestResubmittedAcrossReplicas: a POST /prompt that replica A took, sent
// again to replica B, is answered by B as A's prompt (its id and fleet
// number) and runs once. When A's POST to the instance is held and A
// stops, B answers a repeat 503 prompt_pending until it adopted the
// prompt, then 200; the prompt runs once.
func TestResubmittedAcrossReplicas(t *testing.T) {
	t.Parallel()
	a, b, stA := adoptPair(t, 1, true, comfysim.Options{Delay: 50 * time.Millisecond, RecordRuns: true})

	id := ids.UUID()
	body := promptBody(id, "across-0", 1)
	postTwice(t, a, b, body, id)
	testkit.Eventually(t, "the prompt ran", func() bool { return runsOf(a.Sims, "across-0") > 0 })
	if n := runsOf(a.Sims, "across-0"); n != 1 {
		t.Errorf("the prompt sent to both replicas ran %d times, want 1", n)
	}

	// A's POST of the next prompt is held on the way; A stops.
	held := ids.UUID()
	heldBody := promptBody(held, "across-held", 2)
	a.Faults[0].Hang()
	heldDone := make(chan struct{})
	go func() {
		defer close(heldDone)
		c := &http.Client{Timeout: 10 * time.Second}
		if resp, err := c.Post(a.URL+"/prompt", "application/json", bytes.NewReader(heldBody)); err == nil {
			resp.Body.Close()
		}
	}()
	testkit.Eventually(t, "the held prompt recorded", func() bool {
		_, ok := b.Prompts().SharedPrompt(context.Background(), held)
		return ok
	})
	if p := postRaw(t, b, heldBody); p.code != http.StatusServiceUnavailable || p.errType != "prompt_pending" {
		t.Errorf("a repeat on B while A's POST is held: %+v, want 503 prompt_pending", p)
	}
	_ = stA.Close()
	a.Stop()
	<-heldDone
	var last resubmitAnswer
	testkit.Eventually(t, "B answers the repeat once it adopted the prompt", func() bool {
		last = postRaw(t, b, heldBody)
		return last.code == http.StatusOK
	})
	if last.promptID != held {
		t.Errorf("B's answer: %+v, want prompt_id %s", last, held)
	}
	testkit.Eventually(t, "the held prompt ran", func() bool { return runsOf(a.Sims, "across-held") > 0 })
	if n := runsOf(a.Sims, "across-held"); n != 1 {
		t.Errorf("the held prompt ran %d times, want 1", n)
	}
}

// TestResubmittedPromptIsTheKeys: with API keys, a POST that repeats
// another key's prompt_id and body is not that key's prompt: it gets an
// id of its own and runs, and the first key's repeat is still its own.
func TestResubmittedPromptIsTheKeys(t *testing.T) {
	t.Parallel()
	const keyOne, keyTwo = "resubmit-key-one-0123456789", "resubmit-key-two-0123456789"
	st := stack.Start(t, stack.Options{Instances: 1, Sim: comfysim.Options{Delay: 50 * time.Millisecond, RecordRuns: true},
		Config: func(c *config.Config) { c.Auth.Keys = []string{keyOne, keyTwo} }})
	id := ids.UUID()
	body, _ := json.Marshal(map[string]any{"prompt": xUpscale(7), "prompt_id": id, "extra_data": map[string]any{"tag": "resubmit-keys"}})
	first := postRawAs(t, st, keyOne, body)
	if first.code != http.StatusOK || first.promptID != id {
		t.Fatalf("key one's POST: %+v", first)
	}
	other := postRawAs(t, st, keyTwo, body)
	if other.code != http.StatusOK || other.promptID == id || other.promptID == "" {
		t.Fatalf("key two's POST of the same id and body: %+v, want 200 with an id of its own", other)
	}
	if again := postRawAs(t, st, keyOne, body); again.code != http.StatusOK || again.promptID != id || again.number != first.number {
		t.Errorf("key one's repeat: %+v, want its own prompt %s numbered %s", again, id, first.number)
	}
	testkit.Eventually(t, "both keys' prompts ran", func() bool { return runsOf(st.Sims, "resubmit-keys") >= 2 })
	if n := runsOf(st.Sims, "resubmit-keys"); n != 2 {
		t.Errorf("%d runs, want 2: key one's once and key two's once", n)
	}
}

// TestSimultaneousRepeats: the same POST /prompt sent several times at
// once (a client's retries racing its first request) runs once: every
// copy is answered with the prompt's id, 200, or 503 prompt_pending while
// the first copy's send has not settled.
func TestSimultaneousRepeats(t *testing.T) {
	t.Parallel()
	st := stack.Start(t, stack.Options{Instances: 2, Sim: comfysim.Options{Delay: 5 * time.Millisecond, RecordRuns: true}})
	const rounds, copies = 12, 6
	tags := make([]string, rounds)
	for r := range rounds {
		id := ids.UUID()
		tags[r] = "simultaneous-" + id
		body := promptBody(id, tags[r], r)
		answers := make(chan resubmitAnswer, copies)
		start := make(chan struct{})
		for range copies {
			go func() {
				<-start
				answers <- postRaw(t, st, body)
			}()
		}
		close(start)
		for range copies {
			a := <-answers
			ok := (a.code == http.StatusOK && a.promptID == id) ||
				(a.code == http.StatusServiceUnavailable && a.errType == "prompt_pending" && a.retryAfter == "1")
			if !ok {
				t.Fatalf("round %d: a copy answered %+v, want 200 with %s or 503 prompt_pending", r, a, id)
			}
		}
	}
	for r, tag := range tags {
		testkit.Eventually(t, "round "+tag+" ran", func() bool { return runsOf(st.Sims, tag) > 0 })
		if n := runsOf(st.Sims, tag); n != 1 {
			t.Errorf("round %d: the prompt sent %d times at once ran %d times, want 1", r, copies, n)
		}
	}
}
