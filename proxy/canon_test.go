package proxy

import (
	"testing"

	"github.com/valyala/fasthttp"
)

func TestCanonicalPath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		raw   string
		form  pathForm
		clean string
	}{
		{"/", pathCanonical, ""},
		{"/prompt", pathCanonical, ""},
		{"/api/jobs/abc/result", pathCanonical, ""},
		{"/api/jobs/abc/", pathCleanable, "/api/jobs/abc"},
		{"/history/", pathCleanable, "/history"},
		{"/api/queue/", pathCleanable, "/api/queue"},
		{"/extensions/core/", pathCanonical, ""},
		{"/view", pathCanonical, ""},
		{"/history/a%20b", pathCanonical, ""},
		{"/history/a%40b", pathCanonical, ""},
		{"/history/...", pathCanonical, ""},
		{"/api/userdata/workflows%2Fx.json", pathCanonical, ""},
		{"/userdata/workflows%2fx.json/move/workflows%2Fy.json", pathCanonical, ""},
		{"/api/jobs//abc/result", pathCleanable, "/api/jobs/abc/result"},
		{"/api//jobs/abc/status", pathCleanable, "/api/jobs/abc/status"},
		{"//api/jobs/abc", pathCleanable, "/api/jobs/abc"},
		{"/api/./jobs/abc/outputs/0", pathCleanable, "/api/jobs/abc/outputs/0"},
		{"/api/jobs/a/../b/events", pathCleanable, "/api/jobs/b/events"},
		{"/api/jobs/a/%2e%2E/b", pathCleanable, "/api/jobs/b"},
		{"/api/jobs/a/.%2e/b", pathCleanable, "/api/jobs/b"},
		{"/hist%6Fry/x", pathCleanable, "/history/x"},
		{"/history/%41%20", pathCleanable, "/history/A%20"},
		{"/../../etc", pathCleanable, "/etc"},
		{"/a/..", pathCleanable, "/"},
		{"/a/b/.", pathCleanable, "/a/b/"},
		{"/history/x/.", pathCleanable, "/history/x"},
		{"/api/jobs/a%2Fb", pathInvalid, ""},
		{"/api/jobs/a%2f..%2fb", pathInvalid, ""},
		{"/api/userdata%2Fx", pathInvalid, ""},
		{"/history/%zz", pathInvalid, ""},
		{"/history/%4", pathInvalid, ""},
		{"/history/%", pathInvalid, ""},
		{"", pathInvalid, ""},
		{"prompt", pathInvalid, ""},
	} {
		if got := canonicalPath([]byte(tc.raw)); got != tc.form {
			t.Errorf("canonicalPath(%q) = %d, want %d", tc.raw, got, tc.form)
			continue
		}
		if tc.form == pathCleanable {
			clean := cleanPath([]byte(tc.raw))
			if string(clean) != tc.clean {
				t.Errorf("cleanPath(%q) = %q, want %q", tc.raw, clean, tc.clean)
			}
			if canonicalPath(clean) != pathCanonical {
				t.Errorf("cleanPath(%q) = %q is not canonical", tc.raw, clean)
			}
		}
	}
}

func TestCanonicalPathAllocs(t *testing.T) {
	raw := []byte("/api/userdata/workflows%2Fx.json")
	if n := testing.AllocsPerRun(100, func() { canonicalPath(raw) }); n != 0 {
		t.Errorf("canonicalPath allocates %.0f times, want 0", n)
	}
}

func FuzzCanonicalPath(f *testing.F) {
	for _, s := range []string{"/", "/api/jobs//a/../b", "/hist%6Fry/x", "/a/%2e%2e/%2F", "/userdata/a%2F..%2Fb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		form := canonicalPath([]byte(raw))
		if form != pathCleanable {
			return
		}
		clean := cleanPath([]byte(raw))
		if f2 := canonicalPath(clean); f2 == pathCleanable {
			t.Fatalf("cleanPath(%q) = %q, still cleanable", raw, clean)
		}
	})
}

func TestNonCanonicalPathsAreRefusedOrRedirected(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		method, target string
		status         int
		location       string
	}{
		{"GET", "/api/jobs//abc/result", fasthttp.StatusPermanentRedirect, "/api/jobs/abc/result"},
		{"HEAD", "/api/./jobs/abc/outputs/0?x=1", fasthttp.StatusPermanentRedirect, "/api/jobs/abc/outputs/0?x=1"},
		{"DELETE", "/api/jobs//abc", fasthttp.StatusBadRequest, ""},
		{"POST", "/api//interrupt", fasthttp.StatusBadRequest, ""},
		{"GET", "/api/jobs/a%2Fb/status", fasthttp.StatusBadRequest, ""},
		{"GET", "/history/%zz", fasthttp.StatusBadRequest, ""},
	} {
		var ctx fasthttp.RequestCtx
		ctx.Request.Header.SetMethod(tc.method)
		ctx.Request.SetRequestURI(tc.target)
		raw := splitPath(rawRequestURI(&ctx))
		if requireCanonicalPath(&ctx, raw) {
			t.Errorf("%s %s: admitted", tc.method, tc.target)
			continue
		}
		if got := ctx.Response.StatusCode(); got != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.target, got, tc.status)
		}
		if got := string(ctx.Response.Header.Peek("Location")); got != tc.location {
			t.Errorf("%s %s: Location %q, want %q", tc.method, tc.target, got, tc.location)
		}
	}
}
