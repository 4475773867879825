package jobs

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/workflows"
)

func TestBuiltInWorkflowsLoad(t *testing.T) {
	t.Parallel()
	wfs, err := loadWorkflows(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range workflows.Names() {
		wf := wfs[name]
		if wf == nil {
			t.Fatalf("built-in %q not loaded", name)
		}
		if !wf.needsImage() || wf.nodes[wf.cfg.OutputNode].class != "SaveImage" || wf.nodes[wf.cfg.ImageNode].class != "LoadImage" {
			t.Errorf("%s: unexpected settings %+v", name, wf.cfg)
		}
	}
	if c := wfs[workflows.RemoveBackground].nodes["2"].class; c != "Image Rembg (Remove Background)" {
		t.Errorf("remove-background runs %q", c)
	}
	if c := wfs[workflows.UpscaleImage].nodes["2"].class; c != "UpscaleModelLoader" {
		t.Errorf("upscale-image loads with %q", c)
	}
}

func TestWorkflowConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return name
	}
	good := write("good.json", `{"10": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
		"11": {"class_type": "ImageInvert", "inputs": {"image": ["10", 0]}},
		"12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "x"}}}`)
	for _, tc := range []struct {
		desc string
		wfs  map[string]config.Workflow
		want []string // substrings of the error; none: loads
	}{
		{desc: "custom file", wfs: map[string]config.Workflow{"invert": {File: good, ImageNode: "10", ImageInput: "image", OutputNode: "12", Overridable: []string{"12.filename_prefix"}}}},
		{desc: "built-in settings changed", wfs: map[string]config.Workflow{"upscale-image": {ImageInput: "image", Overridable: []string{"4.filename_prefix"}}}},
		{desc: "unknown built-in", wfs: map[string]config.Workflow{"nope": {ImageInput: "image"}}, want: []string{"workflows.nope", "set file"}},
		{desc: "missing file", wfs: map[string]config.Workflow{"x": {File: "absent.json", ImageNode: "1", ImageInput: "image", OutputNode: "2"}}, want: []string{"workflows.x", "absent.json"}},
		{desc: "bad json", wfs: map[string]config.Workflow{"x": {File: write("bad.json", "{\n\"1\": {,\n}"), ImageNode: "1", ImageInput: "image", OutputNode: "1"}}, want: []string{"workflows.x: ", "bad.json", "line 2"}},
		{desc: "ui format", wfs: map[string]config.Workflow{"x": {File: write("ui.json", `{"nodes": [], "links": [], "version": 0.4}`), ImageNode: "1", ImageInput: "image", OutputNode: "1"}}, want: []string{"ui.json", "UI-format", "API"}},
		{desc: "no class_type", wfs: map[string]config.Workflow{"x": {File: write("nc.json", `{"1": {"inputs": {}}}`), ImageNode: "1", ImageInput: "image", OutputNode: "1"}}, want: []string{"nc.json", `node "1"`, "class_type"}},
		{desc: "dangling link", wfs: map[string]config.Workflow{"x": {File: write("dl.json", `{"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}`), OutputNode: "1"}}, want: []string{"dl.json", `node "1" (SaveImage)`, `"9"`}},
		{desc: "image node missing", wfs: map[string]config.Workflow{"x": {File: good, ImageNode: "99", ImageInput: "image", OutputNode: "12"}}, want: []string{"good.json", `image_node "99"`}},
		{desc: "image input missing", wfs: map[string]config.Workflow{"x": {File: good, ImageNode: "10", ImageInput: "picture", OutputNode: "12"}}, want: []string{"good.json", `image_node "10" (LoadImage)`, `"picture"`}},
		{desc: "output node missing", wfs: map[string]config.Workflow{"x": {File: good, ImageNode: "10", ImageInput: "image", OutputNode: "13"}}, want: []string{"good.json", `output_node "13"`}},
		{desc: "overridable node missing", wfs: map[string]config.Workflow{"x": {File: good, ImageNode: "10", ImageInput: "image", OutputNode: "12", Overridable: []string{"5.seed"}}}, want: []string{`overridable "5.seed"`, `node "5"`}},
		{desc: "overridable input missing", wfs: map[string]config.Workflow{"x": {File: good, ImageNode: "10", ImageInput: "image", OutputNode: "12", Overridable: []string{"12.seed"}}}, want: []string{`overridable "12.seed"`, `(SaveImage)`}},
		{desc: "overridable link", wfs: map[string]config.Workflow{"x": {File: good, ImageNode: "10", ImageInput: "image", OutputNode: "12", Overridable: []string{"11.image"}}}, want: []string{`overridable "11.image"`, "link"}},
		{desc: "overridable image", wfs: map[string]config.Workflow{"x": {File: good, ImageNode: "10", ImageInput: "image", OutputNode: "12", Overridable: []string{"10.image"}}}, want: []string{`overridable "10.image"`, "uploaded image"}},
		{desc: "parameters", wfs: map[string]config.Workflow{"x": {File: good, ImageNode: "10", ImageInput: "image", OutputNode: "12", Parameters: []config.Parameter{
			{Name: "prefix", Node: "12", Input: "filename_prefix", Type: "string", Default: "y"}}}}},
		{desc: "parameter problems", wfs: map[string]config.Workflow{"x": {File: good, ImageNode: "10", ImageInput: "image", OutputNode: "12", Parameters: []config.Parameter{
			{Name: "inputs", Node: "12", Input: "filename_prefix", Type: "string"},
			{Name: "image", Node: "12", Input: "filename_prefix", Type: "string"},
			{Name: "ghost", Node: "77", Input: "x", Type: "int"},
			{Name: "link", Node: "11", Input: "image", Type: "image"},
			{Name: "upload", Node: "10", Input: "image", Type: "image"},
			{Name: "count", Node: "12", Input: "filename_prefix", Type: "int", Default: "many"}}}},
			want: []string{`parameter "inputs"`, `parameter "image"`, `parameter "ghost": node "77"`, `parameter "link"`, `parameter "upload"`, `parameter "count": default`}},
		{desc: "built-in bad override", wfs: map[string]config.Workflow{"remove-background": {ImageInput: "image", Overridable: []string{"2.nope"}}}, want: []string{"built-in remove-background.json", `"2.nope"`}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			cfg := config.Default()
			cfg.Dir = dir
			cfg.Workflows = tc.wfs
			wfs, err := loadWorkflows(cfg)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				for name := range tc.wfs {
					if wfs[name] == nil {
						t.Fatalf("%s not loaded", name)
					}
				}
				if len(wfs) < 2 {
					t.Fatalf("built-ins missing: %d workflows", len(wfs))
				}
				return
			}
			if err == nil {
				t.Fatal("loaded; want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestBuildAndOverrides(t *testing.T) {
	t.Parallel()
	wfs, err := loadWorkflows(config.Default())
	if err != nil {
		t.Fatal(err)
	}
	wf := wfs[workflows.RemoveBackground]
	for _, tc := range []struct {
		desc string
		in   string
		want string // substring of the error; "" ok
	}{
		{desc: "none", in: `{}`},
		{desc: "allowed", in: `{"2.model": "isnet-general-use", "2.alpha_matting": true}`},
		{desc: "not allowed", in: `{"3.filename_prefix": "x"}`, want: `"3.filename_prefix" cannot be overridden`},
		{desc: "unknown", in: `{"nonsense": 1}`, want: "allowed: 2.alpha_matting"},
		{desc: "wrong kind", in: `{"2.alpha_matting": "yes"}`, want: "want a boolean, got a string"},
		{desc: "link", in: `{"2.model": ["1", 0]}`, want: "want a string, got a array"},
		{desc: "null", in: `{"2.model": null}`, want: "got a null"},
	} {
		var in map[string]json.RawMessage
		if err := json.Unmarshal([]byte(tc.in), &in); err != nil {
			t.Fatal(err)
		}
		err := wf.checkOverrides(in)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.desc, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want %q", tc.desc, err, tc.want)
		}
	}

	out, err := wf.build("comfygate-x.png", map[string]json.RawMessage{"2.model": json.RawMessage(`"silueta"`)})
	if err != nil {
		t.Fatal(err)
	}
	var g map[string]struct {
		ClassType string         `json:"class_type"`
		Inputs    map[string]any `json:"inputs"`
		Meta      map[string]any `json:"_meta"`
	}
	if err := json.Unmarshal(out, &g); err != nil {
		t.Fatal(err)
	}
	if g["1"].Inputs["image"] != "comfygate-x.png" || g["2"].Inputs["model"] != "silueta" || g["2"].Inputs["transparency"] != true {
		t.Fatalf("built graph: %s", out)
	}
	if g["3"].Meta["title"] != "Save Image" || len(g) != 3 {
		t.Fatalf("other nodes changed: %s", out)
	}
	// The template itself is untouched.
	if string(wf.nodes["2"].inputs["model"]) != `"u2net"` || string(wf.nodes["1"].inputs["image"]) != `"example.png"` {
		t.Fatal("build modified the template")
	}
}
