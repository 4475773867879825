package prompts

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/upstream"
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

// TestSharedFleetNumbers: with the replicas' counter (a real
// redis-server), a prompt's number is the counter's next, after those
// other replicas took; "front" negates it; a client's own number takes
// none; a first send that broke unanswered and went to another instance
// keeps the number it drew; a resubmitted prompt keeps its number and
// takes no other.
func TestSharedFleetNumbers(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f1, f2)
	st, err := state.Open(context.Background(), config.State{URL: testkit.Redis(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	counter := st.QueueNumbers()
	ctx := context.Background()
	// Another replica's draws: 0, 1 and 2.
	for range 3 {
		if _, err := counter.Next(ctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	p.prompts.ShareNumbers(counter)
	// takenNext draws the counter's next number, as another replica would.
	takenNext := func() int64 {
		t.Helper()
		n, err := counter.Next(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	first := submitWith(t, p, nil)
	if n, ok := numberOf(t, first); !ok || n != 3 {
		t.Fatalf("first prompt: Number() = %v, %v; want 3 (after the other replica's 0-2)", n, ok)
	}
	if n, ok := numberOf(t, submitWith(t, p, map[string]string{"front": "true"})); !ok || n != -4 {
		t.Fatalf("front: Number() = %v, %v; want -4", n, ok)
	}
	if n, ok := numberOf(t, submitWith(t, p, map[string]string{"number": "7"})); ok {
		t.Fatalf("a client's own number: Number() = %v, true; want none", n)
	}
	if n := takenNext(); n != 5 {
		t.Fatalf("the counter's next after two numbered prompts and an own number: %d, want 5", n)
	}

	// The first send's connection breaks before an answer, and f1 shows it
	// never took the prompt: sent to f2, with the number it drew.
	var at1 *upstream.Instance
	for _, inst := range p.Instances() {
		if inst.Addr == f1.Addr() {
			at1 = inst
		}
	}
	posts1 := postsTo(f1)
	f1.Handle("/prompt", func(w http.ResponseWriter, r *http.Request) {
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = c.Close()
		}
	})
	body := map[string]json.RawMessage{
		"prompt": json.RawMessage(`{"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}`),
	}
	retried, err := p.Submit(ctx, SubmitRequest{Body: body, PromptID: newUUID(), Sink: newRecSink(), Prefer: at1})
	f1.Handle("/prompt", nil)
	if err != nil || retried.Prompt == nil || retried.Instance.Addr != f2.Addr() {
		t.Fatalf("a first send that broke: %v, status %d, at %v; want accepted by f2", err, retried.Status, retried.Instance)
	}
	if postsTo(f1) == posts1 {
		t.Fatal("the first send did not go to f1")
	}
	if n, ok := retried.Prompt.Number(); !ok || n != 6 {
		t.Fatalf("retried first send: Number() = %v, %v; want the 6 it drew", n, ok)
	}
	if n := takenNext(); n != 7 {
		t.Fatalf("the counter's next after a retried first send: %d, want 7 (one number for its two sends)", n)
	}

	// The instance of the first prompt dies: it moves, with its number.
	from := fakeOf(first.Instance, f1, f2)
	to := f1
	if from == f1 {
		to = f2
	}
	before := to.PromptCount()
	from.Kill()
	testkit.Eventually(t, "resubmitted", func() bool { return first.Prompt.Attempts() == 2 && to.PromptCount() > before })
	testkit.Eventually(t, "accepted again", func() bool { return first.Prompt.Instance().Addr == to.Addr() })
	if n, ok := first.Prompt.Number(); !ok || n != 3 {
		t.Fatalf("resubmitted prompt: Number() = %v, %v; want its 3 kept", n, ok)
	}
	if n := takenNext(); n != 8 {
		t.Fatalf("the counter's next after a resubmission: %d, want 8 (a move takes no number)", n)
	}
}

// postsTo counts the POST /prompt requests f received.
func postsTo(f *testkit.MiniComfy) int {
	n := 0
	for _, r := range f.Requests() {
		if r.Method == http.MethodPost && r.RequestURI == "/prompt" {
			n++
		}
	}
	return n
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
