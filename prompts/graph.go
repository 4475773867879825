package prompts

import (
	"encoding/json"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// member is one key/value of a JSON object, in document order.
type member = jsonobj.Member

func objectMembers(data []byte) ([]member, error) { return jsonobj.Members(data) }

func appendObject(dst []byte, ms []member) []byte { return jsonobj.Append(dst, ms) }

// rewriteInputs returns the prompt graph ({node: {"inputs": {name: value}}})
// with every string input value v for which f returns (w, true) replaced by
// w. Everything else stays as the client sent it, key order included
// (ComfyUI runs independent output nodes in the graph's order). The graph
// itself comes back, changed=false, when no value was replaced or it is
// not a graph.
func rewriteInputs(graph json.RawMessage, f func(string) (string, bool)) (json.RawMessage, bool) {
	nodes, err := objectMembers(graph)
	if err != nil {
		return graph, false
	}
	changed := false
	for i, n := range nodes {
		fields, err := objectMembers(n.Val)
		if err != nil {
			continue
		}
		for j, fld := range fields {
			if fld.Key != "inputs" {
				continue
			}
			inputs, err := objectMembers(fld.Val)
			if err != nil {
				continue
			}
			inChanged := false
			for k, in := range inputs {
				if len(in.Val) < 2 || in.Val[0] != '"' {
					continue
				}
				var s string
				if json.Unmarshal(in.Val, &s) != nil {
					continue
				}
				if w, ok := f(s); ok && w != s {
					inputs[k].Val, inChanged = quoteJSON(w), true
				}
			}
			if inChanged {
				fields[j].Val = appendObject(nil, inputs)
				nodes[i].Val = appendObject(nil, fields)
				changed = true
			}
		}
	}
	if !changed {
		return graph, false
	}
	return appendObject(make([]byte, 0, len(graph)+64), nodes), true
}
