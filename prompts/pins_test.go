package prompts

import (
	"context"
	"fmt"
	"testing"

	"github.com/comfygate/comfygate/internal/testkit"
)

func TestNormalizeRef(t *testing.T) {
	t.Parallel()
	tests := []struct {
		desc string
		in   FileRef
		want FileRef
	}{
		{"empty type is output", FileRef{Filename: "a.png"}, FileRef{Filename: "a.png", Type: "output"}},
		{"annotation sets type", FileRef{Filename: "a.png [input]", Type: "output"}, FileRef{Filename: "a.png", Type: "input"}},
		{"only the base name counts", FileRef{Filename: "x/y/a.png", Type: "temp"}, FileRef{Filename: "a.png", Type: "temp"}},
		{"subfolder slashes trimmed", FileRef{Filename: "a.png", Subfolder: "/sub/dir/", Type: "input"}, FileRef{Filename: "a.png", Subfolder: "sub/dir", Type: "input"}},
	}
	for _, tc := range tests {
		if got := normalizeRef(tc.in); got != tc.want {
			t.Errorf("%s: normalizeRef(%+v) = %+v, want %+v", tc.desc, tc.in, got, tc.want)
		}
	}
}

func TestPinnedOwnerWinsOverSameNamedFileElsewhere(t *testing.T) {
	t.Parallel()
	a, b := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	// Both instances wrote ComfyUI_00001_.png; the prompt's output came from b.
	a.Put("output", "", "ComfyUI_00001_.png", []byte("A"))
	b.Put("output", "", "ComfyUI_00001_.png", []byte("B"))
	p := newCorePool(t, coreConfig(a.Addr(), b.Addr()), true)
	ib := p.Instances()[1]
	p.PinFile(FileRef{Filename: "ComfyUI_00001_.png", Type: "output"}, ib)
	for k := 0; k < 5; k++ {
		got, ok := p.FileOwner(context.Background(), FileRef{Filename: "ComfyUI_00001_.png"})
		if !ok || got != ib {
			t.Fatalf("FileOwner = %v %v, want the pinned instance", got, ok)
		}
	}
	if a.Views.Load()+b.Views.Load() != 0 {
		t.Fatal("a pinned file was probed")
	}
	// The owner goes down: it is still the answer, never the other file.
	ib.State().ForceHealthy(false)
	if got, ok := p.FileOwner(context.Background(), FileRef{Filename: "ComfyUI_00001_.png", Type: "output"}); !ok || got != ib {
		t.Fatalf("FileOwner with owner down = %v %v, want the pinned instance", got, ok)
	}
}

func TestFileOwnerProbesOnMiss(t *testing.T) {
	t.Parallel()
	a, b := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	b.Put("output", "sub", "only_b.png", []byte("0123456789"))
	p := newCorePool(t, coreConfig(a.Addr(), b.Addr()), true)
	ib := p.Instances()[1]
	got, ok := p.FileOwner(context.Background(), FileRef{Filename: "only_b.png", Subfolder: "sub"})
	if !ok || got != ib {
		t.Fatalf("FileOwner = %v %v, want b", got, ok)
	}
	if b.Ranged.Load() != 1 {
		t.Fatalf("probe used no Range header (%d ranged of %d)", b.Ranged.Load(), b.Views.Load())
	}
	// Pinned now: no second probe.
	before := a.Views.Load() + b.Views.Load()
	if got, ok := p.FileOwner(context.Background(), FileRef{Filename: "only_b.png", Subfolder: "sub", Type: "output"}); !ok || got != ib {
		t.Fatalf("second FileOwner = %v %v", got, ok)
	}
	if after := a.Views.Load() + b.Views.Load(); after != before {
		t.Fatal("probed again after pinning")
	}
	if _, ok := p.FileOwner(context.Background(), FileRef{Filename: "nowhere.png"}); ok {
		t.Fatal("found a file nobody has")
	}
}

func TestPinsHoldSeveralOwnersMostRecentFirst(t *testing.T) {
	t.Parallel()
	p, in := selectPool(t, 3)
	ref := FileRef{Filename: "up.png", Type: "input"}
	p.PinFile(ref, in[0])
	p.PinFile(ref, in[1])
	if got, _ := p.FileOwner(context.Background(), ref); got != in[1] {
		t.Fatalf("owner = %v, want the most recent pin", got.Name)
	}
	in[1].State().ForceHealthy(false)
	if got, _ := p.FileOwner(context.Background(), ref); got != in[0] {
		t.Fatalf("owner = %v, want the available holder", got.Name)
	}
	if !p.prompts.pins.has(ref, in[0].Endpoint()) || !p.prompts.pins.has(ref, in[1].Endpoint()) || p.prompts.pins.has(ref, in[2].Endpoint()) {
		t.Fatal("holders wrong")
	}
}

func TestPinTableIsBounded(t *testing.T) {
	t.Parallel()
	pt := newPinTable(100)
	for k := 0; k < 250; k++ {
		pt.add(FileRef{Filename: fmt.Sprintf("f%d.png", k), Type: "output"}, "a")
	}
	if pt.len() != 100 {
		t.Fatalf("len = %d, want 100", pt.len())
	}
	if pt.owners(FileRef{Filename: "f0.png", Type: "output"}) != nil {
		t.Fatal("oldest pin not evicted")
	}
	if pt.owners(FileRef{Filename: "f249.png", Type: "output"}) == nil {
		t.Fatal("newest pin evicted")
	}
}
