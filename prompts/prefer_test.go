package prompts

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/upstream"
)

// solidPNG is a 4x4 PNG of one colour.
func solidPNG(t *testing.T, c color.NRGBA) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, 4, 4))
	for k := 0; k < len(img.Pix); k += 4 {
		img.Pix[k], img.Pix[k+1], img.Pix[k+2], img.Pix[k+3] = c.R, c.G, c.B, c.A
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// writeFile writes data to dir/rel, creating folders.
func writeFile(t *testing.T, dir, rel string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// invertPrompt loads value, inverts it and saves it with prefix.
func invertPrompt(value, prefix string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{
		"1": {"class_type": "LoadImage", "inputs": {"image": %q}},
		"2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
		"3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": %q}}
	}`, value, prefix))
}

// savedPixel waits for the prompt's end and returns the first pixel of the
// image its SaveImage wrote in outDir.
func savedPixel(t *testing.T, sink *recSink, outDir string) color.NRGBA {
	t.Helper()
	evs := sink.until(t, 10*time.Second)
	for _, ev := range evs {
		if ev.Type == "execution_error" {
			t.Fatalf("prompt failed: %s", ev.Data)
		}
		if ev.Type != "executed" {
			continue
		}
		var m struct {
			Data struct {
				Output struct {
					Images []FileRef `json:"images"`
				} `json:"output"`
			} `json:"data"`
		}
		if json.Unmarshal(ev.Data, &m) != nil || len(m.Data.Output.Images) == 0 {
			continue
		}
		ref := m.Data.Output.Images[0]
		b, err := os.ReadFile(filepath.Join(outDir, ref.Subfolder, ref.Filename))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		return color.NRGBAModel.Convert(img.At(0, 0)).(color.NRGBA)
	}
	t.Fatalf("no executed event with an image: %s", types(evs))
	return color.NRGBA{}
}

func nameOf(inst *upstream.Instance) string {
	if inst == nil {
		return "no instance"
	}
	return inst.Name
}

func inverted(c color.NRGBA) color.NRGBA {
	return color.NRGBA{255 - c.R, 255 - c.G, 255 - c.B, c.A}
}

// TestPreferAndOutputCopies: a prompt that loads an output of instance a
// goes to a while a is available, whatever the load; when a is out of
// selection it runs on b with a copy of a's file (in b's copies folder:
// b's own file of the same name is neither used nor overwritten); when a
// is dead and b has no copy, the prompt fails validation on b instead of
// loading b's own file of that name.
func TestPreferAndOutputCopies(t *testing.T) {
	t.Parallel()
	a := testkit.Sim(t, comfysim.Options{})
	b := testkit.Sim(t, comfysim.Options{})
	red, green, blue := color.NRGBA{200, 0, 0, 255}, color.NRGBA{0, 200, 0, 255}, color.NRGBA{0, 0, 200, 255}
	writeFile(t, a.OutputDir(), "shot.png", solidPNG(t, red))
	writeFile(t, b.OutputDir(), "shot.png", solidPNG(t, green)) // b's own, same name
	writeFile(t, a.OutputDir(), "sub/other.png", solidPNG(t, blue))
	writeFile(t, b.OutputDir(), "sub/other.png", solidPNG(t, green))
	p, _ := simPool(t, nil, a, b)
	ia, ib := p.Instances()[0], p.Instances()[1]

	send := func(value string, file InstanceFile) (SubmitResult, *recSink) {
		t.Helper()
		sink := newRecSink()
		res, err := p.Submit(context.Background(), SubmitRequest{
			Body:     map[string]json.RawMessage{"prompt": invertPrompt(value, "pref")},
			PromptID: newUUID(),
			Sink:     sink,
			Prefer:   ia,
			Files:    map[string]InstanceFile{value: file},
		})
		if err != nil {
			t.Fatal(err)
		}
		return res, sink
	}
	shot := InstanceFile{Instance: ia, Value: "shot.png [output]"}
	var sinks []*recSink
	for k := range 3 {
		res, sink := send("@i1/shot.png [output]", shot)
		if res.Status != 200 || res.Instance != ia {
			t.Fatalf("prompt %d: %d on %s, want 200 on the preferred %s: %s", k, res.Status, nameOf(res.Instance), ia.Name, res.Body)
		}
		sinks = append(sinks, sink)
	}
	for _, sink := range sinks {
		if got := savedPixel(t, sink, a.OutputDir()); got != inverted(red) {
			t.Fatalf("on a: pixel %v, want inverted red", got)
		}
	}

	// a leaves selection (alive): the prompt runs on b, on a copy.
	if _, err := p.Fleet().Drain(ia.Name); err != nil {
		t.Fatal(err)
	}
	res, sink := send("@i1/shot.png [output]", shot)
	if res.Status != 200 || res.Instance != ib {
		t.Fatalf("with a draining: %d on %s, want 200 on b: %s", res.Status, nameOf(res.Instance), res.Body)
	}
	if got := savedPixel(t, sink, b.OutputDir()); got != inverted(red) {
		t.Fatalf("on b: pixel %v, want a's inverted red (not b's own shot.png)", got)
	}
	if got, _ := os.ReadFile(filepath.Join(b.OutputDir(), "shot.png")); !bytes.Equal(got, solidPNG(t, green)) {
		t.Fatal("b's own shot.png was overwritten")
	}
	if _, err := os.Stat(filepath.Join(b.OutputDir(), copiesDir, "i1~"+ia.ID(), "shot.png")); err != nil {
		t.Fatalf("copy not in b's copies folder: %v", err)
	}
	if !p.prompts.pins.has(FileRef{Filename: "shot.png", Subfolder: copiesDir + "/i1~" + ia.ID(), Type: "output"}, ib.Endpoint()) {
		t.Fatal("copy not pinned on b")
	}

	// a dies: its copy on b still serves; a file b has no copy of fails.
	if _, err := p.Fleet().Undrain(ia.Name); err != nil {
		t.Fatal(err)
	}
	a.Kill()
	p.SocketLost(ia)
	testkit.Eventually(t, "a confirmed dead", func() bool { return !ia.State().Healthy() })
	res, sink = send("@i1/shot.png [output]", shot)
	if res.Status != 200 || res.Instance != ib {
		t.Fatalf("with a dead: %d on %s: %s", res.Status, nameOf(res.Instance), res.Body)
	}
	if got := savedPixel(t, sink, b.OutputDir()); got != inverted(red) {
		t.Fatalf("a dead, copy on b: pixel %v, want inverted red", got)
	}
	res, _ = send("@i1/sub/other.png [output]", InstanceFile{Instance: ia, Value: "sub/other.png [output]"})
	if res.Status != 400 || res.Instance != ib || !strings.Contains(string(res.Body), copiesDir) {
		t.Fatalf("a dead, no copy: %d on %s %s; want b's 400 naming the missing copy", res.Status, nameOf(res.Instance), res.Body)
	}
}

func TestCopyToken(t *testing.T) {
	t.Parallel()
	for _, c := range [][2]string{{"gpu-1", "gpu-1"}, {"127.0.0.1:8188", "127.0.0.1-8188"}, {"a/b", "a-b"}, {"..", "-"}, {".", "-"}, {"", "-"}, {"..a", "..a"}} {
		if got := copyToken(c[0]); got != c[1] {
			t.Errorf("copyToken(%q) = %q, want %q", c[0], got, c[1])
		}
	}
}
