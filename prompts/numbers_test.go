package prompts

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/testkit"
)

// submitWith sends a small prompt whose body also carries extra (e.g.
// "front", "number").
func submitWith(t *testing.T, p *testPool, extra map[string]string) SubmitResult {
	t.Helper()
	body := map[string]json.RawMessage{
		"prompt": json.RawMessage(`{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}`),
	}
	for k, v := range extra {
		body[k] = json.RawMessage(v)
	}
	res, err := p.Submit(context.Background(), SubmitRequest{Body: body, PromptID: newUUID(), Sink: newRecSink()})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return res
}

func numberOf(t *testing.T, res SubmitResult) (float64, bool) {
	t.Helper()
	if res.Prompt == nil {
		t.Fatalf("no prompt: status %d %s", res.Status, res.Body)
	}
	return res.Prompt.Number()
}

// TestFleetNumbers: every prompt sent gets the next number of one counter
// for the whole fleet, although each instance counts from 0 on its own;
// "front" negates it as ComfyUI does; a client's own "number" takes none,
// and a refused prompt takes one (ComfyUI advances its counter before it
// validates); a resubmitted prompt keeps its number.
func TestFleetNumbers(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f1, f2)

	var first []SubmitResult
	for k := range 4 {
		res := submitWith(t, p, nil)
		if n, ok := numberOf(t, res); !ok || n != float64(k) {
			t.Fatalf("prompt %d: Number() = %v, %v; want %d", k, n, ok, k)
		}
		first = append(first, res)
	}
	if first[0].Instance == first[1].Instance {
		t.Fatal("the prompts should spread over both instances (each counting from 0)")
	}
	if n, ok := numberOf(t, submitWith(t, p, map[string]string{"front": "true"})); !ok || n != -4 {
		t.Fatalf("front: Number() = %v, %v; want -4", n, ok)
	}
	if n, ok := numberOf(t, submitWith(t, p, map[string]string{"front": "0"})); !ok || n != 5 {
		t.Fatalf("front 0 (falsy): Number() = %v, %v; want 5", n, ok)
	}
	if n, ok := numberOf(t, submitWith(t, p, map[string]string{"number": "2.5", "front": "true"})); ok {
		t.Fatalf("a client's own number: Number() = %v, true; want none (the instance shows the client's)", n)
	}
	for _, f := range []*testkit.MiniComfy{f1, f2} {
		f.AnswerStatus(400)
	}
	if res := submitWith(t, p, nil); res.Status != 400 || res.Prompt != nil {
		t.Fatalf("want the instance's 400, got %d", res.Status)
	}
	for _, f := range []*testkit.MiniComfy{f1, f2} {
		f.AnswerStatus(0)
	}
	if n, ok := numberOf(t, submitWith(t, p, nil)); !ok || n != 7 {
		t.Fatalf("after an own number and a refusal: Number() = %v, %v; want 7", n, ok)
	}

	// The instance of the first prompt dies: it moves, with its number.
	moved := first[0]
	from := fakeOf(moved.Instance, f1, f2)
	to := f1
	if from == f1 {
		to = f2
	}
	before := to.PromptCount()
	from.Kill()
	testkit.Eventually(t, "resubmitted", func() bool { return moved.Prompt.Attempts() == 2 && to.PromptCount() > before })
	testkit.Eventually(t, "accepted again", func() bool { return moved.Prompt.Instance().Addr == to.Addr() })
	if n, ok := moved.Prompt.Number(); !ok || n != 0 {
		t.Fatalf("resubmitted prompt: Number() = %v, %v; want its 0 kept", n, ok)
	}
	if n, ok := numberOf(t, submitWith(t, p, nil)); !ok || n != 8 {
		t.Fatalf("after a resubmission: Number() = %v, %v; want 8 (a move takes no number)", n, ok)
	}
}

func TestTruthy(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		raw  string
		want bool
	}{
		{"", false}, {"null", false}, {"false", false}, {"true", true},
		{"0", false}, {"0.0", false}, {"-0", false}, {"1", true}, {"-2.5", true}, {"1e400", true},
		{`""`, false}, {`"0"`, true}, {`"false"`, true},
		{"[]", false}, {"[ ]", false}, {"[0]", true}, {"{}", false}, {`{"a": 1}`, true},
	} {
		if got := comfyapi.Truthy(json.RawMessage(c.raw)); got != c.want {
			t.Errorf("truthy(%s) = %v, want %v", c.raw, got, c.want)
		}
	}
}
