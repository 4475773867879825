package prompts

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/comfygate/comfygate/internal/lifecycle"
	"github.com/comfygate/comfygate/upstream"
)

// Many submissions of one client id at once: exactly one keeps it, the
// others get fresh ids, and every prompt is found under its own. Once the
// holder is done, its id is free again.
func TestIndexClaimIsExclusive(t *testing.T) {
	t.Parallel()
	var x index
	var n atomic.Int64
	fresh := func() string { return fmt.Sprintf("fresh-%d", n.Add(1)) }
	const subs = 32
	prs := make([]*Prompt, subs)
	var wg sync.WaitGroup
	for k := range prs {
		prs[k] = &Prompt{ID: "same"}
		wg.Go(func() { x.claim(prs[k], fresh) })
	}
	wg.Wait()
	kept := 0
	for _, pr := range prs {
		if pr.ID == "same" {
			kept++
		}
		if got, ok := x.get(pr.ID); !ok || got != pr {
			t.Fatalf("prompt %s is not found under its id", pr.ID)
		}
	}
	if kept != 1 {
		t.Fatalf("%d prompts hold the id, want 1", kept)
	}
	holder, _ := x.get("same")
	holder.view.Store(&promptView{life: lifecycle.State{Phase: lifecycle.Ended}})
	next := &Prompt{ID: "same"}
	if renamed, same := x.claim(next, fresh); renamed || same != nil || next.ID != "same" {
		t.Fatalf("the id of a done prompt is not given to the next (got %s)", next.ID)
	}

	// The same submission (fingerprint and key) while the first holds the
	// id: it takes nothing and learns the first; another key's is renamed.
	first := &Prompt{ID: "sub", submission: "fp", owner: "k"}
	x.claim(first, fresh)
	again := &Prompt{ID: "sub", submission: "fp", owner: "k"}
	if renamed, same := x.claim(again, fresh); renamed || same != first || again.ID != "sub" {
		t.Fatalf("a repeat of the same submission: renamed %v, same %p (first %p)", renamed, same, first)
	}
	if got, _ := x.get("sub"); got != first {
		t.Fatal("a repeat took the first's id")
	}
	other := &Prompt{ID: "sub", submission: "fp", owner: "other key"}
	if renamed, same := x.claim(other, fresh); !renamed || same != nil || other.ID == "sub" {
		t.Fatalf("another key's same body: renamed %v, same %v, id %s", renamed, same, other.ID)
	}
}

// The live set and its count follow setLive, and eviction from the done
// queue removes only keys that still name the evicted prompt.
func TestIndexLiveAndEviction(t *testing.T) {
	t.Parallel()
	var x index
	inst := &upstream.Instance{Name: "i1"}
	a, b := &Prompt{ID: "a"}, &Prompt{ID: "b"}
	a.view.Store(&promptView{life: lifecycle.State{Phase: lifecycle.Queued, UpstreamID: "u"}, instance: inst})
	x.claim(a, nil)
	x.repin(a, nil, "", inst, "u")
	x.setLive(a, true)
	x.setLive(a, true)
	x.setLive(b, true)
	if got := x.nlive.Load(); got != 2 {
		t.Fatalf("%d live, want 2", got)
	}
	if got := x.livePinnedTo(inst); len(got) != 1 || got[0] != a {
		t.Fatalf("live at i1: %v", got)
	}
	x.setLive(b, false)
	x.setLive(b, false)
	if got := x.nlive.Load(); got != 1 {
		t.Fatalf("%d live, want 1", got)
	}
	// Another prompt took a's upstream key: a's eviction leaves it.
	c := &Prompt{ID: "c"}
	x.byUp.Store(upKey{inst, "u"}, c)
	x.record(a)
	for k := range maxDonePrompts {
		x.record(&Prompt{ID: fmt.Sprint(k)})
	}
	if _, ok := x.get("a"); ok {
		t.Fatal("the oldest done prompt is not evicted")
	}
	if got := x.getUpstream(inst, "u"); got != c {
		t.Fatalf("eviction removed another prompt's key (%v)", got)
	}
}

// Close waits for what runs, and nothing starts after it.
func TestRunClosesAfterItsGoroutines(t *testing.T) {
	t.Parallel()
	r := newRun(nil)
	if r.context() != nil || r.goBackground(func(context.Context) {}) {
		t.Fatal("a worker ran before start")
	}
	ctx, ok := r.start(context.Background())
	if !ok || ctx == nil {
		t.Fatal("start failed")
	}
	if _, again := r.start(context.Background()); again {
		t.Fatal("started twice")
	}
	release := make(chan struct{})
	var ended atomic.Bool
	if !r.goRun(func() { <-release; ended.Store(true) }) {
		t.Fatal("goRun refused before close")
	}
	r.close()
	if ctx.Err() == nil {
		t.Fatal("close left the run's context alive")
	}
	if r.goRun(func() { t.Error("ran after close") }) {
		t.Fatal("goRun accepted after close")
	}
	close(release)
	r.wait()
	if !ended.Load() {
		t.Fatal("wait returned before the running goroutine ended")
	}
}

// Concurrent first uses of an instance make one owner record.
func TestOwnersOneRecordPerInstance(t *testing.T) {
	t.Parallel()
	var o owners
	insts := []*upstream.Instance{{Name: "i1"}, {Name: "i2"}}
	var made atomic.Int64
	got := make([]*instSocket, 40)
	var wg sync.WaitGroup
	for k := range got {
		wg.Go(func() {
			got[k], _ = o.getOrAdd(insts[k%2], func() *instSocket { made.Add(1); return &instSocket{inst: insts[k%2]} })
		})
	}
	wg.Wait()
	for k, s := range got {
		if s != o.get(insts[k%2]) || s.inst != insts[k%2] {
			t.Fatalf("use %d got another record than the map holds", k)
		}
	}
	if len(o.all()) != 2 {
		t.Fatalf("%d records, want 2", len(o.all()))
	}
	if o.remove(insts[0], &instSocket{}) || !o.remove(insts[0], o.get(insts[0])) || o.get(insts[0]) != nil {
		t.Fatal("remove took another record, or not the one asked")
	}
}
