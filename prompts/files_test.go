package prompts

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/upstream"
)

func TestInputRef(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want FileRef
		ok   bool
	}{
		{"name.png", FileRef{Filename: "name.png", Type: "input"}, true},
		{"sub/name.png", FileRef{Filename: "name.png", Subfolder: "sub", Type: "input"}, true},
		{"a/b/name.png [input]", FileRef{Filename: "name.png", Subfolder: "a/b", Type: "input"}, true},
		{"name.png [output]", FileRef{}, false},
		{"name.png [temp]", FileRef{}, false},
		{"a prompt\nwith lines", FileRef{}, false},
		{"dir/", FileRef{}, false},
		{"", FileRef{}, false},
	}
	for _, tc := range tests {
		got, ok := inputRef(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("inputRef(%q) = %+v %v, want %+v %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func loadImagePrompt(image string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{
		"1": {"class_type": "LoadImage", "inputs": {"image": %q}},
		"2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 0.5}},
		"3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "ComfyUI"}}
	}`, image))
}

func TestEnsureInputsCopiesPinnedUpload(t *testing.T) {
	t.Parallel()
	a, b := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	data := bytes.Repeat([]byte("pixels"), 100_000) // 600 kB
	a.Put("input", "clip", "cat.png", data)
	p := newCorePool(t, coreConfig(a.Addr(), b.Addr()), true)
	ia, ib := p.Instances()[0], p.Instances()[1]
	p.PinFile(FileRef{Filename: "cat.png", Subfolder: "clip", Type: "input"}, ia)

	// Several prompts at once need it on b: copied once.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for k := 0; k < 4; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- p.EnsureInputs(context.Background(), ib, loadImagePrompt("clip/cat.png"))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got, ok := b.Get("input", "clip", "cat.png")
	if !ok || !bytes.Equal(got, data) {
		t.Fatalf("b has %d bytes (ok %v), want %d identical", len(got), ok, len(data))
	}
	if n := a.Views.Load(); n != 1 {
		t.Fatalf("source read %d times, want 1", n)
	}
	if !p.prompts.pins.has(FileRef{Filename: "cat.png", Subfolder: "clip", Type: "input"}, ib.Endpoint()) {
		t.Fatal("copy not pinned on the target")
	}
	// Already there, on the owner, or not uploaded through comfygate: nothing to do.
	for _, tc := range []struct {
		inst  *upstream.Instance
		image string
	}{{ib, "clip/cat.png"}, {ia, "clip/cat.png [input]"}, {ib, "unknown.png"}, {ib, "out.png [output]"}} {
		if err := p.EnsureInputs(context.Background(), tc.inst, loadImagePrompt(tc.image)); err != nil {
			t.Fatalf("%s on %s: %v", tc.image, tc.inst.Name, err)
		}
	}
	if n := a.Views.Load() + b.Views.Load(); n != 1 {
		t.Fatalf("%d /view requests, want 1", n)
	}
}

func TestEnsureInputsReportsFailedCopy(t *testing.T) {
	t.Parallel()
	a, b := testkit.Mini(t, "0.3.65"), testkit.Mini(t, "0.3.65")
	p := newCorePool(t, coreConfig(a.Addr(), b.Addr()), true)
	ia, ib := p.Instances()[0], p.Instances()[1]
	// Pinned on a, but a lost it (e.g. its input folder was wiped).
	p.PinFile(FileRef{Filename: "gone.png", Type: "input"}, ia)
	if err := p.EnsureInputs(context.Background(), ib, loadImagePrompt("gone.png")); err == nil {
		t.Fatal("EnsureInputs succeeded without the file")
	}
	if p.prompts.pins.has(FileRef{Filename: "gone.png", Type: "input"}, ib.Name) {
		t.Fatal("failed copy pinned")
	}
	if err := p.EnsureInputs(context.Background(), ib, json.RawMessage(`[1,2]`)); err == nil {
		t.Fatal("a prompt that is not an object was accepted")
	}
}
