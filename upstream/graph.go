package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
)

// member is one key/value of a JSON object, in document order.
type member struct {
	key string
	val json.RawMessage
}

var errNotObject = errors.New("not a JSON object")

// objectMembers decodes a JSON object keeping its members in order.
func objectMembers(data []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errNotObject
	}
	var out []member
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := tok.(string)
		if !ok {
			return nil, errNotObject
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		out = append(out, member{key, v})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, err
	}
	return out, nil
}

// appendObject writes members as a JSON object.
func appendObject(dst []byte, ms []member) []byte {
	dst = append(dst, '{')
	for i, m := range ms {
		if i > 0 {
			dst = append(dst, ", "...)
		}
		dst = append(dst, quoteJSON(m.key)...)
		dst = append(dst, ": "...)
		dst = append(dst, m.val...)
	}
	return append(dst, '}')
}

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
		fields, err := objectMembers(n.val)
		if err != nil {
			continue
		}
		for j, fld := range fields {
			if fld.key != "inputs" {
				continue
			}
			inputs, err := objectMembers(fld.val)
			if err != nil {
				continue
			}
			inChanged := false
			for k, in := range inputs {
				if len(in.val) < 2 || in.val[0] != '"' {
					continue
				}
				var s string
				if json.Unmarshal(in.val, &s) != nil {
					continue
				}
				if w, ok := f(s); ok && w != s {
					inputs[k].val, inChanged = quoteJSON(w), true
				}
			}
			if inChanged {
				fields[j].val = appendObject(nil, inputs)
				nodes[i].val = appendObject(nil, fields)
				changed = true
			}
		}
	}
	if !changed {
		return graph, false
	}
	return appendObject(make([]byte, 0, len(graph)+64), nodes), true
}
