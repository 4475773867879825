package comfyapi

import (
	"encoding/json"
	"slices"
	"testing"
)

func TestEditQueue(t *testing.T) {
	t.Parallel()
	body := `{"queue_running": [[0, "a", {}, {"client_id": "c"}, ["9"]]], "extra": 1, "queue_pending": [[2,"b",{},{}],[1, null, {}, {}], "junk"]}`
	var seen []string
	out, err := EditQueue([]byte(body), func(item json.RawMessage) (json.RawMessage, bool) {
		id, ok := ItemID(item)
		if !ok {
			return nil, false // a null id is no ComfyUI id: left out
		}
		seen = append(seen, id)
		return item, id != "b"
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"queue_running": [[0, "a", {}, {"client_id": "c"}, ["9"]]], "extra": 1, "queue_pending": []}`
	if string(out) != want || !slices.Equal(seen, []string{"a", "b"}) {
		t.Errorf("EditQueue = %s (saw %v), want %s", out, seen, want)
	}
	out, err = EditQueue([]byte(`{"queue_running": {"a": 1}, "queue_pending": [[1, "p", {}, {}]]}`), func(item json.RawMessage) (json.RawMessage, bool) {
		return json.RawMessage(`"x"`), true
	})
	if err != nil || string(out) != `{"queue_running": [], "queue_pending": ["x"]}` {
		t.Errorf("a list that is no array: %s, %v", out, err)
	}
	if _, err := EditQueue([]byte(`[]`), nil); err == nil {
		t.Error("an array answer edited")
	}
}

func TestEditHistory(t *testing.T) {
	t.Parallel()
	body := `{"z": {"prompt": [1, "z", {}, {}], "outputs": {}}, "a": {"status": {"status_str": "success"}}, "b": 5}`
	out, err := EditHistory([]byte(body), func(id string, entry json.RawMessage) (string, json.RawMessage, bool) {
		if id == "b" {
			return "", nil, false
		}
		e, err := EditHistoryEntry(entry, func(member string, val json.RawMessage) json.RawMessage {
			if member == EntryPrompt {
				return json.RawMessage(`[]`)
			}
			return val
		})
		if err != nil {
			t.Errorf("entry %s: %v", id, err)
		}
		return "c-" + id, e, true
	})
	// Order kept (z before a), as ComfyUI's oldest-first order.
	want := `{"c-z": {"prompt": [], "outputs": {}}, "c-a": {"status": {"status_str": "success"}}}`
	if err != nil || string(out) != want {
		t.Errorf("EditHistory = %s, %v; want %s", out, err, want)
	}
	if _, err := EditHistoryEntry([]byte(`[1]`), nil); err == nil {
		t.Error("an entry that is no object edited")
	}
}

func TestEditStatusMessages(t *testing.T) {
	t.Parallel()
	status := `{"status_str": "success", "messages": [["execution_start", {"prompt_id": "u"}], ["x"]], "completed": true}`
	out, ok := EditStatusMessages([]byte(status), func(data json.RawMessage) json.RawMessage {
		return json.RawMessage(`{"prompt_id": "c"}`)
	})
	want := `{"status_str": "success", "messages": [["execution_start",{"prompt_id":"c"}],["x"]], "completed": true}`
	if !ok || string(out) != want {
		t.Errorf("EditStatusMessages = %s, %v; want %s", out, ok, want)
	}
	for _, bad := range []string{`{"messages": [1]}`, `[]`} {
		if _, ok := EditStatusMessages([]byte(bad), func(d json.RawMessage) json.RawMessage { return d }); ok {
			t.Errorf("%s edited", bad)
		}
	}
}

func TestOutputsFiles(t *testing.T) {
	t.Parallel()
	outputs := `{"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}], "text": ["hi"]}, "10": {"gifs": [{"filename": "b.gif", "subfolder": "s", "type": "temp"}]}, "11": 3}`
	got := OutputsFiles(json.RawMessage(outputs))
	e, err := ParseHistoryEntry([]byte(`{"outputs": ` + outputs + `}`))
	if err != nil {
		t.Fatal(err)
	}
	fromEntry := e.Files()
	byName := func(a, b FileRef) int {
		if a.Filename < b.Filename {
			return -1
		}
		if a.Filename > b.Filename {
			return 1
		}
		return 0
	}
	slices.SortFunc(got, byName)
	slices.SortFunc(fromEntry, byName)
	want := []FileRef{{"a.png", "", "output"}, {"b.gif", "s", "temp"}}
	if !slices.Equal(got, want) || !slices.Equal(fromEntry, want) {
		t.Errorf("OutputsFiles = %v, Files = %v; want %v", got, fromEntry, want)
	}
	if OutputsFiles(json.RawMessage(`[1]`)) != nil {
		t.Error("files in an array")
	}
}

func TestEditExtraDataClientID(t *testing.T) {
	t.Parallel()
	extra := `{"client_id": "sock", "api_key_comfy_org": "k"}`
	for _, tc := range []struct {
		what ClientIDEdit
		want string
	}{
		{KeepClientID, extra},
		{ReplaceClientID, `{"client_id": "theirs", "api_key_comfy_org": "k"}`},
		{DropClientID, `{"api_key_comfy_org": "k"}`},
	} {
		var saw string
		got := EditExtraDataClientID(json.RawMessage(extra), func(cur string) (ClientIDEdit, string) { saw = cur; return tc.what, "theirs" })
		if string(got) != tc.want || saw != "sock" {
			t.Errorf("%v: %s (saw %q), want %s", tc.what, got, saw, tc.want)
		}
	}
	if got := EditExtraDataClientID(json.RawMessage(`[1]`), func(string) (ClientIDEdit, string) { return DropClientID, "" }); string(got) != `[1]` {
		t.Errorf("not an object: %s", got)
	}
}

func TestReplacePromptIDField(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{`{"prompt_id": "up", "timestamp": 1}`, `{"prompt_id": "client", "timestamp": 1}`},
		{`{"prompt_id": "other", "timestamp": 1}`, `{"prompt_id": "other", "timestamp": 1}`},
		{`{"PROMPT_ID": "up"}`, `{"PROMPT_ID": "up"}`},
		{`"up"`, `"up"`},
	} {
		if got := ReplacePromptIDField(json.RawMessage(tc.in), "up", "client"); string(got) != tc.want {
			t.Errorf("ReplacePromptIDField(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestHistoryEntriesOrder(t *testing.T) {
	t.Parallel()
	items, err := HistoryEntries([]byte(`{"z": {"outputs": {}}, "a": {}}`))
	if err != nil || len(items) != 2 || items[0].ID != "z" || string(items[1].Entry) != "{}" {
		t.Errorf("HistoryEntries = %+v, %v", items, err)
	}
	if _, err := HistoryEntries([]byte(`[]`)); err == nil {
		t.Error("an array read as history")
	}
}

func TestAnswerEdits(t *testing.T) {
	t.Parallel()
	if got := WithNumber([]byte(`{"prompt_id": "p", "number": 3, "node_errors": {}}`), json.RawMessage(`-2`)); string(got) != `{"prompt_id": "p", "number": -2, "node_errors": {}}` {
		t.Errorf("WithNumber = %s", got)
	}
	if got := WithNumber([]byte(`{"prompt_id": "p"}`), json.RawMessage(`1`)); string(got) != `{"prompt_id": "p"}` {
		t.Errorf("WithNumber without a number = %s", got)
	}
	got, err := EditUploadAnswer([]byte(`{"name": "x.png", "subfolder": "ns/sub", "type": "input"}`), func(sub string) (string, bool) {
		return sub[len("ns/"):], true
	})
	if err != nil || string(got) != `{"name": "x.png", "subfolder": "sub", "type": "input"}` {
		t.Errorf("EditUploadAnswer = %s, %v", got, err)
	}
	if _, err := EditUploadAnswer([]byte(`nope`), nil); err == nil {
		t.Error("text edited as an upload answer")
	}
}

func TestDropExtraData(t *testing.T) {
	t.Parallel()
	got, err := DropExtraData([]byte(`{"client_id": "c", "api_key_comfy_org": "k", "extra_pnginfo": {}}`), func(k string) bool { return k == "api_key_comfy_org" })
	if err != nil || string(got) != `{"client_id": "c", "extra_pnginfo": {}}` {
		t.Errorf("DropExtraData = %s, %v", got, err)
	}
	if _, err := DropExtraData([]byte(`"api_key_comfy_org"`), func(string) bool { return true }); err == nil {
		t.Error("a string read as extra_data")
	}
}
