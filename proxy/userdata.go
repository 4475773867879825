package proxy

// User data per API key. The web UI keeps saved workflows in /userdata and
// its settings in /settings, both in the home instance's user directory,
// which with keys on would be shared by every key. For a key that is
// isolated (keys on, auth.isolation, not admin):
//   - /userdata (list, file GET/POST/DELETE, move) and /v2/userdata work in
//     the key's own directory, comfygate-keys/<16 hex of sha256(key name)>,
//     of the instance's user directory: the path in the request gets the
//     directory in front, and paths in the answer lose it, so the web UI
//     sees its own names;
//   - /settings and /settings/{id} read and write the key's own settings,
//     kept as comfy.settings.json in the key's directory through the
//     instance's /userdata routes;
//   - GET /users passes (it holds no user data); other methods, and every
//     /internal route (the fleet's logs, file lists and paths), need an
//     admin key;
//   - any other shape under these routes is 404, and a path that would
//     reach them only after dot segments are resolved is 400.
// Admin keys, and every key with isolation off, see the user directory as
// it is.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"github.com/comfygate/comfygate/metrics"
	"net/url"
	"path"
	"strings"
	"sync"

	"github.com/comfygate/comfygate/auth"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// userData scopes user data (/userdata, /settings, /users, /internal) to
// an isolated key's own directory on the home instance.
type userData struct {
	pool *upstream.Pool
	m    *metrics.Metrics // may be nil
	fwd  *forwarder
	keys *keyGuard
	// settingsMu holds one *sync.Mutex per key name: a key's settings
	// writes read, merge and write back its file one at a time.
	settingsMu sync.Map
}

// keyDataRoot holds the per-key directories inside an instance's user
// directory.
const keyDataRoot = "comfygate-keys"

// keySettingsFile is a key's settings inside its directory (ComfyUI's own
// name for a user's settings).
const keySettingsFile = "comfy.settings.json"

// maxSettingsBody caps a settings write, read whole to merge it.
const maxSettingsBody = 1 << 20

// keyDir is k's directory inside the user directory.
func keyDir(k *auth.Key) string {
	h := sha256.Sum256([]byte(k.Name))
	return keyDataRoot + "/" + hex.EncodeToString(h[:])[:16]
}

// userRoute is what scopeUserData tells apart.
type userRoute int

const (
	udNone     userRoute = iota
	udList               // /userdata?dir=
	udFile               // /userdata/{file}
	udMove               // /userdata/{file}/move/{dest}
	udListV2             // /v2/userdata?path=
	udSettings           // /settings
	udSetting            // /settings/{id}
	udUsers              // /users
	udInternal           // /internal, /internal/...
	udUnknown            // another shape under /userdata, /v2/userdata, /settings, /users
)

// classifyUserData tells the user data route of p (the path without /api)
// and returns its segments.
func classifyUserData(p []byte) (userRoute, [][]byte) {
	if len(p) == 0 || p[0] != '/' {
		return udNone, nil
	}
	segs := bytes.Split(p[1:], []byte("/"))
	n := len(segs)
	switch string(segs[0]) {
	case "userdata":
		switch {
		case n == 1:
			return udList, segs
		case n == 2 && len(segs[1]) > 0:
			return udFile, segs
		case n == 4 && len(segs[1]) > 0 && string(segs[2]) == "move" && len(segs[3]) > 0:
			return udMove, segs
		}
		return udUnknown, segs
	case "v2":
		if n >= 2 && string(segs[1]) == "userdata" {
			if n == 2 {
				return udListV2, segs
			}
			return udUnknown, segs
		}
	case "settings":
		switch {
		case n == 1:
			return udSettings, segs
		case n == 2 && len(segs[1]) > 0:
			return udSetting, segs
		}
		return udUnknown, segs
	case "users":
		if n == 1 {
			return udUsers, segs
		}
		return udUnknown, segs
	case "internal":
		return udInternal, segs
	}
	return udNone, nil
}

// scopeUserData applies per-key user data to a request the router would
// forward to the home instance (p is the path without /api). It reports
// whether it answered: refused, or forwarded in the key's own directory
// (or served from it, for settings). When it returns false the request
// goes to the home instance unchanged: keys off, an admin key, isolation
// off, a route that holds no user data, or GET /users.
func (s *userData) scopeUserData(ctx *fasthttp.RequestCtx, k *auth.Key, p []byte) (handled bool) {
	if !s.keys.isolated(k) {
		return false
	}
	// Dot and empty segments never get here: canonicalPath refuses or
	// redirects them before routing (canon.go).
	route, segs := classifyUserData(p)
	if route == udNone {
		return false
	}
	raw := splitPath(rawRequestURI(ctx))
	prefix := string(raw[:len(raw)-len(p)]) // "/api" or ""
	forbid := func(msg string) bool {
		authRefused(s.m, "forbidden")
		writeJSONError(ctx, fasthttp.StatusForbidden, "forbidden", msg)
		return true
	}
	dir := keyDir(k)
	dirSeg := url.PathEscape(dir + "/") // "comfygate-keys%2F<hex>%2F"
	switch route {
	case udInternal:
		return forbid("/internal routes show the whole fleet's logs, files and paths and need an admin key")
	case udUsers:
		if ctx.IsGet() || ctx.IsHead() {
			return false
		}
		return forbid("creating ComfyUI users acts on every key's user data and needs an admin key")
	case udUnknown:
		writeJSONError(ctx, fasthttp.StatusNotFound, "not_found", "no such user data route")
		return true
	case udSettings, udSetting:
		s.keySettings(ctx, k, prefix, segs)
		return true
	case udFile, udMove:
		if !s.userPathOK(ctx, segs[1], fileSegment) {
			return true
		}
		uri := prefix + "/userdata/" + dirSeg + string(segs[1])
		if route == udMove {
			if !s.userPathOK(ctx, segs[3], fileSegment) {
				return true
			}
			uri += "/move/" + dirSeg + string(segs[3])
		}
		o := &forwardOpts{uri: appendQuery([]byte(uri), ctx)}
		if ctx.IsPost() {
			o.rewrite = unscopeAnswer(dir)
		}
		s.fwd.forwardPicked(ctx, s.fwd.home, o)
		return true
	case udList, udListV2:
		param, kind := "dir", dirValue
		if route == udListV2 {
			param, kind = "path", v2Value
		}
		args := ctx.QueryArgs()
		val := args.Peek(param)
		if route == udList && len(val) == 0 {
			// ComfyUI's own answer.
			ctx.SetStatusCode(fasthttp.StatusBadRequest)
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetBodyString("Directory not provided")
			return true
		}
		scoped := dir
		if len(val) > 0 {
			if !s.userPathOK(ctx, val, kind) {
				return true
			}
			scoped += "/" + string(val)
		}
		// The query is rebuilt from the one parse: the instance reads the
		// same single value comfygate checked.
		var q fasthttp.Args
		seen := false
		for key, v := range args.All() {
			if string(key) != param {
				q.AddBytesKV(key, v)
			} else if !seen {
				seen = true
				q.Add(param, scoped)
			}
		}
		if !seen {
			q.Add(param, scoped)
		}
		uri := append([]byte(prefix), p...)
		uri = append(uri, '?')
		uri = q.AppendBytes(uri)
		o := &forwardOpts{uri: uri}
		if route == udListV2 {
			o.rewrite = unscopeAnswer(dir)
		}
		s.fwd.forwardPicked(ctx, s.fwd.home, o)
		if route == udListV2 && len(val) == 0 && ctx.Response.StatusCode() == fasthttp.StatusNotFound {
			// A key's directory that does not exist yet is an empty
			// user directory, as ComfyUI answers for a new user.
			writeJSON(ctx, fasthttp.StatusOK, []byte("[]"))
		}
		return true
	}
	return false
}

// appendQuery appends the request's raw query ("?..."), if any, to uri.
func appendQuery(uri []byte, ctx *fasthttp.RequestCtx) []byte {
	if _, q, ok := bytes.Cut(rawRequestURI(ctx), []byte("?")); ok {
		uri = append(append(uri, '?'), q...)
	}
	return uri
}

// pathKind is how ComfyUI decodes a user data path it is given.
type pathKind int

const (
	// fileSegment: a raw {file} segment, unescaped by the router, then
	// unquoted again when a '%' is left.
	fileSegment pathKind = iota
	// dirValue: a decoded query value, unquoted again when a '%' is left.
	dirValue
	// v2Value: /v2/userdata's decoded path, unquoted, then once more when
	// a '%' is left.
	v2Value
)

// userPathOK checks a user data path at every stage of ComfyUI's decoding
// (kind). A path that is absolute, has a drive letter, a backslash or
// NUL, or a ".." segment at any stage is refused (it could leave the
// key's directory), as is a file that names the directory itself. It
// answers and reports false when refused.
func (s *userData) userPathOK(ctx *fasthttp.RequestCtx, v []byte, kind pathKind) bool {
	cur := string(v)
	stages := []string{cur}
	if kind == fileSegment {
		u, err := url.PathUnescape(cur)
		if err != nil {
			writeJSONError(ctx, fasthttp.StatusBadRequest, "bad_path", "a user data file name with a bad %-escape")
			return false
		}
		cur = u
		stages = append(stages, cur)
	}
	if kind == v2Value {
		cur = unquotePy(cur)
		stages = append(stages, cur)
	}
	if strings.Contains(cur, "%") {
		cur = unquotePy(cur)
		stages = append(stages, cur)
	}
	for _, st := range stages {
		if !userPathSafe(st) {
			authRefused(s.m, "forbidden")
			writeJSONError(ctx, fasthttp.StatusForbidden, "forbidden", "user data paths stay inside the key's own directory")
			return false
		}
	}
	if kind == fileSegment && path.Clean(cur) == "." {
		writeJSONError(ctx, fasthttp.StatusBadRequest, "bad_path", "a user data file needs a name")
		return false
	}
	return true
}

// userPathSafe reports whether p, joined to a directory, stays inside it.
func userPathSafe(p string) bool {
	if p == "" {
		return true
	}
	if strings.ContainsAny(p, "\\\x00") || p[0] == '/' ||
		(len(p) >= 2 && p[1] == ':' && ('a' <= p[0]|0x20 && p[0]|0x20 <= 'z')) {
		return false
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return false
		}
	}
	return true
}

// unquotePy is Python's urllib.parse.unquote: valid %XX escapes are
// decoded, anything else is kept.
func unquotePy(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if d, ok := unhex2(s[i+1], s[i+2]); ok {
				b.WriteByte(d)
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unscopeAnswer takes the key's directory off the paths of a user data
// answer (a JSON string, a file info object, a /v2/userdata listing), so
// the client sees the names it chose. A path is a JSON string that starts
// with the directory: the quote that opens it follows the start, '[', ':',
// ',' or white space, never a backslash.
func unscopeAnswer(dir string) func(*upstream.Instance, int, []byte) []byte {
	from := []byte(`"` + dir + `/`)
	return func(_ *upstream.Instance, status int, body []byte) []byte {
		if status != fasthttp.StatusOK || !bytes.Contains(body, from) {
			return body
		}
		out := make([]byte, 0, len(body))
		for {
			i := bytes.Index(body, from)
			if i < 0 {
				return append(out, body...)
			}
			opens := i == 0 || bytes.IndexByte([]byte("[:, \t\r\n"), body[i-1]) >= 0
			out = append(out, body[:i+1]...)
			if opens {
				body = body[i+len(from):]
			} else {
				body = body[i+1:]
			}
		}
	}
}

// keySettings serves /settings and /settings/{id} from the key's own
// settings file (GET: the object, or one value or null; POST: merges a
// value or an object, answering an empty 200 as ComfyUI does).
func (s *userData) keySettings(ctx *fasthttp.RequestCtx, k *auth.Key, prefix string, segs [][]byte) {
	var id string
	if len(segs) == 2 {
		var ok bool
		if id, ok = unescapeSegment(segs[1]); !ok {
			writeJSONError(ctx, fasthttp.StatusBadRequest, "bad_request", "a setting id that cannot be read")
			return
		}
	}
	uri := prefix + "/userdata/" + url.PathEscape(keyDir(k)+"/"+keySettingsFile)
	switch {
	case ctx.IsGet() || ctx.IsHead():
		m, ok := s.loadKeySettings(ctx, uri)
		if !ok {
			return
		}
		if len(segs) == 2 {
			v := m[id]
			if v == nil {
				v = json.RawMessage("null")
			}
			writeJSON(ctx, fasthttp.StatusOK, v)
			return
		}
		b, _ := json.Marshal(m)
		writeJSON(ctx, fasthttp.StatusOK, b)
	case ctx.IsPost():
		cl := ctx.Request.Header.ContentLength()
		if cl < 0 {
			writeJSONError(ctx, fasthttp.StatusLengthRequired, "length_required", "a settings write needs a Content-Length")
			return
		}
		if cl > maxSettingsBody {
			ctx.SetConnectionClose()
			writeJSONError(ctx, fasthttp.StatusRequestEntityTooLarge, "body_too_large", "a settings write is over 1 MiB")
			return
		}
		body := ctx.Request.Body()
		var update map[string]json.RawMessage
		if len(segs) == 2 {
			if !json.Valid(body) {
				writeJSONError(ctx, fasthttp.StatusBadRequest, "bad_request", "a setting's value must be JSON")
				return
			}
			update = map[string]json.RawMessage{id: append(json.RawMessage(nil), body...)}
		} else {
			u, err := comfyapi.ParseSettings(body)
			if err != nil {
				writeJSONError(ctx, fasthttp.StatusBadRequest, "bad_request", "POST /settings takes a JSON object")
				return
			}
			update = u
		}
		mu := s.settingsLock(k.Name)
		mu.Lock()
		defer mu.Unlock()
		m, ok := s.loadKeySettings(ctx, uri)
		if !ok {
			return
		}
		for key, v := range update {
			m[key] = v
		}
		b, _ := json.Marshal(m)
		status, answer, err := s.homeCall(ctx, "POST", uri+"?overwrite=true", b)
		if err != nil {
			s.fwd.writeError(ctx, err)
			return
		}
		if status != fasthttp.StatusOK {
			ctx.SetStatusCode(status)
			ctx.SetBody(answer)
			return
		}
		ctx.Response.Reset()
		ctx.SetStatusCode(fasthttp.StatusOK)
	default:
		writeJSONError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "settings take GET or POST")
	}
}

// settingsLock is the lock of one key's settings file: its writes read,
// merge and write it back one at a time.
func (s *userData) settingsLock(name string) *sync.Mutex {
	mu, _ := s.settingsMu.LoadOrStore(name, &sync.Mutex{})
	return mu.(*sync.Mutex)
}

// loadKeySettings reads a key's settings file (none yet: no settings). It
// answers and reports false when the instance cannot be asked.
func (s *userData) loadKeySettings(ctx *fasthttp.RequestCtx, uri string) (map[string]json.RawMessage, bool) {
	status, body, err := s.homeCall(ctx, "GET", uri, nil)
	if err != nil {
		s.fwd.writeError(ctx, err)
		return nil, false
	}
	m := map[string]json.RawMessage{}
	switch status {
	case fasthttp.StatusOK:
		// An unreadable file is no settings, as for a fresh user.
		if got, err := comfyapi.ParseSettings(body); err == nil {
			m = got
		}
	case fasthttp.StatusNotFound:
	default:
		ctx.SetStatusCode(status)
		ctx.SetBody(body)
		return nil, false
	}
	return m, true
}

// homeCall sends comfygate's own request for the client (with the
// client's headers, such as Comfy-User) to the home instance, another one
// when it cannot be reached, and returns the answer read whole.
func (s *userData) homeCall(ctx *fasthttp.RequestCtx, method, uri string, body []byte) (int, []byte, error) {
	var tried []*upstream.Instance
	var last error
	for range s.pool.Len() + 1 {
		inst, err := s.fwd.home(tried...)
		if err != nil {
			if last != nil {
				err = last
			}
			return 0, nil, err
		}
		req := fasthttp.AcquireRequest()
		copyRequestHeaders(ctx, &req.Header, inst)
		req.Header.SetMethod(method)
		req.Header.SetRequestURI(uri)
		req.Header.Del("Accept-Encoding")
		req.Header.Del("Content-Type")
		req.UseHostHeader = true
		if body != nil {
			req.Header.SetContentType("application/json")
			req.SetBody(body)
		}
		setInstance(ctx, inst)
		a, err := inst.Transport().Do(context.Background(), req, upstream.DoOpts{Source: upstream.ByClient})
		if err != nil {
			if upstream.NotSent(err) {
				tried = append(tried, inst)
				last = err
				continue
			}
			return 0, nil, err
		}
		status := a.StatusCode()
		b, err := a.ReadAll(maxSmallAnswer)
		if err != nil {
			return 0, nil, err
		}
		return status, b, nil
	}
	if last == nil {
		last = upstream.ErrNoUpstream
	}
	return 0, nil, last
}
