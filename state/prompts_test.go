package state_test

import (
	"context"
	"testing"

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
