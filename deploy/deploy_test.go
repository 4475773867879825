package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/metrics"
)

// obj is a decoded YAML or JSON mapping.
type obj = map[string]any

// decodeAll decodes every document of a YAML file.
func decodeAll(t *testing.T, path string) []obj {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []obj
	for {
		var d obj
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML documents", path)
	}
	return docs
}

func decodeOne(t *testing.T, path string) obj {
	t.Helper()
	docs := decodeAll(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want 1", path, len(docs))
	}
	return docs[0]
}

// get walks keys (map keys, or list indexes as ints) and fails if a step is missing.
func get(t *testing.T, v any, path ...any) any {
	t.Helper()
	for i, k := range path {
		switch key := k.(type) {
		case string:
			m, ok := v.(obj)
			if !ok {
				t.Fatalf("at %v: not a mapping", path[:i])
			}
			if v, ok = m[key]; !ok {
				t.Fatalf("missing %v", path[:i+1])
			}
		case int:
			l, ok := v.([]any)
			if !ok || key >= len(l) {
				t.Fatalf("at %v: not a list with index %d", path[:i], key)
			}
			v = l[key]
		}
	}
	return v
}

func str(t *testing.T, v any, path ...any) string {
	t.Helper()
	s, ok := get(t, v, path...).(string)
	if !ok {
		t.Fatalf("%v is not a string", path)
	}
	return s
}

func TestEveryYAMLParses(t *testing.T) {
	t.Parallel()
	n := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(path); !d.IsDir() && (ext == ".yml" || ext == ".yaml") {
			decodeAll(t, path)
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Errorf("found only %d YAML files", n)
	}
}

// envList turns a compose environment mapping into KEY=VALUE pairs.
func envList(t *testing.T, svc obj) []string {
	t.Helper()
	env, ok := get(t, svc, "environment").(obj)
	if !ok {
		t.Fatal("environment is not a mapping")
	}
	var out []string
	for k, v := range env {
		out = append(out, k+"="+toString(v))
	}
	sort.Strings(out)
	return out
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// expandDefaults replaces compose's ${VAR:-default} with its default.
func expandDefaults(s string) string {
	return regexp.MustCompile(`\$\{[A-Z0-9_]+:-([^}]*)\}`).ReplaceAllString(s, "$1")
}

// checkGateway checks the comfygate service both compose files share.
func checkGateway(t *testing.T, services obj) {
	t.Helper()
	gw := get(t, services, "comfygate").(obj)
	env := envList(t, gw)
	for _, want := range []string{
		"COMFYGATE_LISTEN=0.0.0.0:8188",
		"COMFYUI_HOST_1=comfyui-0:8188",
		"COMFYUI_HOST_2=comfyui-1:8188",
		"LOG_DIRECTORY=/var/log/comfygate",
	} {
		if !slices.Contains(env, want) {
			t.Errorf("comfygate environment lacks %s: %v", want, env)
		}
	}
	if p := expandDefaults(str(t, gw, "ports", 0)); p != "8188:8188" {
		t.Errorf("comfygate publishes %q, want 8188:8188", p)
	}
	if df := str(t, gw, "build", "dockerfile"); df != "deploy/Dockerfile" {
		t.Errorf("comfygate builds %q", df)
	}
	if ctx := str(t, gw, "build", "context"); ctx != ".." {
		t.Errorf("comfygate build context %q, want the repository root", ctx)
	}

	// The environment must be one comfygate's configuration accepts.
	var cfgEnv []string
	for _, kv := range env {
		cfgEnv = append(cfgEnv, expandDefaults(kv))
	}
	cfg, err := config.Load("", cfgEnv)
	if err != nil {
		t.Fatalf("comfygate rejects the compose environment: %v", err)
	}
	if cfg.Listen != "0.0.0.0:8188" || len(cfg.Instances) != 2 {
		t.Errorf("config from compose environment: listen %q, %d instances", cfg.Listen, len(cfg.Instances))
	}
	for _, name := range []string{"comfyui-0", "comfyui-1", "prometheus", "grafana"} {
		get(t, services, name)
	}
}

func TestCompose(t *testing.T) {
	t.Parallel()
	doc := decodeOne(t, "docker-compose.yml")
	services := get(t, doc, "services").(obj)
	checkGateway(t, services)

	volumesDefined := get(t, doc, "volumes").(obj)
	outputs := map[string]bool{}
	for i, name := range []string{"comfyui-0", "comfyui-1"} {
		svc := get(t, services, name).(obj)
		dev := get(t, svc, "deploy", "resources", "reservations", "devices", 0)
		if d := str(t, dev, "driver"); d != "nvidia" {
			t.Errorf("%s: device driver %q", name, d)
		}
		if ids := get(t, dev, "device_ids").([]any); len(ids) != 1 || ids[0] != string(rune('0'+i)) {
			t.Errorf("%s: pinned to GPUs %v, want [%d]", name, ids, i)
		}
		if c := get(t, dev, "capabilities").([]any); !slices.Contains(c, any("gpu")) {
			t.Errorf("%s: capabilities %v lack gpu", name, c)
		}
		var hasModels bool
		for _, v := range get(t, svc, "volumes").([]any) {
			src, dst, _ := strings.Cut(expandDefaults(v.(string)), ":")
			if _, ok := volumesDefined[src]; !ok {
				t.Errorf("%s mounts undefined volume %q", name, src)
			}
			switch {
			case src == "models" && strings.HasSuffix(dst, "/models"):
				hasModels = true
			case strings.HasSuffix(dst, "/output"):
				if outputs[src] {
					t.Errorf("output volume %q is shared", src)
				}
				outputs[src] = true
			}
		}
		if !hasModels {
			t.Errorf("%s does not mount the shared models volume", name)
		}
		if _, ok := svc["ports"]; ok {
			t.Errorf("%s publishes a port; clients must go through comfygate", name)
		}
	}
	if len(outputs) != 2 {
		t.Errorf("want one output volume per instance, got %v", outputs)
	}

	prom := get(t, services, "prometheus").(obj)
	if !slices.Contains(get(t, prom, "volumes").([]any), any("./prometheus:/etc/prometheus:ro")) {
		t.Error("prometheus does not mount ./prometheus")
	}
}

func TestComposeDemo(t *testing.T) {
	t.Parallel()
	doc := decodeOne(t, "docker-compose.demo.yml")
	services := get(t, doc, "services").(obj)
	checkGateway(t, services)
	for _, name := range []string{"comfyui-0", "comfyui-1"} {
		svc := get(t, services, name).(obj)
		cmd := get(t, svc, "command").([]any)
		if len(cmd) < 3 || cmd[0] != "sim" || cmd[1] != "-listen" || cmd[2] != "0.0.0.0:8188" {
			t.Errorf("%s: command %v, want sim -listen 0.0.0.0:8188", name, cmd)
		}
		if _, ok := svc["deploy"]; ok {
			t.Errorf("%s: the demo must not reserve GPUs", name)
		}
	}
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^FROM golang:\S+ AS build$`),
		regexp.MustCompile(`CGO_ENABLED=0 go build`),
		regexp.MustCompile(`(?m)^COPY --from=build `),
		regexp.MustCompile(`(?m)^USER 10001`),
		regexp.MustCompile(`(?m)^EXPOSE 8188$`),
		regexp.MustCompile(`(?m)^ENV COMFYGATE_LISTEN=0\.0\.0\.0:8188$`),
		regexp.MustCompile(`(?s)HEALTHCHECK .*http://127\.0\.0\.1:8188/health`),
	} {
		if !want.MatchString(df) {
			t.Errorf("Dockerfile lacks %s", want)
		}
	}
	if n := strings.Count(df, "\nFROM "); n != 2 {
		t.Errorf("Dockerfile has %d stages, want 2", n)
	}
}

// k8sSet is the manifests under k8s/ by kind/name.
type k8sSet map[string]obj

// need is the manifest named key ("Kind/name"); the test fails without it.
func (s k8sSet) need(t *testing.T, key string) obj {
	t.Helper()
	d, ok := s[key]
	if !ok {
		t.Fatalf("no %s in k8s/", key)
	}
	return d
}

// k8sDocs indexes the manifests under k8s/ by kind/name.
func k8sDocs(t *testing.T) k8sSet {
	t.Helper()
	files, err := filepath.Glob("k8s/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]obj{}
	for _, f := range files {
		for _, d := range decodeAll(t, f) {
			kind := str(t, d, "kind")
			if kind == "Kustomization" {
				for _, r := range get(t, d, "resources").([]any) {
					if _, err := os.Stat(filepath.Join("k8s", r.(string))); err != nil {
						t.Errorf("kustomization resource: %v", err)
					}
				}
				continue
			}
			str(t, d, "apiVersion")
			key := kind + "/" + str(t, d, "metadata", "name")
			if _, dup := out[key]; dup {
				t.Errorf("%s defined twice", key)
			}
			out[key] = d
		}
	}
	return out
}

func TestKubernetes(t *testing.T) {
	t.Parallel()
	docs := k8sDocs(t)

	headless := docs.need(t, "Service/comfyui")
	if ip := str(t, headless, "spec", "clusterIP"); ip != "None" {
		t.Errorf("Service/comfyui clusterIP %q, want None (headless)", ip)
	}
	sts := docs.need(t, "StatefulSet/comfyui")
	if gpu := get(t, sts, "spec", "template", "spec", "containers", 0, "resources", "limits", "nvidia.com/gpu"); gpu != 1 {
		t.Errorf("ComfyUI pods ask for %v GPUs, want 1", gpu)
	}
	if !selects(get(t, headless, "spec", "selector").(obj), get(t, sts, "spec", "template", "metadata", "labels").(obj)) {
		t.Error("Service/comfyui does not select the ComfyUI pods")
	}

	dep := docs.need(t, "Deployment/comfygate")
	pod := get(t, dep, "spec", "template", "spec")
	c := get(t, pod, "containers", 0)
	if p := str(t, c, "readinessProbe", "httpGet", "path"); p != "/health" {
		t.Errorf("readiness probe path %q, want /health", p)
	}
	for _, probe := range []string{"livenessProbe", "startupProbe"} {
		str(t, c, probe, "httpGet", "path")
	}
	if get(t, pod, "securityContext", "runAsNonRoot") != true {
		t.Error("comfygate pod may run as root")
	}
	svc := docs.need(t, "Service/comfygate")
	if !selects(get(t, svc, "spec", "selector").(obj), get(t, dep, "spec", "template", "metadata", "labels").(obj)) {
		t.Error("Service/comfygate does not select the comfygate pods")
	}
	if port := get(t, svc, "spec", "ports", 0, "port"); port != 8188 {
		t.Errorf("Service/comfygate port %v, want 8188", port)
	}

	// The ConfigMap's config.yaml must load, and discover the headless Service.
	cm := docs.need(t, "ConfigMap/comfygate")
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(str(t, cm, "data", "config.yaml")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, []string{})
	if err != nil {
		t.Fatalf("comfygate rejects the ConfigMap's config.yaml: %v", err)
	}
	if len(cfg.Instances) != 1 || !cfg.Instances[0].Discover ||
		!strings.HasPrefix(cfg.Instances[0].Address, "comfyui.comfygate.svc") {
		t.Errorf("ConfigMap instances %+v, want discovery of the comfyui headless Service", cfg.Instances)
	}
	args := get(t, c, "args").([]any)
	mount := str(t, c, "volumeMounts", 0, "mountPath")
	if len(args) != 2 || args[0] != "-config" || args[1] != mount+"/config.yaml" {
		t.Errorf("comfygate args %v do not point at the mounted config", args)
	}
}

// selects reports whether every selector label is on the pod.
func selects(selector, labels obj) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

// exposedNames returns the metric names comfygate exposes, with histogram
// suffixes, after touching every series.
func exposedNames(t *testing.T) map[string]bool {
	t.Helper()
	m := metrics.New("test")
	m.SetInstanceHost("a", "h:1")
	m.SetInstanceUp("a", true)
	m.SetBreakerState("a", metrics.BreakerClosed)
	m.SetBreakerState("a", metrics.BreakerOpen)
	m.SetInflight("a", 1)
	m.SetQueueDepth("a", 1)
	m.SetUpstreamSocket("a", true)
	m.IncUpstreamReconnect("a")
	m.ObserveHealthCheck("a", time.Millisecond, true)
	m.ObserveRequest("/prompt", "POST", 200, "a", time.Millisecond)
	m.PromptSubmitted("a")
	m.PromptFinished("a", metrics.OutcomeSuccess, time.Second)
	m.IncResubmission("a", "b", true)
	m.AddWSClients(1)
	m.IncEventsRouted("text")
	m.IncSlowClientDropped()
	m.IncBacklogReplayed(1)
	m.JobSubmitted("w")
	m.JobFinished("w", "completed", time.Second, time.Second)
	m.SetWaitLine(1)
	m.SetJobsInFlight(1)
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		n := mf.GetName()
		names[n] = true
		if len(mf.GetMetric()) > 0 && mf.GetMetric()[0].GetHistogram() != nil {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[n+s] = true
			}
		}
	}
	return names
}

// TestMetricNamesExist keeps rules and dashboard in step with the metrics
// package: every comfygate_/go_/process_ name they query must be exposed.
func TestMetricNamesExist(t *testing.T) {
	t.Parallel()
	names := exposedNames(t)
	// Recording rule names (level:metric:operations) are not exposed names.
	recording := regexp.MustCompile(`\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b`)
	metric := regexp.MustCompile(`\b(?:comfygate|go|process)_[a-z0-9_]+\b`)
	for _, f := range []string{"prometheus/rules.yml", "prometheus/rules_test.yml", "grafana/comfygate-dashboard.json"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		used := metric.FindAllString(recording.ReplaceAllString(string(b), ""), -1)
		if len(used) == 0 {
			t.Errorf("%s uses no comfygate metric", f)
		}
		for _, n := range used {
			if !names[n] {
				t.Errorf("%s uses %s, which comfygate does not expose", f, n)
			}
		}
	}
}

func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("grafana/comfygate-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	if dash.UID == "" || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard lacks uid, title or panels")
	}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") || strings.Count(tg.Expr, "{") != strings.Count(tg.Expr, "}") {
				t.Errorf("panel %q: unbalanced query %q", p.Title, tg.Expr)
			}
		}
	}
}

// promtool runs promtool with args in dir prometheus/, skipping without it.
func promtool(t *testing.T, args ...string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH (apt-get install -y prometheus)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = "prometheus"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestPromtool(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		desc string
		args []string
	}{
		{"check rules", []string{"check", "rules", "rules.yml"}},
		{"check config", []string{"check", "config", "prometheus.yml"}},
		{"test rules", []string{"test", "rules", "rules_test.yml"}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			promtool(t, tc.args...)
		})
	}
}

// TestDockerComposeConfig asks docker compose itself, where an engine answers.
func TestDockerComposeConfig(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("no docker")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if exec.CommandContext(ctx, "docker", "info").Run() != nil {
		t.Skip("no docker engine answers")
	}
	if exec.CommandContext(ctx, "docker", "compose", "version").Run() != nil {
		t.Skip("no docker compose plugin")
	}
	for _, f := range []string{"docker-compose.yml", "docker-compose.demo.yml", "docker-compose.replicas.yml"} {
		out, err := exec.CommandContext(ctx, "docker", "compose", "-f", f, "config", "--quiet").CombinedOutput()
		if err != nil {
			t.Errorf("docker compose -f %s config: %v\n%s", f, err, out)
		}
	}
}
