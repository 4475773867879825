package comfysim

import (
	"net/http"
	"strings"
	"testing"
)

// TestUserData: the user data routes answer as ComfyUI's user_manager.py
// does: a %2F-encoded file name is one path, the POST answer is the path
// from the user directory, a list is relative to its dir, /v2/userdata
// gives paths from the user directory with directories first, move and
// delete work, and a name that leaves the user directory is refused.
func TestUserData(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{})
	base := "http://" + s.Addr()
	for _, tc := range []struct {
		method, path, body string
		want               int
		answer             string
	}{
		{"GET", "/api/v2/userdata", "", 200, `[]`},
		{"GET", "/api/userdata?dir=workflows", "", 404, "Directory not found"},
		{"POST", "/api/userdata/workflows%2Fa.json", `{"n":1}`, 200, `"workflows/a.json"`},
		{"POST", "/api/userdata/workflows%2Fa.json?overwrite=false", `{}`, 409, "File already exists"},
		{"POST", "/userdata/workflows%2Fsub%2Fb.json?full_info=true", `{}`, 200, `"path": "workflows/sub/b.json", "size": 2`},
		{"GET", "/api/userdata?dir=workflows", "", 200, `["a.json"]`},
		{"GET", "/api/userdata?dir=workflows&recurse=true&split=true", "", 200, `[["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]]`},
		{"GET", "/api/userdata/workflows%2Fa.json", "", 200, `{"n":1}`},
		{"GET", "/api/v2/userdata?path=workflows", "", 200, `[{"name": "sub", "path": "workflows/sub", "type": "directory"}, {"name": "a.json", "path": "workflows/a.json", "type": "file"`},
		{"POST", "/api/userdata/workflows%2Fa.json/move/c.json", "", 200, `"c.json"`},
		{"GET", "/api/userdata/workflows%2Fa.json", "", 404, ""},
		{"DELETE", "/api/userdata/c.json", "", 204, ""},
		{"DELETE", "/api/userdata/c.json", "", 404, ""},
		{"GET", "/api/userdata/..%2Fx", "", 403, ""},
		{"GET", "/api/userdata/%252e%252e%252fx", "", 403, ""},
		{"GET", "/api/userdata?dir=..", "", 403, "Invalid directory"},
		{"GET", "/api/userdata", "", 400, "Directory not provided"},
		{"GET", "/api/v2/userdata?path=..", "", 400, "Invalid path requested"},
		{"GET", "/api/v2/userdata?path=nowhere", "", 404, "Requested path not found"},
	} {
		status, _, body := doReq(t, tc.method, base+tc.path, []byte(tc.body), nil)
		if status != tc.want || !strings.Contains(string(body), tc.answer) {
			t.Errorf("%s %s: %d %s, want %d with %s", tc.method, tc.path, status, body, tc.want, tc.answer)
		}
	}
	if got := s.UserData(); len(got) != 1 || string(got["workflows/sub/b.json"]) != "{}" {
		t.Errorf("UserData() = %v, want workflows/sub/b.json only", got)
	}
	if status, _, _ := doReq(t, http.MethodPut, base+"/api/userdata/x.json", nil, nil); status != http.StatusMethodNotAllowed {
		t.Errorf("PUT /api/userdata/x.json: %d, want 405", status)
	}
}
