package upstream

import "testing"

func TestIDNamesTheMachine(t *testing.T) {
	t.Parallel()
	a := &Instance{Name: "gpu-1", Addr: "GPU-1:8188"}
	for _, tc := range []struct {
		desc string
		b    *Instance
		same bool
	}{
		{"another name, host case", &Instance{Name: "other", Addr: "gpu-1:8188"}, true},
		{"same name, another port", &Instance{Name: "gpu-1", Addr: "gpu-1:8189"}, false},
		{"same name, another host", &Instance{Name: "gpu-1", Addr: "gpu-2:8188"}, false},
	} {
		if got := a.ID() == tc.b.ID(); got != tc.same || SameMachine(a, tc.b) != tc.same {
			t.Errorf("%s: same ID %v, SameMachine %v; want %v", tc.desc, got, SameMachine(a, tc.b), tc.same)
		}
	}
	if len(a.ID()) != idLen {
		t.Errorf("ID %q: want %d hex digits", a.ID(), idLen)
	}
	insts := []*Instance{{Name: "x", Addr: "h:1"}, {Name: "y", Addr: "H:1"}}
	insts[0].state.draining.Store(true)
	if got := ByEndpoint(insts, "h:1"); got != insts[1] {
		t.Errorf("ByEndpoint = %v, want the one not leaving", got)
	}
	if ByEndpoint(insts, "h:2") != nil {
		t.Error("ByEndpoint found an instance at another endpoint")
	}
}
