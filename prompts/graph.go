package prompts

import (
	"encoding/json"

	"github.com/comfygate/comfygate/internal/comfyapi"
)

// rewriteInputs returns the prompt graph ({node: {"inputs": {name: value}}})
// with every string input value v for which f returns (w, true) replaced by
// w. Everything else stays as the client sent it, key order included
// (ComfyUI runs independent output nodes in the graph's order). The graph
// itself comes back, changed=false, when no value was replaced or it is
// not a graph.
func rewriteInputs(graph json.RawMessage, f func(string) (string, bool)) (json.RawMessage, bool) {
	out, changed, _ := comfyapi.EditGraphInputs(graph, func(_, _ string, val json.RawMessage) (json.RawMessage, error) {
		if len(val) < 2 || val[0] != '"' {
			return nil, nil
		}
		s, ok := comfyapi.String(val)
		if !ok {
			return nil, nil
		}
		if w, ok := f(s); ok && w != s {
			return quoteJSON(w), nil
		}
		return nil, nil
	})
	return out, changed
}
