package comfyapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// NodeClass is the part of one GET /object_info entry comfygate reads:
// {"input": {"required": {name: spec}, "optional": {name: spec},
// "hidden": {...}}, "output": [type, ...], ...} (every version; the V3
// node schema of 2025 answers the same shape). A section that is not an
// object reads as empty, an "output" that is not a list as no outputs.
type NodeClass struct {
	Required map[string]json.RawMessage
	Optional map[string]json.RawMessage
	// Outputs is the number of the class's outputs (len of "output").
	Outputs int
}

// Node input sections of an /object_info entry.
const (
	InputRequired = "required"
	InputOptional = "optional"
)

// ParseObjectInfo reads a GET /object_info answer, {class: entry}, one
// class at a time: an entry that is not an object reads as a class with
// no inputs, so one odd custom node costs only itself. It fails when body
// is not a JSON object.
func ParseObjectInfo(body []byte) (map[string]NodeClass, error) {
	if !isObject(body) {
		return nil, errNotObject
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, err
	}
	out := make(map[string]NodeClass, len(raw))
	for class, def := range raw {
		out[class] = ParseNodeClass(def)
	}
	return out, nil
}

// ParseNodeClass reads one /object_info entry (see NodeClass) leniently.
func ParseNodeClass(def []byte) NodeClass {
	var c NodeClass
	if !isObject(def) {
		return c
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(def, &m) != nil {
		return c
	}
	if isObject(m["input"]) {
		var sections map[string]json.RawMessage
		_ = json.Unmarshal(m["input"], &sections)
		c.Required = inputSection(sections[InputRequired])
		c.Optional = inputSection(sections[InputOptional])
	}
	if out := bytes.TrimSpace(m["output"]); len(out) > 0 && out[0] == '[' {
		var list []json.RawMessage
		if json.Unmarshal(out, &list) == nil {
			c.Outputs = len(list)
		}
	}
	return c
}

func inputSection(raw json.RawMessage) map[string]json.RawMessage {
	if !isObject(raw) {
		return nil
	}
	var m map[string]json.RawMessage
	_ = json.Unmarshal(raw, &m)
	return m
}

// UnmarshalJSON reads an /object_info entry as ParseNodeClass does.
func (c *NodeClass) UnmarshalJSON(b []byte) error {
	*c = ParseNodeClass(b)
	return nil
}

// Input returns the spec of input name: the required one, else the
// optional one.
func (c NodeClass) Input(name string) (json.RawMessage, bool) {
	if spec, ok := c.Required[name]; ok {
		return spec, true
	}
	spec, ok := c.Optional[name]
	return spec, ok
}

// Section returns the inputs of section (InputRequired or InputOptional);
// nil for any other.
func (c NodeClass) Section(section string) map[string]json.RawMessage {
	switch section {
	case InputRequired:
		return c.Required
	case InputOptional:
		return c.Optional
	}
	return nil
}

// InputSpec is one input's spec of an /object_info entry: [TYPE,
// {options}] ("INT", "FLOAT", "STRING", "BOOLEAN", a custom type), the
// classic combo [[choice, ...], {options}], or the V3 combo (2025)
// ["COMBO", {"options": [choice, ...], ...}].
type InputSpec struct {
	// Type is the type name; "" for the classic combo.
	Type string
	// Combo reports a combo input with its list of choices; Choices holds
	// them as the instance wrote them (ComfyUI compares a value with each
	// by Python equality; they are strings on every built-in node).
	Combo   bool
	Choices []json.RawMessage
	// Min and Max are the options "min" and "max" when they are numbers.
	Min, Max *float64
	// Upload reports an option "<kind>_upload": true (image_upload, ...):
	// the input takes the name of an uploaded file.
	Upload bool
}

// HasChoice reports whether v (a graph's input value) is one of a
// combo's choices, by Python's equality as ComfyUI's validation has it
// (`val not in combo_options`): strings exactly, numbers and booleans by
// value (1 == 1.0 == True), a string never equal to a number.
func (s InputSpec) HasChoice(v json.RawMessage) bool {
	var x any
	if json.Unmarshal(v, &x) != nil {
		return false
	}
	for _, raw := range s.Choices {
		var c any
		if json.Unmarshal(raw, &c) == nil && pyEqual(x, c) {
			return true
		}
	}
	return false
}

// pyEqual is Python's == over decoded JSON scalars; lists and objects
// compare by their printed form.
func pyEqual(a, b any) bool {
	num := func(v any) (float64, bool) {
		switch n := v.(type) {
		case float64:
			return n, true
		case bool:
			if n {
				return 1, true
			}
			return 0, true
		}
		return 0, false
	}
	if x, ok := num(a); ok {
		y, ok := num(b)
		return ok && x == y
	}
	switch x := a.(type) {
	case string:
		y, ok := b.(string)
		return ok && x == y
	case nil:
		return b == nil
	}
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// ParseInputSpec reads one input spec; ok is false when spec is not a
// non-empty JSON list. An options object that is absent or of another
// shape reads as no options, and an option of an unexpected type as
// absent, rather than failing the spec.
func ParseInputSpec(spec []byte) (s InputSpec, ok bool) {
	var parts []json.RawMessage
	spec = bytes.TrimSpace(spec)
	if len(spec) == 0 || spec[0] != '[' || json.Unmarshal(spec, &parts) != nil || len(parts) == 0 {
		return s, false
	}
	var opts map[string]json.RawMessage
	if len(parts) > 1 && isObject(parts[1]) {
		_ = json.Unmarshal(parts[1], &opts)
	}
	if f, ok := Number(opts["min"]); ok {
		s.Min = &f
	}
	if f, ok := Number(opts["max"]); ok {
		s.Max = &f
	}
	for k, v := range opts {
		if strings.HasSuffix(k, "_upload") && string(bytes.TrimSpace(v)) == "true" {
			s.Upload = true
		}
	}
	head := bytes.TrimSpace(parts[0])
	if len(head) > 0 && head[0] == '[' {
		s.Combo = json.Unmarshal(head, &s.Choices) == nil
		return s, true
	}
	s.Type, _ = String(head)
	if s.Type == "COMBO" {
		if list := bytes.TrimSpace(opts["options"]); len(list) > 0 && list[0] == '[' {
			s.Combo = json.Unmarshal(list, &s.Choices) == nil
		}
	}
	return s, true
}

// StringChoices returns a combo's choices when every one is a string.
func (s InputSpec) StringChoices() ([]string, bool) {
	if !s.Combo {
		return nil, false
	}
	out := make([]string, 0, len(s.Choices))
	for _, c := range s.Choices {
		str, ok := String(c)
		if !ok {
			return nil, false
		}
		out = append(out, str)
	}
	return out, true
}

// EditNodeInputs rewrites the required and optional input specs of one
// /object_info entry: edit gets each input's section (InputRequired or
// InputOptional), name and spec, and returns the spec to keep. Members
// keep their order. It fails when def or its "input" is not an object; a
// section that is not an object is kept as it is.
func EditNodeInputs(def []byte, edit func(section, name string, spec json.RawMessage) json.RawMessage) ([]byte, error) {
	top, err := jsonobj.Members(def)
	if err != nil {
		return nil, err
	}
	for k, m := range top {
		if m.Key != "input" {
			continue
		}
		sections, err := jsonobj.Members(m.Val)
		if err != nil {
			return nil, err
		}
		for j, sec := range sections {
			if sec.Key != InputRequired && sec.Key != InputOptional {
				continue
			}
			inputs, err := jsonobj.Members(sec.Val)
			if err != nil {
				continue
			}
			for i, in := range inputs {
				inputs[i].Val = edit(sec.Key, in.Key, in.Val)
			}
			sections[j].Val = jsonobj.Append(nil, inputs)
		}
		top[k].Val = jsonobj.Append(nil, sections)
	}
	return jsonobj.Append(nil, top), nil
}

// WithStringChoices returns a combo input's spec (see InputSpec) with its
// choices replaced by choices, in the form the spec has: the list of a
// classic combo, or the "options" of a V3 one (its other options kept).
// ok is false when spec is no combo.
func WithStringChoices(spec json.RawMessage, choices []string) (json.RawMessage, bool) {
	sp, ok := ParseInputSpec(spec)
	if !ok || !sp.Combo {
		return nil, false
	}
	if choices == nil {
		choices = []string{}
	}
	list, err := json.Marshal(choices)
	if err != nil {
		return nil, false
	}
	var parts []json.RawMessage
	if json.Unmarshal(spec, &parts) != nil {
		return nil, false
	}
	if sp.Type == "" {
		parts[0] = list
	} else {
		opts, err := jsonobj.Members(parts[1])
		if err != nil {
			return nil, false
		}
		for i := range opts {
			if opts[i].Key == "options" {
				opts[i].Val = list
			}
		}
		parts[1] = jsonobj.Append(nil, opts)
	}
	return AppendArray(nil, parts), true
}

// ParseModelList reads a GET /models answer (the model folder names,
// ["checkpoints", "loras", ...]) or a GET /models/{folder} answer (the
// file names in that folder); both exist since mid-2024. Elements that
// are not strings are skipped. It fails when body is not a JSON list.
func ParseModelList(body []byte) ([]string, error) {
	b := bytes.TrimSpace(body)
	if len(b) == 0 || b[0] != '[' {
		return nil, errNotArray
	}
	var items []json.RawMessage
	if err := json.Unmarshal(b, &items); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		if s, ok := String(it); ok {
			out = append(out, s)
		}
	}
	return out, nil
}

// ObjectInfoClasses splits a GET /object_info answer into its classes in
// the instance's order (the order its node menu lists them), each with
// its definition raw. It fails when body is not a JSON object.
func ObjectInfoClasses(body []byte) ([]jsonobj.Member, error) {
	return jsonobj.Members(body)
}
