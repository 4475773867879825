package prompts

import (
	"fmt"
	"testing"

	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/internal/testkit"
)

func TestPromptTableKeepsBoundedDonePrompts(t *testing.T) {
	t.Parallel()
	p := newCorePool(t, promptsConfig(testkit.ClosedAddr(t)), false)
	inst := p.Instances()[0]
	tb := p.prompts
	first := tb.adopt("first", inst, PromptDone)
	live := &Prompt{ID: "live"}
	tb.submits.reserve(live)
	tb.steps.step(live, lifecycle.Event{Kind: lifecycle.Send, UpstreamID: "live"}, inst)
	running := tb.adopt("running", inst, PromptRunning)
	for k := range maxDonePrompts + 50 {
		tb.adopt(fmt.Sprintf("p%d", k), inst, PromptDone)
	}
	if _, ok := p.Prompt("first"); ok {
		t.Fatal("the oldest finished prompt should be evicted")
	}
	if pr, ok := p.PromptByUpstreamID(inst, "first"); ok || pr == first {
		t.Fatal("its upstream key too")
	}
	if pr, ok := p.Prompt("live"); !ok || pr != live {
		t.Fatal("a prompt comfygate submitted is never evicted before it is done")
	}
	if pr, ok := p.Prompt("running"); ok || pr == running {
		t.Fatal("an adopted prompt is a cache entry: evicted whatever its state")
	}
	if _, ok := p.PromptByUpstreamID(inst, "running"); ok {
		t.Fatal("its upstream key too")
	}
	if _, ok := p.Prompt(fmt.Sprintf("p%d", maxDonePrompts+49)); !ok {
		t.Fatal("the newest finished prompt is kept")
	}
	n := 0
	tb.idx.byID.Range(func(any, any) bool { n++; return true })
	if n > maxDonePrompts+1 {
		t.Fatalf("%d prompts kept, want at most %d", n, maxDonePrompts+1)
	}
}

func TestLocatePromptFindsQueued(t *testing.T) {
	t.Parallel()
	f1, f2 := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p, _ := fakePool(t, nil, f1, f2)
	id := newUUID()
	f1.AddPending(id)
	inst, err := p.LocatePrompt(t.Context(), id)
	if err != nil || inst.Addr != f1.Addr() {
		t.Fatalf("LocatePrompt = %v, %v", inst, err)
	}
	pr, _ := p.Prompt(id)
	if pr.State() != PromptQueued || p.Outstanding() != 0 {
		t.Fatal("an adopted prompt is tracked but not counted as comfygate's own work")
	}
}
