package comfyapi

import (
	"encoding/json"
	"slices"
	"testing"
)

// TestObjectInfoOneOddClass: one custom node with an odd entry costs only
// itself (ComfyUI's frontend reads each class on its own); a whole-document
// struct parse lost every class to it.
func TestObjectInfoOneOddClass(t *testing.T) {
	t.Parallel()
	body := `{"EmptyImage": {"input": {"required": {"width": ["INT", {"min": 1}]}, "optional": {"color": ["INT", {}]}, "hidden": {"p": "PROMPT"}}, "output": ["IMAGE"]},
		"Odd": {"input": {"required": ["not", "a", "map"]}, "output": "IMAGE"},
		"Worse": 7}`
	info, err := ParseObjectInfo([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	ei := info["EmptyImage"]
	if _, ok := ei.Required["width"]; !ok || ei.Outputs != 1 {
		t.Errorf("EmptyImage: %+v", ei)
	}
	if spec, ok := ei.Input("color"); !ok || string(spec) != `["INT", {}]` {
		t.Errorf("optional input: %s %v", spec, ok)
	}
	if _, ok := ei.Input("p"); ok {
		t.Error("a hidden input read as an input")
	}
	if odd, ok := info["Odd"]; !ok || odd.Required != nil || odd.Outputs != 0 {
		t.Errorf("Odd: %+v %v", odd, ok)
	}
	if _, ok := info["Worse"]; !ok {
		t.Error("a class that is no object dropped")
	}
	if _, err := ParseObjectInfo([]byte(`[]`)); err == nil {
		t.Error("an array read as object_info")
	}
	var c NodeClass
	if err := json.Unmarshal([]byte(`{"input": {"required": {"a": ["STRING"]}}, "output": ["X", "Y"]}`), &c); err != nil || c.Outputs != 2 || c.Section(InputRequired)["a"] == nil {
		t.Errorf("UnmarshalJSON: %+v %v", c, err)
	}
}

func TestInputSpec(t *testing.T) {
	t.Parallel()
	f := func(v float64) *float64 { return &v }
	for _, tc := range []struct {
		spec    string
		ok      bool
		typ     string
		combo   bool
		choices []string // compact JSON texts
		min     *float64
		max     *float64
		upload  bool
	}{
		{spec: `["INT", {"default": 1, "min": 0, "max": 8}]`, ok: true, typ: "INT", min: f(0), max: f(8)},
		{spec: `["FLOAT", {"min": "0"}]`, ok: true, typ: "FLOAT"}, // a min that is no number is none
		{spec: `["INT", {"MIN": 3}]`, ok: true, typ: "INT"},       // exact-case option names
		{spec: `[["a.png", "b.png"], {"image_upload": true}]`, ok: true, combo: true, choices: []string{`"a.png"`, `"b.png"`}, upload: true},
		{spec: `[[1, 2]]`, ok: true, combo: true, choices: []string{`1`, `2`}},
		{spec: `["COMBO", {"options": ["x", "y"], "default": "x"}]`, ok: true, typ: "COMBO", combo: true, choices: []string{`"x"`, `"y"`}},
		{spec: `["COMBO", {}]`, ok: true, typ: "COMBO"},
		{spec: `["COMBO", {"options": []}]`, ok: true, typ: "COMBO", combo: true, choices: []string{}},
		{spec: `["IMAGE", "junk"]`, ok: true, typ: "IMAGE"},
		{spec: `["IMAGE", {"video_upload": "yes"}]`, ok: true, typ: "IMAGE"},
		{spec: `[]`},
		{spec: `"INT"`},
		{spec: `{"type": "INT"}`},
	} {
		sp, ok := ParseInputSpec([]byte(tc.spec))
		var choices []string
		if sp.Choices != nil {
			choices = []string{}
		}
		for _, c := range sp.Choices {
			choices = append(choices, string(c))
		}
		eq := func(a, b *float64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
		if ok != tc.ok || sp.Type != tc.typ || sp.Combo != tc.combo || !slices.Equal(choices, tc.choices) || (choices == nil) != (tc.choices == nil) ||
			!eq(sp.Min, tc.min) || !eq(sp.Max, tc.max) || sp.Upload != tc.upload {
			t.Errorf("ParseInputSpec(%s) = %+v (choices %q), %v", tc.spec, sp, choices, ok)
		}
	}
	if _, ok := mustSpec(t, `[[1, "a"]]`).StringChoices(); ok {
		t.Error("a combo of numbers read as strings")
	}
	if s, ok := mustSpec(t, `["COMBO", {"options": ["a"]}]`).StringChoices(); !ok || !slices.Equal(s, []string{"a"}) {
		t.Errorf("StringChoices = %q, %v", s, ok)
	}
}

func mustSpec(t *testing.T, spec string) InputSpec {
	t.Helper()
	sp, ok := ParseInputSpec([]byte(spec))
	if !ok {
		t.Fatalf("ParseInputSpec(%s) failed", spec)
	}
	return sp
}

func TestEditNodeInputs(t *testing.T) {
	t.Parallel()
	def := `{"input": {"required": {"ckpt": [["a"], {}], "n": ["INT", {}]}, "hidden": {"p": "PROMPT"}, "optional": {"v": ["COMBO", {"options": ["x"], "default": "x"}]}}, "output": ["MODEL"]}`
	var seen []string
	out, err := EditNodeInputs([]byte(def), func(section, name string, spec json.RawMessage) json.RawMessage {
		seen = append(seen, section+"."+name)
		if merged, ok := WithStringChoices(spec, []string{"a", "b<"}); ok {
			return merged
		}
		return spec
	})
	want := `{"input": {"required": {"ckpt": [["a","b\u003c"], {}], "n": ["INT", {}]}, "hidden": {"p": "PROMPT"}, "optional": {"v": ["COMBO", {"options": ["a","b\u003c"], "default": "x"}]}}, "output": ["MODEL"]}`
	if err != nil || string(out) != want || !slices.Equal(seen, []string{"required.ckpt", "required.n", "optional.v"}) {
		t.Errorf("EditNodeInputs = %s (%v, saw %v)\nwant %s", out, err, seen, want)
	}
	if _, err := EditNodeInputs([]byte(`{"input": 3}`), nil); err == nil {
		t.Error("an input that is no object edited")
	}
	if _, ok := WithStringChoices(json.RawMessage(`["INT", {}]`), []string{"a"}); ok {
		t.Error("choices set on an INT")
	}
}

// TestModelList: /models answers read leniently: one odd element costs
// only itself (a []string parse lost the whole list to it).
func TestModelList(t *testing.T) {
	t.Parallel()
	got, err := ParseModelList([]byte(` ["checkpoints", 3, "loras", null]`))
	if err != nil || !slices.Equal(got, []string{"checkpoints", "loras"}) {
		t.Errorf("got %q, %v", got, err)
	}
	if got, err := ParseModelList([]byte(`[]`)); err != nil || got == nil || len(got) != 0 {
		t.Errorf("empty list: %q, %v", got, err)
	}
	for _, bad := range []string{`null`, `{"checkpoints": []}`, `<html>`, `[`} {
		if _, err := ParseModelList([]byte(bad)); err == nil {
			t.Errorf("%s read as a list", bad)
		}
	}
}

func TestHasChoice(t *testing.T) {
	sp, ok := ParseInputSpec(json.RawMessage(`[["a.safetensors", "b.safetensors", 1, 2.5], {}]`))
	if !ok || !sp.Combo {
		t.Fatalf("not a combo: %+v", sp)
	}
	for _, c := range []struct {
		v    string
		want bool
	}{
		{`"a.safetensors"`, true},
		{`"b.safetensors"`, true},
		{`"c.safetensors"`, false},
		{`"A.safetensors"`, false}, // Python's equality is exact
		{`1`, true},
		{`1.0`, true}, // 1 == 1.0 in Python
		{`2.5`, true},
		{`"1"`, false}, // "1" != 1 in Python
		{`true`, true}, // True == 1 in Python
		{`3`, false},
		{`null`, false},
		{`[1]`, false},
	} {
		if got := sp.HasChoice(json.RawMessage(c.v)); got != c.want {
			t.Errorf("HasChoice(%s) = %v, want %v", c.v, got, c.want)
		}
	}
}
