package state_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/comfygate/comfygate/state"
)

// TestPromptIndex: in memory there is no shared index (the prompt table
// is the whole index); in Redis one replica's records, owners and file
// pins are another's to read, each key with a TTL of at most PromptTTL,
// and a pin with no endpoint forgets its file.
func TestPromptIndex(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, b := range backends(t) {
		a, other := b.replica(t), b.replica(t)
		if b.rdb == nil {
			if a.PromptIndex() != nil {
				t.Fatal("memory: a shared prompt index")
			}
			continue
		}
		w, r := a.PromptIndex(), other.PromptIndex()
		if _, _, ok, err := r.Prompt(ctx, "nobody's"); ok || err != nil {
			t.Fatalf("an id never recorded: ok %v err %v", ok, err)
		}
		// The owner first (a hash of only the owner routes nothing), then
		// the record, which keeps it.
		if err := w.SetPromptOwners(ctx, map[string]string{"p1": "key-a"}); err != nil {
			t.Fatal(err)
		}
		if _, owner, ok, err := r.Prompt(ctx, "p1"); ok || err != nil || owner != "key-a" {
			t.Fatalf("owner only: ok %v owner %q err %v", ok, owner, err)
		}
		rec := state.PromptRecord{ID: "p1", Endpoint: "127.0.0.1:8188", Instance: "gpu0", UpstreamID: "u1", Number: 7, Life: []byte(`{"Phase":3}`)}
		if err := w.PutPrompts(ctx, []state.PromptRecord{rec, {ID: "p2", Endpoint: "127.0.0.1:8189", Instance: "gpu1", Done: true}}); err != nil {
			t.Fatal(err)
		}
		got, owner, ok, err := r.Prompt(ctx, "p1")
		if !ok || err != nil || owner != "key-a" || got.Endpoint != rec.Endpoint || got.Instance != "gpu0" ||
			got.UpstreamID != "u1" || got.Number != 7 || got.Done || string(got.Life) != string(rec.Life) {
			t.Fatalf("p1: %+v owner %q ok %v err %v", got, owner, ok, err)
		}
		if got, owner, ok, _ := r.Prompt(ctx, "p2"); !ok || !got.Done || owner != "" {
			t.Fatalf("p2: %+v owner %q ok %v", got, owner, ok)
		}
		// It moved: the new instance and id replace the old.
		rec.Endpoint, rec.UpstreamID = "127.0.0.1:8189", "u2"
		if err := w.PutPrompts(ctx, []state.PromptRecord{rec}); err != nil {
			t.Fatal(err)
		}
		if got, owner, _, _ := r.Prompt(ctx, "p1"); got.Endpoint != "127.0.0.1:8189" || got.UpstreamID != "u2" || owner != "key-a" {
			t.Fatalf("moved p1: %+v owner %q", got, owner)
		}
		assertTTL(t, b.rdb, "prompt:", state.PromptTTL)

		if err := w.PinFiles(ctx, []state.FilePin{{File: "output\x00\x00a.png", Endpoint: "127.0.0.1:8188"}}); err != nil {
			t.Fatal(err)
		}
		if h, err := r.FileHolder(ctx, "output\x00\x00a.png"); h != "127.0.0.1:8188" || err != nil {
			t.Fatalf("file holder: %q %v", h, err)
		}
		assertTTL(t, b.rdb, "file:", state.PromptTTL)
		if err := w.PinFiles(ctx, []state.FilePin{{File: "output\x00\x00a.png"}}); err != nil {
			t.Fatal(err)
		}
		if h, err := r.FileHolder(ctx, "output\x00\x00a.png"); h != "" || err != nil {
			t.Fatalf("forgotten file: %q %v", h, err)
		}
	}
}

// TestFencedPromptRecords: a record fenced by a liveness lease is written
// while the lease holds its token and listed among its instance's live
// prompts; the holder of the instance's lease claims it once the
// liveness lease is gone, after which the old writer is refused even
// with its lease back under a new token, and a second claim fails. A
// done record leaves the live set and its body is dropped.
func TestFencedPromptRecords(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, b := range backends(t) {
		if b.rdb == nil {
			continue // no shared index in memory
		}
		a, other := b.replica(t), b.replica(t)
		la, lb := a.Leases(), other.Leases()
		ia, ib := a.PromptIndex(), other.PromptIndex()

		ta, ok, err := la.Acquire(ctx, "replica:a", "a", time.Hour)
		if err != nil || !ok {
			t.Fatalf("liveness of a: %v %v", ok, err)
		}
		rec := state.PromptRecord{ID: "fp1", Endpoint: "127.0.0.1:8188", Instance: "gpu0", UpstreamID: "u1",
			Life: []byte(`{"Phase":4}`), Guard: "replica:a", Token: ta, Body: []byte(`{"prompt":{}}`)}
		if err := ia.PutPrompts(ctx, []state.PromptRecord{rec}); err != nil {
			t.Fatal(err)
		}
		live, err := ib.LivePrompts(ctx, "gpu0")
		if err != nil || len(live) != 1 || live[0].Guard != "replica:a" || live[0].Token != ta || live[0].UpstreamID != "u1" {
			t.Fatalf("live prompts of gpu0: %+v %v", live, err)
		}
		if body, ok, err := ib.PromptBody(ctx, "fp1"); !ok || err != nil || string(body) != `{"prompt":{}}` {
			t.Fatalf("body: %q %v %v", body, ok, err)
		}
		// A stale token is refused, and nothing changes.
		stale := rec
		stale.Token, stale.UpstreamID = ta+100, "u-stale"
		if err := ia.PutPrompts(ctx, []state.PromptRecord{stale}); !errors.Is(err, state.ErrStaleToken) {
			t.Fatalf("a stale token's write: %v", err)
		}
		if got, _, _, _ := ib.Prompt(ctx, "fp1"); got.UpstreamID != "u1" {
			t.Fatalf("after a refused write the record says %q", got.UpstreamID)
		}

		// b holds gpu0's lease; a claim of a prompt whose guard holds is
		// for the caller to avoid, but a wrong instance token is refused.
		tb, ok, err := lb.Acquire(ctx, "gpu0", "b", time.Hour)
		if err != nil || !ok {
			t.Fatalf("lease of gpu0: %v %v", ok, err)
		}
		if ok, err := ib.Claim(ctx, live[0], "gpu0", "b", tb+1, "replica:b", 1); ok || err != nil {
			t.Fatalf("claim with a wrong instance token: %v %v", ok, err)
		}
		// a's liveness ends; b claims.
		if err := la.Release(ctx, "replica:a", "a", ta); err != nil {
			t.Fatal(err)
		}
		tokens, err := lb.Tokens(ctx, []string{"replica:a", "gpu0"})
		if err != nil || tokens["replica:a"] != 0 || tokens["gpu0"] != tb {
			t.Fatalf("tokens %v %v", tokens, err)
		}
		bt, _, _ := lb.Acquire(ctx, "replica:b", "b", time.Hour)
		if ok, err := ib.Claim(ctx, live[0], "gpu0", "b", tb, "replica:b", bt); !ok || err != nil {
			t.Fatalf("claim: %v %v", ok, err)
		}
		if ok, _ := ib.Claim(ctx, live[0], "gpu0", "b", tb, "replica:b", bt); ok {
			t.Fatal("a second claim with the old guard succeeded")
		}
		// a comes back under a new token: its record of fp1 is refused.
		ta2, _, _ := la.Acquire(ctx, "replica:a", "a", time.Hour)
		again := rec
		again.Token, again.UpstreamID = ta2, "u-late"
		if err := ia.PutPrompts(ctx, []state.PromptRecord{again}); !errors.Is(err, state.ErrStaleToken) {
			t.Fatalf("the old owner's write after a claim: %v", err)
		}
		// b's writes go through; done, it leaves the live set.
		mine := rec
		mine.Guard, mine.Token, mine.Done, mine.Body = "replica:b", bt, true, nil
		if err := ib.PutPrompts(ctx, []state.PromptRecord{mine}); err != nil {
			t.Fatal(err)
		}
		if live, err := ib.LivePrompts(ctx, "gpu0"); err != nil || len(live) != 0 {
			t.Fatalf("live prompts after the end: %+v %v", live, err)
		}
		if _, ok, _ := ib.PromptBody(ctx, "fp1"); ok {
			t.Error("the body outlived its prompt")
		}
		if n, err := la.Live(ctx, "a", time.Hour); err != nil || n != 1 {
			t.Errorf("replicas alive: %d %v", n, err)
		}
		if n, err := lb.Live(ctx, "b", time.Hour); err != nil || n != 2 {
			t.Errorf("replicas alive: %d %v", n, err)
		}
	}
}
