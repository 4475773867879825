package comfysim

// The user data routes of ComfyUI's app/user_manager.py, over an in-memory
// user directory (one per simulated server, kept across Restart as the
// directory on disk would be): GET /userdata?dir= (list), GET, POST and
// DELETE /userdata/{file}, POST /userdata/{file}/move/{dest}, and
// GET /v2/userdata?path=. As in ComfyUI, a {file} segment is unquoted
// once more when it still holds a '%' after routing, and a path that
// leaves the user directory is refused.

import (
	"net/http"
	"net/url"
	"path"
	"sort"
	"strings"
	"time"
)

// userFile is one file of the simulated user directory.
type userFile struct {
	data     []byte
	modified time.Time
}

// unquotePy is Python's urllib.parse.unquote: valid %XX escapes are
// decoded, anything else is kept as it is.
func unquotePy(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			v, _ := url.PathUnescape(s[i : i+3])
			b.WriteString(v)
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// userPath is get_request_user_filepath: the path of file inside the user
// directory ("." for the directory itself), or false when it leaves it.
func userPath(file string) (string, bool) {
	if strings.Contains(file, "%") {
		file = unquotePy(file)
	}
	if strings.HasPrefix(file, "/") {
		return "", false
	}
	c := path.Clean(file)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", false
	}
	return c, true
}

// userDirExists reports whether dir ("." for the user directory) holds a file.
func (u *userStore) userDirExists(dir string) bool {
	if dir == "." {
		return len(u.userdata) > 0
	}
	for name := range u.userdata {
		if strings.HasPrefix(name, dir+"/") {
			return true
		}
	}
	return false
}

func (u *userStore) userFileInfo(name, relTo string, f *userFile) ordered {
	rel := name
	if relTo != "." {
		rel = strings.TrimPrefix(name, relTo+"/")
	}
	ms := f.modified.UnixMilli()
	return ordered{{"path", rel}, {"size", len(f.data)}, {"modified", ms}, {"created", ms}}
}

// userdataRoutes are /userdata's and /v2/userdata's routes.
type userdataRoutes struct{ *instance }

func (in userdataRoutes) listUserData(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	q := r.URL.Query()
	dir := q.Get("dir")
	if dir == "" {
		writeText(w, http.StatusBadRequest, "Directory not provided")
		return
	}
	p, ok := userPath(dir)
	if !ok {
		writeText(w, http.StatusForbidden, "Invalid directory")
		return
	}
	s := in.s
	s.userMu.Lock()
	defer s.userMu.Unlock()
	if !s.userDirExists(p) {
		writeText(w, http.StatusNotFound, "Directory not found")
		return
	}
	recurse := strings.ToLower(q.Get("recurse")) == "true"
	fullInfo := strings.ToLower(q.Get("full_info")) == "true"
	split := strings.ToLower(q.Get("split")) == "true"
	var names []string
	for name := range s.userdata {
		rel := name
		if p != "." {
			var under bool
			if rel, under = strings.CutPrefix(name, p+"/"); !under {
				continue
			}
		}
		if recurse || !strings.Contains(rel, "/") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	out := []any{}
	for _, name := range names {
		info := s.userFileInfo(name, p, s.userdata[name])
		rel := info[0].V.(string)
		switch {
		case fullInfo:
			out = append(out, info)
		case split:
			out = append(out, append([]string{rel}, strings.Split(rel, "/")...))
		default:
			out = append(out, rel)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (in userdataRoutes) listUserDataV2(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	rel := unquotePy(r.URL.Query().Get("path"))
	p := "."
	if rel != "" {
		var ok bool
		if p, ok = userPath(rel); !ok {
			writeText(w, http.StatusBadRequest, "Invalid path requested")
			return
		}
	}
	s := in.s
	s.userMu.Lock()
	defer s.userMu.Unlock()
	if _, isFile := s.userdata[p]; isFile && p != "." {
		writeText(w, http.StatusBadRequest, "Requested path is not a directory")
		return
	}
	if !s.userDirExists(p) {
		if p == "." {
			writeJSON(w, http.StatusOK, []any{})
			return
		}
		writeText(w, http.StatusNotFound, "Requested path not found")
		return
	}
	type entry struct {
		dir  bool
		name string
		v    ordered
	}
	var entries []entry
	dirs := map[string]bool{}
	for name, f := range s.userdata {
		under := name
		if p != "." {
			var ok bool
			if under, ok = strings.CutPrefix(name, p+"/"); !ok {
				continue
			}
		}
		parts := strings.Split(under, "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/")
			if p != "." {
				d = p + "/" + d
			}
			if !dirs[d] {
				dirs[d] = true
				entries = append(entries, entry{true, parts[i-1], ordered{{"name", parts[i-1]}, {"path", d}, {"type", "directory"}}})
			}
		}
		base := parts[len(parts)-1]
		entries = append(entries, entry{false, base, ordered{{"name", base}, {"path", name}, {"type", "file"},
			{"size", len(f.data)}, {"modified", float64(f.modified.UnixMilli()) / 1000}}})
	}
	sort.SliceStable(entries, func(i, j int) bool {
		if entries[i].dir != entries[j].dir {
			return entries[i].dir
		}
		return strings.ToLower(entries[i].name) < strings.ToLower(entries[j].name)
	})
	out := make([]any, len(entries))
	for i, e := range entries {
		out[i] = e.v
	}
	writeJSON(w, http.StatusOK, out)
}

// userFileParam resolves a {file} or {dest} parameter; it answers and
// returns false when it is refused.
func userFileParam(w http.ResponseWriter, p map[string]string, param string) (string, bool) {
	file := p[param]
	if file == "" {
		writeEmpty(w, http.StatusBadRequest)
		return "", false
	}
	name, ok := userPath(file)
	if !ok || name == "." {
		writeEmpty(w, http.StatusForbidden)
		return "", false
	}
	return name, true
}

func (in userdataRoutes) getUserData(w http.ResponseWriter, _ *http.Request, p map[string]string) {
	name, ok := userFileParam(w, p, "file")
	if !ok {
		return
	}
	s := in.s
	s.userMu.Lock()
	f := s.userdata[name]
	s.userMu.Unlock()
	if f == nil {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	ct := "application/octet-stream"
	if strings.HasSuffix(name, ".json") {
		ct = "application/json"
	}
	h := w.Header()
	h.Set("Content-Type", ct)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Disposition", "attachment")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(f.data)
}

// answerUserFile is post_userdata's and move_userdata's answer.
func (u *userStore) answerUserFile(w http.ResponseWriter, r *http.Request, name string, f *userFile) {
	if strings.ToLower(r.URL.Query().Get("full_info")) == "true" {
		writeJSON(w, http.StatusOK, u.userFileInfo(name, ".", f))
		return
	}
	writeJSON(w, http.StatusOK, name)
}

func (in userdataRoutes) postUserData(w http.ResponseWriter, r *http.Request, p map[string]string) {
	name, ok := userFileParam(w, p, "file")
	if !ok {
		return
	}
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	s := in.s
	s.userMu.Lock()
	defer s.userMu.Unlock()
	if _, exists := s.userdata[name]; exists && r.URL.Query().Get("overwrite") == "false" {
		writeText(w, http.StatusConflict, "File already exists")
		return
	}
	if s.userdata == nil {
		s.userdata = map[string]*userFile{}
	}
	f := &userFile{data: body, modified: time.Now()}
	s.userdata[name] = f
	s.answerUserFile(w, r, name, f)
}

func (in userdataRoutes) deleteUserData(w http.ResponseWriter, _ *http.Request, p map[string]string) {
	name, ok := userFileParam(w, p, "file")
	if !ok {
		return
	}
	s := in.s
	s.userMu.Lock()
	defer s.userMu.Unlock()
	if s.userdata[name] == nil {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	delete(s.userdata, name)
	writeEmpty(w, http.StatusNoContent)
}

func (in userdataRoutes) moveUserData(w http.ResponseWriter, r *http.Request, p map[string]string) {
	src, ok := userFileParam(w, p, "file")
	if !ok {
		return
	}
	s := in.s
	s.userMu.Lock()
	defer s.userMu.Unlock()
	f := s.userdata[src]
	if f == nil {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	dest, ok := userFileParam(w, p, "dest")
	if !ok {
		return
	}
	if _, exists := s.userdata[dest]; exists && r.URL.Query().Get("overwrite") == "false" {
		writeText(w, http.StatusConflict, "File already exists")
		return
	}
	delete(s.userdata, src)
	s.userdata[dest] = f
	s.answerUserFile(w, r, dest, f)
}

// UserData returns a copy of the simulated user directory: path (relative
// to it, '/'-separated) -> content.
func (u *userStore) UserData() map[string][]byte {
	u.userMu.Lock()
	defer u.userMu.Unlock()
	out := make(map[string][]byte, len(u.userdata))
	for name, f := range u.userdata {
		out[name] = append([]byte(nil), f.data...)
	}
	return out
}
