package comfyapi

import (
	"bytes"
	"encoding/json"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// SubfolderEdit decides the subfolder a client sees for one file
// reference: ok false leaves the reference as it is.
type SubfolderEdit func(ref FileRef) (subfolder string, ok bool)

// EditFileRef rewrites the subfolder of one file reference object,
// {"filename", "subfolder", "type"} (an outputs list's element, a job's
// preview_output): edit gets it when filename, subfolder and type are all
// strings, and the new subfolder is written in Python's form where the old
// one stood (the last, for a repeated key); every other byte is kept.
// changed is false, and raw is returned, for any other value.
func EditFileRef(raw json.RawMessage, edit SubfolderEdit) (out json.RawMessage, changed bool) {
	if len(raw) == 0 || raw[0] != '{' {
		return raw, false
	}
	ms, err := jsonobj.Members(raw)
	if err != nil {
		return raw, false
	}
	sub, hasName, hasType := -1, false, false
	var ref FileRef
	for i, m := range ms {
		switch m.Key {
		case "filename":
			ref.Filename, hasName = String(m.Val)
		case "type":
			ref.Type, hasType = String(m.Val)
		case "subfolder":
			s, ok := String(m.Val)
			if !ok {
				return raw, false
			}
			sub, ref.Subfolder = i, s
		}
	}
	if sub < 0 || !hasName || !hasType {
		return raw, false
	}
	newSub, ok := edit(ref)
	if !ok {
		return raw, false
	}
	ms[sub].Val = AppendPyString(nil, newSub)
	return jsonobj.Append(make([]byte, 0, len(raw)+len(newSub)-len(ref.Subfolder)+8), ms), true
}

// EditFileList rewrites the file references in one list of a node's UI
// output (see EditFileRef); other elements are kept. changed is false, and
// raw is returned, when nothing changed or raw is not a JSON array.
func EditFileList(raw json.RawMessage, edit SubfolderEdit) (out json.RawMessage, changed bool) {
	if len(raw) == 0 || raw[0] != '[' {
		return raw, false
	}
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil {
		return raw, false
	}
	for i, it := range items {
		if out, ok := EditFileRef(it, edit); ok {
			items[i], changed = out, true
		}
	}
	if !changed {
		return raw, false
	}
	return AppendArray(make([]byte, 0, len(raw)+len(items)*16), items), true
}

// EditNodeOutput rewrites the file references of one node's UI output
// ({kind: [file ref], ...}: an `executed` message's output, one value of
// a history entry's outputs). changed is false, and raw is returned, when
// nothing changed or raw is not a JSON object.
func EditNodeOutput(raw json.RawMessage, edit SubfolderEdit) (out json.RawMessage, changed bool) {
	if len(raw) == 0 || raw[0] != '{' {
		return raw, false
	}
	ms, err := jsonobj.Members(raw)
	if err != nil {
		return raw, false
	}
	for i, m := range ms {
		if out, ok := EditFileList(m.Val, edit); ok {
			ms[i].Val, changed = out, true
		}
	}
	if !changed {
		return raw, false
	}
	return jsonobj.Append(nil, ms), true
}

// EditOutputs rewrites the file references of a history entry's or a
// job's outputs ({node: {kind: [file ref]}}); raw comes back unchanged
// when nothing changed or it is not a JSON object.
func EditOutputs(raw json.RawMessage, edit SubfolderEdit) json.RawMessage {
	if len(raw) == 0 || raw[0] != '{' || !bytes.Contains(raw, []byte(`"subfolder"`)) {
		return raw
	}
	ms, err := jsonobj.Members(raw)
	if err != nil {
		return raw
	}
	changed := false
	for i, m := range ms {
		if out, ok := EditNodeOutput(m.Val, edit); ok {
			ms[i].Val, changed = out, true
		}
	}
	if !changed {
		return raw
	}
	return jsonobj.Append(nil, ms)
}

// EditExecutedFrame rewrites the file references of an `executed` text
// message ({"type": "executed", "data": {"node", "output": {...}, ...}});
// anything else, and a message whose output has none to change, comes
// back unchanged.
func EditExecutedFrame(frame []byte, edit SubfolderEdit) []byte {
	if !bytes.Contains(frame, []byte(`"subfolder"`)) {
		return frame
	}
	ms, err := jsonobj.Members(frame)
	if err != nil {
		return frame
	}
	for i, m := range ms {
		if m.Key != "data" {
			continue
		}
		data, err := jsonobj.Members(m.Val)
		if err != nil {
			return frame
		}
		for j, d := range data {
			if d.Key != "output" {
				continue
			}
			out, ok := EditNodeOutput(d.Val, edit)
			if !ok {
				return frame
			}
			data[j].Val = out
			ms[i].Val = jsonobj.Append(nil, data)
			return jsonobj.Append(make([]byte, 0, len(frame)+64), ms)
		}
	}
	return frame
}
