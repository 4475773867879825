package comfyapi

import (
	"encoding/json"
	"testing"
)

func TestEditFileRefs(t *testing.T) {
	t.Parallel()
	var seen []FileRef
	edit := func(ref FileRef) (string, bool) {
		seen = append(seen, ref)
		if ref.Type != "output" {
			return "", false
		}
		return "@i/" + ref.Subfolder, true
	}
	for _, tc := range []struct{ in, want string }{
		{`{"filename": "a.png", "subfolder": "s", "type": "output"}`, `{"filename": "a.png", "subfolder": "@i/s", "type": "output"}`},
		{`{"filename": "a.png", "subfolder": "s", "type": "input"}`, `{"filename": "a.png", "subfolder": "s", "type": "input"}`},
		{`{"filename": "a.png", "subfolder": 3, "type": "output"}`, `{"filename": "a.png", "subfolder": 3, "type": "output"}`},
		{`{"filename": "a.png", "type": "output"}`, `{"filename": "a.png", "type": "output"}`},
		{`{"filename": "a.png", "subfolder": "é"}`, `{"filename": "a.png", "subfolder": "é"}`},
	} {
		got, _ := EditFileRef(json.RawMessage(tc.in), edit)
		if string(got) != tc.want {
			t.Errorf("EditFileRef(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
	if len(seen) != 2 {
		t.Errorf("edit saw %v; want only the two refs with string filename, subfolder and type", seen)
	}
	outputs := `{"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}, "x"], "text": ["t"]}, "10": {"images": []}}`
	want := `{"9": {"images": [{"filename": "a.png", "subfolder": "@i/", "type": "output"}, "x"], "text": ["t"]}, "10": {"images": []}}`
	if got := EditOutputs(json.RawMessage(outputs), edit); string(got) != want {
		t.Errorf("EditOutputs = %s, want %s", got, want)
	}
	frame := `{"type": "executed", "data": {"node": "9", "output": {"images": [{"filename": "a.png", "subfolder": "q\u00e9", "type": "output"}]}, "prompt_id": "p"}}`
	wantFrame := `{"type": "executed", "data": {"node": "9", "output": {"images": [{"filename": "a.png", "subfolder": "@i/q\u00e9", "type": "output"}]}, "prompt_id": "p"}}`
	if got := EditExecutedFrame([]byte(frame), edit); string(got) != wantFrame {
		t.Errorf("EditExecutedFrame = %s, want %s", got, wantFrame)
	}
	if got := EditExecutedFrame([]byte(`{"type": "status"}`), edit); string(got) != `{"type": "status"}` {
		t.Errorf("a status frame changed: %s", got)
	}
}
