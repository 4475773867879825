package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/internal/testkit/ready"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

// BenchmarkWSEventLatency measures the time from an instance emitting an
// event (comfysim's BroadcastCustom, as a custom node's send_sync) to a
// client's socket receiving it: "direct" with the client on the instance's
// /ws, "comfygate" with the client on comfygate's /ws (instance socket ->
// upstream reader -> hub -> client writer). The difference of the two is
// the latency comfygate adds per event. Reported: p50-µs and p99-µs.
//
//	go test -run '^$' -bench BenchmarkWSEventLatency ./proxy/
func BenchmarkWSEventLatency(b *testing.B) {
	b.Run("direct", func(b *testing.B) {
		sim := testkit.Sim(b, comfysim.Options{})
		benchEventLatency(b, sim, "ws://"+sim.Addr()+"/ws?clientId=bench-direct")
	})
	b.Run("comfygate", func(b *testing.B) {
		sim := testkit.Sim(b, comfysim.Options{})
		base := startBenchBridge(b, sim.Addr())
		benchEventLatency(b, sim, base+"/ws?clientId=bench-gate")
	})
}

// startBenchBridge runs comfygate's WebSocket bridge (pool + hub) in front
// of one instance and returns its ws:// base.
func startBenchBridge(b *testing.B, addr string) string {
	b.Helper()
	cfg := config.Default()
	cfg.Instances = []config.Instance{{Name: "sim", Address: addr}}
	gw := testkit.Start(b, testkit.GatewayOptions{Base: cfg},
		testkit.Wiring[*upstream.Pool, *prompts.Table, testkit.NoPart, hubServer]{
			Pool:    upstream.New,
			Prompts: prompts.New,
			Server: func(g *testkit.Gateway[*upstream.Pool, *prompts.Table, testkit.NoPart, hubServer]) (hubServer, error) {
				h := newHub(g.Config, g.Pool(), nil, nil)
				g.Prompts().SetListener(h)
				return hubServer{h, &fasthttp.Server{Handler: h.ServeWS, KeepHijackedConns: true}}, nil
			},
			Instances: ready.States,
		})
	return "ws://" + gw.Addr
}

// hubServer serves the hub alone on /ws.
type hubServer struct {
	h *Hub
	*fasthttp.Server
}

// Shutdown closes the hub's sockets, then the server.
func (s hubServer) Shutdown(ctx context.Context) error {
	s.h.Close()
	return s.ShutdownWithContext(ctx)
}

func benchEventLatency(b *testing.B, sim *comfysim.Server, url string) {
	conn, resp, err := (&websocket.Dialer{HandshakeTimeout: 5 * time.Second}).Dial(url, nil)
	if err != nil {
		b.Fatal(err)
	}
	_ = resp.Body.Close()
	defer conn.Close()
	if _, _, err := conn.ReadMessage(); err != nil { // the first status
		b.Fatal(err)
	}
	lats := make([]time.Duration, 0, b.N)
	want := []byte(`"bench.tick"`)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		sim.BroadcastCustom("bench.tick", map[string]any{"seq": i})
		for {
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, data, err := conn.ReadMessage()
			if err != nil {
				b.Fatal(err)
			}
			if !bytes.Contains(data, want) {
				continue // status and other broadcasts
			}
			var m struct {
				Data struct {
					Seq int `json:"seq"`
				} `json:"data"`
			}
			if err := json.Unmarshal(data, &m); err != nil {
				b.Fatal(err)
			}
			if m.Data.Seq == i {
				break
			}
		}
		lats = append(lats, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lats)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	b.ReportMetric(us(lats[len(lats)/2]), "p50-µs")
	b.ReportMetric(us(lats[(len(lats)*99)/100]), "p99-µs")
}
