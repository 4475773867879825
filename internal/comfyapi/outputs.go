package comfyapi

import (
	"encoding/json"
)

// FileRef names a file on one instance the way ComfyUI's outputs, /view
// and uploads do.
type FileRef struct {
	Filename  string `json:"filename"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"` // "output", "temp", "input"
}

// NodeOutputFiles returns the file references in one node's UI output
// ({"images": [ref, ...], "gifs": [...], "text": [...], ...}, the output of
// an executed message or of history outputs[node]): those of kind only, or
// of every kind when kind is "". Entries that are not file references
// (text, flags) and references without a filename are skipped.
func NodeOutputFiles(out json.RawMessage, kind string) []FileRef {
	if !isObject(out) {
		return nil
	}
	var kinds map[string]json.RawMessage
	if json.Unmarshal(out, &kinds) != nil {
		return nil
	}
	var refs []FileRef
	add := func(items json.RawMessage) { refs = append(refs, ListFiles(items)...) }
	if kind != "" {
		add(kinds[kind])
		return refs
	}
	for _, items := range kinds {
		add(items)
	}
	return refs
}

// ListFiles returns the file references in one list of a node's UI output
// (the value of "images", "gifs", ...): entries that are not objects, and
// references without a filename, are skipped; a subfolder or type that is
// not a string reads as "".
func ListFiles(items json.RawMessage) []FileRef {
	var list []json.RawMessage
	if json.Unmarshal(items, &list) != nil {
		return nil
	}
	var refs []FileRef
	for _, it := range list {
		if !isObject(it) {
			continue
		}
		var f struct {
			Filename, Subfolder, Type json.RawMessage
		}
		_ = json.Unmarshal(it, &f)
		name, _ := String(f.Filename)
		if name == "" {
			continue
		}
		sub, _ := String(f.Subfolder)
		typ, _ := String(f.Type)
		refs = append(refs, FileRef{Filename: name, Subfolder: sub, Type: typ})
	}
	return refs
}
