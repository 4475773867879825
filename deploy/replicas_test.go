package deploy

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/comfygate/comfygate/config"
)

// haproxyConfig is haproxy/haproxy.cfg read into its sections: each
// section header ("defaults", "backend comfygate") and its lines, comments
// and blank lines dropped.
type haproxyConfig struct {
	sections map[string][]string
}

func readHAProxyConfig(t *testing.T, path string) haproxyConfig {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c := haproxyConfig{sections: map[string][]string{}}
	cur := ""
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			cur = strings.Join(strings.Fields(line), " ")
			c.sections[cur] = nil
			continue
		}
		c.sections[cur] = append(c.sections[cur], strings.Join(strings.Fields(line), " "))
	}
	return c
}

// lines returns the lines of section that start with prefix.
func (c haproxyConfig) lines(section, prefix string) []string {
	var out []string
	for _, l := range c.sections[section] {
		if l == prefix || strings.HasPrefix(l, prefix+" ") {
			out = append(out, l)
		}
	}
	return out
}

// matches reports whether the path-only acl name in section (its "path"
// and "path_beg" lines) matches path.
func (c haproxyConfig) matches(section, name, path string) bool {
	for _, l := range c.lines(section, "acl "+name) {
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		for _, v := range f[3:] {
			switch f[2] {
			case "path":
				if path == v {
					return true
				}
			case "path_beg":
				if strings.HasPrefix(path, v) {
					return true
				}
			}
		}
	}
	return false
}

// duration reads HAProxy's "timeout <name> <value>" in section.
func (c haproxyConfig) duration(t *testing.T, section, name string) time.Duration {
	t.Helper()
	l := c.lines(section, "timeout "+name)
	if len(l) != 1 {
		t.Fatalf("haproxy.cfg: %s has %d 'timeout %s' lines, want 1", section, len(l), name)
	}
	d, err := time.ParseDuration(strings.Fields(l[0])[2])
	if err != nil {
		t.Fatalf("haproxy.cfg: %s: %v", l[0], err)
	}
	return d
}

// goDuration reads the constant name, written as N * time.Second or
// N * time.Millisecond, from the Go file at path: the deploy files' drain
// times follow comfygate's own.
func goDuration(t *testing.T, path, name string) time.Duration {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var d time.Duration
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != name || len(vs.Values) != 1 {
			return true
		}
		mul, ok := vs.Values[0].(*ast.BinaryExpr)
		if !ok || mul.Op != token.MUL {
			return false
		}
		lit, ok1 := mul.X.(*ast.BasicLit)
		unit, ok2 := mul.Y.(*ast.SelectorExpr)
		if !ok1 || !ok2 {
			return false
		}
		n64, err := strconv.ParseInt(lit.Value, 10, 64)
		if err != nil {
			return false
		}
		switch unit.Sel.Name {
		case "Second":
			d = time.Duration(n64) * time.Second
		case "Millisecond":
			d = time.Duration(n64) * time.Millisecond
		}
		return false
	})
	if d == 0 {
		t.Fatalf("%s: no constant %s = N * time.Second", path, name)
	}
	return d
}

// shutdownDrain is how long comfygate may take from SIGTERM to exit: the
// server's grace for in-flight requests (main.go), then the closing
// handshake of every client socket and one second more before they are cut
// (proxy/ws.go's Hub.Close).
func shutdownDrain(t *testing.T) time.Duration {
	t.Helper()
	return goDuration(t, "../main.go", "shutdownGrace") + goDuration(t, "../proxy/ws.go", "closeWait") + time.Second
}

// replicaNames are the replica services of docker-compose.replicas.yml.
var replicaNames = []string{"comfygate-0", "comfygate-1"}

// TestComposeReplicas: docker-compose.replicas.yml loads as Docker loads
// it and runs two replicas with one configuration that comfygate accepts,
// sharing the Redis service, trusting exactly the network HAProxy reaches
// them on, given time to drain; HAProxy's backends are those replicas.
func TestComposeReplicas(t *testing.T) {
	t.Parallel()
	p, err := loadCompose(t, "docker-compose.replicas.yml")
	if err != nil {
		t.Fatal(err)
	}
	svc := func(name string) types.ServiceConfig {
		t.Helper()
		s, err := p.GetService(name)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	edge, ok := p.Networks["edge"]
	if !ok || len(edge.Ipam.Config) != 1 {
		t.Fatalf("no edge network with one subnet: %+v", p.Networks)
	}
	edgeNet, err := netip.ParsePrefix(edge.Ipam.Config[0].Subnet)
	if err != nil {
		t.Fatalf("edge subnet: %v", err)
	}

	redis := svc("redis")
	if !strings.HasPrefix(redis.Image, "redis:") {
		t.Errorf("redis image %q, want the official redis image", redis.Image)
	}
	if redis.HealthCheck == nil || !slices.Contains(redis.HealthCheck.Test, "ping") {
		t.Errorf("redis health check %+v, want redis-cli ping", redis.HealthCheck)
	}
	drain := shutdownDrain(t)
	var configs []*config.Config
	for _, name := range replicaNames {
		s := svc(name)
		var env []string
		for k, v := range s.Environment {
			if v != nil {
				env = append(env, k+"="+*v)
			}
		}
		cfg, err := config.Load("", env)
		if err != nil {
			t.Fatalf("%s: comfygate rejects its environment: %v", name, err)
		}
		configs = append(configs, cfg)
		if cfg.Listen != "0.0.0.0:8188" || len(cfg.Instances) != 2 {
			t.Errorf("%s: listen %q, %d instances", name, cfg.Listen, len(cfg.Instances))
		}
		if cfg.State.URL != "redis://redis:6379/0" {
			t.Errorf("%s: state.url %q, want the redis service", name, cfg.State.URL)
		}
		if got := cfg.Server.TrustedPrefixes(); len(got) != 1 || got[0] != edgeNet {
			t.Errorf("%s: trusted_proxies %v, want the edge network %v", name, got, edgeNet)
		}
		if _, ok := s.Networks["edge"]; !ok {
			t.Errorf("%s is not on the edge network", name)
		}
		if _, ok := s.Networks["backend"]; !ok {
			t.Errorf("%s is not on the backend network (Redis, ComfyUI)", name)
		}
		if d := s.DependsOn["redis"]; d.Condition != types.ServiceConditionHealthy {
			t.Errorf("%s waits for redis %q, want %q", name, d.Condition, types.ServiceConditionHealthy)
		}
		if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) < drain {
			t.Errorf("%s: stop_grace_period %v, shorter than comfygate's drain %v", name, s.StopGracePeriod, drain)
		}
		if len(s.Ports) != 0 {
			t.Errorf("%s publishes %+v: clients go through HAProxy", name, s.Ports)
		}
	}
	if len(configs) == 2 && (configs[0].State.URL != configs[1].State.URL || len(configs[0].Instances) != len(configs[1].Instances)) {
		t.Error("the replicas do not share state and instances")
	}
	// Only HAProxy and the replicas connect over the trusted network.
	for name, s := range p.Services {
		if _, on := s.Networks["edge"]; on && name != "haproxy" && !slices.Contains(replicaNames, name) {
			t.Errorf("%s is on the edge network, whose addresses the replicas trust", name)
		}
	}

	lb := svc("haproxy")
	if len(lb.Ports) != 1 || lb.Ports[0].Target != 8188 {
		t.Errorf("haproxy ports %+v, want one published to 8188", lb.Ports)
	}
	if len(lb.Volumes) != 1 || lb.Volumes[0].Source != p.WorkingDir+"/haproxy/haproxy.cfg" ||
		lb.Volumes[0].Target != "/usr/local/etc/haproxy/haproxy.cfg" {
		t.Errorf("haproxy volumes %+v, want ./haproxy/haproxy.cfg at the image's config path", lb.Volumes)
	}
	for _, name := range replicaNames {
		if _, ok := lb.DependsOn[name]; !ok {
			t.Errorf("haproxy does not depend on %s", name)
		}
	}

	cfg := readHAProxyConfig(t, "haproxy/haproxy.cfg")
	binds := cfg.lines("frontend comfygate", "bind")
	if len(binds) != 1 || !strings.HasSuffix(binds[0], ":"+strconv.Itoa(int(lb.Ports[0].Target))) {
		t.Errorf("haproxy binds %v, want the published port %d", binds, lb.Ports[0].Target)
	}
	var servers []string
	for _, l := range cfg.lines("backend comfygate", "server") {
		servers = append(servers, strings.Fields(l)[2])
	}
	if want := []string{"comfygate-0:8188", "comfygate-1:8188"}; !slices.Equal(servers, want) {
		t.Errorf("haproxy servers %v, want %v", servers, want)
	}
}

// TestHAProxyConfig: what the shipped HAProxy configuration must say for
// comfygate replicas, and timeouts that fit comfygate's own.
func TestHAProxyConfig(t *testing.T) {
	t.Parallel()
	c := readHAProxyConfig(t, "haproxy/haproxy.cfg")
	const be = "backend comfygate"
	for _, want := range []struct{ section, line string }{
		{"defaults", "mode http"},
		{"defaults", "option forwardfor"},
		{"defaults", "option redispatch"},
		{be, "balance roundrobin"},
		{be, "option httpchk"},
		{be, "http-check send meth GET uri /health"},
		{be, "http-check expect status 200"},
	} {
		if !slices.Contains(c.sections[want.section], want.line) {
			t.Errorf("haproxy.cfg: %s lacks %q", want.section, want.line)
		}
	}
	ds := c.lines(be, "default-server")
	if len(ds) != 1 || !slices.Contains(strings.Fields(ds[0]), "check") {
		t.Errorf("haproxy.cfg: default-server %v does not health-check the servers", ds)
	}
	if n := len(c.lines(be, "server")); n < 2 {
		t.Errorf("haproxy.cfg: %d servers, want the replicas", n)
	}
	if c.lines(be, "cookie") != nil || c.lines(be, "stick") != nil || c.lines(be, "hash-type") != nil {
		t.Error("haproxy.cfg pins clients to a replica; replicas sharing state need no stickiness")
	}

	// The job API's requests go by client address, so one replica mostly
	// answers from the jobs it follows already (any replica can answer
	// for any job): to the same servers, up and down with backend
	// comfygate's checks.
	const jobs = "backend comfygate-jobs"
	for _, want := range []string{"balance source", "hash-type consistent", "use_backend comfygate-jobs if job_api"} {
		section := jobs
		if strings.HasPrefix(want, "use_backend") {
			section = "frontend comfygate"
		}
		if !slices.Contains(c.sections[section], want) {
			t.Errorf("haproxy.cfg: %s lacks %q", section, want)
		}
	}
	var plain, tracked []string
	for _, l := range c.lines(be, "server") {
		plain = append(plain, strings.Fields(l)[1])
	}
	for _, l := range c.lines(jobs, "server") {
		f := strings.Fields(l)
		if i := slices.Index(f, "track"); i < 0 || i+1 >= len(f) || f[i+1] != "comfygate/"+f[1] {
			t.Errorf("haproxy.cfg: %s: %q does not track its server in backend comfygate", jobs, l)
		}
		tracked = append(tracked, f[1])
	}
	if !slices.Equal(plain, tracked) {
		t.Errorf("haproxy.cfg: the job API's servers %v are not the replicas %v", tracked, plain)
	}
	// Every route of the job API that names a job, or makes one, is in
	// acl job_api (the routes from its OpenAPI description). The others
	// hold nothing of a replica's own.
	stateless := []string{"/api/workflows", "/api/openapi.json", "/api/prompt/validate"}
	b, err := os.ReadFile("../jobs/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Paths map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(b, &spec); err != nil || len(spec.Paths) < 5 {
		t.Fatalf("jobs/openapi.json: %v, %d paths", err, len(spec.Paths))
	}
	for p := range spec.Paths {
		path := strings.NewReplacer("{id}", "0123abcd", "{name}", "wf", "{n}", "0").Replace(p)
		if got, want := c.matches("frontend comfygate", "job_api", path), !slices.Contains(stateless, p); got != want {
			t.Errorf("haproxy.cfg: acl job_api matches %s: %v, want %v", p, got, want)
		}
	}

	d := config.Default()
	if tun := c.duration(t, "defaults", "tunnel"); tun <= 2*d.WebSocket.PingInterval {
		t.Errorf("timeout tunnel %v: HAProxy would cut a WebSocket that comfygate's pings (every %v) keep alive", tun, d.WebSocket.PingInterval)
	}
	if srv := c.duration(t, "defaults", "server"); srv <= d.Jobs.MaxWait {
		t.Errorf("timeout server %v cuts a job waited for up to jobs.max_wait %v", srv, d.Jobs.MaxWait)
	}
	if hr := c.duration(t, "defaults", "http-request"); hr > d.Limits.HeaderTimeout {
		t.Errorf("timeout http-request %v, longer than comfygate's header timeout %v", hr, d.Limits.HeaderTimeout)
	}
	c.duration(t, "defaults", "connect")
	c.duration(t, "defaults", "client")
}

// TestKubernetesReplicas: the comfygate Deployment runs replicas that share
// the Redis of redis.yaml, trust the pod network, roll one at a time
// without losing capacity, drain before they stop within the grace period,
// and keep one up through disruptions.
func TestKubernetesReplicas(t *testing.T) {
	t.Parallel()
	docs := k8sDocs(t)
	dep := docs.need(t, "Deployment/comfygate")
	if n, ok := get(t, dep, "spec", "replicas").(int); !ok || n < 2 {
		t.Errorf("comfygate replicas %v, want 2 or more", get(t, dep, "spec", "replicas"))
	}
	if s := str(t, dep, "spec", "strategy", "type"); s != "RollingUpdate" {
		t.Errorf("strategy %q, want RollingUpdate", s)
	}
	if mu := get(t, dep, "spec", "strategy", "rollingUpdate", "maxUnavailable"); mu != 0 {
		t.Errorf("maxUnavailable %v, want 0: a rolling update must not stop a replica before its successor is ready", mu)
	}
	if ms := get(t, dep, "spec", "strategy", "rollingUpdate", "maxSurge"); ms == 0 {
		t.Error("maxSurge 0 with maxUnavailable 0: a rolling update could never proceed")
	}

	pod := get(t, dep, "spec", "template", "spec")
	c := get(t, pod, "containers", 0)
	pre := get(t, c, "lifecycle", "preStop", "exec", "command").([]any)
	if len(pre) != 2 || !strings.HasSuffix(toString(pre[0]), "sleep") {
		t.Fatalf("preStop %v, want a sleep while the endpoint's removal spreads", pre)
	}
	sleep, err := strconv.Atoi(toString(pre[1]))
	if err != nil || sleep < 5 {
		t.Errorf("preStop sleeps %v, want at least 5 s", pre[1])
	}
	grace, ok := get(t, pod, "terminationGracePeriodSeconds").(int)
	if drain := time.Duration(sleep)*time.Second + shutdownDrain(t); !ok || time.Duration(grace)*time.Second < drain {
		t.Errorf("terminationGracePeriodSeconds %v, shorter than preStop %d s + comfygate's drain: %v in all", grace, sleep, drain)
	}
	if p := str(t, c, "readinessProbe", "httpGet", "path"); p != "/health" {
		t.Errorf("readiness probe %q, want /health", p)
	}

	if a := str(t, docs.need(t, "Service/comfygate"), "spec", "sessionAffinity"); a != "ClientIP" {
		t.Errorf("Service/comfygate sessionAffinity %q, want ClientIP: one client's job requests mostly reach the replica that follows its jobs", a)
	}

	pdb := docs.need(t, "PodDisruptionBudget/comfygate")
	if m := get(t, pdb, "spec", "minAvailable"); m != 1 {
		t.Errorf("PodDisruptionBudget minAvailable %v, want 1", m)
	}
	labels := get(t, dep, "spec", "template", "metadata", "labels").(obj)
	if !selects(get(t, pdb, "spec", "selector", "matchLabels").(obj), labels) {
		t.Error("the PodDisruptionBudget does not select the comfygate pods")
	}

	// The ConfigMap's configuration shares the Redis Service's server and
	// trusts a network.
	cm := docs.need(t, "ConfigMap/comfygate")
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(str(t, cm, "data", "config.yaml")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, []string{})
	if err != nil {
		t.Fatalf("comfygate rejects the ConfigMap's config.yaml: %v", err)
	}
	rsvc := docs.need(t, "Service/redis")
	ns := str(t, rsvc, "metadata", "namespace")
	port := get(t, rsvc, "spec", "ports", 0, "port")
	if want := fmt.Sprintf("redis://redis.%s.svc.cluster.local:%v/0", ns, port); cfg.State.URL != want {
		t.Errorf("state.url %q, want the redis Service %s", cfg.State.URL, want)
	}
	if p := cfg.Server.TrustedPrefixes(); len(p) == 0 || p[0].Bits() > 24 {
		t.Errorf("trusted_proxies %v, want the pod network", p)
	}

	redis := docs.need(t, "Deployment/redis")
	if n := get(t, redis, "spec", "replicas"); n != 1 {
		t.Errorf("redis replicas %v, want 1: two would each hold a state", n)
	}
	if s := str(t, redis, "spec", "strategy", "type"); s != "Recreate" {
		t.Errorf("redis strategy %q, want Recreate (never two at once)", s)
	}
	rc := get(t, redis, "spec", "template", "spec", "containers", 0)
	if img := str(t, rc, "image"); !strings.HasPrefix(img, "redis:") {
		t.Errorf("redis image %q", img)
	}
	if cmd := get(t, rc, "readinessProbe", "exec", "command").([]any); len(cmd) != 2 || cmd[1] != "ping" {
		t.Errorf("redis readiness %v, want redis-cli ping", cmd)
	}
	if !selects(get(t, rsvc, "spec", "selector").(obj), get(t, redis, "spec", "template", "metadata", "labels").(obj)) {
		t.Error("Service/redis does not select the redis pod")
	}
	if tp := str(t, rsvc, "spec", "ports", 0, "targetPort"); tp != str(t, rc, "ports", 0, "name") {
		t.Errorf("Service/redis targets port %q, the pod names %q", tp, str(t, rc, "ports", 0, "name"))
	}
}
