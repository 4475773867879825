package proxy

import (
	"bytes"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
)

// TestOverwriteReachesCopies: a.png (red) is uploaded and a prompt on the
// second instance gets a copy; a.png is overwritten with blue through
// comfygate; the next prompt on the second instance sees blue, not its
// stale copy. A mask upload written over a.png reaches the copies too.
func TestOverwriteReachesCopies(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	red, blue := color.NRGBA{200, 10, 10, 255}, color.NRGBA{10, 10, 200, 255}
	if a := upload(t, g, "/upload/image", "a.png", pngOf(t, 4, 4, red), nil); a["name"] != "a.png" {
		t.Fatalf("upload answer %v", a)
	}
	k := 0
	// runOn submits prompts inverting a.png until one runs on the instance
	// of token tok, and returns the pixel it saved.
	runOn := func(tok string) color.NRGBA {
		t.Helper()
		for range 8 {
			k++
			e := waitHistory(t, g, "", submit(t, g, map[string]any{"prompt": map[string]any{
				"1": map[string]any{"class_type": "LoadImage", "inputs": map[string]any{"image": "a.png"}},
				"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
				"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"2", 0}, "filename_prefix": fmt.Sprint("ow", k)}},
			}}))
			if e.Status.StatusStr != "success" {
				t.Fatalf("prompt loading a.png: %s", e.Status.StatusStr)
			}
			out := e.Outputs["3"].Images[0]
			if strings.HasPrefix(out.Subfolder, "@"+tok) {
				return viewPixel(t, g, "", out)
			}
		}
		t.Fatalf("8 prompts did not reach %s", tok)
		return color.NRGBA{}
	}
	inv := func(c color.NRGBA) color.NRGBA { return color.NRGBA{255 - c.R, 255 - c.G, 255 - c.B, 255} }
	if got := runOn("i1"); got != inv(red) {
		t.Fatalf("first prompt on i1: pixel %v, want inverted red", got)
	}
	if a := upload(t, g, "/upload/image", "a.png", pngOf(t, 4, 4, blue), map[string]string{"overwrite": "true"}); a["name"] != "a.png" {
		t.Fatalf("overwrite answer %v", a)
	}
	if got := runOn("i1"); got != inv(blue) {
		t.Fatalf("after the overwrite, on i1: pixel %v, want inverted blue (i1 kept its stale copy)", got)
	}

	// A mask written over a.png, wherever it lands, reaches the other
	// instance's copy at its next prompt there.
	mask := pngOf(t, 4, 4, color.NRGBA{0, 0, 0, 100})
	upload(t, g, "/upload/mask", "a.png", mask, map[string]string{
		"overwrite": "true", "type": "input", "original_ref": `{"filename": "a.png", "subfolder": "", "type": "input"}`,
	})
	runOn("i0")
	runOn("i1")
	a0, err0 := os.ReadFile(filepath.Join(ss[0].InputDir(), "a.png"))
	a1, err1 := os.ReadFile(filepath.Join(ss[1].InputDir(), "a.png"))
	if err0 != nil || err1 != nil {
		t.Fatal(err0, err1)
	}
	if !bytes.Equal(a0, a1) {
		t.Fatal("after the mask upload the instances hold different a.png: one kept its stale copy")
	}
	if bytes.Equal(a0, pngOf(t, 4, 4, blue)) {
		t.Fatal("the mask upload did not change a.png")
	}
}
