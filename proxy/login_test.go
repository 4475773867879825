package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/testkit"
)

// noRedirect is a client that shows a redirect instead of following it.
var noRedirect = &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// postLogin posts a login body and returns the answer (its body read).
func postLogin(t *testing.T, g *gate, contentType, body string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("POST", g.base+"/login", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// sessionCookie returns the session cookie an answer sets ("" if none).
func sessionCookie(resp *http.Response) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == cookieName {
			return c
		}
	}
	return nil
}

// login posts key as the web UI's form does and returns the Cookie header
// value of the session.
func login(t *testing.T, g *gate, key string) string {
	t.Helper()
	resp, body := postLogin(t, g, "application/x-www-form-urlencoded", url.Values{"key": {key}}.Encode(), nil)
	c := sessionCookie(resp)
	if resp.StatusCode != http.StatusSeeOther || c == nil || c.Value == "" {
		t.Fatalf("login: %d %v %s, want 303 with the session cookie", resp.StatusCode, resp.Header["Set-Cookie"], body)
	}
	return c.Name + "=" + c.Value
}

// TestLoginPage: GET /login answers a form that posts the key and never
// logs in from a URL; POST /login (form or JSON) sets an opaque, signed,
// HttpOnly, SameSite=Strict session cookie (Secure behind https) and 303s
// to ./; a wrong key gets 401 with the form; a bad, forged or foreign
// session gets 401 like a bad key; the cookie never reaches an instance;
// /logout clears it.
func TestLoginPage(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	g := startGate(t, []string{fake.Addr()}, withKeys)

	for _, target := range []string{"/login", "/login?token=" + url.QueryEscape(keyA)} {
		resp, err := noRedirect.Get(g.base + target)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body := string(b)
		if resp.StatusCode != http.StatusOK || len(resp.Cookies()) != 0 || !strings.Contains(body, `method="post"`) ||
			!strings.Contains(body, `name="key"`) || strings.Contains(body, keyA) {
			t.Errorf("GET %s: %d %v %s, want the form and no cookie", target, resp.StatusCode, resp.Header["Set-Cookie"], body)
		}
	}

	resp, body := postLogin(t, g, "application/x-www-form-urlencoded", "key=wrong-key-000000000000", nil)
	if resp.StatusCode != http.StatusUnauthorized || sessionCookie(resp) != nil || !strings.Contains(body, "not valid") || !strings.Contains(body, `<form`) {
		t.Errorf("POST /login with a wrong key: %d %v %s, want 401 with the form and a message", resp.StatusCode, resp.Header["Set-Cookie"], body)
	}
	resp, body = postLogin(t, g, "application/json", `{"key": "wrong-key-000000000000"}`, nil)
	if resp.StatusCode != http.StatusUnauthorized || sessionCookie(resp) != nil || !strings.Contains(body, `"unauthorized"`) {
		t.Errorf("POST /login JSON with a wrong key: %d %s, want 401 JSON", resp.StatusCode, body)
	}
	for _, tc := range []struct{ ct, body string }{{"text/plain", "key=" + keyA}, {"application/json", `{"Key": "` + keyA + `"}`}, {"application/json", `[`}} {
		if resp, body := postLogin(t, g, tc.ct, tc.body, nil); resp.StatusCode/100 != 4 || sessionCookie(resp) != nil {
			t.Errorf("POST /login %s %s: %d %s, want a 4xx and no cookie", tc.ct, tc.body, resp.StatusCode, body)
		}
	}
	if resp, _ := postLogin(t, g, "application/x-www-form-urlencoded", "key="+keyA, http.Header{"Origin": {"http://evil.example"}}); resp.StatusCode != http.StatusForbidden || sessionCookie(resp) != nil {
		t.Errorf("POST /login from another origin: %d, want 403 and no cookie", resp.StatusCode)
	}

	resp, _ = postLogin(t, g, "application/x-www-form-urlencoded", url.Values{"key": {keyA}}.Encode(), nil)
	c := sessionCookie(resp)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "./" || c == nil {
		t.Fatalf("POST /login: %d Location %q %v, want 303 to ./ with the cookie", resp.StatusCode, resp.Header.Get("Location"), resp.Header["Set-Cookie"])
	}
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.MaxAge != int((24*time.Hour).Seconds()) ||
		strings.Contains(c.Value, keyA) || strings.Contains(resp.Header.Get("Cache-Control"), "no-store") == false {
		t.Errorf("session cookie %+v (Cache-Control %q), want HttpOnly, SameSite=Strict, not Secure over http, 24h, opaque; no-store", c, resp.Header.Get("Cache-Control"))
	}
	cookie := c.Name + "=" + c.Value
	resp, _ = postLogin(t, g, "application/json", `{"key": "`+keyB+`"}`, http.Header{"X-Forwarded-Proto": {"https"}})
	if cb := sessionCookie(resp); resp.StatusCode != http.StatusSeeOther || cb == nil || !cb.Secure {
		t.Errorf("POST /login JSON behind https: %d %v, want 303 with a Secure cookie", resp.StatusCode, resp.Header["Set-Cookie"])
	}

	if status, _, body := gateDo(t, "GET", g.base+"/system_stats", http.Header{"Cookie": {cookie}}, nil); status != http.StatusOK {
		t.Errorf("GET with the session cookie: %d %s, want 200", status, body)
	}
	if status, _, body := gateDo(t, "GET", g.base+"/custom-node-route", http.Header{"Cookie": {cookie + "; other=1"}}, nil); status != http.StatusOK {
		t.Errorf("GET with the session cookie: %d %s, want 200", status, body)
	}
	for _, r := range fake.Requests() {
		if strings.Contains(r.Header.Get("Cookie"), cookieName) || strings.Contains(r.Header.Get("Cookie"), c.Value) {
			t.Errorf("the instance saw the session cookie: %q", r.Header.Get("Cookie"))
		}
	}
	if r := fake.Requests(); len(r) == 0 || r[len(r)-1].Header.Get("Cookie") != "other=1" {
		t.Errorf("the instance did not get the other cookies: %+v", r)
	}

	other := startGate(t, []string{fake.Addr()}, withKeys) // another random secret
	foreign := login(t, other, keyA)
	for desc, v := range map[string]string{
		"tampered":       cookieName + "=" + c.Value[:len(c.Value)-2] + "AA",
		"the raw key":    cookieName + "=" + keyA,
		"legacy cookie":  legacyCookieName + "=" + keyA,
		"another secret": foreign,
	} {
		status, h, body := gateDo(t, "GET", g.base+"/system_stats", http.Header{"Cookie": {v}}, nil)
		want := http.StatusUnauthorized
		if status != want || !strings.Contains(string(body), `"unauthorized"`) || h.Get("WWW-Authenticate") == "" {
			t.Errorf("GET with a %s cookie: %d %s, want 401", desc, status, body)
		}
	}

	for _, m := range []string{"GET", "POST"} {
		req, _ := http.NewRequest(m, g.base+"/logout", nil)
		req.Header.Set("Cookie", cookie)
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		cleared := sessionCookie(resp)
		if resp.StatusCode != http.StatusSeeOther || cleared == nil || cleared.Value != "" || cleared.MaxAge >= 0 {
			t.Errorf("%s /logout: %d %v, want 303 clearing the cookie", m, resp.StatusCode, resp.Header["Set-Cookie"])
		}
	}
}

// TestSessionSecret: with auth.session_secret set, a session outlives the
// process that made it (another server with the same secret accepts it);
// a session does not admit a key the configuration no longer has.
func TestSessionSecret(t *testing.T) {
	t.Parallel()
	fake := testkit.Mini(t, "0.3.65").Fallback(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	secret := func(c *config.Config) { withKeys(c); c.Auth.SessionSecret = strings.Repeat("k", 40) }
	first := startGate(t, []string{fake.Addr()}, secret)
	cookieA, cookieB := login(t, first, keyA), login(t, first, keyB)
	restarted := startGate(t, []string{fake.Addr()}, func(c *config.Config) {
		secret(c)
		c.Auth.Keys = []string{keyA} // keyB (key2) is gone
	})
	if status, _, body := gateDo(t, "GET", restarted.base+"/system_stats", http.Header{"Cookie": {cookieA}}, nil); status != http.StatusOK {
		t.Errorf("a session after a restart with the same secret: %d %s, want 200", status, body)
	}
	status, _, body := gateDo(t, "GET", restarted.base+"/system_stats", http.Header{"Cookie": {cookieB}}, nil)
	var e struct {
		Error struct{ Type string } `json:"error"`
	}
	if status != http.StatusUnauthorized || json.Unmarshal(body, &e) != nil || e.Error.Type != "unauthorized" {
		t.Errorf("a session of a removed key: %d %s, want 401", status, body)
	}
}
