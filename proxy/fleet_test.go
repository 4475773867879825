package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/catalogue"
	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/metrics"
	"github.com/comfygate/comfygate/prompts"
)

// startFleetGate starts comfygate with a running catalogue in front of
// sims and waits until every instance's catalogue is read.
func startFleetGate(t testing.TB, ss []*comfysim.Server, mod func(*config.Config), m *metrics.Metrics) (*gate, *catalogue.Store) {
	t.Helper()
	var cat *catalogue.Store
	g := startGateMetrics(t, addrsOf(ss), mod, m, func(o *Options) {
		cat = catalogue.New(o.Pool, time.Minute, nil)
		o.Catalogue = cat
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); cat.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for _, inst := range g.pool.Instances() {
		testkit.Eventually(t, "catalogue of "+inst.Name, func() bool { return cat.Status(inst).Known })
	}
	return g, cat
}

// upscalePrompt loads model (an upscale model file) and runs it on an
// empty image; extra nodes are added as given.
func upscalePrompt(model string, extra map[string]any) map[string]any {
	g := map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 4, "height": 4, "batch_size": 1, "color": 0}},
		"2": map[string]any{"class_type": "UpscaleModelLoader", "inputs": map[string]any{"model_name": model}},
		"3": map[string]any{"class_type": "ImageUpscaleWithModel", "inputs": map[string]any{"upscale_model": []any{"2", 0}, "image": []any{"1", 0}}},
		"4": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"3", 0}, "filename_prefix": "up"}},
	}
	for k, v := range extra {
		g[k] = v
	}
	return g
}

var rembgNode = map[string]any{"class_type": comfysim.RembgClass, "inputs": map[string]any{
	"images": []any{"1", 0}, "transparency": true, "model": "u2net", "post_processing": false, "only_mask": false,
	"alpha_matting": false, "alpha_matting_foreground_threshold": 240, "alpha_matting_background_threshold": 10,
	"alpha_matting_erode_size": 10, "background_color": "none"}}

// allNodesBut lists comfysim's node classes without the given ones.
func allNodesBut(t *testing.T, without ...string) []string {
	t.Helper()
	s := testkit.Sim(t, comfysim.Options{})
	status, _, body := gateDo(t, "GET", s.URL()+"/object_info", nil, nil)
	if status != 200 {
		t.Fatalf("object_info = %d", status)
	}
	var info map[string]json.RawMessage
	if err := json.Unmarshal(body, &info); err != nil {
		t.Fatal(err)
	}
	var out []string
	for k := range info {
		if !slices.Contains(without, k) {
			out = append(out, k)
		}
	}
	return out
}

func promptInstance(t testing.TB, g *gate, id string) string {
	t.Helper()
	p, ok := g.prompts.Prompt(id)
	if !ok {
		t.Fatalf("prompt %s not in the table", id)
	}
	return p.Instance().Name
}

// TestCatalogueAwareRouting: instances with different node packs and
// models; every prompt goes only to an instance that has what it names,
// the instances never refuse one, and a prompt no instance can run gets
// 400 in ComfyUI's error shape naming what is missing where.
func TestCatalogueAwareRouting(t *testing.T) {
	t.Parallel()
	noRembg := allNodesBut(t, comfysim.RembgClass)
	ss := []*comfysim.Server{
		// i0: no background-removal pack, model a only.
		testkit.Sim(t, comfysim.Options{Delay: 0, Nodes: noRembg, Models: map[string][]string{"upscale_models": {"a_x2.pth"}}}),
		// i1: every node, model b only.
		testkit.Sim(t, comfysim.Options{Delay: 0, Models: map[string][]string{"upscale_models": {"b_x2.pth"}}}),
	}
	m := metrics.New("test")
	g, _ := startFleetGate(t, ss, nil, m)

	type want struct {
		desc   string
		prompt map[string]any
		inst   string
	}
	cases := []want{
		{"model a runs where a is", upscalePrompt("a_x2.pth", nil), "i0"},
		{"model b runs where b is", upscalePrompt("b_x2.pth", nil), "i1"},
		{"a custom node runs where its pack is", map[string]any{
			"1": emptyImagePrompt(1, "x")["1"], "5": rembgNode,
			"6": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"5", 0}, "filename_prefix": "rb"}},
		}, "i1"},
	}
	var wg sync.WaitGroup
	for _, c := range cases {
		for range 4 {
			id := submit(t, g, map[string]any{"prompt": c.prompt})
			if got := promptInstance(t, g, id); got != c.inst {
				t.Errorf("%s: prompt went to %s, want %s", c.desc, got, c.inst)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if e := waitHistory(t, g, "", id); e.Status.StatusStr != "success" {
					t.Errorf("%s: prompt %s ended %q", c.desc, id, e.Status.StatusStr)
				}
			}()
		}
	}
	wg.Wait()
	// Prompts any instance can run still spread.
	seen := map[string]bool{}
	for range 4 {
		seen[promptInstance(t, g, submit(t, g, map[string]any{"prompt": emptyImagePrompt(3, "any")}))] = true
	}
	if len(seen) != 2 {
		t.Errorf("prompts any instance can run went to %v, want both instances", seen)
	}

	type errAnswer struct {
		Error struct {
			Type, Message, Details string
		} `json:"error"`
		NodeErrors map[string]struct {
			ClassType string `json:"class_type"`
			Errors    []struct {
				Type string `json:"type"`
			} `json:"errors"`
		} `json:"node_errors"`
	}
	refused := []struct {
		desc            string
		prompt          map[string]any
		inMessage       []string
		inDetails       []string
		nodeErrorsAtKey string
	}{
		{"model a with the pack only i1 has", upscalePrompt("a_x2.pth", map[string]any{"5": rembgNode}),
			[]string{"no single instance"},
			[]string{`i0 lacks node class "` + comfysim.RembgClass + `" (node #5)`, "i1 lacks model upscale_models/a_x2.pth (node #2 model_name)"}, ""},
		{"a model no instance has", upscalePrompt("nowhere_x2.pth", nil),
			[]string{"no instance has model upscale_models/nowhere_x2.pth"}, []string{"i0 lacks", "i1 lacks"}, "2"},
		{"a node class no instance has", map[string]any{"1": map[string]any{"class_type": "FluxSampler", "inputs": map[string]any{}}},
			[]string{`no instance has node class "FluxSampler" (node #1)`}, nil, ""},
	}
	for _, c := range refused {
		status, body := postJSON(t, g.base+"/prompt", nil, map[string]any{"prompt": c.prompt}, nil)
		if status != 400 {
			t.Errorf("%s: status %d %s, want 400", c.desc, status, body)
			continue
		}
		var a errAnswer
		if err := json.Unmarshal(body, &a); err != nil {
			t.Fatalf("%s: %s: %v", c.desc, body, err)
		}
		if a.Error.Type != "prompt_no_instance" {
			t.Errorf("%s: error type %q", c.desc, a.Error.Type)
		}
		for _, w := range c.inMessage {
			if !strings.Contains(a.Error.Message, w) {
				t.Errorf("%s: message %q lacks %q", c.desc, a.Error.Message, w)
			}
		}
		for _, w := range c.inDetails {
			if !strings.Contains(a.Error.Details, w) {
				t.Errorf("%s: details %q lack %q", c.desc, a.Error.Details, w)
			}
		}
		if c.nodeErrorsAtKey != "" {
			ne, ok := a.NodeErrors[c.nodeErrorsAtKey]
			if !ok || ne.ClassType != "UpscaleModelLoader" || len(ne.Errors) != 1 || ne.Errors[0].Type != "value_not_in_list" {
				t.Errorf("%s: node_errors %+v, want value_not_in_list at node %s", c.desc, a.NodeErrors, c.nodeErrorsAtKey)
			}
		}
	}
	if n := counterValue(t, m, "comfygate_prompts_unrunnable_total", nil); n != float64(len(refused)) {
		t.Errorf("comfygate_prompts_unrunnable_total = %v, want %d", n, len(refused))
	}
	// No instance ever refused or failed a prompt: every prompt it ran succeeded.
	for k, s := range ss {
		for id, n := range s.Runs() {
			if n != 1 {
				t.Errorf("sim %d ran %s %d times", k, id, n)
			}
		}
	}
}

// TestCatalogueUnion: /object_info and /models through comfygate list
// every node class and model the fleet has, with the combo of a model
// input the union of the instances' lists.
func TestCatalogueUnion(t *testing.T) {
	t.Parallel()
	noRembg := allNodesBut(t, comfysim.RembgClass)
	ss := []*comfysim.Server{
		testkit.Sim(t, comfysim.Options{Nodes: noRembg, Models: map[string][]string{"upscale_models": {"a_x2.pth"}, "checkpoints": {"sd15.safetensors"}}}),
		testkit.Sim(t, comfysim.Options{Models: map[string][]string{"upscale_models": {"b_x2.pth", "a_x2.pth"}}}),
	}
	g, _ := startFleetGate(t, ss, nil, nil)

	status, _, body := gateDo(t, "GET", g.base+"/object_info", nil, nil)
	if status != 200 {
		t.Fatalf("object_info = %d", status)
	}
	var info map[string]struct {
		Input struct {
			Required map[string][]json.RawMessage `json:"required"`
		} `json:"input"`
	}
	if err := json.Unmarshal(body, &info); err != nil {
		t.Fatal(err)
	}
	if _, ok := info[comfysim.RembgClass]; !ok {
		t.Errorf("object_info lacks %q, which i1 has", comfysim.RembgClass)
	}
	var opts []string
	if spec := info["UpscaleModelLoader"].Input.Required["model_name"]; len(spec) > 0 {
		_ = json.Unmarshal(spec[0], &opts)
	}
	if want := []string{"a_x2.pth", "b_x2.pth"}; !slices.Equal(opts, want) {
		t.Errorf("UpscaleModelLoader model_name options = %v, want %v (i0's first, then i1's new ones)", opts, want)
	}
	for _, api := range []string{"", "/api"} {
		status, _, body = gateDo(t, "GET", g.base+api+"/object_info/"+strings.ReplaceAll(comfysim.RembgClass, " ", "%20"), nil, nil)
		if status != 200 || !strings.Contains(string(body), `"`+comfysim.RembgClass+`"`) {
			t.Errorf("%s/object_info/{rembg} = %d %.100s", api, status, body)
		}
	}
	status, _, body = gateDo(t, "GET", g.base+"/object_info/NoSuchNode", nil, nil)
	if status != 200 || string(body) != "{}" {
		t.Errorf("object_info/NoSuchNode = %d %s, want 200 {}", status, body)
	}
	status, _, body = gateDo(t, "GET", g.base+"/models/upscale_models", nil, nil)
	var files []string
	_ = json.Unmarshal(body, &files)
	if status != 200 || !slices.Equal(files, []string{"a_x2.pth", "b_x2.pth"}) {
		t.Errorf("models/upscale_models = %d %s, want both files once, sorted", status, body)
	}
	status, _, body = gateDo(t, "GET", g.base+"/models/checkpoints", nil, nil)
	if status != 200 || string(body) != `["sd15.safetensors"]` {
		t.Errorf("models/checkpoints = %d %s", status, body)
	}
	status, _, body = gateDo(t, "GET", g.base+"/models", nil, nil)
	if status != 200 || !strings.Contains(string(body), `"upscale_models"`) {
		t.Errorf("models = %d %s", status, body)
	}
}

// TestPoolHeaderAndLabels: X-Comfygate-Pool sends a prompt only to
// instances carrying the labels; labels no instance has get 400.
func TestPoolHeaderAndLabels(t *testing.T) {
	t.Parallel()
	ss := sims(t, 3, comfysim.Options{Delay: 0})
	g, _ := startFleetGate(t, ss, func(c *config.Config) {
		c.Instances[1].Labels = map[string]string{"pool": "flux", "gpu": "a100"}
		c.Instances[2].Labels = map[string]string{"pool": "flux", "gpu": "l4"}
	}, nil)
	send := func(hdr string) (int, string) {
		h := http.Header{}
		h.Set("X-Comfygate-Pool", hdr)
		var a promptAnswer
		status, body := postJSON(t, g.base+"/prompt", h, map[string]any{"prompt": emptyImagePrompt(1, "p")}, &a)
		if status != 200 {
			return status, string(body)
		}
		return status, promptInstance(t, g, a.PromptID)
	}
	for _, c := range []struct {
		hdr  string
		want []string
	}{
		{"flux", []string{"i1", "i2"}},
		{"pool=flux,gpu=a100", []string{"i1"}},
		{" gpu = l4 ", []string{"i2"}},
	} {
		for range 4 {
			status, got := send(c.hdr)
			if status != 200 || !slices.Contains(c.want, got) {
				t.Errorf("X-Comfygate-Pool %q: %d %s, want one of %v", c.hdr, status, got, c.want)
			}
		}
	}
	for _, bad := range []string{"pool=sdxl", "gpu=", "=x"} {
		if status, body := send(bad); status != 400 || !strings.Contains(body, "error") {
			t.Errorf("X-Comfygate-Pool %q = %d %s, want 400", bad, status, body)
		}
	}
}

// TestDrainAndUndrain: a drained instance finishes what it has, gets
// nothing new, shows it in /health, /stats and metrics, and takes work
// again after undrain; clients see no error.
func TestDrainAndUndrain(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{Delay: 0})
	m := metrics.New("test")
	// i0's own queue is what this looks at: an idle i1 would take its
	// waiting prompts before the drain (routing.move_pending).
	g, _ := startFleetGate(t, ss, func(c *config.Config) { c.Routing.MovePending = false }, m)

	// Hold i0's queue so its prompts are pending when it is drained.
	ss[0].SetPaused(true)
	var onI0 []string
	for len(onI0) < 2 {
		id := submit(t, g, map[string]any{"prompt": emptyImagePrompt(2, "d")})
		if promptInstance(t, g, id) == "i0" {
			onI0 = append(onI0, id)
		}
	}
	status, body := postJSON(t, g.base+"/admin/instances/i0/drain", nil, map[string]any{}, nil)
	var da drainAnswer
	if err := json.Unmarshal(body, &da); status != 200 || err != nil || !da.Draining || da.Drained {
		t.Fatalf("drain = %d %s, want draining and not yet drained", status, body)
	}
	for range 6 {
		if got := promptInstance(t, g, submit(t, g, map[string]any{"prompt": emptyImagePrompt(3, "d")})); got != "i1" {
			t.Fatalf("a prompt went to drained i0")
		}
	}
	health := func() map[string]healthInstance {
		_, _, b := gateDo(t, "GET", g.base+"/health", nil, nil)
		var h healthBody
		if err := json.Unmarshal(b, &h); err != nil {
			t.Fatal(err)
		}
		out := map[string]healthInstance{}
		for _, i := range h.Instances {
			out[i.Name] = i
		}
		return out
	}
	if h := health()["i0"]; !h.Draining || h.Drained {
		t.Errorf("/health i0 = %+v, want draining, not drained", h)
	}
	if m.Stats().InstanceStats["i0"].Draining != true {
		t.Errorf("/stats i0 not draining")
	}
	if v := gaugeValue(t, m, "comfygate_upstream_draining", map[string]string{"upstream": "i0"}); v != 1 {
		t.Errorf("comfygate_upstream_draining{i0} = %v", v)
	}
	// Its queue finishes there, once each, and then it is drained.
	ss[0].SetPaused(false)
	for _, id := range onI0 {
		if e := waitHistory(t, g, "", id); e.Status.StatusStr != "success" {
			t.Errorf("drained instance's prompt %s ended %q", id, e.Status.StatusStr)
		}
		if p, _ := g.prompts.Prompt(id); p.Attempts() != 1 || p.Instance().Name != "i0" {
			t.Errorf("prompt %s moved (attempts %d, on %s)", id, p.Attempts(), p.Instance().Name)
		}
	}
	testkit.Eventually(t, "i0 drained", func() bool { return health()["i0"].Drained })

	if status, body := postJSON(t, g.base+"/admin/instances/i0/drain?move=1", nil, map[string]any{}, nil); status != 501 {
		t.Errorf("drain?move=1 = %d %s, want 501", status, body)
	}
	if status, _ := postJSON(t, g.base+"/admin/instances/nope/drain", nil, map[string]any{}, nil); status != 404 {
		t.Errorf("drain of an unknown instance = %d, want 404", status)
	}
	if status, _, _ := gateDo(t, "GET", g.base+"/admin/instances/i0/drain", nil, nil); status != 405 {
		t.Errorf("GET drain = %d, want 405", status)
	}

	if status, body := postJSON(t, g.base+"/admin/instances/i0/undrain", nil, map[string]any{}, nil); status != 200 {
		t.Fatalf("undrain = %d %s", status, body)
	}
	got := map[string]bool{}
	for range 4 {
		got[promptInstance(t, g, submit(t, g, map[string]any{"prompt": emptyImagePrompt(4, "u")}))] = true
	}
	if !got["i0"] {
		t.Errorf("after undrain prompts went to %v only", got)
	}
	if h := health()["i0"]; h.Draining {
		t.Errorf("/health i0 after undrain = %+v", h)
	}
}

// TestModelAffinity: a prompt goes to the instance that last ran its
// models while that one is not busier than the margin allows.
func TestModelAffinity(t *testing.T) {
	t.Parallel()
	models := map[string][]string{"upscale_models": {"a_x2.pth", "b_x2.pth"}}
	ss := sims(t, 2, comfysim.Options{Delay: 0, Models: models})
	m := metrics.New("test")
	g, _ := startFleetGate(t, ss, func(c *config.Config) { c.Routing.AffinityMargin = 1 }, m)
	settle := func(id string) {
		t.Helper()
		p, _ := g.prompts.Prompt(id)
		testkit.Eventually(t, "prompt "+id+" done and its instance idle", func() bool {
			return p.State() == prompts.PromptDone && p.Instance().Workload().Total() == 0
		})
	}
	id := submit(t, g, map[string]any{"prompt": upscalePrompt("a_x2.pth", nil)})
	first := promptInstance(t, g, id)
	settle(id)
	for k := range 5 {
		id := submit(t, g, map[string]any{"prompt": upscalePrompt("a_x2.pth", nil)})
		settle(id)
		if got := promptInstance(t, g, id); got != first {
			t.Fatalf("prompt %d with the same model went to %s, not %s which ran it", k, got, first)
		}
	}
	if v := counterValue(t, m, "comfygate_affinity_decisions_total", map[string]string{"result": "hit"}); v < 5 {
		t.Errorf("affinity hits = %v, want at least 5", v)
	}
}

// metricValue returns the value of the series of name whose labels
// include want (counters and gauges), 0 when there is none.
func metricValue(t *testing.T, m *metrics.Metrics, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, s := range mf.GetMetric() {
			for k, v := range want {
				found := false
				for _, lp := range s.GetLabel() {
					found = found || (lp.GetName() == k && lp.GetValue() == v)
				}
				if !found {
					continue next
				}
			}
			if c := s.GetCounter(); c != nil {
				return c.GetValue()
			}
			return s.GetGauge().GetValue()
		}
	}
	return 0
}

func counterValue(t *testing.T, m *metrics.Metrics, name string, want map[string]string) float64 {
	t.Helper()
	return metricValue(t, m, name, want)
}

func gaugeValue(t *testing.T, m *metrics.Metrics, name string, want map[string]string) float64 {
	t.Helper()
	return metricValue(t, m, name, want)
}

// TestAdminRoutesNeedTheAdminKey: with keys on, drain and reload need an
// admin key; any other key gets 403 and the instance stays in rotation.
func TestAdminRoutesNeedTheAdminKey(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{Delay: 0})
	g := startGate(t, addrsOf(ss), withKeys)
	for _, key := range []string{keyA, keyStats} {
		for _, path := range []string{"/admin/instances/i0/drain", "/admin/reload"} {
			if status, body := postJSON(t, g.base+path, bearer(key), map[string]any{}, nil); status != 403 {
				t.Errorf("%s with a non-admin key = %d %s, want 403", path, status, body)
			}
		}
	}
	if g.pool.Instance("i0").State().Held() {
		t.Fatal("a non-admin key drained i0")
	}
	if status, body := postJSON(t, g.base+"/admin/instances/i0/drain", bearer(keyAdmin), map[string]any{}, nil); status != 200 {
		t.Fatalf("drain with the admin key = %d %s", status, body)
	}
	if !g.pool.Instance("i0").State().Held() {
		t.Fatal("the admin key's drain did not drain i0")
	}
}
