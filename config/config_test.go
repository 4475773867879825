package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsMatchTheDocumentedOnes(t *testing.T) {
	t.Parallel()
	c, err := Load("", []string{})
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		desc      string
		got, want any
	}{
		{"listen", c.Listen, "127.0.0.1:8190"},
		{"timeout", c.Timeout, 30 * time.Second},
		{"health interval", c.HealthCheck.Interval, 30 * time.Second},
		{"health timeout", c.HealthCheck.Timeout, 5 * time.Second},
		{"unhealthy threshold", c.HealthCheck.UnhealthyThreshold, 3},
		{"job timeout", c.Jobs.Timeout, 5 * time.Minute},
		{"instances", len(c.Instances), 2},
		{"first instance name", c.Instances[0].Name, "127.0.0.1:8188"},
		{"log level", c.Log.Level, "info"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.desc, ck.got, ck.want)
		}
	}
}

func TestShippedConfigYAMLLoadsAndEqualsDefaults(t *testing.T) {
	t.Parallel()
	c, err := Load("../config.yaml", []string{})
	if err != nil {
		t.Fatalf("the shipped config.yaml does not load: %v", err)
	}
	d := Default()
	if c.Listen != d.Listen || c.Timeout != d.Timeout || c.HealthCheck != d.HealthCheck ||
		c.Breaker != d.Breaker || c.WebSocket != d.WebSocket || c.Failover != d.Failover ||
		c.Jobs != d.Jobs || c.Log != d.Log || c.MaxConnectionsPerInstance != d.MaxConnectionsPerInstance {
		t.Fatalf("config.yaml documents values that differ from the defaults:\nfile:    %+v\ndefault: %+v", c, d)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	t.Parallel()
	env := []string{
		"COMFYUI_HOST_2=http://gpu1:8188/",
		"COMFYUI_HOST_1=gpu0:8188",
		"COMFYUI_HOST_10=https://gpu9",
		"COMFYUI_TIMEOUT=1500",
		"MAX_CONNECTIONS_PER_INSTANCE=7",
		"HEALTH_CHECK_INTERVAL=250",
		"JOB_TIMEOUT=60000",
		"MAX_CONCURRENT_JOBS=6",
		"LOG_LEVEL=debug",
		"LOG_DIRECTORY=/tmp/x",
		"COMFYGATE_STATE_DIR=/var/lib/comfygate/jobs",
		"COMFYGATE_SESSION_SECRET=" + strings.Repeat("z", 32),
	}
	c, err := Load(writeFile(t, "instances:\n  - address: ignored:1\n"), env)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, in := range c.Instances {
		got = append(got, in.HostPort())
	}
	if strings.Join(got, ",") != "gpu0:8188,gpu1:8188,gpu9:443" {
		t.Fatalf("instances = %v, want gpu0, gpu1, gpu9 in numeric order", got)
	}
	if !c.Instances[2].TLS() {
		t.Error("https instance not marked TLS")
	}
	if c.Timeout != 1500*time.Millisecond || c.MaxConnectionsPerInstance != 7 ||
		c.HealthCheck.Interval != 250*time.Millisecond || c.Jobs.Timeout != time.Minute ||
		c.Jobs.MaxConcurrent != 6 || c.Log.Level != "debug" || c.Log.Directory != "/tmp/x" ||
		c.Jobs.StateDir != "/var/lib/comfygate/jobs" || c.Auth.SessionSecret != strings.Repeat("z", 32) {
		t.Fatalf("overrides not applied: %+v", c)
	}
}

func TestBadInputStopsStartUpWithKeyValueAndAllowed(t *testing.T) {
	t.Parallel()
	cases := []struct {
		desc, yaml string
		env        []string
		want       []string
	}{
		{desc: "unknown key", yaml: "listn: 1.2.3.4:5\n", want: []string{"listn"}},
		{desc: "bad duration", yaml: "timeout: soon\n", want: []string{"timeout"}},
		{desc: "negative threshold", yaml: "health_check:\n  unhealthy_threshold: -1\n", want: []string{"health_check.unhealthy_threshold", "-1", "positive"}},
		{desc: "bad log level", yaml: "log:\n  level: loud\n", want: []string{"log.level", "loud", "debug, info, warn or error"}},
		{desc: "bad address", yaml: "instances:\n  - address: \"ftp://x:1\"\n", want: []string{"instances[0].address", "ftp://x:1"}},
		{desc: "duplicate names", yaml: "instances:\n  - {name: a, address: \"x:1\"}\n  - {name: a, address: \"y:1\"}\n", want: []string{"instances[1].name"}},
		{desc: "env not a number", env: []string{"COMFYUI_TIMEOUT=fast"}, want: []string{"COMFYUI_TIMEOUT", "fast", "milliseconds"}},
		{desc: "env zero", env: []string{"MAX_CONCURRENT_JOBS=0"}, want: []string{"MAX_CONCURRENT_JOBS", "positive"}},
		{desc: "bad host index", env: []string{"COMFYUI_HOST_X=a:1"}, want: []string{"COMFYUI_HOST_X"}},
		{desc: "bad listen", yaml: "listen: nowhere\n", want: []string{"listen", "nowhere", "host:port"}},
		{desc: "short session secret", yaml: "auth:\n  session_secret: short\n", want: []string{"auth.session_secret", "5 characters", "at least 32"}},
		{desc: "short session secret env", env: []string{"COMFYGATE_SESSION_SECRET=tiny"}, want: []string{"COMFYGATE_SESSION_SECRET", "at least 32"}},
		{desc: "bad trusted proxy", yaml: "server: {trusted_proxies: [\"10.0.0.0/33\"]}\n", want: []string{"server.trusted_proxies[0]", "10.0.0.0/33", "CIDR"}},
		{desc: "trusted proxy by name", env: []string{"COMFYGATE_TRUSTED_PROXIES=10.0.0.1, lb.internal"}, want: []string{"server.trusted_proxies[1]", "COMFYGATE_TRUSTED_PROXIES", "lb.internal"}},
		{desc: "proxy protocol without trusted proxies", yaml: "server: {proxy_protocol: true}\n", want: []string{"server.proxy_protocol", "server.trusted_proxies"}},
		{desc: "bad overridable", yaml: "workflows:\n  w:\n    overridable: [seed]\n", want: []string{"workflows.w.overridable", "seed"}},
		{desc: "negative cache bound", yaml: "jobs:\n  cache_max_bytes: -1\n", want: []string{"jobs.cache_max_bytes", "-1", "no result cache"}},
		{desc: "state url scheme", yaml: "state:\n  url: \"http://cache:6379\"\n", want: []string{"state.url", "http://cache:6379", "redis://", "in memory"}},
		{desc: "state url database", env: []string{"COMFYGATE_STATE_URL=redis://cache:6379/abc"}, want: []string{"state.url", "invalid database number"}},
		{desc: "state url port", yaml: "state: {url: \"redis://cache:99999\"}\n", want: []string{"state.url", "1 to 65535"}},
		{desc: "negative cache ttl", yaml: "workflows:\n  remove-background:\n    cache: {ttl: -1h}\n", want: []string{"workflows.remove-background.cache.ttl", "-1h", "positive duration"}},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			path := ""
			if tc.yaml != "" {
				path = writeFile(t, tc.yaml)
			}
			env := tc.env
			if env == nil {
				env = []string{}
			}
			_, err := Load(path, env)
			if err == nil {
				t.Fatal("Load accepted bad input")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestRelativePathsResolveAgainstTheConfigFile(t *testing.T) {
	t.Parallel()
	p := writeFile(t, "instances:\n  - address: a:1\n")
	c, err := Load(p, []string{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Dir != filepath.Dir(p) {
		t.Fatalf("Dir = %q, want %q", c.Dir, filepath.Dir(p))
	}
	if got := c.Path("workflows/x.json"); got != filepath.Join(filepath.Dir(p), "workflows/x.json") {
		t.Fatalf("Path = %q", got)
	}
	if got := c.Path("/abs/x.json"); got != "/abs/x.json" {
		t.Fatalf("absolute Path changed: %q", got)
	}
}

func TestExplicitZeroMeansZero(t *testing.T) {
	t.Parallel()
	c, err := Load(writeFile(t, "failover:\n  max_resubmits: 0\nwebsocket:\n  backlog_grace: 0s\nbreaker:\n  interval: 0s\n"), []string{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Failover.MaxResubmits != 0 || c.WebSocket.BacklogGrace != 0 || c.Breaker.Interval != 0 {
		t.Fatalf("explicit zeros replaced by defaults: resubmits=%d grace=%v interval=%v",
			c.Failover.MaxResubmits, c.WebSocket.BacklogGrace, c.Breaker.Interval)
	}
	if c.Failover.SuspectGrace != 2*time.Second {
		t.Fatalf("absent key lost its default: %v", c.Failover.SuspectGrace)
	}
}

func TestInstancesInTheFileReplaceTheDefaultList(t *testing.T) {
	t.Parallel()
	c, err := Load(writeFile(t, "instances:\n  - address: gpu:8188\n"), []string{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Instances) != 1 || c.Instances[0].Name != "gpu:8188" {
		t.Fatalf("instances = %+v, want only gpu:8188", c.Instances)
	}
}

// TestEveryErrorIsReportedWithItsKey gives a file and an environment with
// several mistakes of every kind (unknown key, wrong type, invalid value,
// bad environment variable): Load reports each one, starting with its key,
// and Read still returns what it could read.
func TestEveryErrorIsReportedWithItsKey(t *testing.T) {
	t.Parallel()
	p := writeFile(t, `listen: 127.0.0.1:8190
timeout: soon
health_check:
  intervl: 5s
  unhealthy_threshold: -1
instances:
  - address: "ftp://x:1"
  - {name: b, address: "y:1", weight: heavy}
log:
  level: loud
`)
	env := []string{"COMFYUI_TIMEOUT=fast"}
	_, err := Load(p, env)
	if err == nil {
		t.Fatal("Load accepted a file with six mistakes")
	}
	lines := strings.Split(err.Error(), "\n")
	want := []string{
		"timeout: ",
		"health_check.intervl: ",
		"instances[1].weight: ",
		"COMFYUI_TIMEOUT: ",
		"health_check.unhealthy_threshold: ",
		"instances[0].address: ",
		"log.level (LOG_LEVEL): ",
	}
	for _, w := range want {
		found := false
		for _, l := range lines {
			found = found || strings.HasPrefix(l, w)
		}
		if !found {
			t.Errorf("no line starts with %q:\n%s", w, err)
		}
	}
	if len(lines) != len(want) {
		t.Errorf("%d lines, want %d (one per mistake):\n%s", len(lines), len(want), err)
	}

	c, rerr := Read(p, env)
	if rerr == nil || rerr.Error() != err.Error() {
		t.Fatalf("Read error differs from Load's:\n%v\n---\n%v", rerr, err)
	}
	if c == nil || c.Listen != "127.0.0.1:8190" || len(c.Instances) != 2 || c.Instances[1].Name != "b" {
		t.Fatalf("Read did not return the valid values it read: %+v", c)
	}
	if c, err := Read(writeFile(t, "listen: [unclosed\n"), []string{}); c != nil || err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("Read of a file that is not YAML = %v, %v; want no config and an error naming the line", c, err)
	}
}

// TestEmptyFileIsRefused: a configuration file with no settings (empty,
// blanks, comments only, a bare document marker, a null document) is
// refused like any bad file, instead of running the built-in defaults in
// place of the fleet; an explicit empty mapping still loads.
func TestEmptyFileIsRefused(t *testing.T) {
	t.Parallel()
	for _, body := range []string{"", "\n  \n", "# instances come later\n", "---\n", "~\n", "null\n"} {
		_, err := Load(writeFile(t, body), []string{})
		if err == nil || !strings.Contains(err.Error(), "empty") {
			t.Errorf("Load(%q) = %v, want an error saying the file is empty", body, err)
		}
	}
	if _, err := Load(writeFile(t, "{}\n"), []string{}); err != nil {
		t.Errorf("Load(\"{}\") = %v, want the defaults", err)
	}
}

// TestDuplicateAddressesAreRefused: two instances whose addresses are one
// endpoint once normalised (scheme, host case, default port, trailing
// slash) are refused with an error naming both.
func TestDuplicateAddressesAreRefused(t *testing.T) {
	t.Parallel()
	cases := []struct{ desc, a, b string }{
		{"same text", "gpu:8188", "gpu:8188"},
		{"host case", "GPU-1:8188", "gpu-1:8188"},
		{"scheme and trailing slash", "http://gpu:8188/", "gpu:8188"},
		{"default http port", "http://Gpu", "gpu:80"},
		{"default https port", "https://gpu/", "gpu:443"},
	}
	for _, tc := range cases {
		yaml := fmt.Sprintf("instances:\n  - {name: first, address: %q}\n  - {name: second, address: %q}\n", tc.a, tc.b)
		_, err := Load(writeFile(t, yaml), []string{})
		if err == nil {
			t.Errorf("%s: %q and %q accepted", tc.desc, tc.a, tc.b)
			continue
		}
		for _, w := range []string{"instances[1].address", `"first"`, `"second"`} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %s", tc.desc, err, w)
			}
		}
	}
	if _, err := Load(writeFile(t, "instances:\n  - address: gpu:8188\n  - address: gpu:8189\n  - address: gpu2:8188\n"), []string{}); err != nil {
		t.Errorf("distinct addresses refused: %v", err)
	}
}

// TestTrustedProxies: server.trusted_proxies takes CIDRs and single
// addresses; COMFYGATE_TRUSTED_PROXIES (comma-separated) replaces the list.
func TestTrustedProxies(t *testing.T) {
	t.Parallel()
	c, err := Load(writeFile(t, "server:\n  trusted_proxies: [\"10.0.0.0/8\", \"192.0.2.7\", \"::1\", \"::ffff:172.16.0.0/108\"]\n"), []string{})
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(c.Server.TrustedPrefixes())
	if want := "[10.0.0.0/8 192.0.2.7/32 ::1/128 172.16.0.0/12]"; got != want {
		t.Errorf("prefixes %s, want %s", got, want)
	}
	c, err = Load("", []string{"COMFYGATE_TRUSTED_PROXIES= 10.1.0.0/16 ,, fd00::/8"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(c.Server.TrustedPrefixes()), "[10.1.0.0/16 fd00::/8]"; got != want {
		t.Errorf("from the environment: %s, want %s", got, want)
	}
	if d := Default(); len(d.Server.TrustedProxies) != 0 {
		t.Errorf("default trusted proxies %v, want none", d.Server.TrustedProxies)
	}
}

// TestStateURL: a valid URL is kept as written, from the file or the
// environment, and an invalid one's error never shows its password.
func TestStateURL(t *testing.T) {
	t.Parallel()
	c, err := Load(writeFile(t, "state:\n  url: rediss://user:pw@cache.internal:6380/2\n"), []string{})
	if err != nil || c.State.URL != "rediss://user:pw@cache.internal:6380/2" {
		t.Fatalf("file: %v %q", err, c.State.URL)
	}
	c, err = Load("", []string{"COMFYGATE_STATE_URL=redis://10.0.0.9:6379"})
	if err != nil || c.State.URL != "redis://10.0.0.9:6379" {
		t.Fatalf("environment: %v", err)
	}
	if Default().State.URL != "" {
		t.Fatal("the default is not in memory")
	}
	_, err = Load("", []string{"COMFYGATE_STATE_URL=redis://:s3cretpass@cache:6379/x"})
	if err == nil || !strings.Contains(err.Error(), "state.url") || strings.Contains(err.Error(), "s3cretpass") {
		t.Fatalf("bad URL with a password: %v", err)
	}
}
