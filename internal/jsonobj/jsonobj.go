// Package jsonobj reads and writes JSON objects member by member, keeping
// their order: comfygate rewrites single values (ids, client ids, file
// references) in ComfyUI's documents and must leave everything else, key
// order included, as the instance or the client wrote it.
package jsonobj

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Member is one key/value of a JSON object, in document order.
type Member struct {
	Key string
	Val json.RawMessage
}

// ErrNotObject is returned for a document that is not one JSON object.
var ErrNotObject = errors.New("not a JSON object")

// Members decodes a JSON object keeping its members in order.
func Members(data []byte) ([]Member, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, ErrNotObject
	}
	var out []Member
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := tok.(string)
		if !ok {
			return nil, ErrNotObject
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		out = append(out, Member{key, v})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after JSON object")
	}
	return out, nil
}

// Append writes members as a JSON object with Python's separators (", ",
// ": "), the way ComfyUI's aiohttp answers are written.
func Append(dst []byte, ms []Member) []byte {
	dst = append(dst, '{')
	for i, m := range ms {
		if i > 0 {
			dst = append(dst, ", "...)
		}
		dst = append(dst, Quote(m.Key)...)
		dst = append(dst, ": "...)
		dst = append(dst, m.Val...)
	}
	return append(dst, '}')
}

// Quote returns s as a JSON string.
func Quote(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}
