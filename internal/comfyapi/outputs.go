package comfyapi

import (
	"bytes"
	"encoding/json"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// FileRef names a file on one instance the way ComfyUI's outputs, /view
// and uploads do.
type FileRef struct {
	Filename  string `json:"filename"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"` // "output", "temp", "input"; "" is output for /view
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

// ParseUploadAnswer reads ComfyUI's 200 answer to POST /upload/image and
// /upload/mask, {"name", "subfolder", "type"} (every version since the
// upload routes exist), as the reference of the stored file: Filename is
// "name", which may differ from the uploaded name when ComfyUI renamed it
// ("x (1).png", overwrite off). It fails when body is not a JSON object or
// has no non-empty string "name". A subfolder that is not a string reads
// as ""; a type that is absent or not a string reads as "input", the
// routes' default.
func ParseUploadAnswer(body []byte) (FileRef, error) {
	if !isObject(body) {
		return FileRef{}, errNotObject
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return FileRef{}, err
	}
	name, _ := String(m["name"])
	if name == "" {
		return FileRef{}, errNoName
	}
	sub, _ := String(m["subfolder"])
	typ, _ := String(m["type"])
	if typ == "" {
		typ = "input"
	}
	return FileRef{Filename: name, Subfolder: sub, Type: typ}, nil
}

// ParseFileRef reads one file reference object, {"filename", "subfolder",
// "type"}, as a client sends it in the original_ref field of POST
// /upload/mask (every version with mask uploads). Keys are exact-case, as
// ComfyUI's json.loads reads them. It fails when raw is not a JSON object,
// when "filename" is not a non-empty string, or when "subfolder" or "type"
// is neither absent, null nor a string (ComfyUI's path joins fail on
// those); absent and null read as "".
func ParseFileRef(raw []byte) (FileRef, bool) {
	if !isObject(raw) {
		return FileRef{}, false
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return FileRef{}, false
	}
	var f FileRef
	var ok bool
	if f.Filename, ok = String(m["filename"]); !ok || f.Filename == "" {
		return FileRef{}, false
	}
	for _, fv := range []struct {
		key string
		dst *string
	}{{"subfolder", &f.Subfolder}, {"type", &f.Type}} {
		v := bytes.TrimSpace(m[fv.key])
		if len(v) == 0 || string(v) == "null" {
			continue
		}
		if *fv.dst, ok = String(v); !ok {
			return FileRef{}, false
		}
	}
	return f, true
}

// NodeOutputFilesByKind returns the file references in one node's UI
// output (see NodeOutputFiles) by kind ("images", "gifs", "audio", ...);
// kinds that hold none are left out. Nil when out is not an object.
func NodeOutputFilesByKind(out json.RawMessage) map[string][]FileRef {
	kinds := objectMembers(out)
	if kinds == nil {
		return nil
	}
	refs := make(map[string][]FileRef, len(kinds))
	for kind, items := range kinds {
		if files := ListFiles(items); len(files) > 0 {
			refs[kind] = files
		}
	}
	return refs
}

// EditUploadAnswer rewrites the "subfolder" of an upload answer (see
// ParseUploadAnswer): edit gets each string subfolder and returns its
// replacement, written in Python's form, or ok false to keep it. Every
// other byte is kept. It fails when body is not a JSON object.
func EditUploadAnswer(body []byte, edit func(subfolder string) (string, bool)) ([]byte, error) {
	ms, err := jsonobj.Members(body)
	if err != nil {
		return nil, err
	}
	for i, m := range ms {
		if m.Key != "subfolder" {
			continue
		}
		if sub, ok := String(m.Val); ok {
			if w, ok := edit(sub); ok {
				ms[i].Val = AppendPyString(nil, w)
			}
		}
	}
	return jsonobj.Append(make([]byte, 0, len(body)), ms), nil
}
