package comfyapi

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestEditGraphInputs(t *testing.T) {
	t.Parallel()
	graph := `{"9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x"}}, "3": {"inputs": {"image": "a.png"}, "class_type": "LoadImage"}, "bad": 5}`
	var seen []string
	out, changed, err := EditGraphInputs(json.RawMessage(graph), func(node, input string, val json.RawMessage) (json.RawMessage, error) {
		seen = append(seen, node+"."+input)
		if s, ok := String(val); ok && s == "a.png" {
			return json.RawMessage(`"ns/a.png"`), nil
		}
		return nil, nil
	})
	// Node order kept (9 before 3), as ComfyUI runs output nodes in it.
	want := `{"9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x"}}, "3": {"inputs": {"image": "ns/a.png"}, "class_type": "LoadImage"}, "bad": 5}`
	if err != nil || !changed || string(out) != want || len(seen) != 3 || seen[0] != "9.images" {
		t.Errorf("EditGraphInputs = %s, %v, %v (saw %v)\nwant %s", out, changed, err, seen, want)
	}
	out, changed, err = EditGraphInputs(json.RawMessage(graph), func(string, string, json.RawMessage) (json.RawMessage, error) { return nil, nil })
	if err != nil || changed || string(out) != graph {
		t.Errorf("nothing replaced: %s, %v, %v", out, changed, err)
	}
	stop := errors.New("stop")
	if _, _, err := EditGraphInputs(json.RawMessage(graph), func(string, string, json.RawMessage) (json.RawMessage, error) { return nil, stop }); err != stop {
		t.Errorf("the edit's error: %v", err)
	}
	if out, changed, err := EditGraphInputs(json.RawMessage(`[1]`), nil); err != nil || changed || string(out) != `[1]` {
		t.Errorf("not a graph: %s, %v, %v", out, changed, err)
	}
}

// TestParseGraph: node by node and exact-case, as ComfyUI's validation
// reads it; one odd node costs only itself (a whole-graph struct parse
// lost every node's needs to it, and matched "Class_Type").
func TestParseGraph(t *testing.T) {
	t.Parallel()
	g, err := ParseGraph([]byte(`{"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
		"2": {"Class_Type": "X", "inputs": []}, "3": "junk", "4": {"class_type": 7, "inputs": {"x": 1}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if n := g["1"]; n.ClassType != "CheckpointLoaderSimple" || string(n.Inputs["ckpt_name"]) != `"a.safetensors"` {
		t.Errorf("node 1: %+v", n)
	}
	if n := g["2"]; n.ClassType != "" || n.Inputs != nil {
		t.Errorf("node 2: %+v", n)
	}
	if n, ok := g["3"]; !ok || n.ClassType != "" {
		t.Errorf("node 3: %+v %v", n, ok)
	}
	if n := g["4"]; n.ClassType != "" || string(n.Inputs["x"]) != "1" {
		t.Errorf("node 4: %+v", n)
	}
	for _, bad := range []string{`null`, `[]`, `{"1": `} {
		if _, err := ParseGraph([]byte(bad)); err == nil {
			t.Errorf("%s read as a graph", bad)
		}
	}
}

func TestInputLink(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		v    string
		node string
		idx  int
		ok   bool
	}{
		{`["8", 0]`, "8", 0, true},
		{` ["12", 2] `, "12", 2, true},
		{`[8, 0]`, "", 0, false},
		{`["8", "0"]`, "", 0, false},
		{`["8", 0, 1]`, "", 0, false},
		{`"8"`, "", 0, false},
	} {
		node, idx, ok := InputLink([]byte(tc.v))
		if node != tc.node || idx != tc.idx || ok != tc.ok {
			t.Errorf("InputLink(%s) = %q %d %v", tc.v, node, idx, ok)
		}
	}
}

func TestGraphFieldsAndUIWorkflow(t *testing.T) {
	t.Parallel()
	g, err := ParseGraph([]byte(`{"1": {"class_type": "X", "inputs": {}, "_meta": {"title": "t"}}, "2": null}`))
	if err != nil || string(g["1"].Fields["_meta"]) != `{"title": "t"}` || g["1"].Inputs == nil || g["2"].Fields != nil {
		t.Errorf("got %+v, %v", g, err)
	}
	var se *json.SyntaxError
	if _, err := ParseGraph([]byte("{\n\"1\": ")); !errors.As(err, &se) {
		t.Errorf("broken text: %v, want a *json.SyntaxError", err)
	}
	if !IsUIWorkflow([]byte(`{"last_node_id": 9, "nodes": [{"id": 1}], "links": []}`)) {
		t.Error("a UI workflow not recognised")
	}
	if IsUIWorkflow([]byte(`{"nodes": {"class_type": "X"}, "links": ["x", 0]}`)) || IsUIWorkflow([]byte(`{"1": {"class_type": "X"}}`)) {
		t.Error("an API graph read as a UI workflow")
	}
}
