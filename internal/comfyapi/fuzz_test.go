package comfyapi

import (
	"bytes"
	"encoding/json"
	"testing"
)

// The parsers below read what instances and clients send. The fuzz targets
// check that they never panic and that what they report holds together.
// Seeds are in testdata/fuzz; run longer with
//   go test -fuzz=FuzzWSFrame -fuzztime=30s ./internal/comfyapi/

func FuzzWSFrame(f *testing.F) {
	f.Add([]byte(`{"type": "executing", "data": {"node": null, "prompt_id": "p"}}`))
	f.Add(frame4(`{"prompt_id": "p", "image_type": "image/png"}`, []byte{0x89, 'P'}))
	f.Add([]byte(`{"type": "executed", "data": {"node": "9", "output": {"images": [{"filename": "a\\"b.png"}]}, "prompt_id": "p", "prompt_id": "q"}}`))
	f.Add([]byte(`{"type": "progress", "data": {"value": 1, "max": [2, {"x": "]}"}], "nodes": {}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseWSText(b)
		if ref, rerr := decodeWSText(b); (err == nil) != (rerr == nil) {
			t.Fatalf("ParseWSText error %v, decoding error %v: %q", err, rerr, b)
		} else if err == nil && exactKeys(b) && !sameMessage(m, ref) {
			t.Fatalf("ParseWSText read %+v, decoding read %+v: %q", m, ref, b)
		}
		if err == nil {
			_, _ = m.QueueRemaining()
			if m.Terminal() && !m.Ends() {
				t.Fatalf("terminal message that does not end the run: %s", b)
			}
			_ = m.Node() + m.PromptID() + m.ExceptionMessage()
		}
		typ, ok := BinaryType(b)
		if ok != (len(b) >= 4) {
			t.Fatalf("BinaryType ok=%v for %d bytes", ok, len(b))
		}
		md, ok := ParsePreviewMetadata(b)
		if ok && typ != BinPreviewImageWithMetadata {
			t.Fatalf("type %d frame read as type 4", typ)
		}
		if head, img, ok := PreviewToType1(b); ok {
			if !bytes.HasSuffix(b, img) || head[3] != byte(BinPreviewImage) {
				t.Fatalf("type 1 of %x: %x %x", b, head, img)
			}
		}
		if ok {
			out, rok := RewritePreviewPromptID(b, md.PromptID, md.PromptID+"-x")
			if !rok {
				t.Fatalf("metadata read but not rewritten: %x", b)
			}
			md2, ok2 := ParsePreviewMetadata(out)
			if !ok2 || (md.PromptID != "" && md2.PromptID != md.PromptID+"-x") {
				t.Fatalf("rewrite of %x gave %x (%+v)", b, out, md2)
			}
			_, img, _ := SplitPreviewMetadata(b)
			_, img2, _ := SplitPreviewMetadata(out)
			if !bytes.Equal(img, img2) {
				t.Fatalf("rewrite changed the image")
			}
		}
	})
}

func FuzzQueueBody(f *testing.F) {
	f.Add([]byte(`{"clear": [ ], "delete": ["a"]}`))
	f.Add([]byte(`{"queue_running": [[1, "a", {}, {}, []]], "queue_pending": []}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := ParseDeleteOrClear(b); err == nil {
			var m map[string]json.RawMessage
			if json.Unmarshal(b, &m) != nil {
				t.Fatalf("accepted a body that is not an object: %q", b)
			}
			if d.Clear != Truthy(m["clear"]) {
				t.Fatalf("clear %v for %q", d.Clear, m["clear"])
			}
			if len(d.Delete) > 0 && !d.HasDelete {
				t.Fatal("ids without a delete key")
			}
		}
		if q, err := ParseQueue(b); err == nil {
			running, pending := q.IDSets()
			for id := range running {
				if _, isRunning, ok := q.Find(id); !ok || !isRunning {
					t.Fatalf("running id %q listed but not found running", id)
				}
			}
			for id := range pending {
				if _, _, ok := q.Find(id); !ok {
					t.Fatalf("id %q listed but not found", id)
				}
			}
		}
		_, _ = ParseHistoryEntry(b)
		if e, err := ParseHistoryEntry(b); err == nil {
			_ = e.Outcome()
		}
		_, _ = ParsePromptAnswer(b)
		_ = Truthy(b)
		_, _ = ParseVersion(string(b))
	})
}

// decodeWSText reads a text message with encoding/json, as a reference
// for ParseWSText's walk.
func decodeWSText(b []byte) (WSMessage, error) {
	m := WSMessage{Raw: b}
	if !isObject(b) {
		return m, errNotObject
	}
	var top struct {
		Type json.RawMessage `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &top); err != nil {
		return m, err
	}
	m.Type, _ = String(top.Type)
	if isObject(top.Data) {
		m.dataObject = true
		_ = json.Unmarshal(top.Data, &m.Data)
	}
	return m, nil
}

// exactKeys reports that no key in b differs only in case from a key
// ParseWSText reads, where encoding/json, which matches struct fields
// regardless of case, reads differently by design.
func exactKeys(b []byte) bool {
	names := []string{"type", "data", "prompt_id", "node", "display_node", "node_id", "node_type", "exception_type",
		"exception_message", "output", "value", "max", "nodes", "status", "sid"}
	dec := json.NewDecoder(bytes.NewReader(b))
	for {
		tok, err := dec.Token()
		if err != nil {
			return true
		}
		k, ok := tok.(string)
		if !ok {
			continue
		}
		for _, n := range names {
			if k != n && bytes.EqualFold([]byte(k), []byte(n)) {
				return false
			}
		}
	}
}

func sameMessage(a, b WSMessage) bool {
	ja, _ := json.Marshal(a.Data)
	jb, _ := json.Marshal(b.Data)
	return a.Type == b.Type && a.dataObject == b.dataObject && bytes.Equal(ja, jb)
}

// BenchmarkParseWSText compares the walk with the decoding reference on
// the frames a prompt's run sends most.
func BenchmarkParseWSText(b *testing.B) {
	frames := [][]byte{
		[]byte(`{"type": "progress_state", "data": {"prompt_id": "5f8e2a7c-1d3b-4e6f-9a0b-2c4d6e8f0a1b", "nodes": {"3": {"value": 12, "max": 20, "state": "running", "node_id": "3", "prompt_id": "5f8e2a7c-1d3b-4e6f-9a0b-2c4d6e8f0a1b", "display_node_id": "3", "parent_node_id": null, "real_node_id": "3"}}}}`),
		[]byte(`{"type": "executing", "data": {"node": "9", "display_node": "9", "prompt_id": "5f8e2a7c-1d3b-4e6f-9a0b-2c4d6e8f0a1b"}}`),
		[]byte(`{"type": "executed", "data": {"node": "9", "display_node": "9", "output": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}, "prompt_id": "5f8e2a7c-1d3b-4e6f-9a0b-2c4d6e8f0a1b"}}`),
	}
	for _, c := range []struct {
		name  string
		parse func([]byte) (WSMessage, error)
	}{{"walk", ParseWSText}, {"decode", decodeWSText}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for _, f := range frames {
					if _, err := c.parse(f); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
