package upstream

import (
	"testing"
)

func TestSelectWeightsAndFilter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		desc    string
		weights []int
		work    []int64
		ok      func(*Instance) bool
		want    []int // successive picks (work unchanged between picks)
	}{
		{desc: "idle: the heavier instance first", weights: []int{1, 2}, work: []int64{0, 0}, want: []int{1, 1}},
		{desc: "weight 2 with 1 prompt ties weight 1 idle", weights: []int{1, 2}, work: []int64{0, 1}, want: []int{0, 1, 0, 1}},
		{desc: "weight 2 with 2 prompts loses to weight 1 idle", weights: []int{1, 2}, work: []int64{0, 2}, want: []int{0, 0}},
		{desc: "weight 3 takes 3x the work", weights: []int{1, 3}, work: []int64{1, 4}, want: []int{1}},
		{desc: "equal weights: least work", weights: []int{1, 1, 1}, work: []int64{2, 1, 3}, want: []int{1, 1}},
		{desc: "filter keeps only accepted instances", weights: []int{1, 1, 1}, work: []int64{0, 5, 9},
			ok: func(i *Instance) bool { return i.Name != "i0" }, want: []int{1, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			p, in := selectPool(t, len(tc.weights))
			for k := range in {
				in[k].Name = "i" + string(rune('0'+k))
				in[k].fleet.weight.Store(int32(tc.weights[k]))
				in[k].workload.inflight.Store(tc.work[k])
			}
			for n, w := range tc.want {
				got, err := p.SelectFor(tc.ok)
				if err != nil || got != in[w] {
					t.Fatalf("pick %d = %v (%v), want i%d", n, got, err, w)
				}
			}
		})
	}
	p, in := selectPool(t, 2)
	if _, err := p.SelectFor(func(*Instance) bool { return false }); err != ErrNoUpstream {
		t.Fatalf("no instance accepted: %v, want ErrNoUpstream", err)
	}
	// Drained by an operator: never picked; back after undrain.
	in[1].Name = "b"
	if _, err := p.Fleet().Drain("b"); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if got, _ := p.Selector().Select(); got == in[1] {
			t.Fatal("drained instance selected")
		}
	}
	if st := in[1].Status(); !st.Draining || !st.Drained || st.Removing {
		t.Fatalf("drained status = %+v", st)
	}
	if _, err := p.Fleet().Drain("nope"); err == nil {
		t.Fatal("drain of an unknown name succeeded")
	}
	if _, err := p.Fleet().Undrain("b"); err != nil {
		t.Fatal(err)
	}
	picked := map[*Instance]bool{}
	for range 4 {
		got, _ := p.Selector().Select()
		picked[got] = true
	}
	if !picked[in[1]] {
		t.Fatal("undrained instance never selected")
	}
}

func TestParseLabels(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want map[string]string
		bad  bool
	}{
		{in: "", want: nil},
		{in: "flux", want: map[string]string{"pool": "flux"}},
		{in: "gpu=a100, pool=flux", want: map[string]string{"gpu": "a100", "pool": "flux"}},
		{in: "gpu=", bad: true},
		{in: "=x", bad: true},
		{in: "a,,b", bad: true},
	} {
		got, err := ParseLabels(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && !mapsEqual(got, tc.want)) {
			t.Errorf("ParseLabels(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// FuzzParseLabels: any X-Comfygate-Pool header parses without panicking,
// and what it accepts has no empty names or values.
func FuzzParseLabels(f *testing.F) {
	for _, s := range []string{"flux", "gpu=a100,pool=flux", " a = b ", "=", ",,", "a=b=c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLabels(s)
		if err != nil {
			return
		}
		for k, v := range l {
			if k == "" || v == "" {
				t.Fatalf("ParseLabels(%q) = %v", s, l)
			}
		}
	})
}
