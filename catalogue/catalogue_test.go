package catalogue

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/jsonobj"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
)

func TestPromptNeeds(t *testing.T) {
	t.Parallel()
	graph := `{
		"10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15\\v1-5.safetensors"}},
		"2": {"class_type": "LoraLoader", "inputs": {"lora_name": "detail.safetensors", "model": ["10", 0], "clip": ["10", 1], "strength_model": 1}},
		"3": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 5}},
		"4": {"class_type": "LoraLoader", "inputs": {"lora_name": ["99", 0]}},
		"5": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15/v1-5.safetensors"}}
	}`
	n := PromptNeeds(json.RawMessage(graph))
	var classes []string
	for _, nd := range n.Nodes {
		classes = append(classes, nd.NodeID+":"+nd.Class)
	}
	if want := []string{"2:LoraLoader", "3:KSampler", "5:CheckpointLoaderSimple"}; !slices.Equal(classes, want) {
		t.Errorf("nodes = %v, want %v (first node of each class, ids in numeric order)", classes, want)
	}
	var models []string
	for _, m := range n.Models {
		models = append(models, m.NodeID+":"+m.Input+"="+m.Value)
	}
	if want := []string{"2:lora_name=detail.safetensors", "5:ckpt_name=sd15/v1-5.safetensors", "10:ckpt_name=sd15\\v1-5.safetensors"}; !slices.Equal(models, want) {
		t.Errorf("models = %v, want %v (links are not names)", models, want)
	}
	if want := "checkpoints/sd15/v1-5.safetensors\nloras/detail.safetensors"; n.ModelKey != want {
		t.Errorf("model key = %q, want %q (sorted, unique, separators normalized)", n.ModelKey, want)
	}
	for _, bad := range []string{``, `[]`, `{"1": 5}`, `not json`} {
		if n := PromptNeeds(json.RawMessage(bad)); !n.Empty() {
			t.Errorf("PromptNeeds(%q) = %+v, want nothing", bad, n)
		}
	}
}

func TestMergeCombo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc, spec string
		more       [][]string
		want       string
	}{
		{"classic form", `[["a", "b"], {"tooltip": "x"}]`, [][]string{{"b", "c"}, {"d"}}, `[["a","b","c","d"], {"tooltip": "x"}]`},
		{"V3 form", `["COMBO", {"options": ["a"], "default": "a"}]`, [][]string{{"z", "a"}}, `["COMBO", {"options": ["a","z"], "default": "a"}]`},
		{"nothing new", `[["a"]]`, [][]string{{"a"}}, ""},
		{"not a combo", `["INT", {"default": 1}]`, [][]string{{"a"}}, ""},
	} {
		got, ok := mergeCombo(json.RawMessage(tc.spec), tc.more)
		if tc.want == "" {
			if ok {
				t.Errorf("%s: merged to %s, want unchanged", tc.desc, got)
			}
			continue
		}
		if !ok || strings.ReplaceAll(string(got), " ", "") != strings.ReplaceAll(tc.want, " ", "") {
			t.Errorf("%s: %s, %v; want %s", tc.desc, got, ok, tc.want)
		}
	}
}

// fakeFleet is a pool of instances (nothing started) and a store whose
// catalogues the test sets.
func fakeFleet(t *testing.T, n int) (*Store, []*upstream.Instance) {
	t.Helper()
	cfg := config.Default()
	cfg.Instances = nil
	for k := range n {
		cfg.Instances = append(cfg.Instances, config.Instance{Name: string(rune('a' + k)), Address: "127.0.0.1:1"})
	}
	p, err := upstream.New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return New(p, cfg.Routing.CatalogueInterval, nil), p.Instances()
}

func setCat(s *Store, inst *upstream.Instance, nodes []string, models map[string][]string) {
	c := &Catalogue{nodes: map[string]bool{}}
	for _, n := range nodes {
		c.nodes[n] = true
		c.classes = append(c.classes, jsonobj.Member{Key: n, Val: json.RawMessage(`{"name": "` + n + `"}`)})
	}
	if models != nil {
		c.models, c.files = map[string]map[string]bool{}, models
		for f, files := range models {
			c.folders = append(c.folders, f)
			c.models[f] = map[string]bool{}
			for _, x := range files {
				c.models[f][normalize(x)] = true
			}
		}
	}
	s.mu.Lock()
	s.byInst[inst] = &entry{cat: c}
	s.mu.Unlock()
	s.version.Add(1)
}

func TestDecide(t *testing.T) {
	t.Parallel()
	s, in := fakeFleet(t, 3)
	setCat(s, in[0], []string{"Loader", "Save"}, map[string][]string{"checkpoints": {"flux.safetensors"}})
	setCat(s, in[1], []string{"Loader", "Save", "Rembg"}, map[string][]string{"checkpoints": {"sd15\\a.safetensors"}})
	// in[2] not read yet.
	needs := func(g string) Needs { return PromptNeeds(json.RawMessage(g)) }
	accepted := func(v Verdict) []string {
		var out []string
		for _, i := range in {
			if v.Eligible == nil || v.Eligible(i) {
				out = append(out, i.Name)
			}
		}
		return out
	}
	flux := needs(`{"1": {"class_type": "Loader", "inputs": {"ckpt_name": "flux.safetensors"}}}`)
	if v := s.Decide(flux, nil); !v.Runnable || !slices.Equal(accepted(v), []string{"a"}) {
		t.Errorf("flux: %+v accepts %v, want a only (c is not read yet)", v, accepted(v))
	}
	sd := needs(`{"1": {"class_type": "Loader", "inputs": {"ckpt_name": "sd15/a.safetensors"}}, "2": {"class_type": "Rembg", "inputs": {}}}`)
	if v := s.Decide(sd, nil); !v.Runnable || !slices.Equal(accepted(v), []string{"b"}) {
		t.Errorf("sd15 + Rembg: accepts %v, want b (path separators compared normalized)", accepted(v))
	}
	none := needs(`{"1": {"class_type": "Loader", "inputs": {"ckpt_name": "flux.safetensors"}}, "2": {"class_type": "Rembg", "inputs": {}}}`)
	v := s.Decide(none, nil)
	if !slices.Equal(accepted(v), []string{"c"}) {
		t.Errorf("nothing known can run it: accepts %v, want the unknown c", accepted(v))
	}
	setCat(s, in[2], []string{"Save"}, nil)
	v = s.Decide(none, nil)
	if v.Runnable || len(v.Missing) != 3 || len(v.Nowhere) != 0 {
		t.Errorf("none can: %+v", v)
	}
	if got := strings.Join(v.Missing[0].Lacks, ";"); !strings.Contains(got, `node class "Rembg" (node #2)`) {
		t.Errorf("a lacks %q", got)
	}
	if got := strings.Join(v.Missing[1].Lacks, ";"); !strings.Contains(got, "model checkpoints/flux.safetensors (node #1 ckpt_name)") {
		t.Errorf("b lacks %q", got)
	}
	// c lists no models: only its node classes are judged.
	if got := strings.Join(v.Missing[2].Lacks, ";"); strings.Contains(got, "model") {
		t.Errorf("c (no /models) lacks %q", got)
	}
	v = s.Decide(needs(`{"1": {"class_type": "Nope", "inputs": {}}}`), nil)
	if v.Runnable || len(v.Nowhere) != 1 {
		t.Errorf("unknown class: %+v", v)
	}
	// Among labelled instances only.
	onlyA := func(i *upstream.Instance) bool { return i.Name == "a" }
	if v := s.Decide(sd, onlyA); v.Runnable {
		t.Errorf("sd15 among a only: runnable")
	}
}

// TestRefreshSkipsAnUnchangedBody: reading an instance again whose
// /object_info is the same keeps the parsed catalogue.
func TestRefreshSkipsAnUnchangedBody(t *testing.T) {
	t.Parallel()
	sim := testkit.Sim(t, comfysim.Options{Models: map[string][]string{"checkpoints": {"x.safetensors"}}})
	cfg := testkit.Config(t, "i", []string{sim.Addr()}, nil)
	p, err := upstream.New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := New(p, cfg.Routing.CatalogueInterval, nil)
	inst := p.Instances()[0]
	ctx := context.Background()
	if err := s.Refresh(ctx, inst); err != nil {
		t.Fatal(err)
	}
	first := s.byInst[inst].cat
	if !first.nodes["SaveImage"] || !first.models["checkpoints"]["x.safetensors"] {
		t.Fatalf("catalogue lacks SaveImage or the checkpoint")
	}
	if err := s.Refresh(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if s.byInst[inst].cat != first {
		t.Fatal("an unchanged instance was parsed again")
	}
	if st := s.Status(inst); !st.Known || st.NodeClasses == 0 || st.ModelFiles < 1 {
		t.Fatalf("status = %+v", st)
	}
}

// TestRereadOnComeback: an instance that restarts is read again at once,
// without waiting for the (here: hour-long) interval.
func TestRereadOnComeback(t *testing.T) {
	t.Parallel()
	sim := testkit.Sim(t, comfysim.Options{})
	// The prompt table's event socket is how a restart that passes no
	// failed health check is noticed (State.Comebacks).
	gw := testkit.Start(t, testkit.GatewayOptions{Addrs: []string{sim.Addr()}, Prefix: "i"},
		testkit.Wiring[*upstream.Pool, *prompts.Table, testkit.NoPart, testkit.NoPart]{Pool: upstream.New, Prompts: prompts.New})
	p := gw.Pool()
	ctx, cancel := context.WithCancel(context.Background())
	s := New(p, time.Hour, nil)
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done }) // before the pool and table close
	inst := p.Instances()[0]
	readAt := func() time.Time {
		s.mu.RLock()
		defer s.mu.RUnlock()
		if e := s.byInst[inst]; e != nil && e.cat != nil {
			return e.read
		}
		return time.Time{}
	}
	testkit.Eventually(t, "first read", func() bool { return !readAt().IsZero() })
	first := readAt()
	sim.Kill()
	if err := sim.Restart(); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "a read after the restart", func() bool { return readAt().After(first) })
}

// FuzzPromptNeeds: any client graph is read without panicking, the same
// way twice, and every need it reports names a class or a model input.
func FuzzPromptNeeds(f *testing.F) {
	f.Add([]byte(`{"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a\\b.safetensors"}}}`))
	f.Add([]byte(`{"1": {"class_type": 5, "inputs": {"lora_name": ["2", 0]}}, "2": null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, graph []byte) {
		a, b := PromptNeeds(graph), PromptNeeds(graph)
		if a.ModelKey != b.ModelKey || len(a.Nodes) != len(b.Nodes) || len(a.Models) != len(b.Models) {
			t.Fatalf("two reads differ: %+v / %+v", a, b)
		}
		for _, n := range a.Nodes {
			if n.Class == "" {
				t.Fatalf("empty class in %+v", a)
			}
		}
		for _, m := range a.Models {
			if ModelFolders(m.Input) == nil || m.Value == "" {
				t.Fatalf("model need %+v is no model input", m)
			}
		}
	})
}

// FuzzMergeCombo: any input spec merges without panicking, and a merged
// spec is JSON that lists every option given.
func FuzzMergeCombo(f *testing.F) {
	f.Add([]byte(`[["a", "b"], {"x": 1}]`), "c")
	f.Add([]byte(`["COMBO", {"options": ["a"]}]`), "b")
	f.Add([]byte(`["COMBO"]`), "b")
	f.Fuzz(func(t *testing.T, spec []byte, extra string) {
		if !utf8.ValidString(extra) {
			return // options come from JSON documents: always valid UTF-8
		}
		out, ok := mergeCombo(spec, [][]string{{extra}})
		if !ok {
			return
		}
		opts, isCombo := comboOptions(out)
		if !json.Valid(out) || !isCombo || !slices.Contains(opts, extra) {
			t.Fatalf("merged %s with %q into %s", spec, extra, out)
		}
	})
}
