package jobs

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/comfygate/comfygate/comfysim"
	"github.com/comfygate/comfygate/config"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// contractURL is where the test compiler keeps the OpenAPI document; the
// document's own $refs ("#/components/...") resolve inside it.
const contractURL = "https://comfygate.test/openapi.json"

// apiContract checks answers against jobs/openapi.json: each JSON answer
// must match the schema its route, method and status document.
type apiContract struct {
	doc      map[string]any
	compiler *jsonschema.Compiler

	schemasMu sync.Mutex
	schemas   map[string]*jsonschema.Schema // compiled, by JSON pointer; guarded by schemasMu
}

// theContract is the document the binary serves, compiled once per test binary.
var theContract = sync.OnceValues(func() (*apiContract, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(openAPIDocument))
	if err != nil {
		return nil, fmt.Errorf("openapi.json: %w", err)
	}
	m, ok := doc.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("openapi.json is not an object")
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020) // OpenAPI 3.1's dialect
	c.AssertFormat()
	if err := c.AddResource(contractURL, doc); err != nil {
		return nil, err
	}
	return &apiContract{doc: m, compiler: c, schemas: map[string]*jsonschema.Schema{}}, nil
})

// contract returns the compiled document or fails the test.
func contract(tb testing.TB) *apiContract {
	tb.Helper()
	c, err := theContract()
	if err != nil {
		tb.Fatalf("the OpenAPI document: %v", err)
	}
	return c
}

// pointer is the JSON pointer of a path of keys.
func pointer(keys ...string) string {
	var b strings.Builder
	r := strings.NewReplacer("~", "~0", "/", "~1")
	for _, k := range keys {
		b.WriteString("/")
		b.WriteString(r.Replace(k))
	}
	return b.String()
}

// lookup returns the value at a JSON pointer of the document.
func (c *apiContract) lookup(ptr string) (any, bool) {
	var v any = c.doc
	for _, k := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		k = strings.NewReplacer("~1", "/", "~0", "~").Replace(k)
		if v, ok = m[k]; !ok {
			return nil, false
		}
	}
	return v, true
}

// schemaAt compiles the schema at a JSON pointer of the document.
func (c *apiContract) schemaAt(ptr string) (*jsonschema.Schema, error) {
	c.schemasMu.Lock()
	defer c.schemasMu.Unlock()
	if s := c.schemas[ptr]; s != nil {
		return s, nil
	}
	s, err := c.compiler.Compile(contractURL + "#" + ptr)
	if err != nil {
		return nil, err
	}
	c.schemas[ptr] = s
	return s, nil
}

// validateAt checks a JSON body against the schema at a JSON pointer.
func (c *apiContract) validateAt(ptr string, body []byte) error {
	s, err := c.schemaAt(ptr)
	if err != nil {
		return fmt.Errorf("schema %s: %w", ptr, err)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if err := s.Validate(v); err != nil {
		return fmt.Errorf("does not match %s: %w", ptr, err)
	}
	return nil
}

// route returns the document's path template a request path falls under:
// of those that match segment by segment, the one with most literal
// segments (/api/workflows before /api/workflows/{name}).
func (c *apiContract) route(path string) (string, bool) {
	paths, _ := c.doc["paths"].(map[string]any)
	segs := strings.Split(path, "/")
	best, bestLit := "", -1
	for tmpl := range paths {
		t := strings.Split(tmpl, "/")
		if len(t) != len(segs) {
			continue
		}
		lit := 0
		ok := true
		for i, s := range t {
			switch {
			case strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}"):
				ok = ok && segs[i] != ""
			case s == segs[i]:
				lit++
			default:
				ok = false
			}
		}
		if ok && lit > bestLit {
			best, bestLit = tmpl, lit
		}
	}
	return best, bestLit >= 0
}

// responsePointer finds the response object the document gives for a
// route, method and status: the exact code, else its class (2XX), else
// default; a $ref to components/responses is followed.
func (c *apiContract) responsePointer(route, method string, status int) (string, error) {
	op := pointer("paths", route, strings.ToLower(method))
	if _, ok := c.lookup(op); !ok {
		if status == http.StatusMethodNotAllowed {
			// A method the route does not take: refused in the error shape.
			return "/components/responses/Error", nil
		}
		return "", fmt.Errorf("%s %s is not in the document", method, route)
	}
	code := strconv.Itoa(status)
	for _, key := range []string{code, code[:1] + "XX", "default"} {
		ptr := op + pointer("responses", key)
		v, ok := c.lookup(ptr)
		if !ok {
			continue
		}
		if m, _ := v.(map[string]any); m != nil {
			if ref, _ := m["$ref"].(string); ref != "" {
				ptr = strings.TrimPrefix(ref, "#")
				if _, ok := c.lookup(ptr); !ok {
					return "", fmt.Errorf("%s %s %d: unresolved %s", method, route, status, ref)
				}
			}
		}
		return ptr, nil
	}
	return "", fmt.Errorf("%s %s: status %d is not documented", method, route, status)
}

// validateAnswer checks one answer of the job API against the document:
// route is the path template ("/api/jobs/{id}/status"), contentType the
// answer's Content-Type. The status must be documented for the route and
// method; a JSON body must match the schema of its media type, and any
// other body must be of a media type the document names.
func validateAnswer(route, method string, status int, contentType string, body []byte) error {
	c, err := theContract()
	if err != nil {
		return err
	}
	resp, err := c.responsePointer(route, method, status)
	if err != nil {
		return err
	}
	content, _ := c.lookup(resp + "/content")
	types, _ := content.(map[string]any)
	if method == http.MethodHead || len(body) == 0 && len(types) == 0 {
		return nil
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return fmt.Errorf("%s %s %d: Content-Type %q: %w", method, route, status, contentType, err)
	}
	major, _, _ := strings.Cut(mt, "/")
	for _, key := range []string{mt, major + "/*", "*/*"} {
		if _, ok := types[key]; !ok {
			continue
		}
		if mt != "application/json" {
			return nil // images, files, event streams: their bytes have no schema
		}
		if err := c.validateAt(resp+pointer("content", key, "schema"), body); err != nil {
			return fmt.Errorf("%s %s %d: %s: %w", method, route, status, body, err)
		}
		return nil
	}
	return fmt.Errorf("%s %s %d: a %s answer is not documented (%s)", method, route, status, mt, body)
}

// checkAnswer is validateAnswer for a request path as the tests send it
// (with its query), failing the test on a mismatch. It runs on whatever
// goroutine sent the request.
func checkAnswer(tb testing.TB, method, path string, status int, hdr http.Header, body []byte) {
	tb.Helper()
	path, _, _ = strings.Cut(path, "?")
	route, ok := contract(tb).route(path)
	if !ok {
		tb.Errorf("%s %s: no route of the OpenAPI document matches", method, path)
		return
	}
	if err := validateAnswer(route, method, status, hdr.Get("Content-Type"), body); err != nil {
		tb.Errorf("the answer breaks the OpenAPI document: %v", err)
	}
}

// checkSchema validates body against the schema at a JSON pointer of the
// document (an event's data, a webhook's payload).
func checkSchema(tb testing.TB, ptr string, body []byte) {
	tb.Helper()
	if err := contract(tb).validateAt(ptr, body); err != nil {
		tb.Errorf("%s: %v", body, err)
	}
}

// TestContractCheckerRefuses: the checker the harness runs on every
// answer tells good answers from bad ones, so its silence means something.
func TestContractCheckerRefuses(t *testing.T) {
	t.Parallel()
	finished := `{"job_id":"j","workflow":"w","status":"completed","progress":100,"comfyui_instance":"sim1","processing_time_ms":5,"created_at":"2026-12-07T10:00:00Z","finished_at":"2026-12-07T10:00:01Z"}`
	for _, tc := range []struct {
		desc, route, method string
		status              int
		ct, body            string
		ok                  bool
	}{
		{"finished", "/api/workflows/{name}", "POST", 200, "application/json", finished, true},
		{"finished, built-in", "/api/upscale-image", "POST", 200, "application/json; charset=utf-8", finished[:len(finished)-1] + `,"image_base64":"data:image/png;base64,AA==","content_type":"image/png"}`, true},
		{"dry run", "/api/workflows/{name}", "POST", 200, "application/json", `{"status":"valid","valid":true,"workflow":"w","comfyui_instance":"sim1","parameters":{}}`, true},
		{"expired key", "/api/remove-background", "POST", 200, "application/json", `{"job_id":"j","status":"expired","workflow":"w","estimated_completion_seconds":0,"status_url":"/s","result_url":"/r"}`, true},
		{"dry run without status", "/api/workflows/{name}", "POST", 200, "application/json", `{"valid":true,"workflow":"w"}`, false},
		{"a 200 still pending", "/api/workflows/{name}", "POST", 200, "application/json", strings.Replace(finished, "completed", "pending", 1), false},
		{"unknown status", "/api/jobs/{id}/status", "GET", 200, "application/json", strings.Replace(finished, "completed", "done", 1), false},
		{"progress as text", "/api/jobs/{id}/status", "GET", 200, "application/json", strings.Replace(finished, `"progress":100`, `"progress":"100"`, 1), false},
		{"bad date", "/api/jobs/{id}/status", "GET", 200, "application/json", strings.Replace(finished, `2026-12-07T10:00:00Z`, `yesterday`, 1), false},
		{"error shape", "/api/jobs/{id}/status", "GET", 404, "application/json", `{"error":{"type":"not_found","message":"no job"}}`, true},
		{"error without message", "/api/jobs/{id}/status", "GET", 404, "application/json", `{"error":{"type":"not_found"}}`, false},
		{"undocumented status", "/api/jobs/{id}/status", "GET", 418, "application/json", `{}`, false},
		{"undocumented media type", "/api/jobs/{id}/status", "GET", 200, "text/html", `<p>`, false},
		{"raw result", "/api/jobs/{id}/result", "GET", 200, "image/png", "\x89PNG", true},
		{"cancel", "/api/jobs/{id}/cancel", "POST", 200, "application/json", `{"cancelled":true}`, true},
		{"cancel, wrong type", "/api/jobs/{id}/cancel", "POST", 200, "application/json", `{"cancelled":"yes"}`, false},
		{"undocumented route", "/api/jobs/{id}/nope", "GET", 200, "application/json", `{}`, false},
		{"undocumented method", "/api/jobs/{id}/status", "PUT", 200, "application/json", `{}`, false},
		{"undocumented method refused", "/api/jobs/{id}/status", "PUT", 405, "application/json", `{"error":{"type":"method_not_allowed","message":"use GET or HEAD"}}`, true},
		{"undocumented method refused badly", "/api/jobs/{id}/status", "PUT", 405, "text/plain", `no`, false},
		{"empty range answer", "/api/jobs/{id}/outputs/{n}", "GET", 416, "image/gif", ``, true},
		{"empty JSON answer", "/api/jobs/{id}/outputs", "GET", 200, "application/json", ``, false},
	} {
		err := validateAnswer(tc.route, tc.method, tc.status, tc.ct, []byte(tc.body))
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.desc, err, tc.ok)
		}
	}
	c := contract(t)
	for path, want := range map[string]string{
		"/api/workflows":          "/api/workflows",
		"/api/workflows/txt2img":  "/api/workflows/{name}",
		"/api/jobs/x/outputs/0":   "/api/jobs/{id}/outputs/{n}",
		"/api/jobs/x/cancel":      "/api/jobs/{id}/cancel",
		"/api/jobs/x":             "/api/jobs/{id}",
		"/api/upscale-image":      "/api/upscale-image",
		"/api/jobs//status":       "",
		"/api/something/entirely": "",
	} {
		if got, _ := c.route(path); got != want {
			t.Errorf("route(%s) = %q, want %q", path, got, want)
		}
	}
}

// TestOpenAPIHasTheDocumentedRoutes: every job API route docs/job-api.md
// names ("METHOD /api/...") is in the document.
func TestOpenAPIHasTheDocumentedRoutes(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../docs/job-api.md")
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	for _, m := range regexp.MustCompile("`(GET|POST|DELETE|PUT|PATCH) (/api/[^`?\\s]*)").FindAllStringSubmatch(string(b), -1) {
		routes = append(routes, strings.ToLower(m[1])+" "+m[2])
	}
	slices.Sort(routes)
	routes = slices.Compact(routes)
	if len(routes) < 10 {
		t.Fatalf("found only %v in docs/job-api.md", routes)
	}
	c := contract(t)
	for _, r := range routes {
		method, path, _ := strings.Cut(r, " ")
		if _, ok := c.lookup(pointer("paths", path, method)); !ok {
			t.Errorf("docs/job-api.md documents %s %s; the OpenAPI document does not", strings.ToUpper(method), path)
		}
	}
}

// workflowSchemas compiles each workflow's request body schema from
// GET /api/workflows.
func workflowSchemas(h *harness) map[string]*jsonschema.Schema {
	h.tb.Helper()
	code, _, b := h.do("GET", "/api/workflows", "", nil)
	var list struct {
		Workflows []struct {
			Name   string          `json:"name"`
			Schema json.RawMessage `json:"schema"`
		} `json:"workflows"`
	}
	if code != 200 || json.Unmarshal(b, &list) != nil {
		h.tb.Fatalf("workflows: %d %s", code, b)
	}
	schemas := map[string]*jsonschema.Schema{}
	for _, w := range list.Workflows {
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(w.Schema))
		if err != nil {
			h.tb.Fatal(err)
		}
		c := jsonschema.NewCompiler()
		url := "https://comfygate.test/workflows/" + w.Name + ".json"
		if err := c.AddResource(url, doc); err != nil {
			h.tb.Fatal(err)
		}
		if schemas[w.Name], err = c.Compile(url); err != nil {
			h.tb.Fatalf("%s: %v", w.Name, err)
		}
	}
	return schemas
}

// checkBody validates a request body against a workflow's schema.
func checkBody(sch *jsonschema.Schema, body []byte) error {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return err
	}
	return sch.Validate(v)
}

// TestWorkflowSchemaListsAcceptedFields: what a submission may send
// matches the workflow's JSON Schema from GET /api/workflows, and what it
// refuses for its type does not.
func TestWorkflowSchemaListsAcceptedFields(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, comfysim.Options{}, func(c *config.Config) {
		videoWorkflow(t, c)
		c.Webhooks.AllowedHosts = []string{"127.0.0.1"}
		c.Webhooks.Secret = "s3cret"
	})
	schemas := workflowSchemas(h)
	img := `"` + base64.StdEncoding.EncodeToString(testPNG(t, 8, 8)) + `"`
	hook := `"http://127.0.0.1:9/hook"`
	for _, tc := range []struct {
		desc, workflow, body string
		ok                   bool
	}{
		{"every field", "video", `{"frames": 3, "width": 8, "fps": 4.5, "format": "image/gif", "save": true, "inputs": {}, "webhook_url": ` + hook + `, "webhook_progress": true}`, true},
		{"integer as text", "video", `{"frames": "3"}`, false},
		{"number as text", "video", `{"frames": 3, "fps": "4"}`, false},
		{"boolean as text", "video", `{"frames": 3, "save": "true"}`, false},
		{"unknown field", "video", `{"frames": 3, "junk": 1}`, false},
		{"built-in, every field", "upscale-image", `{"image_base64": ` + img + `, "inputs": {"2.model_name": "RealESRGAN_x2plus.pth"}, "webhook_url": ` + hook + `, "webhook_progress": false}`, true},
		{"built-in, override of the wrong type", "upscale-image", `{"image_base64": ` + img + `, "inputs": {"2.model_name": 2}}`, false},
	} {
		code, _, b := h.do("POST", routeWorkflows+tc.workflow+"?dry_run=1", "application/json", []byte(tc.body))
		if accepted := code == 200; accepted != tc.ok {
			t.Errorf("%s: %d %s, want accepted=%v", tc.desc, code, b, tc.ok)
		}
		if err := checkBody(schemas[tc.workflow], []byte(tc.body)); (err == nil) != tc.ok {
			t.Errorf("%s: the workflow's schema says %v, want valid=%v", tc.desc, err, tc.ok)
		}
	}
}

// TestSubmissionAnswersDiscriminate: a submission's 200 is one of several
// shapes, told apart by status alone: every alternative requires status
// with its own const or enum values, and the discriminator's mapping names
// exactly those values, each for the alternative that declares it.
func TestSubmissionAnswersDiscriminate(t *testing.T) {
	t.Parallel()
	c := contract(t)
	for _, route := range []string{routeRemoveBackground, routeUpscaleImage, "/api/workflows/{name}"} {
		v, _ := c.lookup(pointer("paths", route, "post", "responses", "200", "content", "application/json", "schema"))
		sch, _ := v.(map[string]any)
		one, _ := sch["oneOf"].([]any)
		disc, _ := sch["discriminator"].(map[string]any)
		if len(one) < 2 || disc == nil || disc["propertyName"] != "status" {
			t.Fatalf("%s: 200 schema %v, want a oneOf discriminated on status", route, sch)
		}
		mapping, _ := disc["mapping"].(map[string]any)
		seen := map[string]string{}
		for _, alt := range one {
			ref, _ := alt.(map[string]any)["$ref"].(string)
			target, ok := c.lookup(strings.TrimPrefix(ref, "#"))
			m, _ := target.(map[string]any)
			if !ok || m == nil {
				t.Fatalf("%s: alternative %v does not resolve", route, alt)
			}
			req, _ := m["required"].([]any)
			status, _ := m["properties"].(map[string]any)["status"].(map[string]any)
			if !slices.Contains(req, any("status")) || status == nil {
				t.Errorf("%s: %s does not require a status of its own", route, ref)
				continue
			}
			values, _ := status["enum"].([]any)
			if cv, ok := status["const"]; ok {
				values = append(values, cv)
			}
			if len(values) == 0 {
				t.Errorf("%s: %s's status has no const or enum", route, ref)
			}
			for _, val := range values {
				s, _ := val.(string)
				if other, dup := seen[s]; dup {
					t.Errorf("%s: status %q is both %s and %s", route, s, other, ref)
				}
				seen[s] = ref
				if mapping[s] != ref {
					t.Errorf("%s: the discriminator maps %q to %v, want %s", route, s, mapping[s], ref)
				}
			}
		}
		if len(mapping) != len(seen) {
			t.Errorf("%s: the mapping %v names values no alternative declares (%v)", route, mapping, seen)
		}
	}
}
