package placement

import (
	"strings"
	"testing"

	"github.com/comfygate/comfygate/catalogue"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/upstream"
)

func testPool(t *testing.T) *upstream.Pool {
	t.Helper()
	cfg := config.Default()
	cfg.Instances = []config.Instance{
		{Name: "a", Address: "127.0.0.1:1", Labels: map[string]string{"gpu": "a100"}},
		{Name: "b", Address: "127.0.0.1:2", Labels: map[string]string{"gpu": "t4", "pool": "upscale"}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	pool, err := upstream.New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return pool
}

// TestPlaceOnLabels: without a catalogue a prompt may run on the
// instances carrying its labels; labels nobody carries are a refusal that
// names them.
func TestPlaceOnLabels(t *testing.T) {
	pool := testPool(t)
	a, b := pool.Instances()[0], pool.Instances()[1]
	p := New(pool, nil, 0, nil)

	d, refused := p.Place(Request{})
	if refused != nil || d.Eligible != nil || d.Prefer != nil {
		t.Fatalf("no labels: %+v %v, want anywhere", d, refused)
	}
	d, refused = p.Place(Request{Labels: map[string]string{"pool": "upscale"}})
	if refused != nil || d.Eligible == nil || d.Eligible(a) || !d.Eligible(b) {
		t.Fatalf("pool=upscale: %v, want b only", refused)
	}
	_, refused = p.Place(Request{Labels: map[string]string{"gpu": "h100", "pool": "x"}})
	if refused == nil || !refused.NoLabels {
		t.Fatalf("labels nobody carries: %v, want a refusal", refused)
	}
	if got, want := refused.Error(), "no instance can run it: no instance carries the labels gpu=h100,pool=x"; got != want {
		t.Errorf("refusal %q, want %q", got, want)
	}
}

// TestRefusalDetail: a catalogue's verdict is explained in one line, each
// instance with what it lacks.
func TestRefusalDetail(t *testing.T) {
	r := &Refusal{Labels: map[string]string{"gpu": "a100"}, Verdict: catalogue.Verdict{
		Nowhere: []string{`node class "X"`},
		Missing: []catalogue.InstanceMissing{{Instance: "a", Lacks: []string{"model m.pth"}}},
	}}
	got := r.Error()
	for _, want := range []string{"among those labelled gpu=a100", `no instance has node class "X"`, "a lacks model m.pth"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
}
