package proxy

// How a request presents its API key, and the web UI's login.

import (
	"bytes"
	"html"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

const (
	// cookieName is the web UI's login cookie (GET /login?token=KEY).
	cookieName = "comfygate_token"
	// tokenParam carries a key on URLs that cannot have headers (a
	// WebSocket from a browser, an <img src>).
	tokenParam = "token"
)

// presentedKey takes the key from Authorization: Bearer, the token query
// parameter or the login cookie, in that order.
func presentedKey(ctx *fasthttp.RequestCtx) []byte {
	if a := ctx.Request.Header.Peek("Authorization"); len(a) > 7 && equalFoldASCII(a[:7], []byte("bearer ")) {
		return bytes.TrimSpace(a[7:])
	}
	if t := ctx.QueryArgs().Peek(tokenParam); len(t) > 0 {
		return t
	}
	return ctx.Request.Header.Cookie(cookieName)
}

// stripKey removes the key from the request before it is forwarded.
func stripKey(ctx *fasthttp.RequestCtx) {
	h := &ctx.Request.Header
	if a := h.Peek("Authorization"); len(a) > 7 && equalFoldASCII(a[:7], []byte("bearer ")) {
		h.Del("Authorization")
	}
	h.DelCookie(cookieName)
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
<form method="get" action="login"><p>%s</p><label>API key <input name="token" type="password" autofocus></label> <button>Log in</button></form>`

// serveLogin serves GET /login?token=KEY (sets the HttpOnly login cookie
// the web UI then sends with every request and its WebSocket, and
// redirects to the UI) and GET /logout (clears it). Without a token it
// answers a small form asking for one.
func (s *Server) serveLogin(ctx *fasthttp.RequestCtx, logout bool) {
	c := fasthttp.AcquireCookie()
	defer fasthttp.ReleaseCookie(c)
	c.SetKey(cookieName)
	c.SetPath("/")
	c.SetHTTPOnly(true)
	c.SetSameSite(fasthttp.CookieSameSiteLaxMode)
	c.SetSecure(ctx.IsTLS() || string(ctx.Request.Header.Peek("X-Forwarded-Proto")) == "https")
	if logout {
		c.SetValue("")
		c.SetMaxAge(-1)
		ctx.Response.Header.SetCookie(c)
		ctx.Redirect("./", fasthttp.StatusSeeOther)
		return
	}
	token := ctx.QueryArgs().Peek(tokenParam)
	if len(token) == 0 || s.sec.keys.Find(token) == nil {
		status, msg := fasthttp.StatusOK, "comfygate needs an API key."
		if len(token) > 0 {
			s.authRefused("invalid")
			status, msg = fasthttp.StatusUnauthorized, "That key is not valid."
		}
		ctx.SetStatusCode(status)
		ctx.SetContentType("text/html; charset=utf-8")
		ctx.Response.Header.Set("Cache-Control", "no-store")
		ctx.SetBodyString(strings.Replace(loginPage, "%s", html.EscapeString(msg), 1))
		return
	}
	c.SetValueBytes(token)
	c.SetMaxAge(int(s.cfg.Auth.CookieMaxAge / time.Second))
	ctx.Response.Header.SetCookie(c)
	ctx.Response.Header.Set("Cache-Control", "no-store")
	ctx.Redirect("./", fasthttp.StatusSeeOther)
}
