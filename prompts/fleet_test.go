package prompts

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// TestReconfigureAddsAndRemoves: a reload that adds a third instance puts
// it into rotation; one that removes an instance moves nothing that runs
// there: its prompt finishes where it is, then the instance leaves.
func TestReconfigureAddsAndRemoves(t *testing.T) {
	t.Parallel()
	ss := testkit.Sims(t, 3, comfysim.Options{Delay: 0})
	p, _ := simPool(t, nil, ss[0], ss[1])
	cfg := *p.cfg
	cfg.Instances = append(slices.Clone(cfg.Instances), config.Instance{Name: "third", Address: ss[2].Addr(),
		Labels: map[string]string{"pool": "x"}, Weight: 2})
	res, err := p.Fleet().Reconfigure(&cfg)
	if err != nil || !slices.Equal(res.Added, []string{"third"}) || len(res.Removed)+len(res.Changed) != 0 {
		t.Fatalf("Reconfigure = %+v, %v", res, err)
	}
	third := p.Instance("third")
	if third == nil || third.Weight() != 2 || !third.HasLabels(map[string]string{"pool": "x"}) {
		t.Fatalf("third = %+v", third)
	}
	testkit.Eventually(t, "third healthy with its socket up", func() bool { return third.Available() && third.State().SocketUp() })
	got := map[string]bool{}
	for k := range 6 {
		res := simSubmit(t, p, newUUID(), simPrompt("r"+string(rune('a'+k)), false), newRecSink())
		got[res.Instance.Name] = true
	}
	if !got["third"] {
		t.Fatalf("added instance got no prompt: %v", got)
	}

	// Remove the first instance while a prompt is queued there.
	first := p.Instance(cfg.Instances[0].Name)
	ss[0].SetPaused(true)
	// The others hold what they get meanwhile, so the first instance's turn
	// comes within a few prompts (idle, the weight-2 instance would win
	// every pick).
	ss[1].SetPaused(true)
	ss[2].SetPaused(true)
	var held *Prompt
	for k := 0; held == nil && k < 20; k++ {
		if res := simSubmit(t, p, newUUID(), simPrompt(fmt.Sprintf("h%d", k), false), newRecSink()); res.Instance == first {
			held = res.Prompt
		}
	}
	ss[1].SetPaused(false)
	ss[2].SetPaused(false)
	if held == nil {
		t.Fatal("no prompt reached the first instance")
	}
	cfg2 := cfg
	cfg2.Instances = slices.Clone(cfg.Instances[1:])
	res, err = p.Fleet().Reconfigure(&cfg2)
	if err != nil || !slices.Equal(res.Removed, []string{first.Name}) {
		t.Fatalf("Reconfigure = %+v, %v", res, err)
	}
	if first.Available() || !first.Status().Removing {
		t.Fatal("removed instance still takes work")
	}
	if p.Instance(first.Name) != first {
		t.Fatal("removed instance with a prompt left the pool at once")
	}
	for k := range 4 {
		if res := simSubmit(t, p, newUUID(), simPrompt("n"+string(rune('a'+k)), false), newRecSink()); res.Instance == first {
			t.Fatal("removed instance got a new prompt")
		}
	}
	ss[0].SetPaused(false)
	testkit.Eventually(t, "the held prompt done", func() bool { return held.State() == PromptDone })
	if held.Instance() != first || held.Attempts() != 1 {
		t.Fatalf("held prompt moved: on %s after %d attempts", held.Instance().Name, held.Attempts())
	}
	testkit.Eventually(t, "removed instance gone", func() bool { return p.Instance(first.Name) == nil })

	// Changing only labels and weight keeps the instance.
	cfg3 := cfg2
	cfg3.Instances = slices.Clone(cfg2.Instances)
	cfg3.Instances[1].Weight = 5
	res, err = p.Fleet().Reconfigure(&cfg3)
	if err != nil || !slices.Equal(res.Changed, []string{"third"}) || p.Instance("third") != third || third.Weight() != 5 {
		t.Fatalf("Reconfigure = %+v, %v; third weight %d", res, err, third.Weight())
	}
}

// TestWarmupGatesTraffic: an instance with a warm-up workflow gets no
// work until it ran; one whose warm-up fails stays out and says why.
func TestWarmupGatesTraffic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(good, simPrompt("warm", false), 0o600); err != nil {
		t.Fatal(err)
	}
	badGraph, _ := json.Marshal(map[string]any{"prompt": map[string]any{
		"1": map[string]any{"class_type": "NoSuchNode", "inputs": map[string]any{}}}})
	if err := os.WriteFile(bad, badGraph, 0o600); err != nil {
		t.Fatal(err)
	}
	ss := testkit.Sims(t, 3, comfysim.Options{Delay: 0})
	p, _ := simPool(t, func(c *config.Config) {
		c.Dir = dir
		c.Instances[1].Warmup = "good.json"
		c.Instances[2].Warmup = "bad.json"
	}, ss...)
	in := p.Instances()
	testkit.Eventually(t, "warm-up of the second instance", func() bool { return in[1].State().WarmupState() == "ok" })
	if !in[1].Available() || ss[1].PromptsExecuted() < 1 {
		t.Fatalf("warmed instance not available (executed %d)", ss[1].PromptsExecuted())
	}
	testkit.Eventually(t, "warm-up of the third instance failing", func() bool {
		return len(in[2].State().WarmupState()) > 7 && in[2].State().WarmupState()[:7] == "failed:"
	})
	if in[2].Available() {
		t.Fatal("instance whose warm-up failed takes work")
	}
	for k := range 6 {
		if res := simSubmit(t, p, newUUID(), simPrompt("w"+string(rune('a'+k)), false), newRecSink()); res.Instance == in[2] {
			t.Fatal("prompt sent to the instance whose warm-up failed")
		}
	}
	if in[0].State().WarmupState() != "" {
		t.Fatalf("instance without warm-up reports %q", in[0].State().WarmupState())
	}
	// A reload that gives the first instance a warm-up runs it before the
	// instance takes more work; one that takes the failing warm-up away
	// brings the third back.
	cfg := *p.cfg
	cfg.Instances = slices.Clone(p.cfg.Instances)
	cfg.Instances[0].Warmup = "good.json"
	cfg.Instances[2].Warmup = ""
	executed := ss[0].PromptsExecuted()
	if _, err := p.Fleet().Reconfigure(&cfg); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the new warm-up of the first instance", func() bool {
		return in[0].State().WarmupState() == "ok" && in[0].Available()
	})
	if ss[0].PromptsExecuted() <= executed {
		t.Fatal("the first instance ran no warm-up")
	}
	testkit.Eventually(t, "the third instance back without its warm-up", func() bool { return in[2].Available() })
}

// TestFilePinsFollowTheMachineAcrossAReload: a reload that gives an
// instance's name to another address makes a new instance for the file
// pins. A file pinned at the old address is not found at the new one,
// although the new machine has a file of that name, and is found again
// once the old address is back under another name. Copies of the two
// machines' files live in folders apart.
func TestFilePinsFollowTheMachineAcrossAReload(t *testing.T) {
	t.Parallel()
	ss := testkit.Sims(t, 2, comfysim.Options{Delay: 0})
	for _, s := range ss {
		writeFile(t, s.OutputDir(), "same_00001_.png", []byte("a file of "+s.Addr()))
	}
	p, _ := simPool(t, nil, ss[0])
	old := p.Instance("i1")
	ref := FileRef{Filename: "same_00001_.png", Type: "output"}
	p.PinFile(ref, old)

	cfg := *p.cfg
	cfg.Instances = []config.Instance{{Name: "i1", Address: ss[1].Addr()}}
	if res, err := p.Fleet().Reconfigure(&cfg); err != nil || !slices.Equal(res.Changed, []string{"i1"}) {
		t.Fatalf("Reconfigure = %+v, %v; want i1 changed", res, err)
	}
	moved := p.Instance("i1")
	if moved == nil || moved == old || moved.Addr != ss[1].Addr() {
		t.Fatalf("i1 after the reload = %+v", moved)
	}
	testkit.Eventually(t, "the old i1 gone and the new one available", func() bool {
		return !slices.Contains(p.Instances(), old) && moved.Available()
	})
	if got, ok := p.FileOwner(t.Context(), ref); ok {
		t.Fatalf("file pinned at the old address found on %s at %s", got.Name, got.Addr)
	}
	if copyRef(old, ref) == copyRef(moved, ref) {
		t.Fatalf("copies of both machines' files share %v", copyRef(old, ref))
	}

	cfg2 := cfg
	cfg2.Instances = append(slices.Clone(cfg.Instances), config.Instance{Name: "back", Address: ss[0].Addr()})
	if _, err := p.Fleet().Reconfigure(&cfg2); err != nil {
		t.Fatal(err)
	}
	back := p.Instance("back")
	testkit.Eventually(t, "the old address back under another name", back.Available)
	if got, ok := p.FileOwner(t.Context(), ref); !ok || got != back {
		t.Fatalf("file pinned at the old address: %v %v, want it on %q", got, ok, "back")
	}
}
