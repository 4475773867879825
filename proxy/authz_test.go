package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/comfygate/comfygate/jobs"
	"github.com/comfygate/comfygate/metrics"
	"github.com/fasthttp/websocket"
	"github.com/valyala/fasthttp"
)

const (
	keyA     = "key-a-0123456789abcdef"
	keyB     = "key-b-0123456789abcdef"
	keyAdmin = "admin-0123456789abcdef"
	keyStats = "stats-0123456789abcdef"
)

func withKeys(c *config.Config) {
	c.Auth.Keys = []string{keyA, keyB}
	c.Auth.AdminKeys = []string{keyAdmin}
	c.Auth.MetricsKeys = []string{keyStats}
}

func bearer(key string) http.Header {
	return http.Header{"Authorization": {"Bearer " + key}}
}

// routeTable lists every route the router tells apart (the switch in
// dispatch, the catalogue tables, the home routes and the job facade),
// each as method and path, under / and /api/.
func routeTable() [][2]string {
	base := [][2]string{
		{"GET", "/ws"}, {"POST", "/prompt"}, {"GET", "/prompt"}, {"GET", "/queue"}, {"POST", "/queue"},
		{"GET", "/history"}, {"POST", "/history"}, {"GET", "/history/x"}, {"POST", "/interrupt"},
		{"POST", "/free"}, {"GET", "/view?filename=a.png&type=output"}, {"POST", "/upload/image"},
		{"POST", "/upload/mask"}, {"GET", "/settings"}, {"POST", "/userdata/workflows%2Fa.json"},
		{"GET", "/users"}, {"GET", "/internal/logs"}, {"GET", "/"}, {"GET", "/assets/index.js"},
		{"GET", "/custom-node-route"}, {"DELETE", "/userdata/a.json"},
	}
	for p := range neutralExact {
		base = append(base, [2]string{"GET", p})
	}
	for _, np := range neutralPrefixes {
		base = append(base, [2]string{"GET", string(np.prefix) + "x"})
	}
	var out [][2]string
	for _, r := range base {
		out = append(out, r, [2]string{r[0], "/api" + r[1]})
	}
	return append(out,
		[2]string{"GET", "/api/jobs"}, [2]string{"GET", "/api/jobs?source=comfygate"}, [2]string{"GET", "/api/jobs/x"},
		[2]string{"POST", "/api/jobs/x/cancel"}, [2]string{"POST", "/api/jobs/cancel"}, [2]string{"DELETE", "/api/jobs/x"},
		[2]string{"GET", "/api/jobs/x/status"}, [2]string{"GET", "/api/jobs/x/result"},
		[2]string{"POST", "/api/remove-background"}, [2]string{"POST", "/api/upscale-image"}, [2]string{"POST", "/api/workflows/w"},
		[2]string{"GET", "/api/workflows"}, [2]string{"GET", "/api/openapi.json"}, [2]string{"GET", "/api/jobs/x/events"},
		[2]string{"GET", "/api/jobs/x/outputs"}, [2]string{"GET", "/api/jobs/x/outputs/0"},
		[2]string{"GET", "/metrics"}, [2]string{"GET", "/stats"},
		[2]string{"POST", "/admin/reload"}, [2]string{"POST", "/admin/instances/i0/drain"},
		[2]string{"POST", "/admin/instances/i0/undrain"},
	)
}

// TestKeysRefuseEveryRoute: with keys on, every route without a valid key
// gets 401 with a JSON error and WWW-Authenticate, and no instance sees
// it; /health stays open unless auth.open_health is off; /metrics and
// /stats want a metrics or admin key; a metrics-only key gets nothing else.
func TestKeysRefuseEveryRoute(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	g := startGate(t, []string{fake.Addr()}, withKeys)
	for _, r := range routeTable() {
		for _, hdr := range []http.Header{nil, bearer("not-a-valid-key-000000")} {
			status, h, body := gateDo(t, r[0], g.base+r[1], hdr, strings.NewReader(`{}`))
			if status != http.StatusUnauthorized || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") ||
				!strings.Contains(string(body), `"unauthorized"`) {
				t.Errorf("%s %s (auth %v): %d %q %s, want 401 with WWW-Authenticate", r[0], r[1], hdr != nil, status, h.Get("WWW-Authenticate"), body)
			}
		}
	}
	// A WebSocket handshake is refused before the upgrade.
	if _, resp, err := websocket.DefaultDialer.Dial("ws://"+g.addr+"/ws?clientId=abc", nil); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/ws without a key: %v %v, want 401", err, resp)
	}
	if n := len(fake.Requests()); n != 0 {
		t.Errorf("instances saw %d requests without a key, want 0: %+v", n, fake.Requests()[0])
	}
	if status, _, _ := gateDo(t, "GET", g.base+"/health", nil, nil); status != http.StatusOK {
		t.Errorf("/health without a key: %d, want 200 (auth.open_health)", status)
	}
	for _, tc := range []struct {
		key, path string
		want      int
	}{
		{keyA, "/metrics", http.StatusForbidden},
		{keyA, "/stats", http.StatusForbidden},
		{keyStats, "/metrics", http.StatusOK},
		{keyAdmin, "/stats", http.StatusOK},
		{keyStats, "/system_stats", http.StatusForbidden},
		{keyA, "/system_stats", http.StatusOK},
	} {
		status, _, body := gateDo(t, "GET", g.base+tc.path, bearer(tc.key), nil)
		if tc.want == http.StatusOK && status != http.StatusUnauthorized && status != http.StatusForbidden {
			continue // admitted (this gate has no metrics: 404)
		}
		if status != tc.want {
			t.Errorf("%s with %s: %d %s, want %d", tc.path, tc.key[:5], status, body, tc.want)
		}
	}
	// The key never reaches the instance: neither the header nor the query.
	if status, _, _ := gateDo(t, "GET", g.base+"/custom?token="+keyA+"&x=%2F", nil, nil); status != http.StatusOK {
		t.Fatalf("?token=: %d, want 200", status)
	}
	for _, r := range fake.Requests() {
		if r.Header.Get("Authorization") != "" || strings.Contains(r.RequestURI, "token") {
			t.Errorf("the instance saw the key: %s %v", r.RequestURI, r.Header)
		}
		if r.RequestURI == "/custom?x=%2F" {
			continue
		}
	}

	closed := startGate(t, []string{fake.Addr()}, func(c *config.Config) { withKeys(c); c.Auth.OpenHealth = false })
	if status, _, _ := gateDo(t, "GET", closed.base+"/health", nil, nil); status != http.StatusUnauthorized {
		t.Errorf("/health with open_health off: %d, want 401", status)
	}
}

func historyOf(t *testing.T, g *gate, key, path string) map[string]json.RawMessage {
	t.Helper()
	status, _, body := gateDo(t, "GET", g.base+path, bearer(key), nil)
	if status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, status, body)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("GET %s: %s: %v", path, body, err)
	}
	return m
}

// TestKeyIsolation: key B cannot see, fetch, interrupt or delete key A's
// prompts, nor take its clientId; fleet-wide actions need an admin key;
// credentials in extra_data reach only the key that sent them.
func TestKeyIsolation(t *testing.T) {
	t.Parallel()
	ss := sims(t, 2, comfysim.Options{})
	g := startGate(t, addrsOf(ss), withKeys)

	// A's socket claims its clientId; B may not take it, over WS or a prompt.
	ca, _, err := websocket.DefaultDialer.Dial("ws://"+g.addr+"/ws?clientId=client-of-a&token="+keyA, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	if _, resp, err := websocket.DefaultDialer.Dial("ws://"+g.addr+"/ws?clientId=client-of-a", http.Header{"Authorization": {"Bearer " + keyB}}); err == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("B taking A's clientId over WS: %v, want 403", err)
	}
	body := map[string]any{"prompt": emptyImagePrompt(0x102030, "iso"), "client_id": "client-of-a",
		"extra_data": map[string]any{"api_key_comfy_org": "secret-comfy-org-key", "note": "kept"}}
	if status, raw := postJSON(t, g.base+"/prompt", bearer(keyB), body, nil); status != http.StatusForbidden {
		t.Errorf("B posting with A's client_id: %d %s, want 403", status, raw)
	}
	var a promptAnswer
	if status, raw := postJSON(t, g.base+"/prompt", bearer(keyA), body, &a); status != http.StatusOK {
		t.Fatalf("A's prompt: %d %s", status, raw)
	}
	testkit.Eventually(t, "A's prompt in A's history", func() bool {
		_, ok := historyOf(t, g, keyA, "/history/"+a.PromptID)[a.PromptID]
		return ok
	})
	if got := historyOf(t, g, keyA, "/history/"+a.PromptID)[a.PromptID]; !strings.Contains(string(got), "secret-comfy-org-key") {
		t.Errorf("A's own history lost its extra_data: %s", got)
	}
	if h := historyOf(t, g, keyB, "/history/"+a.PromptID); len(h) != 0 {
		t.Errorf("B fetched A's history: %v", h)
	}
	if _, ok := historyOf(t, g, keyB, "/history")[a.PromptID]; ok {
		t.Error("B's /history lists A's prompt")
	}
	if _, ok := historyOf(t, g, keyA, "/api/history")[a.PromptID]; !ok {
		t.Error("A's /api/history misses A's prompt")
	}
	adminView := historyOf(t, g, keyAdmin, "/history")[a.PromptID]
	if len(adminView) == 0 || strings.Contains(string(adminView), "secret-comfy-org-key") || !strings.Contains(string(adminView), `"kept"`) {
		t.Errorf("admin's view of A's prompt: %s, want it with the credential redacted", adminView)
	}
	if status, _, body := gateDo(t, "GET", g.base+"/queue", bearer(keyB), nil); status != 200 || strings.Contains(string(body), a.PromptID) {
		t.Errorf("B's /queue: %d %s", status, body)
	}
	if status, raw := postJSON(t, g.base+"/interrupt", bearer(keyB), map[string]any{"prompt_id": a.PromptID}, nil); status != http.StatusForbidden {
		t.Errorf("B interrupting A's prompt: %d %s, want 403", status, raw)
	}
	for _, p := range []string{"/history", "/queue"} {
		if status, raw := postJSON(t, g.base+p, bearer(keyB), map[string]any{"delete": []string{a.PromptID}}, nil); status != http.StatusOK {
			t.Errorf("B's delete on %s: %d %s", p, status, raw)
		}
	}
	if _, ok := historyOf(t, g, keyA, "/history/"+a.PromptID)[a.PromptID]; !ok {
		t.Error("B's /history delete removed A's prompt")
	}
	if status, _, _ := gateDo(t, "GET", g.base+"/api/jobs/"+a.PromptID, bearer(keyB), nil); status != http.StatusNotFound {
		t.Errorf("B's GET /api/jobs/{A's id}: %d, want 404", status)
	}
	for _, fleet := range []struct {
		path string
		body any
	}{{"/free", map[string]any{"unload_models": true}}, {"/interrupt", map[string]any{}}, {"/queue", map[string]any{"clear": true}}, {"/history", map[string]any{"clear": true}}} {
		if status, raw := postJSON(t, g.base+fleet.path, bearer(keyA), fleet.body, nil); status != http.StatusForbidden {
			t.Errorf("A's fleet-wide %s: %d %s, want 403", fleet.path, status, raw)
		}
		if status, raw := postJSON(t, g.base+fleet.path, bearer(keyAdmin), fleet.body, nil); status != http.StatusOK {
			t.Errorf("admin's fleet-wide %s: %d %s, want 200", fleet.path, status, raw)
		}
	}
}

// TestRedactionKeysOff: with keys off, credentials in extra_data leave
// comfygate in no queue or history view.
func TestRedactionKeysOff(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), nil)
	id := submit(t, g, map[string]any{"prompt": emptyImagePrompt(0x405060, "red"),
		"extra_data": map[string]any{"api_key_comfy_org": "secret-1", "auth_token_comfy_org": "secret-2", "client_note": "kept"}})
	waitHistory(t, g, "", id)
	for _, p := range []string{"/history", "/history/" + id, "/api/history?max_items=5", "/queue"} {
		status, _, body := gateDo(t, "GET", g.base+p, nil, nil)
		if status != 200 || strings.Contains(string(body), "secret-") {
			t.Errorf("GET %s: %d %s, want credentials removed", p, status, body)
		}
		if p != "/queue" && !strings.Contains(string(body), "kept") {
			t.Errorf("GET %s lost the rest of extra_data: %s", p, body)
		}
	}
}

// TestWebUILogin: the web UI's real request pattern works with keys on
// after POST /login: with the session cookie, the page, its
// module scripts (sent with Origin), API reads (no Origin, Comfy-User ""),
// the WebSocket handshake (Origin) and POST /api/prompt (Origin) pass; a
// cross-origin POST with the cookie does not.
func TestWebUILogin(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), withKeys)
	cookie := login(t, g, keyA)
	origin := "http://" + g.addr
	page := []struct {
		method, path string
		hdr          http.Header
		body         string
		want         int
	}{
		{"GET", "/", http.Header{}, "", 200},
		{"GET", "/api/system_stats", http.Header{"Comfy-User": {""}}, "", 200},
		{"GET", "/api/object_info", http.Header{"Comfy-User": {""}}, "", 200},
		{"GET", "/api/queue", http.Header{"Comfy-User": {""}}, "", 200},
		{"GET", "/api/history?max_items=64", http.Header{"Comfy-User": {""}}, "", 200},
		{"GET", "/api/users", http.Header{"Comfy-User": {""}}, "", 200},
		{"GET", "/api/settings", http.Header{"Comfy-User": {""}}, "", 200},
		{"POST", "/api/settings/Comfy.InstalledVersion", http.Header{"Origin": {origin}, "Comfy-User": {""}}, `"1.28.7"`, 200},
	}
	for _, r := range page {
		r.hdr.Set("Cookie", cookie)
		status, _, body := gateDo(t, r.method, g.base+r.path, r.hdr, strings.NewReader(r.body))
		if status == http.StatusUnauthorized || status == http.StatusForbidden || (r.want != 0 && status != r.want) {
			t.Errorf("%s %s with the cookie: %d %s", r.method, r.path, status, body)
		}
	}
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+g.addr+"/ws", http.Header{"Cookie": {cookie}, "Origin": {origin}})
	if err != nil {
		t.Fatalf("WS with the cookie: %v", err)
	}
	defer ws.Close()
	_ = ws.SetReadDeadline(time.Now().Add(gateTimeout))
	var first struct {
		Data struct {
			SID string `json:"sid"`
		} `json:"data"`
	}
	if err := ws.ReadJSON(&first); err != nil || first.Data.SID == "" {
		t.Fatalf("first status: %v %+v", err, first)
	}
	_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"feature_flags","data":{"supports_preview_metadata":true}}`))
	var a promptAnswer
	status, raw := postJSON(t, g.base+"/api/prompt", http.Header{"Cookie": {cookie}, "Origin": {origin}, "Comfy-User": {""}},
		map[string]any{"client_id": first.Data.SID, "prompt": emptyImagePrompt(0x112233, "ui"), "extra_data": map[string]any{"extra_pnginfo": map[string]any{"workflow": map[string]any{}}}}, &a)
	if status != http.StatusOK {
		t.Fatalf("POST /api/prompt with the cookie: %d %s", status, raw)
	}
	var ref fileRef
	for ref.Filename == "" {
		var msg struct {
			Type string `json:"type"`
			Data struct {
				PromptID string `json:"prompt_id"`
				Output   struct {
					Images []fileRef `json:"images"`
				} `json:"output"`
			} `json:"data"`
		}
		if err := ws.ReadJSON(&msg); err != nil {
			t.Fatalf("waiting for executed: %v", err)
		}
		if msg.Type == "executed" && msg.Data.PromptID == a.PromptID && len(msg.Data.Output.Images) > 0 {
			ref = msg.Data.Output.Images[0]
		}
	}
	img := fmt.Sprintf("/api/view?filename=%s&subfolder=%s&type=%s&rand=0.5", url.QueryEscape(ref.Filename), url.QueryEscape(ref.Subfolder), ref.Type)
	if status, _, body := gateDo(t, "GET", g.base+img, http.Header{"Cookie": {cookie}}, nil); status != http.StatusOK {
		t.Errorf("<img> %s with the cookie: %d %s", img, status, body)
	}
	if status, _, _ := gateDo(t, "GET", g.base+img, nil, nil); status != http.StatusUnauthorized {
		t.Errorf("<img> without the cookie: %d, want 401", status)
	}
	// Another site's page cannot use the cookie to post or open the socket.
	status, raw = postJSON(t, g.base+"/api/prompt", http.Header{"Cookie": {cookie}, "Origin": {"http://evil.example"}},
		map[string]any{"prompt": emptyImagePrompt(1, "x")}, nil)
	if status != http.StatusForbidden {
		t.Errorf("cross-origin POST with the cookie: %d %s, want 403", status, raw)
	}
	if _, resp, err := websocket.DefaultDialer.Dial("ws://"+g.addr+"/ws", http.Header{"Cookie": {cookie}, "Origin": {"http://evil.example"}}); err == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-origin WS with the cookie: %v, want 403", err)
	}
}

// TestRateLimits: over the prompt bucket, 429 with Retry-After and a JSON
// error; other keys keep their own bucket.
func TestRateLimits(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), func(c *config.Config) {
		withKeys(c)
		c.RateLimit.PromptsPerSecond = 0.01
		c.RateLimit.PromptBurst = 2
	})
	body := map[string]any{"prompt": emptyImagePrompt(1, "rl")}
	for i := range 2 {
		if status, raw := postJSON(t, g.base+"/prompt", bearer(keyA), body, nil); status != 200 {
			t.Fatalf("A's prompt %d: %d %s", i, status, raw)
		}
	}
	b, _ := json.Marshal(body)
	status, h, raw := gateDo(t, "POST", g.base+"/prompt", bearer(keyA), strings.NewReader(string(b)))
	if status != http.StatusTooManyRequests || h.Get("Retry-After") == "" || !strings.Contains(string(raw), `"rate_limited"`) {
		t.Errorf("A's third prompt: %d %q %s, want 429 with Retry-After", status, h.Get("Retry-After"), raw)
	}
	if status, raw := postJSON(t, g.base+"/prompt", bearer(keyB), body, nil); status != 200 {
		t.Errorf("B's prompt while A is limited: %d %s", status, raw)
	}
}

// fakeJobs is a job facade that accepts every submission as a new job and
// answers its status, recording the Idempotency-Key it saw.
type fakeJobs struct {
	mu    sync.Mutex // guards n, idem
	n     int
	idem  []string
	jobOf map[string]string // Idempotency-Key -> job id
}

func (f *fakeJobs) ServeJobs(ctx *fasthttp.RequestCtx, r jobs.Request) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	path := r.Path
	switch {
	case ctx.IsPost() && path == "/api/remove-background":
		// Idempotency-Keys are the owner's own, as in jobs.Service.
		k := r.Owner + ":" + string(ctx.Request.Header.Peek("Idempotency-Key"))
		f.idem = append(f.idem, k)
		id, ok := f.jobOf[k]
		if !ok || k == "" {
			f.n++
			id = fmt.Sprintf("job-%d", f.n)
			f.jobOf[k] = id
		}
		ctx.SetStatusCode(http.StatusAccepted)
		ctx.SetBodyString(`{"job_id": "` + id + `", "status": "pending"}`)
		return true
	case strings.HasPrefix(path, "/api/jobs/") && strings.HasSuffix(path, "/status"):
		ctx.SetBodyString(`{"job_id": "x", "status": "pending"}`)
		return true
	}
	return false
}

func (f *fakeJobs) CancelJob(context.Context, string, string) (bool, bool) { return false, false }
func (f *fakeJobs) WaitingJob(string, string) ([]byte, bool)               { return nil, false }
func (f *fakeJobs) JobOwner(string) (string, bool)                         { return "", false }

// TestJobIsolation: key B cannot read key A's job, and the same
// Idempotency-Key from B makes B's own job, not a replay of A's.
func TestJobIsolation(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	facade := &fakeJobs{jobOf: map[string]string{}}
	g := startGateWith(t, []string{fake.Addr()}, withKeys, func(o *Options) { o.Jobs = facade })
	submitJob := func(key string) string {
		h := bearer(key)
		h.Set("Idempotency-Key", "same-key")
		status, _, body := gateDo(t, "POST", g.base+"/api/remove-background", h, strings.NewReader(`{"image_base64": "x"}`))
		var a struct {
			JobID string `json:"job_id"`
		}
		if status != http.StatusAccepted || json.Unmarshal(body, &a) != nil || a.JobID == "" {
			t.Fatalf("submit with %s: %d %s", key[:5], status, body)
		}
		return a.JobID
	}
	ja, jb := submitJob(keyA), submitJob(keyB)
	if ja == jb {
		t.Errorf("B's submission with A's Idempotency-Key replayed A's job %s", ja)
	}
	for _, tc := range []struct {
		key, id string
		want    int
	}{{keyA, ja, 200}, {keyB, ja, 404}, {keyB, jb, 200}, {keyAdmin, ja, 200}} {
		if status, _, body := gateDo(t, "GET", g.base+"/api/jobs/"+tc.id+"/status", bearer(tc.key), nil); status != tc.want {
			t.Errorf("%s reading job %s: %d %s, want %d", tc.key[:5], tc.id, status, body, tc.want)
		}
	}
}

// TestKeysNeverLogged: at debug level, whatever requests carry a key (the
// header, the query, the cookie, a login, a request the server cannot
// parse, a refused one), no log line holds it.
func TestKeysNeverLogged(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	sink := &logSink{}
	g := startGateWith(t, []string{fake.Addr()}, withKeys, func(o *Options) {
		o.Logger = slog.New(slog.NewJSONHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	gateDo(t, "GET", g.base+"/system_stats", bearer(keyA), nil)
	gateDo(t, "GET", g.base+"/view?filename=a.png&token="+keyA, nil, nil)
	gateDo(t, "GET", g.base+"/login?token="+keyB, nil, nil)
	gateDo(t, "POST", g.base+"/login", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, strings.NewReader("key="+keyB))
	gateDo(t, "POST", g.base+"/login", http.Header{"Content-Type": {"application/json"}}, strings.NewReader(`{"key":"`+keyA+`"}`))
	gateDo(t, "GET", g.base+"/queue", http.Header{"Cookie": {legacyCookieName + "=" + keyAdmin}}, nil)
	gateDo(t, "POST", g.base+"/free", bearer(keyA), strings.NewReader(`{}`))
	rawExchange(t, g.addr, "GET /x HTTP/1.1\r\nHost: "+g.addr+"\r\nAuthorization: Bearer "+keyB+"\r\nBad Header\r\n\r\n")
	rawExchange(t, g.addr, "GET /x HTTP/1.1\nHost: h\nAuthorization: Bearer "+keyB+"\n\n")
	testkit.Eventually(t, "the access log of the last good request", func() bool {
		for _, l := range sink.lines() {
			if l["path"] == "/free" {
				return true
			}
		}
		return false
	})
	sink.mu.Lock()
	all := sink.buf.String()
	sink.mu.Unlock()
	for _, k := range []string{keyA, keyB, keyAdmin} {
		if strings.Contains(all, k) {
			t.Errorf("a log line holds key %s…: %s", k[:5], all)
		}
	}
}

// TestMetricsListen: with metrics_listen set, /metrics and /stats are no
// longer on the client address (404 even for an admin key), and the
// operator handler serves them and /health without a key.
func TestMetricsListen(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(nil)
	g := startGateWith(t, []string{fake.Addr()}, func(c *config.Config) {
		withKeys(c)
		c.MetricsListen = "127.0.0.1:0"
	}, func(o *Options) { o.Metrics = metrics.New("test") })
	for _, p := range []string{"/metrics", "/stats"} {
		if status, _, body := gateDo(t, "GET", g.base+p, bearer(keyAdmin), nil); status != http.StatusNotFound {
			t.Errorf("%s on the client address: %d %s, want 404", p, status, body)
		}
	}
	ops := g.srv.OperatorHandler()
	for _, tc := range []struct {
		path, want string
		code       int
	}{{"/metrics", "comfygate_build_info", 200}, {"/stats", "uptime", 200}, {"/health", "comfyui_instances", 200}, {"/prompt", "not_found", 404}} {
		var ctx fasthttp.RequestCtx
		ctx.Request.SetRequestURI(tc.path)
		ops(&ctx)
		if ctx.Response.StatusCode() != tc.code || !strings.Contains(string(ctx.Response.Body()), tc.want) {
			t.Errorf("operator %s: %d %.80s, want %d with %q", tc.path, ctx.Response.StatusCode(), ctx.Response.Body(), tc.code, tc.want)
		}
	}
}
