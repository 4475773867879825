package jobs

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	sharedstate "github.com/comfygate/comfygate/state"
)

// TestIdempotencyKeysAcrossReplicas: with state.url two services (two
// replicas) share their Idempotency-Keys through a real Redis: the second
// one does not make the job again, and refuses the key with another body;
// in memory each process has its own.
func TestIdempotencyKeysAcrossReplicas(t *testing.T) {
	t.Parallel()
	url := testkit.Redis(t)
	open := func() *sharedstate.Store {
		s, err := sharedstate.Open(context.Background(), config.State{URL: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	body, _ := json.Marshal(map[string]any{"image_base64": testPNG(t, 4, 4)})
	other, _ := json.Marshal(map[string]any{"image_base64": testPNG(t, 5, 4)})
	submit := func(s *Service, owner string, body []byte) (int, acceptedView, string) {
		t.Helper()
		_, code, h, resp := serveAs(t, s, Request{Owner: owner, Scope: owner}, "POST", "/api/upscale-image", "application/json", body, "Idempotency-Key", "order-17")
		var a acceptedView
		_ = json.Unmarshal(resp, &a)
		return code, a, string(h.Peek("Idempotent-Replayed"))
	}
	// jobsOf counts the jobs a service knows other than except (which
	// another replica may show as its own, read from the shared record).
	jobsOf := func(s *Service, except string) int {
		s.eng.lock()
		defer s.eng.unlock()
		n := 0
		for id := range s.eng.jobs {
			if id != except {
				n++
			}
		}
		return n
	}

	f := newFake(t, 1)
	a := newSharedFakeService(t, f, open(), nil)
	b := newSharedFakeService(t, f, open(), nil)
	code, first, _ := submit(a, "alice", body)
	if code != 202 || first.JobID == "" {
		t.Fatalf("first submission: %d %+v", code, first)
	}
	code, again, _ := submit(b, "alice", body)
	if code/100 != 2 || again.JobID != first.JobID || again.Status != statusPending || jobsOf(b, first.JobID) != 0 {
		t.Fatalf("the same key on another replica: %d %+v, %d other jobs there; want job %s pending and none made", code, again, jobsOf(b, first.JobID), first.JobID)
	}
	if code, v, _ := submit(b, "alice", other); code != 422 {
		t.Fatalf("the key with another body on another replica: %d %+v", code, v)
	}
	// Another key's same header value is its own.
	if code, v, _ := submit(b, "bob", body); code != 202 || v.JobID == first.JobID {
		t.Fatalf("another owner: %d %+v", code, v)
	}
	// And on the first replica the replay is one.
	if code, v, replayed := submit(a, "alice", body); code != 202 || v.JobID != first.JobID || replayed != "true" {
		t.Fatalf("replay on the first replica: %d %+v replayed=%q", code, v, replayed)
	}

	// In memory (state.url ""), each process remembers its own keys.
	m1 := newSharedFakeService(t, f, nil, nil)
	m2 := newSharedFakeService(t, f, nil, nil)
	_, x, _ := submit(m1, "alice", body)
	if code, y, _ := submit(m2, "alice", body); code != 202 || y.JobID == x.JobID {
		t.Fatalf("memory stores shared a key: %d %+v", code, y)
	}
}
