package prompts

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/testkit"
)

// BenchmarkSubmit is POST /prompt through the table to one fake instance
// that takes every prompt (it never runs them): the table's part of a
// submission (claim the id, pick, pin, send, settle) plus one loopback
// round trip. Parallel: submissions from many clients at once.
func BenchmarkSubmit(b *testing.B) {
	f := testkit.Mini(b, "0.3.65")
	p := newCorePool(b, promptsConfig(f.Addr()), true)
	inst := p.Instances()[0]
	inst.State().ForceHealthy(true)
	testkit.EventuallyWithin(b, 10*time.Second, "socket up", inst.State().SocketUp)
	body := map[string]json.RawMessage{"prompt": simPrompt("bench", false), "client_id": json.RawMessage(`"c"`)}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, err := p.Submit(context.Background(), SubmitRequest{Body: body, PromptID: newUUID(), ClientID: "c"})
			if err != nil || res.Status != 200 {
				b.Errorf("submit: %v %d %s", err, res.Status, res.Body)
				return
			}
		}
	})
}
