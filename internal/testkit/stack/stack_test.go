package stack

import (
	"io"
	"net/http"
	"testing"

	"github.com/comfygate/comfygate/internal/testkit"
)

// TestStartWithFakes: a stack in front of scripted fakes forwards to them,
// and Restart brings up a new gateway on the same address.
func TestStartWithFakes(t *testing.T) {
	t.Parallel()
	st := Start(t, Options{Instances: 1, Fakes: true})
	if len(st.Fakes) != 1 || len(st.Sims) != 0 {
		t.Fatalf("%d fakes and %d simulators, want 1 and 0", len(st.Fakes), len(st.Sims))
	}
	st.Fakes[0].Handle("/object_info", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"Fake": {}}`)
	})
	hc := &http.Client{Timeout: testkit.WaitBound}
	get := func() string {
		t.Helper()
		resp, err := hc.Get(st.URL + "/object_info")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /object_info through %s: %d %s", st, resp.StatusCode, b)
		}
		return string(b)
	}
	if got := get(); got != `{"Fake": {}}` {
		t.Fatalf("GET /object_info = %s, want the fake's answer", got)
	}
	if st.Jobs() != nil {
		t.Fatal("a job service without Options.Jobs")
	}
	before := st.Server()
	st.Restart()
	if st.Server() == before {
		t.Fatal("Restart kept the server")
	}
	get()
	n := 0
	for _, r := range st.Fakes[0].Requests() {
		if r.RequestURI == "/object_info" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("the fake saw %d GET /object_info, want 2", n)
	}
}
