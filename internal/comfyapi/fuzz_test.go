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
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := ParseWSText(b); err == nil {
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
