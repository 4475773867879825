package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"testing"

	"github.com/comfygate/comfygate/auth"
	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
	"github.com/valyala/fasthttp"
)

// dirOf is the directory comfygate keeps a key's user data in.
func dirOf(name string) string {
	h := sha256.Sum256([]byte(name))
	return "comfygate-keys/" + hex.EncodeToString(h[:])[:16]
}

// udDo sends one request with key and an Origin of the gate (as the web
// UI's writes carry) and returns status and body.
func udDo(t *testing.T, g *gate, key, method, path, body string) (int, string) {
	t.Helper()
	hdr := bearer(key)
	hdr.Set("Origin", g.base)
	hdr.Set("Comfy-User", "")
	status, _, b := gateDo(t, method, g.base+path, hdr, strings.NewReader(body))
	return status, string(b)
}

// TestUserDataPerKey: with keys and isolation on, the web UI's workflow
// calls (save, list, open, move, delete, and /v2/userdata) work in each
// key's own directory of the home instance and answer with the names the
// client chose; another key sees none of it; an admin key sees the user
// directory as it is.
func TestUserDataPerKey(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), withKeys)
	dirA, dirB := dirOf(auth.PlainKeyName("key", keyA)), dirOf(auth.PlainKeyName("key", keyB))

	status, body := udDo(t, g, keyA, "POST", "/api/userdata/workflows%2Fa.json?overwrite=true&full_info=true", `{"nodes":[]}`)
	var info struct {
		Path string `json:"path"`
		Size int    `json:"size"`
	}
	if status != 200 || json.Unmarshal([]byte(body), &info) != nil || info.Path != "workflows/a.json" || info.Size != 12 {
		t.Fatalf("save: %d %s, want 200 with path workflows/a.json", status, body)
	}
	if _, ok := ss[0].UserData()[dirA+"/workflows/a.json"]; !ok {
		t.Fatalf("the instance's user directory: %v, want %s/workflows/a.json", keysOf(ss[0].UserData()), dirA)
	}
	if status, body := udDo(t, g, keyA, "POST", "/api/userdata/workflows%2Fa.json?overwrite=false", `{}`); status != http.StatusConflict {
		t.Errorf("save over an existing file with overwrite=false: %d %s, want 409", status, body)
	}
	list := "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true"
	if status, body := udDo(t, g, keyA, "GET", list, ""); status != 200 || !strings.Contains(body, `"path": "a.json"`) || strings.Contains(body, "comfygate-keys") {
		t.Errorf("key A's list: %d %s, want a.json", status, body)
	}
	if status, body := udDo(t, g, keyB, "GET", list, ""); status != http.StatusNotFound {
		t.Errorf("key B's list: %d %s, want 404 (no workflows of its own)", status, body)
	}
	if status, body := udDo(t, g, keyA, "GET", "/api/userdata/workflows%2Fa.json", ""); status != 200 || body != `{"nodes":[]}` {
		t.Errorf("key A opens its workflow: %d %s", status, body)
	}
	if status, body := udDo(t, g, keyB, "GET", "/api/userdata/workflows%2Fa.json", ""); status != http.StatusNotFound {
		t.Errorf("key B opens key A's workflow: %d %s, want 404", status, body)
	}
	if status, body := udDo(t, g, keyB, "POST", "/userdata/workflows%2Fa.json", `{"b":1}`); status != 200 || body != `"workflows/a.json"` {
		t.Errorf("key B saves the same name: %d %s, want 200 \"workflows/a.json\"", status, body)
	}
	if status, body := udDo(t, g, keyA, "POST", "/api/userdata/workflows%2Fa.json/move/workflows%2Fsub%2Fb.json", ""); status != 200 || body != `"workflows/sub/b.json"` {
		t.Errorf("key A moves its workflow: %d %s, want \"workflows/sub/b.json\"", status, body)
	}
	status, body = udDo(t, g, keyA, "GET", "/api/v2/userdata", "")
	var v2 []struct{ Name, Path, Type string }
	_ = json.Unmarshal([]byte(body), &v2)
	var paths []string
	for _, e := range v2 {
		paths = append(paths, e.Path)
	}
	if status != 200 || json.Unmarshal([]byte(body), &v2) != nil || len(v2) != 3 ||
		!strings.Contains(","+strings.Join(paths, ",")+",", ",workflows,") || !strings.Contains(body, `"path": "workflows/sub"`) ||
		!strings.Contains(body, `"path": "workflows/sub/b.json"`) || strings.Contains(body, "comfygate-keys") {
		t.Errorf("key A's /v2/userdata: %d %s, want workflows, workflows/sub, workflows/sub/b.json", status, body)
	}
	if status, body := udDo(t, g, keyA, "GET", "/api/v2/userdata?path=workflows%2Fsub", ""); status != 200 || !strings.Contains(body, `"path": "workflows/sub/b.json"`) {
		t.Errorf("key A's /v2/userdata?path=workflows/sub: %d %s", status, body)
	}
	fresh := func(c *config.Config) { withKeys(c); c.Auth.Keys = append(c.Auth.Keys, "key-c-0123456789abcdef") }
	g2 := startGate(t, addrsOf(ss), fresh)
	if status, body := udDo(t, g2, "key-c-0123456789abcdef", "GET", "/api/v2/userdata", ""); status != 200 || body != "[]" {
		t.Errorf("a new key's /v2/userdata: %d %s, want 200 []", status, body)
	}
	if status, body := udDo(t, g, keyA, "DELETE", "/api/userdata/workflows%2Fsub%2Fb.json", ""); status != http.StatusNoContent {
		t.Errorf("key A deletes its workflow: %d %s, want 204", status, body)
	}
	if status, body := udDo(t, g, keyAdmin, "POST", "/api/userdata/workflows%2Fadmin.json", `{}`); status != 200 || body != `"workflows/admin.json"` {
		t.Errorf("admin saves: %d %s", status, body)
	}
	if status, body := udDo(t, g, keyAdmin, "GET", "/api/userdata?dir=comfygate-keys&recurse=true", ""); status != 200 || !strings.Contains(body, strings.TrimPrefix(dirB, "comfygate-keys/")+"/workflows/a.json") {
		t.Errorf("admin lists the keys' directories: %d %s", status, body)
	}
	want := []string{dirB + "/workflows/a.json", "workflows/admin.json"}
	if got := keysOf(ss[0].UserData()); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("the instance's user directory: %v, want %v", got, want)
	}
}

func keysOf(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestUserDataRefused: paths that would leave a key's directory (at any
// stage of ComfyUI's decoding), /internal, creating users, and dot-segment
// detours to these routes are refused before any instance sees them; other
// shapes under the routes are 404. With keys off, or isolation off, the
// same requests reach the instance unchanged.
func TestUserDataRefused(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	g := startGate(t, []string{fake.Addr()}, withKeys)
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/api/userdata/..%2Fcomfy.settings.json", 403},
		{"GET", "/api/userdata/workflows%2F..%2F..%2Fx", 403},
		{"GET", "/api/userdata/%252e%252e%252fx.json", 403},
		{"GET", "/api/userdata/%2Fetc%2Fpasswd", 403},
		{"GET", "/api/userdata/C%3A%5Cx", 403},
		{"GET", "/api/userdata/.", 400},
		{"POST", "/api/userdata/a.json/move/..%2F..%2Fb.json", 403},
		{"GET", "/api/userdata?dir=..", 403},
		{"GET", "/api/userdata?dir=%2Fetc", 403},
		{"GET", "/api/userdata?dir=%252e%252e", 403},
		{"GET", "/api/userdata", 400},
		{"GET", "/api/v2/userdata?path=..", 403},
		{"GET", "/api/v2/userdata?path=%25252e%25252e", 403},
		{"GET", "/api/userdata/a/b", 404},
		{"GET", "/api/userdata/", 400}, // redirected to /api/userdata (canon.go)
		{"GET", "/api/v2/userdata/x", 404},
		{"GET", "/api/settings/a/b", 404},
		{"GET", "/internal/logs", 403},
		{"GET", "/internal/folder_paths", 403},
		{"PATCH", "/internal/logs/subscribe", 403},
		{"GET", "/api/internal/files/output", 403},
		{"POST", "/api/users", 403},
		// Dot segments are redirected to the clean path (canon.go), which
		// the client follows into the refusals above.
		{"GET", "/assets/%2e%2e/internal/logs", 403},
		{"GET", "/api/settings/../internal/logs", 403},
	} {
		status, body := udDo(t, g, keyA, tc.method, tc.path, "")
		if status != tc.want || !strings.HasPrefix(body, "{") && tc.want != 400 {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, status, body, tc.want)
		}
	}
	if line, rest := rawExchange(t, g.addr, "GET /api/userdata/%zz HTTP/1.1\r\nHost: "+g.addr+"\r\nAuthorization: Bearer "+keyA+"\r\nConnection: close\r\n\r\n"); !strings.Contains(line, " 400 ") || !strings.Contains(rest, "non_canonical_path") {
		t.Errorf("a file name with a bad escape: %s %s, want 400 non_canonical_path", line, rest)
	}
	if line, rest := rawExchange(t, g.addr, "GET /api/x/../userdata/a.json HTTP/1.1\r\nHost: "+g.addr+"\r\nAuthorization: Bearer "+keyA+"\r\nConnection: close\r\n\r\n"); !strings.Contains(line, " 308 ") || !strings.Contains(rest, "Location: /api/userdata/a.json") {
		t.Errorf("a detour through a dot segment: %s %s, want 308 to /api/userdata/a.json", line, rest)
	}
	if seen := fake.Requests(); len(seen) != 0 {
		t.Errorf("the instance saw refused requests: %+v", seen[0])
	}
	// GET /users holds no user data; an admin key reaches /internal.
	for _, key := range []string{keyA, keyAdmin} {
		if status, body := udDo(t, g, key, "GET", "/api/users", ""); status != 200 {
			t.Errorf("GET /api/users with %s: %d %s", key[:5], status, body)
		}
	}
	if status, body := udDo(t, g, keyAdmin, "GET", "/internal/logs", ""); status != 200 {
		t.Errorf("admin GET /internal/logs: %d %s", status, body)
	}
	if seen := fake.Requests(); len(seen) != 3 || seen[2].RequestURI != "/internal/logs" {
		t.Errorf("the instance saw %+v, want /api/users twice and /internal/logs", seen)
	}

	// Keys off, or isolation off: unchanged.
	for _, mod := range []func(*config.Config){nil, func(c *config.Config) { withKeys(c); c.Auth.Isolation = false }} {
		fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
		g := startGate(t, []string{fake.Addr()}, mod)
		for _, p := range []string{"/api/userdata/workflows%2Fa.json", "/api/userdata?dir=workflows&recurse=true", "/internal/logs", "/api/settings"} {
			if status, body := udDo(t, g, keyA, "GET", p, ""); status != 200 {
				t.Errorf("%s with isolation off or keys off: %d %s", p, status, body)
			}
		}
		seen := fake.Requests()
		if len(seen) != 4 || seen[0].RequestURI != "/api/userdata/workflows%2Fa.json" || seen[1].RequestURI != "/api/userdata?dir=workflows&recurse=true" {
			t.Errorf("the instance saw %+v, want the requests unchanged", seen)
		}
	}
}

// TestUserDataRawForward: the key's directory goes in front of the file
// segment as %2F-encoded bytes, the client's own escapes untouched, and a
// listing's query is rebuilt with one dir.
func TestUserDataRawForward(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	g := startGate(t, []string{fake.Addr()}, withKeys)
	enc := strings.ReplaceAll(dirOf(auth.PlainKeyName("key", keyA)), "/", "%2F") + "%2F"
	udDo(t, g, keyA, "GET", "/api/userdata/workflows%2Fmy%20flow%25.json?rand=1&token="+keyA, "")
	udDo(t, g, keyA, "GET", "/userdata?dir=workflows&token="+keyA+"&recurse=true&dir=..", "")
	seen := fake.Requests()
	want := []string{
		"/api/userdata/" + enc + "workflows%2Fmy%20flow%25.json?rand=1",
		"/userdata?dir=" + strings.ReplaceAll(dirOf(auth.PlainKeyName("key", keyA)), "/", "%2F") + "%2Fworkflows&recurse=true",
	}
	if len(seen) != 2 || seen[0].RequestURI != want[0] || seen[1].RequestURI != want[1] {
		var got []string
		for _, s := range seen {
			got = append(got, s.RequestURI)
		}
		t.Errorf("the instance saw %q, want %q", got, want)
	}
}

// TestSettingsPerKey: /settings reads and writes each key's own settings
// (kept in its directory of the home instance): one key's writes are not
// another's reads, one value and bulk writes merge, and concurrent writes
// of one key all land.
func TestSettingsPerKey(t *testing.T) {
	t.Parallel()
	ss := sims(t, 1, comfysim.Options{})
	g := startGate(t, addrsOf(ss), withKeys)
	if status, body := udDo(t, g, keyA, "GET", "/api/settings", ""); status != 200 || body != "{}" {
		t.Errorf("a new key's settings: %d %s, want {}", status, body)
	}
	if status, body := udDo(t, g, keyA, "POST", "/api/settings/Comfy.InstalledVersion", `"1.28.7"`); status != 200 || body != "" {
		t.Errorf("POST one setting: %d %s, want an empty 200", status, body)
	}
	if status, body := udDo(t, g, keyA, "POST", "/api/settings", `{"Comfy.TutorialCompleted": true, "a.b": {"x": [1, 2]}}`); status != 200 {
		t.Errorf("POST settings: %d %s", status, body)
	}
	var got map[string]any
	status, body := udDo(t, g, keyA, "GET", "/api/settings", "")
	if status != 200 || json.Unmarshal([]byte(body), &got) != nil || got["Comfy.InstalledVersion"] != "1.28.7" || got["Comfy.TutorialCompleted"] != true || len(got) != 3 {
		t.Errorf("key A's settings: %d %s", status, body)
	}
	if status, body := udDo(t, g, keyA, "GET", "/settings/Comfy.InstalledVersion", ""); status != 200 || body != `"1.28.7"` {
		t.Errorf("key A's one setting: %d %s", status, body)
	}
	if status, body := udDo(t, g, keyB, "GET", "/api/settings/Comfy.InstalledVersion", ""); status != 200 || body != "null" {
		t.Errorf("key B reads key A's setting: %d %s, want null", status, body)
	}
	if status, body := udDo(t, g, keyB, "GET", "/api/settings", ""); status != 200 || body != "{}" {
		t.Errorf("key B's settings: %d %s, want {}", status, body)
	}
	for _, bad := range []struct{ path, body string }{{"/api/settings", `[1]`}, {"/api/settings", `{`}, {"/api/settings/x", `nope`}} {
		if status, body := udDo(t, g, keyB, "POST", bad.path, bad.body); status != 400 {
			t.Errorf("POST %s %s: %d %s, want 400", bad.path, bad.body, status, body)
		}
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if status, body := udDo(t, g, keyB, "POST", fmt.Sprintf("/api/settings/s%d", i), fmt.Sprint(i)); status != 200 {
				t.Errorf("concurrent write %d: %d %s", i, status, body)
			}
		}()
	}
	wg.Wait()
	got = nil
	if status, body := udDo(t, g, keyB, "GET", "/api/settings", ""); status != 200 || json.Unmarshal([]byte(body), &got) != nil || len(got) != 8 {
		t.Errorf("key B's settings after 8 concurrent writes: %d %s, want 8", status, body)
	}
	if _, ok := ss[0].UserData()[dirOf(auth.PlainKeyName("key", keyA))+"/comfy.settings.json"]; !ok {
		t.Errorf("key A's settings are not in its directory: %v", keysOf(ss[0].UserData()))
	}
}

// comfyUserPath is where ComfyUI's user_manager.py puts a {file} segment
// raw (already carrying the key's directory) inside the user directory
// "/u": the router's unescape (all of it, or all but %2F as older aiohttp
// did), then unquote when a '%' is left, then abspath.
func comfyUserPath(raw string, keepSlashEscapes bool) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		if raw[i] != '%' {
			b.WriteByte(raw[i])
			continue
		}
		if i+2 >= len(raw) {
			return "", false
		}
		c, ok := unhex2(raw[i+1], raw[i+2])
		if !ok {
			return "", false
		}
		if c == '/' && keepSlashEscapes {
			b.WriteString(raw[i : i+3])
		} else {
			b.WriteByte(c)
		}
		i += 2
	}
	d := b.String()
	if strings.Contains(d, "%") {
		d = unquotePy(d)
	}
	if strings.HasPrefix(d, "/") {
		return d, true
	}
	return path.Clean("/u/" + d), true
}

// FuzzUserPath: a file name userPathOK lets through, with the key's
// directory put in front as scopeUserData does, resolves inside that
// directory under either way ComfyUI's router decodes it.
func FuzzUserPath(f *testing.F) {
	for _, seed := range []string{"workflows%2Fa.json", "..%2Fx", "%252e%252e%252fx", "a%2F..%2F..%2Fb", "%2e%2e", "C%3A%5Cx", "x%25", ".%2F.", "%2F"} {
		f.Add(seed)
	}
	s := &userData{}
	dir := keyDir(&auth.Key{Name: "fuzz"})
	f.Fuzz(func(t *testing.T, seg string) {
		if strings.Contains(seg, "/") || seg == "" {
			return // not one segment
		}
		var ctx fasthttp.RequestCtx
		if !s.userPathOK(&ctx, []byte(seg), fileSegment) {
			return
		}
		raw := url.PathEscape(dir+"/") + seg
		for _, old := range []bool{false, true} {
			if p, ok := comfyUserPath(raw, old); ok && !strings.HasPrefix(p, "/u/"+dir+"/") {
				t.Fatalf("%q (older router %v) resolves to %q, outside %s", seg, old, p, dir)
			}
		}
	})
}

// TestUnscopeAnswer: only JSON strings that start with the key's directory
// lose it; the same bytes inside another string stay.
func TestUnscopeAnswer(t *testing.T) {
	t.Parallel()
	rw := unscopeAnswer("comfygate-keys/abc")
	for in, want := range map[string]string{
		`"comfygate-keys/abc/workflows/a.json"`:                       `"workflows/a.json"`,
		`{"path": "comfygate-keys/abc/a.json", "size": 1}`:            `{"path": "a.json", "size": 1}`,
		`[{"name": "x", "path":"comfygate-keys/abc/x"}]`:              `[{"name": "x", "path":"x"}]`,
		`"a \"comfygate-keys/abc/b"`:                                  `"a \"comfygate-keys/abc/b"`,
		`"comfygate-keys/abcd/x"`:                                     `"comfygate-keys/abcd/x"`,
		`["comfygate-keys/abc/1",` + "\n" + `"comfygate-keys/abc/2"]`: `["1",` + "\n" + `"2"]`,
	} {
		if got := string(rw(nil, 200, []byte(in))); got != want {
			t.Errorf("unscope %s = %s, want %s", in, got, want)
		}
	}
	if got := string(rw(nil, 404, []byte(`"comfygate-keys/abc/x"`))); got != `"comfygate-keys/abc/x"` {
		t.Errorf("a non-200 answer was rewritten: %s", got)
	}
}
