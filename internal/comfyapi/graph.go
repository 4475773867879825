package comfyapi

import (
	"bytes"
	"encoding/json"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// An API-format prompt graph (the "prompt" of a POST /prompt body) is
// {node_id: {"class_type": str, "inputs": {name: value}, "_meta": {...}}};
// an input's value is a literal or a link [node_id, output_index].
// ComfyUI's execution.py reads it exact-case, the last of a repeated key
// winning.

// EditGraphInputs walks the inputs of a prompt graph in document order:
// edit gets each node's id, each input's name and raw value, and returns
// the value's replacement (nil keeps it) or an error, which ends the walk
// and is returned. Everything not replaced stays as the client sent it,
// key order included (ComfyUI runs independent output nodes in the graph's
// order); a node or "inputs" that is not an object is skipped, and a
// repeated "inputs" is walked each time. The graph itself comes back,
// changed=false, when nothing was replaced or it is not an object.
func EditGraphInputs(graph json.RawMessage, edit func(nodeID, input string, val json.RawMessage) (json.RawMessage, error)) (out json.RawMessage, changed bool, err error) {
	nodes, err := jsonobj.Members(graph)
	if err != nil {
		return graph, false, nil
	}
	for i, n := range nodes {
		fields, err := jsonobj.Members(n.Val)
		if err != nil {
			continue
		}
		for j, fld := range fields {
			if fld.Key != "inputs" {
				continue
			}
			inputs, err := jsonobj.Members(fld.Val)
			if err != nil {
				continue
			}
			inChanged := false
			for k, in := range inputs {
				w, err := edit(n.Key, in.Key, in.Val)
				if err != nil {
					return nil, false, err
				}
				if w != nil {
					inputs[k].Val, inChanged = w, true
				}
			}
			if inChanged {
				fields[j].Val = jsonobj.Append(nil, inputs)
				nodes[i].Val = jsonobj.Append(nil, fields)
				changed = true
			}
		}
	}
	if !changed {
		return graph, false, nil
	}
	return jsonobj.Append(make([]byte, 0, len(graph)+64), nodes), true, nil
}

// GraphNode is one node of a prompt graph.
type GraphNode struct {
	// ClassType is "class_type" when it is a string ("" otherwise).
	ClassType string
	// Inputs are the node's inputs, raw (nil when "inputs" is absent or
	// not an object).
	Inputs map[string]json.RawMessage
	// Fields are all the node's members, inputs included (nil when the
	// node is not an object).
	Fields map[string]json.RawMessage
}

// ParseGraph reads a prompt graph by node id. A node that is not an
// object reads as a node with no class and no inputs (ComfyUI refuses it
// in validation). It fails when graph is not a JSON object, with
// encoding/json's error (a *json.SyntaxError for text that is not JSON)
// or, for null, one of its own.
func ParseGraph(graph []byte) (map[string]GraphNode, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(graph, &raw); err != nil {
		return nil, err
	}
	if raw == nil {
		return nil, errNotObject
	}
	nodes := make(map[string]GraphNode, len(raw))
	for id, def := range raw {
		var n GraphNode
		n.Fields = objectMembers(def)
		n.ClassType, _ = String(n.Fields["class_type"])
		n.Inputs = objectMembers(n.Fields["inputs"])
		nodes[id] = n
	}
	return nodes, nil
}

// IsUIWorkflow reports a workflow in the editor's format ({"nodes": [...],
// "links": [...], ...}, what "Save" writes) rather than an API-format
// prompt graph ("Export (API)").
func IsUIWorkflow(data []byte) bool {
	m := objectMembers(data)
	nodes := bytes.TrimSpace(m["nodes"])
	return len(nodes) > 0 && nodes[0] == '[' && m["links"] != nil
}

// InputLink reads an input value that links to another node's output,
// [node_id, output_index] (node_id a string, output_index a number; a
// fractional index is truncated).
func InputLink(v []byte) (nodeID string, output int, ok bool) {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || v[0] != '[' {
		return "", 0, false
	}
	var l []json.RawMessage
	if json.Unmarshal(v, &l) != nil || len(l) != 2 {
		return "", 0, false
	}
	nodeID, ok = String(l[0])
	f, isNum := Number(l[1])
	if !ok || !isNum {
		return "", 0, false
	}
	return nodeID, int(f), true
}
