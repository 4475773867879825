package comfyapi

import (
	"encoding/binary"
	"encoding/json"
	"testing"
)

func TestTruthy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"", false}, {"   ", false}, {"false", false}, {"null", false}, {"0", false}, {"0.0", false},
		{"-0", false}, {"0e5", false}, {`""`, false}, {"[]", false}, {"[ ]", false}, {"[\n\t]", false},
		{"{}", false}, {"{ }", false}, {" { \n } ", false},
		{"true", true}, {"1", true}, {"-1", true}, {"0.5", true}, {"1e999", true}, {`"0"`, true},
		{`"false"`, true}, {`" "`, true}, {"[0]", true}, {"[false]", true}, {`{"a": 0}`, true},
		{"[", true}, {"nope", true},
	} {
		if got := Truthy([]byte(tc.in)); got != tc.want {
			t.Errorf("Truthy(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseVersion(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want Version
		ok   bool
	}{
		{"0.3.64", Version{0, 3, 64}, true},
		{"v0.2.2-50-gabc1234", Version{0, 2, 2}, true},
		{"0.38.0+local", Version{0, 38, 0}, true},
		{" 0.3.65 ", Version{0, 3, 65}, true},
		{"V1.2.3", Version{1, 2, 3}, true},
		{"0.3", Version{0, 3, 0}, true},
		{"1", Version{1, 0, 0}, true},
		{"0.x.5", Version{0, 0, 0}, true},
		{"1.2.3.4", Version{1, 2, 3}, true},
		{"", Version{}, false},
		{"garbage", Version{}, false},
		{"v", Version{}, false},
		{"99999999999999999999999.1", Version{}, false},
	} {
		got, ok := ParseVersion(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestFeatureChecks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		v                            string
		clientID, features, targeted bool
	}{
		{"0.3.44", false, true, false},
		{"0.3.45", true, true, false},
		{"0.3.43", false, false, false},
		{"0.3.57", true, true, true},
		{"0.3.56", true, true, false},
		{"0.3.64", true, true, true},
		{"0.38.0+local", true, true, true},
		{"v0.2.2-50-gabc1234", false, false, false},
		{"1.0", true, true, true},
		{"", true, true, true},        // unknown: assumed recent
		{"garbage", true, true, true}, // unparsable: assumed recent
	} {
		if got := SupportsClientPromptID(tc.v); got != tc.clientID {
			t.Errorf("SupportsClientPromptID(%q) = %v", tc.v, got)
		}
		if got := AtLeast(tc.v, VersionFeatures); got != tc.features {
			t.Errorf("AtLeast(%q, VersionFeatures) = %v", tc.v, got)
		}
		if got := SupportsTargetedInterrupt(tc.v); got != tc.targeted {
			t.Errorf("SupportsTargetedInterrupt(%q) = %v", tc.v, got)
		}
	}
}

func TestPromptAnswer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc, body, id string
		number         float64
		nodeErrors     bool
	}{
		{"string id", `{"prompt_id": "abc", "number": 12, "node_errors": {}}`, "abc", 12, false},
		{"integer id", `{"prompt_id": 4242, "number": 3, "node_errors": {}}`, "4242", 3, false},
		{"float number", `{"prompt_id": "x", "number": -1.5, "node_errors": {"3": {"errors": []}}}`, "x", -1.5, true},
		{"null id", `{"prompt_id": null, "number": 0}`, "", 0, false},
		{"object id", `{"prompt_id": {"a": 1}, "number": 0}`, `{"a":1}`, 0, false},
	} {
		a, err := ParsePromptAnswer([]byte(tc.body))
		if err != nil {
			t.Fatalf("%s: %v", tc.desc, err)
		}
		n, _ := a.QueueNumber()
		if a.ID() != tc.id || n != tc.number || a.HasNodeErrors() != tc.nodeErrors {
			t.Errorf("%s: id %q number %v nodeErrors %v", tc.desc, a.ID(), n, a.HasNodeErrors())
		}
	}
	if _, err := ParsePromptAnswer([]byte(`["prompt_id"]`)); err == nil {
		t.Error("an array answer parsed")
	}
}

func TestPromptRequest(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc, body, client, pid string
		front                   bool
	}{
		{"top-level client id wins", `{"prompt": {}, "client_id": "a", "extra_data": {"client_id": "b"}}`, "a", "", false},
		{"extra_data only", `{"prompt": {}, "extra_data": {"client_id": "b"}}`, "b", "", false},
		{"none", `{"prompt": {}}`, "", "", false},
		{"front empty list", `{"prompt": {}, "front": [ ]}`, "", "", false},
		{"front 1", `{"prompt": {}, "front": 1}`, "", "", true},
		{"integer prompt id", `{"prompt": {}, "prompt_id": 4242}`, "", "4242", false},
		{"string prompt id", `{"prompt": {}, "prompt_id": "p-1"}`, "", "p-1", false},
		{"float prompt id dropped", `{"prompt": {}, "prompt_id": 1.5}`, "", "", false},
		{"bool prompt id dropped", `{"prompt": {}, "prompt_id": true}`, "", "", false},
	} {
		r, err := ParsePromptRequest([]byte(tc.body))
		if err != nil {
			t.Fatalf("%s: %v", tc.desc, err)
		}
		if got := r.EffectiveClientID(); got != tc.client {
			t.Errorf("%s: client id %q, want %q", tc.desc, got, tc.client)
		}
		if got := ClientPromptID(r.PromptID); got != tc.pid {
			t.Errorf("%s: prompt id %q, want %q", tc.desc, got, tc.pid)
		}
		if got := r.IsFront(); got != tc.front {
			t.Errorf("%s: front %v", tc.desc, got)
		}
	}
	if _, err := ParsePromptRequest([]byte(`"x"`)); err == nil {
		t.Error("a string body parsed")
	}
}

func TestQueue(t *testing.T) {
	t.Parallel()
	body := `{"queue_running": [[3, "run", {}, {"client_id": "c"}, ["9"]]],
		"queue_pending": [[5.5, "p2", {}, {}, []], "junk", [7, 42, {}, {}, []], [4, "p1", {}, {}, [], {"secret": 1}]]}`
	q, err := ParseQueue([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if running, pending := q.IDSets(); len(running) != 1 || !running["run"] || len(pending) != 2 || !pending["p2"] || !pending["p1"] {
		t.Errorf("IDSets = %v, %v; want {run} and {p1, p2}", running, pending)
	}
	for _, tc := range []struct {
		id      string
		number  string
		running bool
		ok      bool
	}{
		{"run", "3", true, true}, {"p2", "5.5", false, true}, {"p1", "4", false, true}, {"42", "", false, false}, {"zz", "", false, false},
	} {
		n, running, ok := q.Find(tc.id)
		if string(n) != tc.number || running != tc.running || ok != tc.ok {
			t.Errorf("Find(%q) = %s, %v, %v", tc.id, n, running, ok)
		}
	}
	it, err := ParseQueueItem(q.Running[0])
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := it.Number(); !ok || n != 3 {
		t.Errorf("Number = %v, %v", n, ok)
	}
	if string(it.ExtraData()) != `{"client_id": "c"}` || string(it.OutputsToExecute()) != `["9"]` {
		t.Errorf("extra %s outputs %s", it.ExtraData(), it.OutputsToExecute())
	}
	if n, ok := ItemNumberOf([]byte(`["x", "id"]`)); ok {
		t.Errorf("string number read as %v", n)
	}
	if _, err := ParseQueue([]byte(`[]`)); err == nil {
		t.Error("an array parsed as a queue")
	}
}

func TestDeleteOrClear(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc, body string
		clear      bool
		del        []string
		hasDel     bool
		err        bool
	}{
		{"clear true", `{"clear": true}`, true, nil, false, false},
		{"clear empty list", `{"clear": [ ]}`, false, nil, false, false},
		{"clear empty object", `{"clear": {}}`, false, nil, false, false},
		{"clear 0.0", `{"clear": 0.0}`, false, nil, false, false},
		{"clear string", `{"clear": "no"}`, true, nil, false, false},
		{"delete", `{"delete": ["a", 1, null, "b"]}`, false, []string{"a", "b"}, true, false},
		{"delete not a list", `{"delete": "abc"}`, false, nil, true, false},
		{"both", `{"clear": 1, "delete": ["a"]}`, true, []string{"a"}, true, false},
		{"not an object", `["clear"]`, false, nil, false, true},
		{"not json", `{clear}`, false, nil, false, true},
	} {
		d, err := ParseDeleteOrClear([]byte(tc.body))
		if (err != nil) != tc.err {
			t.Errorf("%s: err %v", tc.desc, err)
			continue
		}
		if d.Clear != tc.clear || d.HasDelete != tc.hasDel || len(d.Delete) != len(tc.del) {
			t.Errorf("%s: got %+v", tc.desc, d)
			continue
		}
		for i := range tc.del {
			if d.Delete[i] != tc.del[i] {
				t.Errorf("%s: delete %v", tc.desc, d.Delete)
			}
		}
	}
}

func TestHistoryOutcome(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc, entry string
		want        Outcome
		terminal    string
	}{
		{"success", `{"status": {"status_str": "success", "completed": true, "messages": [["execution_start", {}], ["execution_success", {"prompt_id": "p"}]]}}`, OutcomeSuccess, "execution_success"},
		{"interrupted", `{"status": {"status_str": "error", "messages": [["execution_start", {}], ["execution_interrupted", {"node_id": "3"}]]}}`, OutcomeInterrupted, "execution_interrupted"},
		{"error", `{"status": {"status_str": "error", "messages": [["execution_error", {"exception_type": "ValueError"}]]}}`, OutcomeError, "execution_error"},
		{"blocked then success", `{"status": {"status_str": "success", "messages": [["execution_error", {"exception_type": "ExecutionBlocked"}], ["execution_success", {}]]}}`, OutcomeSuccess, "execution_success"},
		{"blocked only, status error", `{"status": {"status_str": "error", "messages": [["execution_error", {"exception_type": "ExecutionBlocked"}]]}}`, OutcomeError, ""},
		{"2024 success without message", `{"status": {"status_str": "success", "messages": [["execution_start", {}]]}}`, OutcomeSuccess, ""},
		{"no status", `{"outputs": {"9": {"images": []}}}`, OutcomeUnknown, ""},
		{"junk messages", `{"status": {"status_str": 5, "messages": [1, ["a"], [2, {}], "x"]}}`, OutcomeUnknown, ""},
		{"messages not a list", `{"status": {"status_str": "error", "messages": {}}}`, OutcomeError, ""},
	} {
		e, err := ParseHistoryEntry([]byte(tc.entry))
		if err != nil {
			t.Fatalf("%s: %v", tc.desc, err)
		}
		if got := e.Outcome(); got != tc.want {
			t.Errorf("%s: outcome %v, want %v", tc.desc, got, tc.want)
		}
		m, ok := e.Status.Terminal()
		if (tc.terminal != "") != ok || m.Type != tc.terminal {
			t.Errorf("%s: terminal %q %v, want %q", tc.desc, m.Type, ok, tc.terminal)
		}
	}
}

func TestWSText(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc, msg, typ, pid string
		hasPID, nodeNull    bool
		terminal, ends      bool
		queue               int64
		hasQueue            bool
	}{
		{"status", `{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 3}}, "sid": "s"}}`, "status", "", false, true, false, false, 3, true},
		{"executing node", `{"type": "executing", "data": {"node": "9", "display_node": "9", "prompt_id": "p"}}`, "executing", "p", true, false, false, false, 0, false},
		{"executing null", `{"type": "executing", "data": {"node": null, "prompt_id": "p"}}`, "executing", "p", true, true, false, true, 0, false},
		{"resync without prompt", `{"type": "executing", "data": {"node": "4"}}`, "executing", "", false, false, false, false, 0, false},
		{"blocked", `{"type": "execution_error", "data": {"prompt_id": "p", "exception_type": "ExecutionBlocked", "node_id": "3"}}`, "execution_error", "p", true, true, false, false, 0, false},
		{"error", `{"type": "execution_error", "data": {"prompt_id": "p", "exception_type": "RuntimeError"}}`, "execution_error", "p", true, true, true, true, 0, false},
		{"success", `{"type": "execution_success", "data": {"prompt_id": "p", "timestamp": 1}}`, "execution_success", "p", true, true, true, true, 0, false},
		{"numeric prompt id", `{"type": "progress", "data": {"prompt_id": 7, "node": "3"}}`, "progress", "7", true, false, false, false, 0, false},
		{"custom data", `{"type": "my_node", "data": "hello"}`, "my_node", "", false, false, false, false, 0, false},
		{"executing without data", `{"type": "executing", "data": 5}`, "executing", "", false, false, false, false, 0, false},
		{"status negative", `{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": -1}}}}`, "status", "", false, true, false, false, 0, false},
		{"status string", `{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": "2"}}}}`, "status", "", false, true, false, false, 0, false},
	} {
		m, err := ParseWSText([]byte(tc.msg))
		if err != nil {
			t.Fatalf("%s: %v", tc.desc, err)
		}
		q, hasQ := m.QueueRemaining()
		if m.Type != tc.typ || m.PromptID() != tc.pid || m.HasPromptID() != tc.hasPID || m.NodeNull() != tc.nodeNull ||
			m.Terminal() != tc.terminal || m.Ends() != tc.ends || q != tc.queue || hasQ != tc.hasQueue {
			t.Errorf("%s: type %q pid %q/%v nodeNull %v terminal %v ends %v queue %d/%v", tc.desc,
				m.Type, m.PromptID(), m.HasPromptID(), m.NodeNull(), m.Terminal(), m.Ends(), q, hasQ)
		}
	}
	if _, err := ParseWSText([]byte("[1]")); err == nil {
		t.Error("an array parsed as a message")
	}
	m, _ := ParseWSText([]byte(`{"type": "executed", "data": {"node": "9", "display_node": "12", "output": {"images": []}, "exception_message": "m"}}`))
	if m.Node() != "12" || string(m.Data.Output) != `{"images": []}` || m.ExceptionMessage() != "m" {
		t.Errorf("executed: node %q output %s", m.Node(), m.Data.Output)
	}
}

func frame4(meta string, img []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, BinPreviewImageWithMetadata)
	b = binary.BigEndian.AppendUint32(b, uint32(len(meta)))
	return append(append(b, meta...), img...)
}

func TestPreviewMetadata(t *testing.T) {
	t.Parallel()
	png := []byte{0x89, 'P', 'N', 'G', 1, 2, 3}
	jpg := []byte{0xff, 0xd8, 0xff, 0xe0, 9}
	meta := `{"node_id": "2", "prompt_id": "up-1", "display_node_id": "2", "parent_node_id": null, "real_node_id": "2", "image_type": "image/png"}`
	f := frame4(meta, png)
	md, ok := ParsePreviewMetadata(f)
	if !ok || md.PromptID != "up-1" || md.NodeID != "2" || md.ParentNodeID != "" || md.ImageType != "image/png" {
		t.Fatalf("metadata %+v %v", md, ok)
	}
	out, ok := RewritePreviewPromptID(f, "up-1", "client-id-longer")
	if !ok {
		t.Fatal("rewrite failed")
	}
	md2, ok := ParsePreviewMetadata(out)
	if !ok || md2.PromptID != "client-id-longer" || md2.NodeID != "2" || md2.ImageType != "image/png" {
		t.Fatalf("rewritten metadata %+v %v", md2, ok)
	}
	if _, img, _ := SplitPreviewMetadata(out); string(img) != string(png) {
		t.Errorf("image changed: %x", img)
	}
	if same, ok := RewritePreviewPromptID(f, "other", "x"); !ok || &same[0] != &f[0] {
		t.Error("a frame of another prompt was copied")
	}
	for _, tc := range []struct {
		desc   string
		frame  []byte
		format uint32
		ok     bool
	}{
		{"png by type", f, FormatPNG, true},
		{"jpeg by type", frame4(`{"image_type": "image/jpeg"}`, jpg), FormatJPEG, true},
		{"jpeg by bytes", frame4(`{}`, jpg), FormatJPEG, true},
		{"png default", frame4(`not json`, []byte{1, 2}), FormatPNG, true},
		{"length past end", append(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 4), 99), 'x'), 0, false},
		{"short", []byte{0, 0, 0, 4, 0}, 0, false},
		{"type 1", []byte{0, 0, 0, 1, 0, 0, 0, 2}, 0, false},
	} {
		head, img, ok := PreviewToType1(tc.frame)
		if ok != tc.ok {
			t.Errorf("%s: ok %v", tc.desc, ok)
			continue
		}
		if !ok {
			continue
		}
		if typ, _ := BinaryType(head[:]); typ != BinPreviewImage || binary.BigEndian.Uint32(head[4:]) != tc.format {
			t.Errorf("%s: head %x", tc.desc, head)
		}
		if _, want, _ := SplitPreviewMetadata(tc.frame); string(img) != string(want) {
			t.Errorf("%s: image %x", tc.desc, img)
		}
	}
	if _, ok := ParsePreviewMetadata(frame4(`[1]`, nil)); ok {
		t.Error("array metadata parsed")
	}
	if typ, ok := BinaryType([]byte{0, 0, 1}); ok || typ != 0 {
		t.Error("3-byte frame has a type")
	}
}

func TestIDText(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{`"a b"`: "a b", `12`: "12", ` null `: "", ``: "", `[1, 2]`: "[1,2]", `"\u00e9"`: "é"} {
		if got := IDText(json.RawMessage(in)); got != want {
			t.Errorf("IDText(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFeatureFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		msg          string
		metadata, ok bool
	}{
		{`{"type": "feature_flags", "data": {"supports_preview_metadata": true}}`, true, true},
		{`{"type": "feature_flags", "data": {"supports_preview_metadata": 1}}`, false, true},
		{`{"type": "feature_flags", "data": {"supports_preview_metadata": "true"}}`, false, true},
		{`{"type": "feature_flags", "data": "x"}`, false, true},
		{`{"type": "feature_flags"}`, false, true},
		{`{"type": "status", "data": {"supports_preview_metadata": true}}`, false, false},
		{`not json`, false, false},
	} {
		md, ok := ParseFeatureFlags([]byte(tc.msg))
		if md != tc.metadata || ok != tc.ok {
			t.Errorf("ParseFeatureFlags(%s) = %v, %v", tc.msg, md, ok)
		}
	}
}

func TestLastTimestamp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		entry string
		ts    int64
		ok    bool
	}{
		{`{"status": {"messages": [["execution_start", {"timestamp": 5}], ["execution_success", {"timestamp": 9}]]}}`, 9, true},
		{`{"status": {"messages": [["execution_start", {"timestamp": 5}], ["execution_error", {"exception_type": "X"}]]}}`, 5, true},
		{`{"status": {"messages": [["execution_start", {"timestamp": "5"}]]}}`, 0, false},
		{`{"outputs": {}}`, 0, false},
	} {
		e, _ := ParseHistoryEntry([]byte(tc.entry))
		if ts, ok := e.Status.LastTimestamp(); ts != tc.ts || ok != tc.ok {
			t.Errorf("LastTimestamp(%s) = %d, %v", tc.entry, ts, ok)
		}
	}
}

func TestNodeOutputFiles(t *testing.T) {
	t.Parallel()
	out := json.RawMessage(`{"images": [{"filename": "a.png", "subfolder": "s", "type": "output"}, {"filename": ""}, "x", {"subfolder": "t"}],
		"gifs": [{"filename": "b.gif", "subfolder": "", "type": "temp"}], "text": ["hello"], "animated": [false]}`)
	if got := NodeOutputFiles(out, "images"); len(got) != 1 || got[0] != (FileRef{"a.png", "s", "output"}) {
		t.Errorf("images: %+v", got)
	}
	all := NodeOutputFiles(out, "")
	if len(all) != 2 {
		t.Errorf("all kinds: %+v", all)
	}
	for _, bad := range []string{`null`, `[]`, `{"images": 3}`, ``} {
		if got := NodeOutputFiles(json.RawMessage(bad), ""); len(got) != 0 {
			t.Errorf("%s: %+v", bad, got)
		}
	}
}

func TestProgressFields(t *testing.T) {
	t.Parallel()
	m, _ := ParseWSText([]byte(`{"type": "progress", "data": {"value": 3, "max": 20, "prompt_id": "p", "node": "5"}}`))
	if v, mx := m.Progress(); v != 3 || mx != 20 {
		t.Errorf("progress %v/%v", v, mx)
	}
	m, _ = ParseWSText([]byte(`{"type": "execution_cached", "data": {"nodes": ["1", 2, "3"], "prompt_id": "p"}}`))
	if got := m.CachedNodes(); len(got) != 2 || got[0] != "1" || got[1] != "3" {
		t.Errorf("cached %v", got)
	}
	m, _ = ParseWSText([]byte(`{"type": "progress_state", "data": {"prompt_id": "p", "nodes": {
		"1": {"value": 1.0, "max": 1.0, "state": "finished", "node_id": "1", "display_node_id": "1", "parent_node_id": null},
		"2": {"value": 0, "max": 2, "state": "running", "node_id": "2", "display_node_id": "7"}, "3": 5}}}`))
	st := m.NodeStates()
	if len(st) != 2 || st["1"].State != "finished" || st["2"].Max != 2 || st["2"].DisplayNodeID != "7" {
		t.Errorf("states %+v", st)
	}
}

func TestEncode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ desc, in, want string }{
		{"plain", "abc-123", `"abc-123"`},
		{"quotes", `a"b\c`, `"a\"b\\c"`},
		{"control", "a\nb\x01\x7f", `"a\nb\u0001\u007f"`},
		{"non-ascii", "é", `"\u00e9"`},
		{"astral", "😀", `"\ud83d\ude00"`},
	} {
		if got := string(AppendPyString(nil, tc.in)); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.desc, got, tc.want)
		}
	}
	// Exactly ComfyUI's bytes (Python json.dumps), as captured.
	if got, want := string(StatusMessage(3, "my-client", true)),
		`{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 3}}, "sid": "my-client"}}`; got != want {
		t.Errorf("status = %s, want %s", got, want)
	}
	if got, want := string(StatusMessage(0, "x", false)), `{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}`; got != want {
		t.Errorf("status = %s, want %s", got, want)
	}
	if got, want := string(ExecutingNull("p-1")), `{"type": "executing", "data": {"node": null, "prompt_id": "p-1"}}`; got != want {
		t.Errorf("executing = %s, want %s", got, want)
	}
	m, err := ParseWSText(ExecutingNull("é"))
	if err != nil || !m.Ends() || m.PromptID() != "é" {
		t.Errorf("ExecutingNull does not parse back: %+v %v", m, err)
	}
}

// TestListFilesKeepsTheRest: one odd entry in an output list costs only
// itself; a subfolder or type that is no string reads as "".
func TestListFilesKeepsTheRest(t *testing.T) {
	got := ListFiles([]byte(`[{"filename": "a.png", "subfolder": 5, "type": "output"}, "text", {"subfolder": ""}, {"filename": "b.png", "subfolder": "s", "type": ["x"]}]`))
	want := []FileRef{{Filename: "a.png", Type: "output"}, {Filename: "b.png", Subfolder: "s"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("ListFiles = %+v, want %+v", got, want)
	}
	if ListFiles([]byte(`{"filename": "a.png"}`)) != nil {
		t.Error("ListFiles of an object: want nothing")
	}
}
