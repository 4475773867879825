package docs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"go.yaml.in/yaml/v3"

	"github.com/comfygate/comfygate/config"
)

// configDoc is the page this file keeps in step with the code.
const configDoc = "configuration.md"

// configDocPath names the page in messages.
const configDocPath = "docs/" + configDoc

// envName is an environment variable's name as config/ spells it: upper
// case words joined by '_'. A name ending in '_' is a prefix
// (COMFYUI_HOST_ of COMFYUI_HOST_1, COMFYUI_HOST_2, ...).
var envName = regexp.MustCompile(`^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*_$|^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$`)

// TestConfigurationDocMatchesTheCode is the drift test of
// docs/configuration.md: every key of config.yaml and every yaml field of
// config.Config is documented there, every environment variable config/
// reads is documented there with the key it really sets, and the page names
// no key or variable that does not exist.
func TestConfigurationDocMatchesTheCode(t *testing.T) {
	t.Parallel()
	doc := readConfigDoc(t)
	structKeys := keysOfType(reflect.TypeFor[config.Config]())
	yamlKeys := keysOfYAML(t, "../config.yaml")
	codeEnv := envVarsReadBy(t, "../config")

	// Guards against an extraction that silently finds nothing.
	if len(structKeys) < 80 || len(yamlKeys) < 80 || len(codeEnv) < 10 || len(doc.keys) < 80 || len(doc.env) < 10 {
		t.Fatalf("too few found: %d struct keys, %d config.yaml keys, %d variables in config/, %d keys and %d variables in %s",
			len(structKeys), len(yamlKeys), len(codeEnv), len(doc.keys), len(doc.env), configDocPath)
	}

	for _, k := range sorted(structKeys) {
		if !doc.keys[k] {
			t.Errorf("%s: the configuration struct has key %s; document it in a key table", configDocPath, k)
		}
	}
	for _, k := range sorted(yamlKeys) {
		if !doc.keys[k] {
			t.Errorf("%s: config.yaml has key %s; document it in a key table", configDocPath, k)
		}
	}
	for _, k := range sorted(doc.keys) {
		if !structKeys[k] {
			t.Errorf("%s documents key %s, which the configuration struct does not have", configDocPath, k)
		}
	}

	for _, v := range sorted(codeEnv) {
		if !envDocumented(v, doc.env) {
			t.Errorf("%s: config/ reads the environment variable %s; document it in the variable table", configDocPath, v)
		}
	}
	for _, v := range sorted(doc.env) {
		if !envDocumented(v, codeEnv) {
			t.Errorf("%s documents the environment variable %s, which config/ does not read", configDocPath, v)
		}
	}

	// The key column says what the variable sets: set it, and see which
	// keys change.
	for _, v := range sorted(doc.env) {
		changed := keysSetBy(t, v)
		if len(changed) == 0 {
			t.Errorf("%s: setting %s changes no configuration value", configDocPath, v)
			continue
		}
		for _, k := range changed {
			if !under(k, doc.env[v]) {
				t.Errorf("%s: %s sets %s, but its row names %q", configDocPath, v, k, doc.env[v])
			}
		}
	}
}

// configDocTables is what the tables of docs/configuration.md name: keys
// (tables whose first column is "key", one key per row) and environment
// variables (tables whose first column is "variable") with the key their
// row names ("" for "(environment only)").
type configDocTables struct {
	keys map[string]bool
	env  map[string]string
}

func readConfigDoc(t *testing.T) configDocTables {
	t.Helper()
	b, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	d := configDocTables{keys: map[string]bool{}, env: map[string]string{}}
	code := regexp.MustCompile("`([^`]+)`")
	var kind string // "key", "variable" or "" (another table, or none)
	for i, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "|") {
			kind = ""
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(cells[j])
		}
		switch {
		case kind == "" && (cells[0] == "key" || cells[0] == "variable"):
			kind = cells[0]
			continue
		case kind == "" || strings.HasPrefix(cells[0], "---"):
			continue
		}
		first := code.FindAllStringSubmatch(cells[0], -1)
		switch kind {
		case "key":
			if len(first) != 1 || code.ReplaceAllString(cells[0], "") != "" {
				t.Errorf("%s:%d: a key row names one key, in backquotes, in its first cell; got %q", configDocPath, i+1, cells[0])
				continue
			}
			d.keys[first[0][1]] = true
		case "variable":
			if len(cells) < 2 {
				t.Errorf("%s:%d: a variable row has a key column", configDocPath, i+1)
				continue
			}
			key := ""
			if m := code.FindStringSubmatch(cells[1]); m != nil {
				key = m[1]
			} else if cells[1] != "(environment only)" {
				t.Errorf("%s:%d: the key column holds a key in backquotes or (environment only); got %q", configDocPath, i+1, cells[1])
			}
			n := 0
			for _, m := range first {
				if envName.MatchString(m[1]) {
					d.env[m[1]] = key
					n++
				}
			}
			if n == 0 {
				t.Errorf("%s:%d: no variable name in %q", configDocPath, i+1, cells[0])
			}
		}
	}
	return d
}

// yamlName is the key yaml.v3 decodes field f from ("" for none) and
// whether f is inlined.
func yamlName(f reflect.StructField) (name string, inline bool) {
	if !f.IsExported() {
		return "", false
	}
	tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if tag == "-" {
		return "", false
	}
	if strings.Contains(opts, "inline") {
		return "", true
	}
	if tag == "" {
		tag = strings.ToLower(f.Name)
	}
	return tag, false
}

// keysOfType returns the dotted leaf keys of a configuration type as the
// documentation writes them: "health_check.interval", "instances[].address"
// for a list of mappings, "workflows.<name>.file" for a mapping of names.
func keysOfType(t reflect.Type) map[string]bool {
	out := map[string]bool{}
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch {
		case t.Kind() == reflect.Struct:
			for i := range t.NumField() {
				f := t.Field(i)
				name, inline := yamlName(f)
				switch {
				case inline:
					walk(f.Type, prefix)
				case name != "":
					walk(f.Type, join(prefix, name))
				}
			}
		case (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && isStruct(t.Elem()):
			walk(t.Elem(), prefix+"[]")
		case t.Kind() == reflect.Map && isStruct(t.Elem()):
			walk(t.Elem(), prefix+".<name>")
		default:
			out[prefix] = true
		}
	}
	walk(t, "")
	return out
}

func isStruct(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Kind() == reflect.Struct
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// keysOfYAML returns the dotted keys of the YAML file at path, written as
// keysOfType writes them (the configuration type tells a mapping of names
// from a mapping of keys). A key the type does not have is an error.
func keysOfYAML(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	var walk func(n *yaml.Node, typ reflect.Type, prefix string)
	walk = func(n *yaml.Node, typ reflect.Type, prefix string) {
		for typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		switch {
		case n.Kind == yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, typ, prefix)
			}
		case n.Kind == yaml.MappingNode && typ.Kind() == reflect.Struct:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				f, ok := fieldByYAMLName(typ, k.Value)
				if !ok {
					t.Errorf("%s:%d: %s is not a key of the configuration", path, k.Line, join(prefix, k.Value))
					continue
				}
				walk(v, f.Type, join(prefix, k.Value))
			}
		case n.Kind == yaml.MappingNode && typ.Kind() == reflect.Map && isStruct(typ.Elem()):
			for i := 0; i+1 < len(n.Content); i += 2 {
				walk(n.Content[i+1], typ.Elem(), prefix+".<name>")
			}
		case n.Kind == yaml.SequenceNode && isStruct(typ.Elem()):
			for _, c := range n.Content {
				walk(c, typ.Elem(), prefix+"[]")
			}
		default:
			out[prefix] = true
		}
	}
	walk(&root, reflect.TypeFor[config.Config](), "")
	return out
}

// fieldByYAMLName finds the field of struct type t (inlined ones included)
// that decodes key.
func fieldByYAMLName(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		name, inline := yamlName(f)
		if inline {
			if g, ok := fieldByYAMLName(f.Type, key); ok {
				return g, true
			}
		}
		if name == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// envVarsReadBy returns every environment variable name the non-test Go
// files in dir spell as a string literal: config/ reads the environment
// by those names (a name ending in '_' is a prefix).
func envVarsReadBy(t *testing.T, dir string) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && envName.MatchString(s) {
					out[s] = true
				}
			}
			return true
		})
	}
	return out
}

// envDocumented reports whether variable v is in set, directly or through a
// prefix: COMFYUI_HOST_1 against COMFYUI_HOST_, and the other way round.
func envDocumented[V any](v string, set map[string]V) bool {
	if _, ok := set[v]; ok {
		return true
	}
	for w := range set {
		prefix, name := w, v
		if strings.HasSuffix(v, "_") {
			prefix, name = v, w
		}
		if !strings.HasSuffix(prefix, "_") {
			continue
		}
		if rest, ok := strings.CutPrefix(name, prefix); ok && rest != "" && strings.Trim(rest, "0123456789") == "" {
			return true
		}
	}
	return false
}

// keysSetBy loads the defaults with variable v set and returns the keys
// whose values differ from the defaults ("" for a field that has no key:
// the environment-only ones). The value is a number, which every variable
// takes (validation may refuse it; config.Read keeps it all the same).
func keysSetBy(t *testing.T, v string) []string {
	t.Helper()
	c, _ := config.Read("", []string{v + "=1234567"})
	if c == nil {
		t.Fatalf("config.Read with %s set returned no configuration", v)
	}
	var changed []string
	diff(reflect.ValueOf(*config.Default()), reflect.ValueOf(*c), "", &changed)
	slices.Sort(changed)
	return slices.Compact(changed)
}

// diff appends to out the keys under prefix whose values differ between a
// and b.
func diff(a, b reflect.Value, prefix string, out *[]string) {
	switch a.Kind() {
	case reflect.Struct:
		for i := range a.NumField() {
			f := a.Type().Field(i)
			name, inline := yamlName(f)
			key := join(prefix, name)
			switch {
			case inline:
				key = prefix
			case name == "" && f.IsExported():
				key = "" // not a YAML key: set from the environment only
			case name == "":
				continue
			}
			diff(a.Field(i), b.Field(i), key, out)
		}
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, prefix)
		}
	}
}

// under reports whether key is doc (a documented key or "" for
// environment only) or lies below it ("instances[].address" below
// "instances").
func under(key, doc string) bool {
	if doc == "" {
		return key == ""
	}
	return key == doc || strings.HasPrefix(key, doc+".") || strings.HasPrefix(key, doc+"[]")
}

func sorted[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestLinksResolve: every relative link in README.md and docs/*.md names a
// file that exists and, with a #fragment, a heading of that file (GitHub's
// anchors: lower case, punctuation dropped, spaces as '-').
func TestLinksResolve(t *testing.T) {
	t.Parallel()
	pages, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, "../README.md")
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	n := 0
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			n++
			file, frag, _ := strings.Cut(target, "#")
			path := page
			if file != "" {
				path = filepath.Join(filepath.Dir(page), file)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("%s links to %s, which does not exist", page, target)
				continue
			}
			if frag != "" && !anchors(t, path)[frag] {
				t.Errorf("%s links to %s: %s has no heading with the anchor #%s", page, target, path, frag)
			}
		}
	}
	if n < 20 {
		t.Fatalf("found only %d relative links", n)
	}
}

// anchors returns the anchors GitHub gives the headings of a Markdown file.
func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	inCode := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if inCode || !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		var s strings.Builder
		for _, r := range h {
			switch {
			case r == ' ':
				s.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				s.WriteRune(r)
			}
		}
		out[s.String()] = true
	}
	return out
}
