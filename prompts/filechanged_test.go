package prompts

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/comfygate/comfygate/internal/testkit"
)

// TestFileChangedDropsStaleCopies: after FileChanged the holder is the
// only holder of an input (its copies elsewhere are stale), while for an
// output only the copies of the holder's file go: another instance's own
// file of that name keeps its pin. A copy that started before the change
// is not pinned.
func TestFileChangedDropsStaleCopies(t *testing.T) {
	t.Parallel()
	p := newCorePool(t, coreConfig(testkit.ClosedAddr(t), testkit.ClosedAddr(t), testkit.ClosedAddr(t)), false)
	ia, ib, ic := p.Instances()[0], p.Instances()[1], p.Instances()[2]

	in := FileRef{Filename: "a.png", Type: "input"}
	p.PinFile(in, ia)
	p.PinFile(in, ib) // copies made for earlier prompts
	p.PinFile(in, ic)
	p.FileChanged(FileRef{Filename: "a.png [input]"}, ib) // overwritten on b
	if got := p.prompts.pins.owners(in); !slices.Equal(got, []string{ib.Endpoint()}) {
		t.Fatalf("input holders after the change %v, want only %s", got, ib.Name)
	}

	out := FileRef{Filename: "x.png", Type: "output"}
	p.PinFile(out, ia)
	p.PinFile(out, ib) // b's own x.png
	cp := copyRef(ia, out)
	p.PinFile(cp, ic) // c's copy of a's x.png
	cpB := copyRef(ib, out)
	p.PinFile(cpB, ic) // c's copy of b's x.png
	p.FileChanged(FileRef{Filename: "x.png"}, ia)
	if got := p.prompts.pins.owners(out); !slices.Equal(got, []string{ia.Endpoint(), ib.Endpoint()}) {
		t.Fatalf("output holders %v, want both instances' own files kept, %s most recent", got, ia.Name)
	}
	if p.prompts.pins.has(cp, ic.Endpoint()) {
		t.Fatal("c's copy of a's changed x.png still pinned")
	}
	if !p.prompts.pins.has(cpB, ic.Endpoint()) {
		t.Fatal("c's copy of b's x.png was dropped, but b's file did not change")
	}

	// A copy under way across a change is not pinned; one after it is.
	since := p.prompts.pins.stamp()
	p.FileChanged(in, ia)
	if p.prompts.pins.addSince(in, ic.Endpoint(), since) || p.prompts.pins.has(in, ic.Endpoint()) {
		t.Fatal("a copy that started before the change was pinned")
	}
	if !p.prompts.pins.addSince(in, ic.Endpoint(), p.prompts.pins.stamp()) {
		t.Fatal("a copy after the change was not pinned")
	}
	p.FileChanged(in, nil) // no holder: nothing
	p.FileChanged(FileRef{}, ia)
}

// TestFileChangedRecopies: an input copied to b, then overwritten on a:
// the next EnsureInputs on b copies the new content.
func TestFileChangedRecopies(t *testing.T) {
	t.Parallel()
	a, b := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p := newCorePool(t, coreConfig(a.Addr(), b.Addr()), true)
	ia, ib := p.Instances()[0], p.Instances()[1]
	ref := FileRef{Filename: "a.png", Type: "input"}
	a.Put("input", "", "a.png", []byte("red"))
	p.FileChanged(ref, ia) // uploaded on a
	if err := p.EnsureInputs(context.Background(), ib, loadImagePrompt("a.png")); err != nil {
		t.Fatal(err)
	}
	a.Put("input", "", "a.png", []byte("blue")) // overwrite=true on a
	p.FileChanged(ref, ia)
	if err := p.EnsureInputs(context.Background(), ib, loadImagePrompt("a.png")); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Get("input", "", "a.png"); !bytes.Equal(got, []byte("blue")) {
		t.Fatalf("b has %q, want the new content", got)
	}
	if n := a.Views.Load(); n != 2 {
		t.Fatalf("a read %d times, want 2 (one copy per version)", n)
	}
}
