package comfysim

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// apiError is ComfyUI's error object: {type, message, details, extra_info}.
type apiError struct {
	Type      string `json:"type"`
	Message   string `json:"message"`
	Details   string `json:"details"`
	ExtraInfo any    `json:"extra_info"`
}

// promptNode is one node of an API-format prompt, with its JSON kept raw.
type promptNode struct {
	id        string
	kind      string  // JSON kind of the node value
	obj       *rawObj // the node, when it is an object
	class     any     // decoded class_type
	hasClass  bool
	classStr  string
	inputs    *rawObj // nil when missing or not an object
	hasInputs bool
}

// parsedPrompt is an API-format graph in its original key order.
type parsedPrompt struct {
	obj   *rawObj
	nodes []*promptNode
	byID  map[string]*promptNode
}

// errServer500 marks input that makes real ComfyUI raise inside the handler:
// the answer is aiohttp's plain-text 500.
var errServer500 = fmt.Errorf("comfysim: handler exception")

func parsePrompt(raw json.RawMessage) (*parsedPrompt, error) {
	obj, err := parseRawObj(raw)
	if err != nil {
		// A list or string iterates fine in Python when empty; anything else raises.
		switch jsonKind(raw) {
		case "array", "string":
			if v := decodeAny(raw); !truthy(v) {
				return &parsedPrompt{obj: &rawObj{vals: map[string]json.RawMessage{}}, byID: map[string]*promptNode{}}, nil
			}
		}
		return nil, errServer500
	}
	p := &parsedPrompt{obj: obj, byID: map[string]*promptNode{}}
	for _, id := range obj.keys {
		raw := obj.vals[id]
		n := &promptNode{id: id, kind: jsonKind(raw)}
		if n.kind == "object" {
			n.obj, _ = parseRawObj(raw)
			if c, ok := n.obj.get("class_type"); ok {
				n.hasClass = true
				n.class = decodeAny(c)
				if s, ok := n.class.(string); ok {
					n.classStr = s
				}
			}
			if in, ok := n.obj.get("inputs"); ok {
				n.hasInputs = true
				if o, err := parseRawObj(in); err == nil {
					n.inputs = o
				}
			}
		}
		p.nodes = append(p.nodes, n)
		p.byID[id] = n
	}
	return p, nil
}

// pyException is an exception raised while validating, as Python would.
type pyException struct {
	typ, msg string
	trace    []string
}

func keyError(k any) *pyException {
	return &pyException{typ: "KeyError", msg: pyRepr(k), trace: []string{
		"  File \"/ComfyUI/execution.py\", line 1016, in validate_prompt\n    m = await validate_inputs(prompt_id, prompt, o, validated)\n",
		"  File \"/ComfyUI/execution.py\", line 794, in validate_inputs\n    o_class_type = prompt[o_id]['class_type']\n",
	}}
}

type validation struct {
	ok    bool
	errs  []*apiError
	inner bool // set by an exception during inner validation
}

// validator runs ComfyUI's validate_prompt over one prompt.
type validator struct {
	s         *Server
	p         *parsedPrompt
	validated map[string]validation
	order     []string // validated's insertion order (a Python dict)
	busy      map[string]bool
}

func (v *validator) record(id string, r validation) {
	if _, ok := v.validated[id]; !ok {
		v.order = append(v.order, id)
	}
	v.validated[id] = r
}

// validateResult is validate_prompt's return value.
type validateResult struct {
	ok         bool
	err        *apiError
	outputs    []string
	nodeErrors ordered
}

// validatePrompt mirrors execution.validate_prompt of ComfyUI 0.3.65.
// partial is the partial_execution_targets list (nil: all outputs).
func (s *Server) validatePrompt(p *parsedPrompt, partial []string) (validateResult, error) {
	var outputs []string
	for _, n := range p.nodes {
		if n.kind != "object" && n.kind != "array" && n.kind != "string" {
			return validateResult{}, errServer500 // `'class_type' in 5` raises TypeError
		}
		if !n.hasClass {
			return validateResult{err: &apiError{Type: "invalid_prompt", Message: "Cannot execute because a node is missing the class_type property.", Details: fmt.Sprintf("Node ID '#%s'", n.id), ExtraInfo: ordered{}}, nodeErrors: ordered{}}, nil
		}
		switch n.class.(type) {
		case []any, map[string]any:
			return validateResult{}, errServer500 // unhashable class_type
		}
		def := s.defs[n.classStr]
		if _, isStr := n.class.(string); !isStr || def == nil {
			typ := "invalid_prompt"
			if s.ver.is2026() {
				typ = "missing_node_type"
			}
			return validateResult{err: &apiError{Type: typ, Message: fmt.Sprintf("Cannot execute because node %s does not exist.", pyStr(n.class)), Details: fmt.Sprintf("Node ID '#%s'", n.id), ExtraInfo: ordered{}}, nodeErrors: ordered{}}, nil
		}
		if def.outputNode && (partial == nil || contains(partial, n.id)) {
			outputs = append(outputs, n.id)
		}
	}
	if len(outputs) == 0 {
		return validateResult{err: &apiError{Type: "prompt_no_outputs", Message: "Prompt has no outputs", Details: "", ExtraInfo: ordered{}}, nodeErrors: ordered{}}, nil
	}
	v := &validator{s: s, p: p, validated: map[string]validation{}, busy: map[string]bool{}}
	var good []string
	type failed struct {
		o    string
		errs []*apiError
	}
	var errs []failed
	nodeErrors := ordered{}
	for _, o := range outputs {
		r, exc := v.validateInputs(o)
		if exc != nil {
			r = validation{errs: []*apiError{{
				Type: "exception_during_validation", Message: "Exception when validating node", Details: exc.msg,
				ExtraInfo: ordered{{"exception_type", exc.typ}, {"traceback", exc.trace}},
			}}}
			v.record(o, r)
		}
		if r.ok {
			good = append(good, o)
			continue
		}
		errs = append(errs, failed{o, r.errs})
		for _, id := range v.order {
			res := v.validated[id]
			if res.ok || len(res.errs) == 0 {
				continue
			}
			cur, ok := nodeErrors.get(id)
			if !ok {
				cur = &nodeError{Errors: res.errs, DependentOutputs: []string{}, ClassType: p.byID[id].classStr}
				nodeErrors = append(nodeErrors, kv{id, cur})
			}
			ne := cur.(*nodeError)
			ne.DependentOutputs = append(ne.DependentOutputs, o)
		}
	}
	if len(good) == 0 {
		var lines []string
		for _, f := range errs {
			for _, e := range f.errs {
				lines = append(lines, e.Message+": "+e.Details)
			}
		}
		return validateResult{err: &apiError{Type: "prompt_outputs_failed_validation", Message: "Prompt outputs failed validation", Details: strings.Join(lines, "\n"), ExtraInfo: ordered{}}, nodeErrors: nodeErrors}, nil
	}
	return validateResult{ok: true, outputs: good, nodeErrors: nodeErrors}, nil
}

type nodeError struct {
	Errors           []*apiError `json:"errors"`
	DependentOutputs []string    `json:"dependent_outputs"`
	ClassType        string      `json:"class_type"`
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// inputConfig is the (input_type, extra_info) tuple ComfyUI reports.
func (s *Server) inputConfig(in inputDef) []any {
	var typ any = in.typ
	if in.combo != nil {
		typ = in.combo(s)
	}
	extra := in.extra
	if extra == nil {
		extra = ordered{}
	}
	return []any{typ, extra}
}

func (v *validator) validateInputs(id string) (validation, *pyException) {
	if r, ok := v.validated[id]; ok {
		return r, nil
	}
	if v.busy[id] {
		// A cycle: Python recurses until it gives up.
		return validation{}, &pyException{typ: "RecursionError", msg: "maximum recursion depth exceeded"}
	}
	v.busy[id] = true
	defer delete(v.busy, id)
	n := v.p.byID[id]
	if !n.hasInputs {
		return validation{}, &pyException{typ: "KeyError", msg: "'inputs'", trace: []string{
			"  File \"/ComfyUI/execution.py\", line 1016, in validate_prompt\n    m = await validate_inputs(prompt_id, prompt, o, validated)\n",
			"  File \"/ComfyUI/execution.py\", line 733, in validate_inputs\n    inputs = prompt[unique_id]['inputs']\n",
		}}
	}
	if n.inputs == nil {
		return validation{}, &pyException{typ: "TypeError", msg: "list indices must be integers or slices, not str"}
	}
	def := v.s.defs[n.classStr]
	names := make([]string, 0, len(def.inputs))
	for _, in := range def.inputs {
		names = append(names, in.name)
	}
	// Python iterates a set of names here; sorted order is one valid order
	// and the one the traces happen to show.
	sort.Strings(names)
	var errs []*apiError
	valid := true
	var lastName string
	var lastInfo []any
	var lastVal any
	for _, x := range names {
		in, _ := def.input(x)
		info := v.s.inputConfig(in)
		lastName, lastInfo = x, info
		raw, present := n.inputs.get(x)
		if !present {
			lastVal = nil
			if !in.optional {
				errs = append(errs, &apiError{Type: "required_input_missing", Message: "Required input is missing", Details: x, ExtraInfo: ordered{{"input_name", x}}})
			}
			continue
		}
		val := decodeAny(raw)
		lastVal = val
		if link, isList := val.([]any); isList {
			if len(link) != 2 {
				errs = append(errs, &apiError{Type: "bad_linked_input", Message: "Bad linked input, must be a length-2 list of [node_id, slot_index]", Details: x,
					ExtraInfo: ordered{{"input_name", x}, {"input_config", info}, {"received_value", val}}})
				continue
			}
			oid, isStr := link[0].(string)
			from := v.p.byID[oid]
			if !isStr || from == nil {
				return validation{}, keyError(link[0])
			}
			fromDef := v.s.defs[from.classStr]
			if fromDef == nil {
				return validation{}, keyError(from.class)
			}
			idxNum, isNum := link[1].(json.Number)
			idx, ierr := idxNum.Int64()
			if !isNum || ierr != nil {
				return validation{}, &pyException{typ: "TypeError", msg: fmt.Sprintf("tuple indices must be integers or slices, not %s", pyTypeName(link[1]))}
			}
			if idx < 0 {
				idx += int64(len(fromDef.outputs))
			}
			if idx < 0 || idx >= int64(len(fromDef.outputs)) {
				return validation{}, &pyException{typ: "IndexError", msg: "tuple index out of range"}
			}
			received := fromDef.outputs[idx]
			if !typeMatches(received, in) {
				inputType := in.typ
				if in.combo != nil {
					inputType = pyListRepr(in.combo(v.s))
				}
				errs = append(errs, &apiError{Type: "return_type_mismatch", Message: "Return type mismatch between linked nodes",
					Details:   fmt.Sprintf("%s, received_type(%s) mismatch input_type(%s)", x, received, inputType),
					ExtraInfo: ordered{{"input_name", x}, {"input_config", info}, {"received_type", received}, {"linked_node", val}}})
				continue
			}
			r, exc := v.validateInputs(oid)
			if exc != nil {
				v.record(oid, validation{inner: true, errs: []*apiError{{
					Type: "exception_during_inner_validation", Message: "Exception when validating inner node", Details: exc.msg,
					ExtraInfo: ordered{{"input_name", x}, {"input_config", info}, {"exception_message", exc.msg}, {"exception_type", exc.typ}, {"traceback", orEmpty(exc.trace)}, {"linked_node", val}},
				}}})
				valid = false
				continue
			}
			if !r.ok {
				valid = false
			}
			continue
		}
		conv, cerr := convertInput(in, val)
		if cerr != "" {
			errs = append(errs, &apiError{Type: "invalid_input_type", Message: fmt.Sprintf("Failed to convert an input value to a %s value", in.typ),
				Details:   fmt.Sprintf("%s, %s, %s", x, pyStr(val), cerr),
				ExtraInfo: ordered{{"input_name", x}, {"input_config", info}, {"received_value", val}, {"exception_message", cerr}}})
			continue
		}
		lastVal = conv
		if _, custom := def.validate[x]; custom {
			continue
		}
		if lo, ok := in.opt("min"); ok && numLess(conv, lo) {
			errs = append(errs, &apiError{Type: "value_smaller_than_min", Message: fmt.Sprintf("Value %s smaller than min of %s", pyStr(jsonish(conv)), pyStr(jsonish(lo))), Details: x,
				ExtraInfo: ordered{{"input_name", x}, {"input_config", info}, {"received_value", conv}}})
			continue
		}
		if hi, ok := in.opt("max"); ok && numLess(hi, conv) {
			errs = append(errs, &apiError{Type: "value_bigger_than_max", Message: fmt.Sprintf("Value %s bigger than max of %s", pyStr(jsonish(conv)), pyStr(jsonish(hi))), Details: x,
				ExtraInfo: ordered{{"input_name", x}, {"input_config", info}, {"received_value", conv}}})
			continue
		}
		if in.combo != nil {
			options := in.combo(v.s)
			sv, isStr := val.(string)
			if !isStr || !contains(options, sv) {
				var cfg any = info
				listInfo := pyListRepr(options)
				if len(options) > 20 {
					listInfo = fmt.Sprintf("(list of length %d)", len(options))
					cfg = nil
				}
				errs = append(errs, &apiError{Type: "value_not_in_list", Message: "Value not in list",
					Details:   fmt.Sprintf("%s: '%s' not in %s", x, pyStr(val), listInfo),
					ExtraInfo: ordered{{"input_name", x}, {"input_config", cfg}, {"received_value", val}}})
				continue
			}
		}
	}
	// VALIDATE_INPUTS. ComfyUI reports the failure with the loop's leftover
	// input name/config/value, which for LoadImage is its only input.
	for name, fn := range def.validate {
		raw, present := n.inputs.get(name)
		if !present {
			continue
		}
		val := decodeAny(raw)
		if _, isLink := val.([]any); isLink {
			continue
		}
		if msg := fn(v.s, val); msg != "" {
			errs = append(errs, &apiError{Type: "custom_validation_failed", Message: "Custom validation failed for node", Details: name + " - " + msg,
				ExtraInfo: ordered{{"input_name", lastName}, {"input_config", lastInfo}, {"received_value", lastVal}}})
		}
	}
	r := validation{ok: len(errs) == 0 && valid, errs: orEmptyErrs(errs)}
	v.record(id, r)
	return r, nil
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func orEmptyErrs(e []*apiError) []*apiError {
	if e == nil {
		return []*apiError{}
	}
	return e
}

// typeMatches is validate_node_input (non-strict).
func typeMatches(received string, in inputDef) bool {
	if in.combo != nil {
		return received == "*"
	}
	if received == in.typ || received == "*" || in.typ == "*" {
		return true
	}
	rs := strings.Split(received, ",")
	for _, r := range rs {
		for _, t := range strings.Split(in.typ, ",") {
			if strings.TrimSpace(r) == strings.TrimSpace(t) {
				return true
			}
		}
	}
	return false
}

func pyTypeName(v any) string {
	switch v := v.(type) {
	case nil:
		return "NoneType"
	case string:
		return "str"
	case bool:
		return "bool"
	case json.Number:
		if strings.ContainsAny(string(v), ".eE") {
			return "float"
		}
		return "int"
	case []any:
		return "list"
	case map[string]any:
		return "dict"
	}
	return "object"
}

// convertInput applies ComfyUI's int()/float()/str()/bool() conversion to a
// constant input. It returns the converted value (int64, float64, string,
// bool, or the value unchanged) and Python's exception text on failure.
func convertInput(in inputDef, v any) (any, string) {
	if in.combo != nil {
		return v, ""
	}
	switch in.typ {
	case "INT":
		switch x := v.(type) {
		case json.Number:
			if i, err := x.Int64(); err == nil {
				return i, ""
			}
			f, err := x.Float64()
			if err != nil || math.IsInf(f, 0) {
				return nil, "cannot convert float infinity to integer"
			}
			return int64(f), ""
		case bool:
			if x {
				return int64(1), ""
			}
			return int64(0), ""
		case string:
			t := strings.ReplaceAll(strings.TrimSpace(x), "_", "")
			i, err := strconv.ParseInt(strings.TrimPrefix(t, "+"), 10, 64)
			if err != nil {
				return nil, fmt.Sprintf("invalid literal for int() with base 10: %s", pyRepr(x))
			}
			return i, ""
		default:
			return nil, fmt.Sprintf("int() argument must be a string, a bytes-like object or a real number, not '%s'", pyTypeName(v))
		}
	case "FLOAT":
		switch x := v.(type) {
		case json.Number:
			f, _ := x.Float64()
			return f, ""
		case bool:
			if x {
				return 1.0, ""
			}
			return 0.0, ""
		case string:
			f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
			if err != nil {
				return nil, fmt.Sprintf("could not convert string to float: %s", pyRepr(x))
			}
			return f, ""
		default:
			return nil, fmt.Sprintf("float() argument must be a string or a real number, not '%s'", pyTypeName(v))
		}
	case "STRING":
		return pyStr(v), ""
	case "BOOLEAN":
		return truthy(v), ""
	}
	return v, ""
}

// jsonish turns converted Go numbers back into the forms pyStr understands.
func jsonish(v any) any {
	switch x := v.(type) {
	case int64:
		return json.Number(strconv.FormatInt(x, 10))
	case int:
		return json.Number(strconv.Itoa(x))
	case float64:
		return x
	case pyFloat:
		return float64(x)
	}
	return v
}

func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case int64:
		return float64(x), true
	case int:
		return float64(x), true
	case float64:
		return x, true
	case pyFloat:
		return float64(x), true
	case bool:
		if x {
			return 1, true
		}
		return 0, true
	}
	return 0, false
}

func numLess(a, b any) bool {
	fa, ok1 := toFloat(a)
	fb, ok2 := toFloat(b)
	return ok1 && ok2 && fa < fb
}
