package proxy

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/jsonobj"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
)

// rewriteServer is a Server with a pool that is built but not started:
// enough for the rewriting functions.
func rewriteServer(t testing.TB) (*rewriter, *upstream.Instance) {
	t.Helper()
	cfg := config.Default()
	cfg.Instances = []config.Instance{{Name: "a", Address: "127.0.0.1:1"}}
	pool, err := upstream.New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &rewriter{prompts: prompts.New(pool, cfg, nil, nil)}, pool.Instances()[0]
}

// traceEntry is a history entry in the shape of traces/e-client-prompt-id.json.
func traceEntry(id, clientID string) string {
	return fmt.Sprintf(`{"prompt": [12, %q, {"1": {"class_type": "EmptyImage", "inputs": {}}}, {"client_id": %q, "extra_pnginfo": {"workflow": {}}}, ["2"]], "outputs": {"2": {"images": [{"filename": "x_00001_.png", "subfolder": "", "type": "output"}]}}, "status": {"status_str": "success", "completed": true, "messages": [["execution_start", {"prompt_id": %q, "timestamp": 1795889132080}], ["execution_success", {"prompt_id": %q, "timestamp": 1795889132087}]]}, "meta": {}}`,
		id, clientID, id, id)
}

func TestRewriteHistoryUnknownPrompt(t *testing.T) {
	t.Parallel()
	s, inst := rewriteServer(t)
	for _, tc := range []struct {
		desc, clientID string
		wantCID        any
	}{
		{"comfygate's own client_id never leaks", inst.SocketClientID(), nil},
		{"another client's id is kept", "someone-else", "someone-else"},
	} {
		body := fmt.Sprintf(`{"p1": %s, "p2": %s}`, traceEntry("p1", tc.clientID), traceEntry("p2", tc.clientID))
		out := s.rewriteHistoryObject(inst, []byte(body))
		ms, err := jsonobj.Members(out)
		if err != nil {
			t.Fatalf("%s: output is not a JSON object: %v\n%s", tc.desc, err, out)
		}
		if len(ms) != 2 || ms[0].Key != "p1" || ms[1].Key != "p2" {
			t.Fatalf("%s: keys/order changed: %s", tc.desc, out)
		}
		var e struct {
			Prompt []json.RawMessage `json:"prompt"`
		}
		if err := json.Unmarshal(ms[0].Val, &e); err != nil {
			t.Fatal(err)
		}
		var extra map[string]any
		_ = json.Unmarshal(e.Prompt[3], &extra)
		if extra["client_id"] != tc.wantCID {
			t.Errorf("%s: client_id = %v, want %v", tc.desc, extra["client_id"], tc.wantCID)
		}
		if _, ok := extra["extra_pnginfo"]; !ok {
			t.Errorf("%s: extra_pnginfo lost", tc.desc)
		}
	}
	// Its output file is now pinned to the instance.
	if got, ok := s.prompts.FileOwner(t.Context(), prompts.FileRef{Filename: "x_00001_.png", Type: "output"}); !ok || got != inst {
		t.Errorf("output not pinned: %v %v", got, ok)
	}
}

func TestRewriteViewFixes(t *testing.T) {
	t.Parallel()
	v := promptView{id: "client-id", clientID: "", known: true, socketID: "sock"}
	tuple := json.RawMessage(`[3, "up-id", {"1": {}}, {"client_id": "sock", "create_time": 5}, ["1"], {"secret": 1}]`)
	var items []json.RawMessage
	if err := json.Unmarshal(v.rewriteTuple(tuple), &items); err != nil || len(items) != 6 {
		t.Fatalf("rewriteTuple: %v %s", err, items)
	}
	if string(items[1]) != `"client-id"` || strings.ReplaceAll(string(items[3]), " ", "") != `{"create_time":5}` {
		t.Errorf("rewriteTuple = %s", items)
	}
	v.clientID = "mine"
	if got := string(v.fixExtraData(json.RawMessage(`{"client_id": "sock"}`))); got != `{"client_id": "mine"}` {
		t.Errorf("fixExtraData = %s", got)
	}
	st := v.rewriteStatus(json.RawMessage(`{"status_str": "error", "messages": [["execution_start", {"prompt_id": "up-id", "timestamp": 1}], ["execution_interrupted", {"prompt_id": "up-id", "node_id": "3"}]]}`), "up-id")
	if strings.Contains(string(st), "up-id") || strings.Count(string(st), "client-id") != 2 {
		t.Errorf("rewriteStatus = %s", st)
	}
	if ts, ok := completionTime(json.RawMessage(traceEntry("x", "y"))); !ok || ts != 1795889132087 {
		t.Errorf("completionTime = %d %v", ts, ok)
	}
}

func TestClientPromptID(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		``: "", `null`: "", `""`: "", `"abc"`: "abc", `4242`: "4242", `-1`: "-1",
		`1.5`: "", `true`: "", `{}`: "", `["a"]`: "",
		`"b4e409fa-d186-48d1-8e09-4cf045440e25"`: "b4e409fa-d186-48d1-8e09-4cf045440e25",
	} {
		if got := comfyapi.ClientPromptID(json.RawMessage(raw)); got != want {
			t.Errorf("comfyapi.ClientPromptID(%s) = %q, want %q", raw, got, want)
		}
	}
	if id := newUUID(); len(id) != 36 || id[14] != '4' || strings.ToLower(id) != id {
		t.Errorf("newUUID = %q", id)
	}
}

func TestHistoryWindow(t *testing.T) {
	t.Parallel()
	items := []historyItem{{key: "a"}, {key: "b"}, {key: "c"}, {key: "d"}, {key: "e"}}
	n := func(i int) *int { return &i }
	for _, tc := range []struct {
		max    *int
		offset int
		want   string
	}{
		{nil, -1, "abcde"},
		{n(2), -1, "de"},
		{n(2), 1, "bc"},
		{nil, 3, "de"},
		{n(10), -1, "abcde"},
		{n(0), -1, ""},
		{n(0), 0, "a"}, // ComfyUI's loop adds before it compares
		{n(-1), -1, ""},
		{n(3), 4, "e"},
		{nil, 9, ""},
	} {
		var got string
		for _, it := range applyHistoryWindow(items, tc.max, tc.offset) {
			got += it.key
		}
		m := "nil"
		if tc.max != nil {
			m = fmt.Sprint(*tc.max)
		}
		if got != tc.want {
			t.Errorf("max_items=%s offset=%d: %q, want %q", m, tc.offset, got, tc.want)
		}
	}
}

func TestMergeByCompletion(t *testing.T) {
	t.Parallel()
	a := []historyItem{{key: "a1", ts: 10}, {key: "a2", ts: 30}, {key: "a3", ts: 30}}
	b := []historyItem{{key: "b1", ts: 20}, {key: "b2", ts: 30}, {key: "a1", ts: 40}}
	var got []string
	for _, it := range mergeByCompletion([][]historyItem{a, b}) {
		got = append(got, it.key)
	}
	if want := "[b1 a2 a3 b2 a1]"; fmt.Sprint(got) != want {
		t.Errorf("merge = %v, want %s (oldest first, ties to the first instance, duplicate key keeps its newest)", got, want)
	}
}

// FuzzRewriteHistory feeds arbitrary /history answers through the rewriting:
// it must never panic, and a valid JSON object must come out as a valid JSON
// object with the same keys in the same order (the prompts are unknown to
// the table, so keys stay) and without comfygate's client_id.
func FuzzRewriteHistory(f *testing.F) {
	s, inst := rewriteServer(f)
	f.Add([]byte(`{"p1": ` + traceEntry("p1", inst.SocketClientID()) + `}`))
	f.Add([]byte(`{"x": {"prompt": [1, "x", {}, {"client_id": 5}], "status": {"messages": [["a", {"prompt_id": "x"}], 3]}}}`))
	f.Add([]byte(`{"x": {"outputs": {"1": {"images": [{"filename": "a.png"}, null, 3], "text": ["hi"]}}}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"a": 1, "a": 2}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		out := s.rewriteHistoryObject(inst, body)
		in, err := jsonobj.Members(body)
		if err != nil {
			return
		}
		got, err := jsonobj.Members(out)
		if err != nil {
			t.Fatalf("valid object in, invalid out: %v\nin:  %s\nout: %s", err, body, out)
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON out: %s", out)
		}
		if len(got) != len(in) {
			t.Fatalf("%d members in, %d out", len(in), len(got))
		}
		for i := range in {
			if in[i].Key != got[i].Key {
				t.Fatalf("key %d: %q became %q", i, in[i].Key, got[i].Key)
			}
		}
		if strings.Contains(string(out), `"client_id": "`+inst.SocketClientID()+`"`) {
			t.Fatalf("comfygate's client_id left in %s", out)
		}
	})
}
