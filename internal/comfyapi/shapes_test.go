package comfyapi

import (
	"encoding/json"
	"testing"
)

// TestUploadAnswer: ComfyUI's {"name", "subfolder", "type"} answer, read
// leniently (a subfolder that is no string costs only itself), and the
// answers that name no file refused.
func TestUploadAnswer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body string
		want FileRef
		ok   bool
	}{
		{`{"name": "x.png", "subfolder": "", "type": "input"}`, FileRef{"x.png", "", "input"}, true},
		{`{"name": "x (1).png", "subfolder": "s/t", "type": "temp"}`, FileRef{"x (1).png", "s/t", "temp"}, true},
		{`{"name": "x.png", "subfolder": 5}`, FileRef{"x.png", "", "input"}, true},
		{`{"name": "x.png", "subfolder": "s", "type": null}`, FileRef{"x.png", "s", "input"}, true},
		{`{"Name": "x.png"}`, FileRef{}, false}, // exact-case keys
		{`{"name": ""}`, FileRef{}, false},
		{`{"name": 7}`, FileRef{}, false},
		{`["x.png"]`, FileRef{}, false},
		{`not json`, FileRef{}, false},
	} {
		got, err := ParseUploadAnswer([]byte(tc.body))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseUploadAnswer(%s) = %+v, %v; want %+v, ok %v", tc.body, got, err, tc.want, tc.ok)
		}
	}
}

// TestParseFileRef: original_ref as ComfyUI's upload_mask reads it:
// exact-case keys (Go's case-insensitive struct matching would take
// "FILENAME"), and a subfolder or type it could not join refused.
func TestParseFileRef(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw  string
		want FileRef
		ok   bool
	}{
		{`{"filename": "a.png", "subfolder": "s", "type": "output"}`, FileRef{"a.png", "s", "output"}, true},
		{`{"filename": "a.png"}`, FileRef{"a.png", "", ""}, true},
		{`{"filename": "a.png", "subfolder": null, "type": null}`, FileRef{"a.png", "", ""}, true},
		{`{"filename": "a.png", "filename": "b.png"}`, FileRef{"b.png", "", ""}, true}, // last wins
		{`{"FILENAME": "a.png"}`, FileRef{}, false},
		{`{"filename": "a.png", "subfolder": 3}`, FileRef{}, false},
		{`{"filename": "a.png", "type": ["output"]}`, FileRef{}, false},
		{`{"filename": ""}`, FileRef{}, false},
		{`"a.png"`, FileRef{}, false},
	} {
		got, ok := ParseFileRef([]byte(tc.raw))
		if ok != tc.ok || got != tc.want {
			t.Errorf("ParseFileRef(%s) = %+v, %v; want %+v, %v", tc.raw, got, ok, tc.want, tc.ok)
		}
	}
}

// TestPromptAnswerExactCase: a POST /prompt answer's keys are read
// exact-case, as ComfyUI's clients read them; Go's struct matching would
// take "PROMPT_ID" for prompt_id.
func TestPromptAnswerExactCase(t *testing.T) {
	t.Parallel()
	a, err := ParsePromptAnswer([]byte(`{"PROMPT_ID": "x", "Number": 3}`))
	if err != nil || a.ID() != "" {
		t.Errorf("id %q, err %v; want none", a.ID(), err)
	}
	if _, ok := a.QueueNumber(); ok {
		t.Error("a Number key read as number")
	}
}

// TestPromptAnswerWithID: the id is swapped where it stands, the rest of
// the answer byte for byte; an answer without one gets it added.
func TestPromptAnswerWithID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{`{"prompt_id": "up-1", "number": 3, "node_errors": {}}`, `{"prompt_id": "client-1", "number": 3, "node_errors": {}}`},
		{`{"prompt_id": 42, "number": 42}`, `{"prompt_id": "client-1", "number": 42}`},
		{`{"number": 3, "node_errors": {}}`, `{"node_errors":{},"number":3,"prompt_id":"client-1"}`},
		{`[1]`, `[1]`},
	} {
		a, _ := ParsePromptAnswer([]byte(tc.in))
		if got := string(a.WithID([]byte(tc.in), "client-1")); got != tc.want {
			t.Errorf("WithID(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestSystemStatsVersion(t *testing.T) {
	t.Parallel()
	for body, want := range map[string]string{
		`{"system": {"os": "posix", "comfyui_version": "0.3.65", "python_version": "3.12"}, "devices": []}`: "0.3.65",
		`{"system": {"os": "posix"}}`:               "",
		`{"system": {"comfyui_version": 65}}`:       "",
		`{"system": {"COMFYUI_VERSION": "0.3.65"}}`: "", // exact-case
		`{"system": "0.3.65"}`:                      "",
		`["system"]`:                                "",
		`<html>`:                                    "",
	} {
		if got := SystemStatsVersion([]byte(body)); got != want {
			t.Errorf("SystemStatsVersion(%s) = %q, want %q", body, got, want)
		}
	}
}

// TestPromptRequestFields: the body is split once, its members kept for
// forwarding, and a member present as null still counts as present (as
// ComfyUI's "number" in json_data).
func TestPromptRequestFields(t *testing.T) {
	t.Parallel()
	r, err := ParsePromptRequest([]byte(`{"prompt": null, "number": null, "front": true, "x": [1]}`))
	if err != nil || !r.HasPrompt() || !r.HasNumber() || !r.IsFront() || string(r.Fields["x"]) != "[1]" {
		t.Errorf("got %+v, %v", r, err)
	}
	r = PromptRequestOf(map[string]json.RawMessage{"front": json.RawMessage(`0`)})
	if r.HasPrompt() || r.HasNumber() || r.IsFront() {
		t.Errorf("PromptRequestOf: %+v", r)
	}
	for _, bad := range []string{`null`, `[1]`, `{"prompt": `} {
		if _, err := ParsePromptRequest([]byte(bad)); err == nil {
			t.Errorf("%s parsed", bad)
		}
	}
}

// TestPromptError: ComfyUI's 400 answer read leniently: one node error
// whose details is no string costs only that field (a whole-answer struct
// parse lost the whole message to it).
func TestPromptError(t *testing.T) {
	t.Parallel()
	body := `{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
		"node_errors": {"4": {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": 7, "extra_info": {}}, "junk"], "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}, "5": []}}`
	e, ok := ParsePromptError([]byte(body))
	if !ok || e.Type != "prompt_outputs_failed_validation" || e.Message != "Prompt outputs failed validation" || e.Details != "" {
		t.Fatalf("got %+v, %v", e, ok)
	}
	ne, found := e.NodeErrors["4"]
	if !found || len(e.NodeErrors) != 1 || ne.ClassType != "CheckpointLoaderSimple" || len(ne.Errors) != 1 ||
		ne.Errors[0] != (ErrorItem{Type: "value_not_in_list", Message: "Value not in list"}) {
		t.Errorf("node errors %+v", e.NodeErrors)
	}
	for _, bad := range []string{`{"prompt_id": "x"}`, `{"error": "boom"}`, `[]`, `<html>`} {
		if _, ok := ParsePromptError([]byte(bad)); ok {
			t.Errorf("%s read as an error answer", bad)
		}
	}
}

func TestMessageExceptionMessage(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		`["execution_error", {"prompt_id": "p", "exception_message": "CUDA out of memory"}]`: "CUDA out of memory",
		`["execution_error", {"exception_message": ["x"]}]`:                                  "",
		`["execution_error", "text"]`:                                                        "",
	} {
		m, ok := ParseMessage([]byte(raw))
		if !ok || m.ExceptionMessage() != want {
			t.Errorf("%s: %q, %v; want %q", raw, m.ExceptionMessage(), ok, want)
		}
	}
}

func TestNodeOutputFilesByKind(t *testing.T) {
	t.Parallel()
	out := `{"images": [{"filename": "a.png", "subfolder": "", "type": "output"}, {"filename": ""}], "text": ["hi"], "animated": [false], "gifs": [{"filename": "b.gif", "subfolder": "s", "type": "temp"}]}`
	got := NodeOutputFilesByKind(json.RawMessage(out))
	if len(got) != 2 || len(got["images"]) != 1 || got["images"][0] != (FileRef{"a.png", "", "output"}) || got["gifs"][0] != (FileRef{"b.gif", "s", "temp"}) {
		t.Errorf("NodeOutputFilesByKind = %+v", got)
	}
	if NodeOutputFilesByKind(json.RawMessage(`[1]`)) != nil {
		t.Error("files in an array")
	}
}

func TestForwardBody(t *testing.T) {
	t.Parallel()
	r, err := ParsePromptRequest([]byte(`{"prompt": {"1": {"class_type": "X", "inputs": {"t": "<b>"}}}, "client_id": "theirs", "extra_data": {"api_key_comfy_org": "k", "client_id": "x"}, "prompt_id": "old", "front": true}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ForwardBody(r.Fields, "mine", "uid-1")
	want := `{"client_id":"mine","extra_data":{"api_key_comfy_org":"k","client_id":"mine"},"front":true,"prompt":{"1":{"class_type":"X","inputs":{"t":"<b>"}}},"prompt_id":"uid-1"}`
	if err != nil || string(got) != want {
		t.Errorf("ForwardBody = %s, %v\nwant %s", got, err, want)
	}
	got, err = ForwardBody(map[string]json.RawMessage{"prompt": json.RawMessage(`{}`), "extra_data": json.RawMessage(`[1]`), "prompt_id": json.RawMessage(`"x"`)}, "mine", "")
	if want := `{"client_id":"mine","extra_data":{"client_id":"mine"},"prompt":{}}`; err != nil || string(got) != want {
		t.Errorf("no prompt id, odd extra_data: %s, %v; want %s", got, err, want)
	}
	if _, err := ForwardBody(map[string]json.RawMessage{"extra_data": json.RawMessage(`{"a": `)}, "c", ""); err == nil {
		t.Error("a broken extra_data forwarded")
	}
}

func TestParseSettings(t *testing.T) {
	t.Parallel()
	m, err := ParseSettings([]byte(`{"Comfy.Locale": "en", "Comfy.Locale": "fr", "x": null}`))
	if err != nil || string(m["Comfy.Locale"]) != `"fr"` || string(m["x"]) != "null" {
		t.Errorf("got %v, %v", m, err)
	}
	for _, bad := range []string{`null`, `[]`, `"x"`, `{`} {
		if _, err := ParseSettings([]byte(bad)); err == nil {
			t.Errorf("%s read as settings", bad)
		}
	}
}
