package proxy

import (
	"fmt"
	"image/color"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
)

// TestOutputLoadedAsInputRunsWhereItIs: both instances write
// same_00001_.png (red on one, blue on the other). A prompt loading one of
// them by the reference comfygate handed out runs on the instance that
// wrote it, every time; a prompt loading both gets each instance's own
// image (one of them copied), never the other's file of that name.
func TestOutputLoadedAsInputRunsWhereItIs(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	colors := map[string]int{}   // instance token -> colour its same_00001_.png has
	refs := map[string]fileRef{} // instance token -> that file, as comfygate hands it out
	for i := 0; len(refs) < 2; i++ {
		if i == 8 {
			t.Fatalf("8 prompts did not reach both instances: %v", refs)
		}
		c := []int{0xc80000, 0x0000c8}[len(refs)]
		e := waitHistory(t, g, "", submit(t, g, map[string]any{"prompt": emptyImagePrompt(c, "same")}))
		ref := e.Outputs["2"].Images[0]
		tok, _, _ := decodeSubfolder(ref.Subfolder)
		tok = tokenName(tok)
		if _, seen := refs[tok]; seen || ref.Filename != "same_00001_.png" {
			continue
		}
		refs[tok], colors[tok] = ref, c
	}
	value := func(ref fileRef) string { return fmt.Sprintf("%s/%s [output]", ref.Subfolder, ref.Filename) }

	// One output: its instance runs the prompt, every time.
	before := []int{ss[0].PromptsExecuted(), ss[1].PromptsExecuted()}
	for k := range 4 {
		e := waitHistory(t, g, "", submit(t, g, map[string]any{"prompt": map[string]any{
			"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": value(refs["i1"])}},
			"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
			"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": fmt.Sprint("one", k)}},
		}}))
		if e.Status.StatusStr != "success" {
			t.Fatalf("prompt loading i1's output: %s", e.Status.StatusStr)
		}
		out := e.Outputs["3"].Images[0]
		if !strings.HasPrefix(out.Subfolder, "@i1") {
			t.Errorf("prompt %d loading i1's output ran on %s", k, out.Subfolder)
		}
		if got, want := viewPixel(t, g, "", out), invertedRGB(colors["i1"]); got != want {
			t.Errorf("prompt %d: pixel %v, want %v", k, got, want)
		}
	}
	if d := ss[1].PromptsExecuted() - before[1]; d != 4 {
		t.Errorf("i1 ran %d of the 4 prompts loading its output", d)
	}

	// Outputs of both instances in one prompt: each LoadImage gets its own.
	e := waitHistory(t, g, "", submit(t, g, map[string]any{"prompt": map[string]any{
		"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": value(refs["i0"])}},
		"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
		"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": "both0"}},
		"4": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": value(refs["i1"])}},
		"5": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"4", 0}}},
		"6": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"5", 0}, "filename_prefix": "both1"}},
	}}))
	if e.Status.StatusStr != "success" {
		t.Fatalf("prompt loading both outputs: %s", e.Status.StatusStr)
	}
	for node, tok := range map[string]string{"3": "i0", "6": "i1"} {
		if got, want := viewPixel(t, g, "", e.Outputs[node].Images[0]), invertedRGB(colors[tok]); got != want {
			t.Errorf("node %s (loads %s's same_00001_.png): pixel %v, want %v", node, tok, got, want)
		}
	}
}

func invertedRGB(c int) color.NRGBA {
	o := rgbOf(c)
	return color.NRGBA{255 - o.R, 255 - o.G, 255 - o.B, 255}
}
