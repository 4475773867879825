package proxy

// The fleet dashboard: a page at /dashboard fed by a server-sent event
// stream of the /stats document at /dashboard/events. Both are served
// wherever /stats is (the client listener, or metrics_listen when set)
// and admitted like it: with keys on, a metrics or an admin key.

import (
	"bufio"
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/comfygate/comfygate/catalogue"
	"github.com/comfygate/comfygate/jobs"
	"github.com/comfygate/comfygate/metrics"
	"github.com/valyala/fasthttp"
)

// dashboard serves the fleet page and its event stream, and builds the
// /stats document both show.
type dashboard struct {
	pool    *upstream.Pool
	prompts *prompts.Table
	jobs    JobRoutes        // may be nil
	m       *metrics.Metrics // may be nil
	cat     *catalogue.Store // may be nil

	dashStreams atomic.Int32  // dashboard event streams open
	dashMu      sync.Mutex    // guards dashCh, dashDoc
	dashCh      chan struct{} // closed (and replaced) by pokeDashboard
	dashDoc     *dashDoc      // the streams' last document (dashboardDoc)
}

const (
	routeDashboard       = "/dashboard"
	routeDashboardEvents = "/dashboard/events"

	// maxDashboardStreams caps the event streams open at once over the
	// process: each one builds a /stats document every second.
	maxDashboardStreams = 16
	// dashboardStreamLife ends a stream after this long; EventSource
	// reconnects by itself (retry below), so a forgotten tab holds a
	// connection for a bounded time and each stream re-checks its key.
	dashboardStreamLife = 10 * time.Minute
	// dashboardMinGap spaces documents sent on an availability change
	// (drain, health, breaker) so that a flapping instance cannot make
	// the stream send faster than this.
	dashboardMinGap = 100 * time.Millisecond
	// dashboardJobs is how many waiting and active jobs a document lists.
	dashboardJobs = 20
	// dashboardDocAge is how long streams share one built document (unless
	// the fleet changed since): the cost of the streams does not grow with
	// their number.
	dashboardDocAge = 250 * time.Millisecond
)

// The page's source is three plain files; the page is served as one
// document (style and script inlined once at start-up) so that a key
// presented as ?token= on /dashboard is all the page needs: no second
// request without it.
//
//go:embed dashboard
var dashboardFS embed.FS

var dashboardPage = func() []byte {
	read := func(name string) string {
		b, err := dashboardFS.ReadFile("dashboard/" + name)
		if err != nil {
			panic("proxy: embedded dashboard file missing: " + name)
		}
		return string(b)
	}
	page := read("index.html")
	page = strings.Replace(page, `<link rel="stylesheet" href="dashboard.css">`, "<style>\n"+read("dashboard.css")+"</style>", 1)
	page = strings.Replace(page, `<script src="dashboard.js"></script>`, "<script>\n"+read("dashboard.js")+"</script>", 1)
	return []byte(page)
}()

// isDashboard reports the dashboard's paths: /dashboard and below.
func isDashboard(raw []byte) bool {
	return string(raw) == routeDashboard || bytes.HasPrefix(raw, []byte(routeDashboard+"/"))
}

// statsView is the /stats document: the metrics' view plus what the
// process knows of each instance (labels, drain, running prompt, affinity,
// catalogue) and of the job facade's line.
type statsView struct {
	metrics.Stats
	Timestamp string `json:"timestamp"` // RFC 3339, UTC, milliseconds
	// InstanceStats shadows the metrics' map with one that adds the
	// instance's state; every metrics field keeps its name.
	InstanceStats map[string]instanceView `json:"instanceStats"`
	// Instances names them in configuration order.
	Instances []string   `json:"instances"`
	JobLine   *jobs.Line `json:"jobLine,omitempty"`
}

// instanceView is one instance in statsView.
type instanceView struct {
	metrics.InstanceStats
	Healthy bool `json:"healthy"`
	// Drained: draining and nothing left to finish (safe to stop).
	Drained  bool              `json:"drained"`
	Removing bool              `json:"removing"`
	Labels   map[string]string `json:"labels,omitempty"`
	Weight   int               `json:"weight"`
	Warmup   string            `json:"warmup,omitempty"`
	Version  string            `json:"comfyVersion,omitempty"`
	Running  *runningView      `json:"running,omitempty"`
	// Affinity lists the model files of the last prompt sent to it, which
	// model affinity prefers it for.
	Affinity  []string          `json:"affinity,omitempty"`
	Catalogue *catalogue.Status `json:"catalogue,omitempty"`
}

// runningView is the prompt an instance is executing.
type runningView struct {
	PromptID string  `json:"promptId,omitempty"`
	Seconds  float64 `json:"seconds"` // since it started
	Node     string  `json:"node,omitempty"`
	Value    float64 `json:"value"` // the node's last progress
	Max      float64 `json:"max"`
}

// dashboardViewer is what the page may offer its reader: the first event
// of a stream (event: viewer).
type dashboardViewer struct {
	// Admin: the drain and undrain buttons work (keys off, or an admin key).
	Admin bool   `json:"admin"`
	Note  string `json:"note,omitempty"` // why not, when not
}

// pokeDashboard makes every dashboard stream send its next document now
// (after a drain or an undrain: not every change of the fleet wakes the
// pool's availability watch, a drain makes nothing newly available).
func (s *dashboard) pokeDashboard() {
	s.dashMu.Lock()
	if s.dashCh != nil {
		close(s.dashCh)
		s.dashCh = nil
	}
	s.dashMu.Unlock()
}

// dashDoc is a /stats document built for the streams, and the watches
// that were open when it was built (closed: the document is out of date).
type dashDoc struct {
	body        []byte
	at          time.Time
	avail, poke <-chan struct{}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// dashboardDoc returns the /stats document for the streams: the last one
// built, when it is younger than dashboardDocAge and no drain or
// availability change came since, else a new one. It also returns the
// watches a stream waits on for the next change.
func (s *dashboard) dashboardDoc() (body []byte, avail, poke <-chan struct{}) {
	s.dashMu.Lock()
	defer s.dashMu.Unlock()
	if d := s.dashDoc; d != nil && time.Since(d.at) < dashboardDocAge && !closed(d.avail) && !closed(d.poke) {
		return d.body, d.avail, d.poke
	}
	// The watches are taken before the document is built, so a change
	// after it is not missed.
	if s.dashCh == nil {
		s.dashCh = make(chan struct{})
	}
	d := &dashDoc{at: time.Now(), avail: s.pool.AvailWatch(), poke: s.dashCh}
	d.body, _ = json.Marshal(s.statsDoc()) // plain structs: cannot fail
	s.dashDoc = d
	return d.body, d.avail, d.poke
}

// statsDoc builds the /stats document.
func (s *dashboard) statsDoc() statsView {
	now := time.Now()
	v := statsView{
		Stats:         s.m.Stats(),
		Timestamp:     now.UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		InstanceStats: map[string]instanceView{},
		Instances:     []string{},
	}
	for _, inst := range s.pool.Instances() {
		st := inst.Status()
		iv := instanceView{
			InstanceStats: v.Stats.InstanceStats[st.Name],
			Healthy:       st.Healthy,
			Drained:       st.Drained,
			Removing:      st.Removing,
			Labels:        st.Labels,
			Weight:        st.Weight,
			Warmup:        st.Warmup,
			Version:       st.Version,
		}
		// The instance's own state, read now, over the gauges' copy.
		iv.Host, iv.Up, iv.Draining, iv.Breaker = st.Addr, st.Healthy, st.Draining, st.Breaker
		iv.SocketConnected, iv.InFlight, iv.QueueDepth = st.SocketUp, st.Inflight, st.QueueDepth
		if r, ok := s.prompts.Running(inst); ok {
			rv := &runningView{PromptID: r.PromptID, Node: r.Node, Value: r.Value, Max: r.Max}
			if !r.Since.IsZero() {
				rv.Seconds = float64(now.Sub(r.Since).Milliseconds()) / 1000
			}
			iv.Running = rv
		}
		if s.cat != nil {
			cs := s.cat.Status(inst)
			iv.Catalogue = &cs
			iv.Affinity = s.cat.LastModels(inst)
		}
		v.InstanceStats[st.Name] = iv
		v.Instances = append(v.Instances, st.Name)
	}
	// The fleet's totals from the same reading as the instances.
	v.InstancesUp, v.InstancesTotal, v.InFlight, v.QueueDepth = 0, len(v.Instances), 0, 0
	for _, iv := range v.InstanceStats {
		if iv.Up {
			v.InstancesUp++
		}
		v.InFlight += iv.InFlight
		v.QueueDepth += iv.QueueDepth
	}
	if jl, ok := s.jobs.(interface{ Line(max int) jobs.Line }); ok {
		l := jl.Line(dashboardJobs)
		v.JobLine = &l
	}
	return v
}

// serveDashboard serves /dashboard and /dashboard/events (operator is
// true on metrics_listen, where the admin routes are not served). It
// returns the route template.
func (s *dashboard) serveDashboard(ctx *fasthttp.RequestCtx, raw []byte, operator bool) string {
	if s.m == nil {
		writeJSONError(ctx, fasthttp.StatusNotFound, "not_found", "metrics are disabled")
		return routeOther
	}
	switch string(raw) {
	case routeDashboard, routeDashboard + "/":
		if !ctx.IsGet() && !ctx.IsHead() {
			writeJSONError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "GET /dashboard")
			return routeDashboard
		}
		ctx.SetContentType("text/html; charset=utf-8")
		ctx.Response.Header.Set("Cache-Control", "no-store")
		ctx.Response.Header.Set("X-Content-Type-Options", "nosniff")
		ctx.Response.Header.Set("X-Frame-Options", "DENY")
		ctx.SetBody(dashboardPage)
		return routeDashboard
	case routeDashboardEvents:
		if !ctx.IsGet() {
			writeJSONError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "GET /dashboard/events")
			return routeDashboardEvents
		}
		viewer := dashboardViewer{Admin: true}
		switch k := requestKey(ctx); {
		case operator:
			viewer = dashboardViewer{Note: "drain and undrain are served on the client address (listen), not on metrics_listen"}
		case k != nil && !k.Admin:
			viewer = dashboardViewer{Note: "drain and undrain need an admin key"}
		}
		s.serveDashboardEvents(ctx, viewer)
		return routeDashboardEvents
	}
	writeJSONError(ctx, fasthttp.StatusNotFound, "not_found", "the dashboard serves /dashboard and /dashboard/events")
	return routeDashboard
}

// serveDashboardEvents streams the /stats document as server-sent events:
// one `data:` line of JSON every second, and sooner after a drain or
// undrain or a change of an instance's availability (at most one every
// dashboardMinGap then). Nothing is queued for a client: the next document
// is built when the last one has been written, so a slow reader only slows
// its own stream, and one that stops reading is cut by the connection's
// write timeout. The stream ends when the client goes, at shutdown, or
// after dashboardStreamLife.
func (s *dashboard) serveDashboardEvents(ctx *fasthttp.RequestCtx, viewer dashboardViewer) {
	if s.dashStreams.Add(1) > maxDashboardStreams {
		s.dashStreams.Add(-1)
		writeJSONError(ctx, fasthttp.StatusServiceUnavailable, "too_many_streams", "too many dashboard streams are open; retry later")
		ctx.Response.Header.Set("Retry-After", "5")
		return
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("text/event-stream; charset=utf-8")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.Response.Header.Set("X-Accel-Buffering", "no") // nginx in front: do not buffer
	shutdown := ctx.Done()                             // the server's: closed when it shuts down
	// The writer runs after the handler returned: it uses only s, viewer and shutdown.
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer s.dashStreams.Add(-1)
		life := time.NewTimer(dashboardStreamLife)
		defer life.Stop()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		v, _ := json.Marshal(viewer)
		if _, err := fmt.Fprintf(w, "retry: 2000\n\nevent: viewer\ndata: %s\n\n", v); err != nil {
			return
		}
		var sent time.Time
		for {
			doc, watch, poke := s.dashboardDoc()
			w.WriteString("data: ")
			w.Write(doc)
			w.WriteString("\n\n")
			if w.Flush() != nil {
				return // the client went away
			}
			sent = time.Now()
			select {
			case <-tick.C:
				continue
			case <-poke:
			case <-watch:
			case <-life.C:
				return
			case <-shutdown:
				return
			}
			// Woken by a change: keep dashboardMinGap since the last document.
			if gap := dashboardMinGap - time.Since(sent); gap > 0 {
				wait := time.NewTimer(gap)
				select {
				case <-wait.C:
				case <-shutdown:
					wait.Stop()
					return
				}
			}
		}
	})
}
