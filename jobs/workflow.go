package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/workflows"
)

// workflow is one loaded, validated API-format graph the job API can run.
// It is immutable after loading.
type workflow struct {
	name   string
	source string // file path, or "built-in <file>", for messages
	cfg    config.Workflow
	nodes  map[string]*graphNode
	// overridable maps "node.input" to the JSON kind of its template value,
	// which an override must keep.
	overridable map[string]jsonKind
}

// graphNode is one node of an API-format graph: {class_type, inputs, _meta...}.
type graphNode struct {
	class  string
	fields map[string]json.RawMessage // every key of the node, inputs included
	inputs map[string]json.RawMessage
}

// jsonKind is the kind of a JSON value, for override type checks.
type jsonKind string

const (
	kindString jsonKind = "string"
	kindNumber jsonKind = "number"
	kindBool   jsonKind = "boolean"
	kindNull   jsonKind = "null"
	kindArray  jsonKind = "array"
	kindObject jsonKind = "object"
)

func kindOf(v json.RawMessage) jsonKind {
	v = bytes.TrimSpace(v)
	if len(v) == 0 {
		return kindNull
	}
	switch v[0] {
	case '"':
		return kindString
	case 't', 'f':
		return kindBool
	case 'n':
		return kindNull
	case '[':
		return kindArray
	case '{':
		return kindObject
	}
	return kindNumber
}

// isLink reports whether an input value is a link ["node_id", output_index].
func isLink(v json.RawMessage) (node string, ok bool) {
	node, _, ok = comfyapi.InputLink(v)
	return node, ok
}

// loadWorkflows merges the built-in workflows with cfg.Workflows and loads
// and validates every one. The error names every problem with the
// workflow, its file and the node.
func loadWorkflows(cfg *config.Config) (map[string]*workflow, error) {
	settings := map[string]config.Workflow{}
	builtIn := map[string]bool{}
	for _, name := range workflows.Names() {
		w, _ := workflows.Default(name)
		settings[name] = w
		builtIn[name] = true
	}
	var errs []error
	for name, c := range cfg.Workflows {
		w, ok := settings[name]
		switch {
		case c.File != "":
			// A file of the user's: its settings are the configuration's.
			w = c
			w.File = c.File
			if !filepath.IsAbs(w.File) {
				w.File = filepath.Join(cfg.Dir, w.File)
			}
			builtIn[name] = false
		case ok:
			// The built-in graph with some settings changed.
			if c.ImageNode != "" {
				w.ImageNode = c.ImageNode
			}
			if c.ImageInput != "" {
				w.ImageInput = c.ImageInput
			}
			if c.OutputNode != "" {
				w.OutputNode = c.OutputNode
			}
			if c.Overridable != nil {
				w.Overridable = slices.Clone(c.Overridable)
			}
			if c.Labels != nil {
				w.Labels = maps.Clone(c.Labels)
			}
			if c.Cache != nil {
				w.Cache = c.Cache
			}
		default:
			errs = append(errs, fmt.Errorf("workflows.%s: no built-in workflow has that name (built in: %s): set file", name, strings.Join(workflows.Names(), ", ")))
			continue
		}
		if w.ImageInput == "" {
			w.ImageInput = "image"
		}
		settings[name] = w
	}
	out := make(map[string]*workflow, len(settings))
	for _, name := range slices.Sorted(maps.Keys(settings)) {
		w := settings[name]
		var data []byte
		var err error
		source := w.File
		if builtIn[name] {
			source = "built-in " + w.File
			data, err = fs.ReadFile(workflows.FS, w.File)
		} else {
			data, err = os.ReadFile(w.File)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("workflows.%s: read %s: %w", name, source, err))
			continue
		}
		wf, err := parseWorkflow(name, source, data, w)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[name] = wf
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// inGraph reports whether graph has a node of that id.
func inGraph(graph map[string]comfyapi.GraphNode, id string) bool {
	_, ok := graph[id]
	return ok
}

// parseWorkflow parses and validates one API-format graph.
func parseWorkflow(name, source string, data []byte, c config.Workflow) (*workflow, error) {
	prefix := fmt.Sprintf("workflows.%s: %s", name, source)
	raw, err := comfyapi.ParseGraph(data)
	if err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line := 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
			return nil, fmt.Errorf("%s: not valid JSON at line %d: %w", prefix, line, err)
		}
		return nil, fmt.Errorf("%s: want a JSON object of nodes: %w", prefix, err)
	}
	if comfyapi.IsUIWorkflow(data) {
		return nil, fmt.Errorf("%s: this is a UI-format workflow; export it from ComfyUI with \"Export (API)\" / \"Save (API Format)\"", prefix)
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("%s: the graph has no nodes", prefix)
	}
	wf := &workflow{name: name, source: source, cfg: c, nodes: make(map[string]*graphNode, len(raw)), overridable: map[string]jsonKind{}}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(prefix+": "+format, args...)) }
	for _, id := range slices.Sorted(maps.Keys(raw)) {
		gn := raw[id]
		if gn.Fields == nil {
			bad("node %q: want an object with class_type and inputs", id)
			continue
		}
		n := &graphNode{class: gn.ClassType, fields: gn.Fields, inputs: gn.Inputs}
		if n.class == "" {
			bad("node %q: class_type missing or not a string", id)
			continue
		}
		if _, ok := gn.Fields["inputs"]; ok && n.inputs == nil {
			bad("node %q (%s): inputs is not an object", id, n.class)
			continue
		}
		if n.inputs == nil {
			n.inputs = map[string]json.RawMessage{}
		}
		wf.nodes[id] = n
	}
	for _, id := range slices.Sorted(maps.Keys(wf.nodes)) {
		n := wf.nodes[id]
		for _, in := range slices.Sorted(maps.Keys(n.inputs)) {
			if src, ok := isLink(n.inputs[in]); ok && !inGraph(raw, src) {
				bad("node %q (%s): input %q links to node %q, which is not in the graph", id, n.class, in, src)
			}
		}
	}
	if c.ImageNode != "" {
		if n := wf.nodes[c.ImageNode]; n == nil {
			bad("image_node %q is not in the graph (nodes: %s)", c.ImageNode, strings.Join(slices.Sorted(maps.Keys(raw)), ", "))
		} else if _, ok := n.inputs[c.ImageInput]; !ok {
			bad("image_node %q (%s) has no input %q (inputs: %s)", c.ImageNode, n.class, c.ImageInput, strings.Join(slices.Sorted(maps.Keys(n.inputs)), ", "))
		}
	}
	if c.OutputNode == "" {
		bad("output_node is not set")
	} else if wf.nodes[c.OutputNode] == nil {
		bad("output_node %q is not in the graph (nodes: %s)", c.OutputNode, strings.Join(slices.Sorted(maps.Keys(raw)), ", "))
	}
	for _, key := range c.Overridable {
		id, in, _ := strings.Cut(key, ".")
		n := wf.nodes[id]
		switch {
		case n == nil:
			bad("overridable %q: node %q is not in the graph", key, id)
		case n.inputs[in] == nil:
			bad("overridable %q: node %q (%s) has no input %q", key, id, n.class, in)
		case id == c.ImageNode && in == c.ImageInput:
			bad("overridable %q: that input receives the uploaded image", key)
		default:
			if _, link := isLink(n.inputs[in]); link {
				bad("overridable %q: node %q (%s) input %q is a link, not a value", key, id, n.class, in)
			} else {
				wf.overridable[key] = kindOf(n.inputs[in])
			}
		}
	}
	for _, msg := range wf.checkParamConfig() {
		bad("%s", msg)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return wf, nil
}

// needsImage reports whether jobs of this workflow take an image.
func (wf *workflow) needsImage() bool { return wf.cfg.ImageNode != "" }

// checkOverrides validates caller-supplied inputs against Overridable and
// the kinds of the template's values.
func (wf *workflow) checkOverrides(in map[string]json.RawMessage) error {
	for _, key := range slices.Sorted(maps.Keys(in)) {
		want, ok := wf.overridable[key]
		if !ok {
			allowed := slices.Sorted(maps.Keys(wf.overridable))
			if len(allowed) == 0 {
				return fmt.Errorf("input %q cannot be overridden: workflow %q allows no overrides", key, wf.name)
			}
			return fmt.Errorf("input %q cannot be overridden in workflow %q (allowed: %s)", key, wf.name, strings.Join(allowed, ", "))
		}
		if got := kindOf(in[key]); got != want {
			return fmt.Errorf("input %q: want a %s, got a %s", key, want, got)
		}
	}
	return nil
}

// build returns the API-format graph with the image input set to image
// (when the workflow takes one) and the overrides applied.
func (wf *workflow) build(image string, overrides map[string]json.RawMessage) (json.RawMessage, error) {
	return wf.buildWith(map[string]string{"": image}, overrides, nil)
}

// buildWith returns the API-format graph with the overrides applied, then
// the parameters' values (by parameter name), then the images' names on
// the instances (by parameter name; "" is image_node's).
func (wf *workflow) buildWith(images map[string]string, overrides, params map[string]json.RawMessage) (json.RawMessage, error) {
	changed := map[string]map[string]json.RawMessage{}
	set := func(id, in string, v json.RawMessage) {
		if changed[id] == nil {
			changed[id] = maps.Clone(wf.nodes[id].inputs)
		}
		changed[id][in] = v
	}
	for key, v := range overrides {
		id, in, _ := strings.Cut(key, ".")
		set(id, in, v)
	}
	for _, p := range wf.cfg.Parameters {
		if v, ok := params[p.Name]; ok {
			set(p.Node, p.Input, v)
		}
	}
	for name, file := range images {
		v, err := json.Marshal(file)
		if err != nil {
			return nil, err
		}
		if name == "" {
			if wf.needsImage() {
				set(wf.cfg.ImageNode, wf.cfg.ImageInput, v)
			}
		} else if p, ok := wf.param(name); ok {
			set(p.Node, p.Input, v)
		}
	}
	out := make(map[string]map[string]json.RawMessage, len(wf.nodes))
	for id, n := range wf.nodes {
		if ins, ok := changed[id]; ok {
			fields := maps.Clone(n.fields)
			b, err := json.Marshal(ins)
			if err != nil {
				return nil, err
			}
			fields["inputs"] = b
			out[id] = fields
		} else {
			out[id] = n.fields
		}
	}
	return json.Marshal(out)
}
