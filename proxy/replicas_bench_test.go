package proxy

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/state"
	"github.com/fasthttp/websocket"
)

// BenchmarkEventLatencyAcrossReplicas measures one prompt event from the
// hub that receives it to a client socket reading it: on the same replica
// (local), and from replica A to a socket on replica B through a real
// redis-server on loopback (replica). It reports the median and the 99th
// percentile of the iterations.
func BenchmarkEventLatencyAcrossReplicas(b *testing.B) {
	url := testkit.Redis(b)
	sim := testkit.Sim(b, comfysim.Options{})
	replica := func() *gate {
		st, err := state.Open(context.Background(), config.State{URL: url})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = st.Close() })
		return startGateWith(b, []string{sim.Addr()}, nil, func(o *Options) { o.State = st })
	}
	ga, gb := replica(), replica()
	for _, bc := range []struct {
		name     string
		from, to *gate
	}{{"local", ga, ga}, {"replica", ga, gb}} {
		b.Run(bc.name, func(b *testing.B) {
			id := "bench-" + bc.name
			conn, _, err := websocket.DefaultDialer.Dial(bc.to.wsURL(id), nil)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			if _, _, err := conn.ReadMessage(); err != nil { // status
				b.Fatal(err)
			}
			p := &prompts.Prompt{ID: "p-" + bc.name, ClientID: id}
			ev := textEvent("progress", p.ID, `, "value": 1, "max": 1, "node": "1"`)
			// The socket's catch-up on its replica is done once a first
			// event arrives.
			bc.from.srv.hub.PromptEvent(p, ev)
			_ = conn.SetReadDeadline(time.Now().Add(testkit.WaitBound))
			if _, _, err := conn.ReadMessage(); err != nil {
				b.Fatal(err)
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				bc.from.srv.hub.PromptEvent(p, ev)
				if _, _, err := conn.ReadMessage(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "µs-median")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "µs-p99")
		})
	}
}
