package proxy

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
	"github.com/valyala/fasthttp"
)

// maxProxiedGETAllocs bounds the heap allocations of one proxied GET
// /system_stats, client and minimal upstream included (they allocate
// nothing): fasthttp's streamed upstream answer (4: its body stream and
// the closures that release its connection), gobreaker's ticket (1) and
// the upstream.Answer (1) that streams the body to the client.
const maxProxiedGETAllocs = 6

// TestProxiedGETAllocs keeps the hot path's allocations counted: a GET
// through comfygate (routing, breaker, connection slot, keep-alive
// upstream connection, header copies, metrics, access log) allocates at
// most maxProxiedGETAllocs times, and opens no new upstream connection.
func TestProxiedGETAllocs(t *testing.T) {
	up := startMinimalUpstream(t)
	g := startGateMetrics(t, []string{up.addr}, func(c *config.Config) {
		// No health check or socket traffic while allocations are counted.
		c.HealthCheck.Interval = time.Hour
	}, metrics.New("test"), nil)
	c := &fasthttp.HostClient{Addr: g.addr, ReadTimeout: 10 * time.Second}
	for _, tc := range []struct {
		desc   string
		header map[string]string
	}{
		{desc: "bare"},
		{desc: "browser", header: map[string]string{
			// Connection is read for the headers it names. (An Origin
			// costs 3 more: originAllowed parses it with net/url.)
			"Connection": "keep-alive", "User-Agent": "Mozilla/5.0",
			"Accept": "application/json", "Accept-Language": "en-US,en;q=0.9", "Cookie": "theme=dark",
			"Sec-Fetch-Site": "same-origin", "Referer": "http://" + g.addr + "/",
		}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("/system_stats")
			req.Header.SetHost(g.addr)
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			var failed error
			get := func() {
				if err := c.Do(req, resp); err != nil {
					failed = err
					return
				}
				if resp.StatusCode() != fasthttp.StatusOK || !bytes.Equal(resp.Body(), minimalStats) {
					failed = fmt.Errorf("status %d, body %.80q", resp.StatusCode(), resp.Body())
				}
			}
			for range 20 { // warm the pools and the keep-alive connections
				get()
			}
			conns := up.accepted.Load()
			n := testing.AllocsPerRun(500, get)
			if failed != nil {
				t.Fatal(failed)
			}
			// One request at a time: the upstream connection of the
			// warm-up is reused for every one of them.
			if more := up.accepted.Load() - conns; more != 0 {
				t.Fatalf("%d new upstream connections for 500 requests, want keep-alive reuse", more)
			}
			t.Logf("%v allocations per proxied GET", n)
			if raceEnabled {
				return // sync.Pool drops objects at random under -race
			}
			if n > maxProxiedGETAllocs {
				t.Fatalf("a proxied GET allocates %v times, want at most %d", n, maxProxiedGETAllocs)
			}
		})
	}
}
