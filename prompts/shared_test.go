package prompts

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/state"
)

// countingIndex is a real Redis index that also keeps what was written.
type countingIndex struct {
	state.PromptIndex
	mu   sync.Mutex
	recs []state.PromptRecord
}

func (c *countingIndex) PutPrompts(ctx context.Context, recs []state.PromptRecord) error {
	c.mu.Lock()
	c.recs = append(c.recs, recs...)
	c.mu.Unlock()
	return c.PromptIndex.PutPrompts(ctx, recs)
}

func (c *countingIndex) of(id string) []state.PromptRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []state.PromptRecord
	for _, r := range c.recs {
		if r.ID == id {
			out = append(out, r)
		}
	}
	return out
}

// TestSharedIndexRecordsRoutingChanges: a prompt that sends many progress
// events is recorded at its routing changes only (sent, running, done),
// the last record naming its instance, its id there and its end, as
// another replica's table reads it; a file pin is shared and tells
// another replica's table which instance holds a file, without asking
// the instances (which would not find this one). Without a shared index
// nothing is looked up.
func TestSharedIndexRecordsRoutingChanges(t *testing.T) {
	t.Parallel()
	sim := testkit.Sim(t, comfysim.Options{Delay: 400 * time.Millisecond, Steps: 20})
	other := testkit.Sim(t, comfysim.Options{})
	p := newCorePool(t, coreConfig(sim.Addr(), other.Addr()), true)
	if _, ok := p.prompts.SharedPrompt(context.Background(), "x"); ok {
		t.Fatal("a shared lookup without a shared index")
	}
	st, err := state.Open(context.Background(), config.State{URL: testkit.Redis(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	idx := &countingIndex{PromptIndex: st.PromptIndex()}
	p.prompts.ShareIndex(idx)

	body := map[string]json.RawMessage{"prompt": json.RawMessage(`{
		"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 0}},
		"2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "RealESRGAN_x2plus.pth"}},
		"3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
		"4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "shared"}}}`)}
	sink := newRecSink()
	res, err := p.Submit(context.Background(), SubmitRequest{Body: body, PromptID: "shared-index-prompt", Sink: sink,
		Prefer: p.Instances()[0]})
	if err != nil || res.Prompt == nil {
		t.Fatalf("submit: %v %d %s", err, res.Status, res.Body)
	}
	pr := res.Prompt
	testkit.Eventually(t, "its end recorded", func() bool {
		recs := idx.of(pr.ID)
		return len(recs) > 0 && recs[len(recs)-1].Done
	})
	recs := idx.of(pr.ID)
	if len(recs) > 6 {
		t.Errorf("%d records for one prompt of 20 progress steps: %+v", len(recs), recs)
	}
	last := recs[len(recs)-1]
	if last.Endpoint != pr.Instance().Endpoint() || last.UpstreamID != pr.UpstreamID() || last.UpstreamID == pr.ID {
		t.Errorf("last record %+v; the prompt is at %s as %s", last, pr.Instance().Endpoint(), pr.UpstreamID())
	}

	// Another replica's table reads it.
	q := newCorePool(t, coreConfig(sim.Addr(), other.Addr()), true)
	q.prompts.ShareIndex(st.PromptIndex())
	sp, ok := q.prompts.SharedPrompt(context.Background(), pr.ID)
	if !ok || !sp.Done || sp.UpstreamID != pr.UpstreamID() || sp.Instance == nil || sp.Instance.Endpoint() != pr.Instance().Endpoint() {
		t.Fatalf("the other table reads %+v %v", sp, ok)
	}

	// A file pinned on the first table to the second instance.
	ref := FileRef{Filename: "both.png", Type: "output"}
	p.PinFile(ref, p.Instances()[1])
	testkit.Eventually(t, "the pin shared", func() bool {
		h, _ := st.PromptIndex().FileHolder(context.Background(), sharedFileName(normalizeRef(ref)))
		return h != ""
	})
	if got, ok := q.FileOwner(context.Background(), ref); !ok || got != q.Instances()[1] {
		t.Errorf("the other table's FileOwner: %v %v, want the second instance", got, ok)
	}
}
