package proxy

// How a request presents its API key, and the web UI's login.
//
// A browser logs in with POST /login (the key in the body, never in a URL)
// and gets a session cookie: opaque, signed, expiring (auth.Sessions),
// HttpOnly, SameSite=Strict, Secure over https. The cookie names the key
// and never holds it; it is taken off every request before forwarding.

import (
	"bytes"
	"encoding/json"
	"html"
	"strings"
	"time"

	"github.com/comfygate/comfygate/auth"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
	"github.com/valyala/fasthttp"
)

const (
	// cookieName is the web UI's session cookie (POST /login).
	cookieName = "comfygate_session"
	// legacyCookieName is the cookie that held a key itself. It is never
	// read; it is stripped before forwarding and cleared at login and
	// logout, so a browser that still has one drops it.
	legacyCookieName = "comfygate_token"
	// tokenParam carries a key on URLs that cannot have headers (a
	// WebSocket from a script, an <img src>).
	tokenParam = "token"
	// maxLoginBody caps the body of POST /login.
	maxLoginBody = 4 << 10
)

// authn admits requests with API keys on: it finds the key a request
// presents (header, token parameter or login cookie), serves /login and
// /logout, and applies the stricter browser origin policy.
type authn struct {
	cfg      *config.Config
	m        *metrics.Metrics // may be nil
	apiKeys  *auth.Keys
	sessions *auth.Sessions
}

// presentedKey resolves the key a request presents: Authorization: Bearer,
// the token query parameter or the session cookie, the first one present
// deciding. presented reports whether any was there (a refusal is then
// "invalid", not "missing").
func (s *authn) presentedKey(ctx *fasthttp.RequestCtx) (k *auth.Key, presented bool) {
	if a := ctx.Request.Header.Peek("Authorization"); len(a) > 7 && equalFoldASCII(a[:7], []byte("bearer ")) {
		return s.apiKeys.Find(bytes.TrimSpace(a[7:])), true
	}
	if t := ctx.QueryArgs().Peek(tokenParam); len(t) > 0 {
		return s.apiKeys.Find(t), true
	}
	if c := ctx.Request.Header.Cookie(cookieName); len(c) > 0 {
		return s.sessions.Resolve(s.apiKeys, c), true
	}
	return nil, false
}

// admit runs before routing. It answers (and returns false with the
// route) when the request is refused; otherwise it records the request's
// key and removes the key from the request, so no instance sees it.
func (s *authn) admit(ctx *fasthttp.RequestCtx, raw []byte) (string, bool) {
	if !s.apiKeys.On() {
		return "", true
	}
	path := string(raw)
	if path == "/login" || path == "/logout" {
		s.serveLogin(ctx, path == "/logout")
		return routeAuth, false
	}
	if path == "/health" && s.cfg.Auth.OpenHealth {
		return "", true
	}
	key, presented := s.presentedKey(ctx)
	if key == nil {
		reason := "missing"
		if presented {
			reason = "invalid"
		}
		authRefused(s.m, reason)
		writeJSONError(ctx, fasthttp.StatusUnauthorized, "unauthorized",
			"an API key is required: Authorization: Bearer <key>, ?token=<key>, or log in at /login in a browser")
		if reason == "invalid" {
			ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="comfygate", error="invalid_token"`)
		} else {
			ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="comfygate"`)
		}
		return routeAuth, false
	}
	operator := path == "/metrics" || path == "/stats" || path == "/dashboard" || strings.HasPrefix(path, "/dashboard/")
	if operator != key.Metrics && (operator || key.MetricsOnly) {
		authRefused(s.m, "forbidden")
		writeJSONError(ctx, fasthttp.StatusForbidden, "forbidden", "this key may not use this route")
		return routeAuth, false
	}
	if !s.keyOriginAllowed(&ctx.Request.Header) {
		authRefused(s.m, "origin")
		ctx.SetStatusCode(fasthttp.StatusForbidden)
		return routeForbidden, false
	}
	ctx.SetUserValue(userValueKey, key)
	stripKey(ctx)
	return "", true
}

// keyOriginAllowed is the stricter browser policy with keys on: a request
// that can change state (not GET/HEAD, or a WebSocket handshake) and
// carries an Origin must come from the request's own Host or an origin in
// auth.allowed_origins, whatever the Host is (ComfyUI checks only
// loopback Hosts). A login cookie would otherwise let any site a logged-in
// user visits post prompts or open the WebSocket.
func (s *authn) keyOriginAllowed(h *fasthttp.RequestHeader) bool {
	origin := h.PeekBytes(hdrOrigin)
	if len(origin) == 0 || ((h.IsGet() || h.IsHead()) && !bytes.EqualFold(h.PeekBytes(hdrUpgrade), valueWebSocket)) {
		return true
	}
	o := string(origin)
	for _, a := range s.cfg.Auth.AllowedOrigins {
		if strings.EqualFold(o, a) {
			return true
		}
	}
	_, rest, ok := strings.Cut(o, "://")
	return ok && rest != "" && strings.EqualFold(rest, string(h.Host()))
}

// stripKey removes the key from the request before it is forwarded.
func stripKey(ctx *fasthttp.RequestCtx) {
	h := &ctx.Request.Header
	if a := h.Peek("Authorization"); len(a) > 7 && equalFoldASCII(a[:7], []byte("bearer ")) {
		h.Del("Authorization")
	}
	h.DelCookie(cookieName)
	h.DelCookie(legacyCookieName)
	if len(ctx.QueryArgs().Peek(tokenParam)) == 0 && !ctx.QueryArgs().Has(tokenParam) {
		return
	}
	// Rebuild the raw target without the parameter, leaving every other
	// byte (a %2F in the path, the query's own encoding) as it was.
	uri := ctx.Request.Header.RequestURI()
	p, q, _ := bytes.Cut(uri, []byte("?"))
	var kept [][]byte
	for _, part := range bytes.Split(q, []byte("&")) {
		name, _, _ := bytes.Cut(part, []byte("="))
		if string(name) != tokenParam {
			kept = append(kept, part)
		}
	}
	out := append([]byte(nil), p...)
	if len(kept) > 0 {
		out = append(out, '?')
		out = append(out, bytes.Join(kept, []byte("&"))...)
	}
	ctx.Request.SetRequestURIBytes(out)
}

const loginPage = `<!doctype html><meta charset="utf-8"><title>comfygate</title>
<form method="post" action="login"><p>%s</p><label>API key <input name="key" type="password" autocomplete="current-password" autofocus></label> <button>Log in</button></form>`

// serveLogin serves /login and /logout (keys on, before any key is asked
// for):
//   - GET /login: a form that posts the key; a token in the query is
//     ignored (a key never logs in from a URL);
//   - POST /login: the key as form field "key"
//     (application/x-www-form-urlencoded) or JSON {"key": "..."}; a valid
//     key gets the session cookie and 303 to ./, a wrong one 401;
//   - GET or POST /logout: clears the cookie, 303 to ./.
func (s *authn) serveLogin(ctx *fasthttp.RequestCtx, logout bool) {
	ctx.Response.Header.Set("Cache-Control", "no-store")
	if logout {
		if !ctx.IsGet() && !ctx.IsHead() && !ctx.IsPost() {
			writeJSONError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "use GET or POST /logout")
			return
		}
		s.setSession(ctx, "", -1)
		seeUI(ctx)
		return
	}
	switch {
	case ctx.IsGet() || ctx.IsHead():
		loginForm(ctx, fasthttp.StatusOK, "comfygate needs an API key.")
		return
	case !ctx.IsPost():
		writeJSONError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "use GET or POST /login")
		return
	}
	if !s.keyOriginAllowed(&ctx.Request.Header) {
		// Another site must not log a browser in under its own key.
		authRefused(s.m, "origin")
		writeJSONError(ctx, fasthttp.StatusForbidden, "forbidden", "login from another origin")
		return
	}
	key, asJSON, ok := loginKey(ctx)
	if !ok {
		return
	}
	k := s.apiKeys.Find(key)
	if k == nil {
		authRefused(s.m, "invalid")
		if asJSON {
			writeJSONError(ctx, fasthttp.StatusUnauthorized, "unauthorized", "that key is not valid")
			return
		}
		loginForm(ctx, fasthttp.StatusUnauthorized, "That key is not valid.")
		return
	}
	s.setSession(ctx, s.sessions.Mint(k, s.cfg.Auth.CookieMaxAge), int(s.cfg.Auth.CookieMaxAge/time.Second))
	seeUI(ctx)
}

// loginKey reads the key of POST /login. It answers and reports false
// when the body cannot hold one.
func loginKey(ctx *fasthttp.RequestCtx) (key []byte, asJSON, ok bool) {
	ct, _, _ := bytes.Cut(ctx.Request.Header.ContentType(), []byte(";"))
	ct = bytes.TrimSpace(ct)
	asJSON = equalFoldASCII(ct, []byte("application/json"))
	if !asJSON && !equalFoldASCII(ct, []byte("application/x-www-form-urlencoded")) {
		writeJSONError(ctx, fasthttp.StatusUnsupportedMediaType, "unsupported_media_type",
			"POST /login takes application/x-www-form-urlencoded (field key) or application/json {\"key\": \"...\"}")
		return nil, asJSON, false
	}
	cl := ctx.Request.Header.ContentLength()
	if cl < 0 {
		writeJSONError(ctx, fasthttp.StatusLengthRequired, "length_required", "POST /login needs a Content-Length")
		return nil, asJSON, false
	}
	if cl > maxLoginBody {
		ctx.SetConnectionClose() // the body is not read
		writeJSONError(ctx, fasthttp.StatusRequestEntityTooLarge, "body_too_large", "the login body is over 4 KiB")
		return nil, asJSON, false
	}
	body := ctx.Request.Body() // within maxLoginBody (Content-Length above)
	if asJSON {
		// Exact-case field, as everywhere comfygate reads client JSON.
		var m map[string]json.RawMessage
		var v string
		if json.Unmarshal(body, &m) != nil || json.Unmarshal(m["key"], &v) != nil {
			writeJSONError(ctx, fasthttp.StatusBadRequest, "bad_request", `want a JSON object {"key": "<API key>"}`)
			return nil, asJSON, false
		}
		return []byte(v), asJSON, true
	}
	var args fasthttp.Args
	args.ParseBytes(body)
	return append([]byte(nil), args.Peek("key")...), asJSON, true
}

// setSession sets the session cookie (an empty value with maxAge -1
// clears it) and clears the legacy cookie that held a key.
func (s *authn) setSession(ctx *fasthttp.RequestCtx, value string, maxAge int) {
	secure := ctx.IsTLS() || string(ctx.Request.Header.Peek("X-Forwarded-Proto")) == "https"
	for _, name := range []string{cookieName, legacyCookieName} {
		c := fasthttp.AcquireCookie()
		c.SetKey(name)
		c.SetPath("/")
		c.SetHTTPOnly(true)
		c.SetSameSite(fasthttp.CookieSameSiteStrictMode)
		c.SetSecure(secure)
		if name == cookieName && maxAge > 0 {
			c.SetValue(value)
			c.SetMaxAge(maxAge)
		} else {
			c.SetValue("")
			c.SetMaxAge(-1)
		}
		ctx.Response.Header.SetCookie(c)
		fasthttp.ReleaseCookie(c)
	}
}

// seeUI redirects to the web UI next to /login. The Location stays
// relative, so a UI mounted under a path prefix by another proxy works.
func seeUI(ctx *fasthttp.RequestCtx) {
	ctx.SetStatusCode(fasthttp.StatusSeeOther)
	ctx.Response.Header.Set("Location", "./")
}

// loginForm answers the login form with a message.
func loginForm(ctx *fasthttp.RequestCtx, status int, msg string) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBodyString(strings.Replace(loginPage, "%s", html.EscapeString(msg), 1))
}
