// Package config owns comfygate's configuration: the YAML schema with its
// defaults, the environment variables that override it, and validation
// that stops start-up with the key, the value and what is allowed.
// docs/configuration.md documents every key and variable (docs/docs_test.go
// keeps it in step with this package and config.yaml).
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration. Every field is documented with its
// default in config.yaml at the repository root.
type Config struct {
	// Listen is the address comfygate serves clients on. Default 127.0.0.1:8190.
	Listen string `yaml:"listen"`
	// MetricsListen, when set, serves /metrics, /stats and /health on a
	// separate address, without API keys, and no longer on Listen
	// (COMFYGATE_METRICS_LISTEN). Default "" (served on Listen).
	MetricsListen string `yaml:"metrics_listen"`
	// Instances are the ComfyUI upstreams. COMFYUI_HOST_1..N replace them.
	Instances []Instance `yaml:"instances"`
	// Timeout bounds non-streaming upstream calls (COMFYUI_TIMEOUT, ms). Default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// MaxConnectionsPerInstance caps the HTTP connections comfygate opens to
	// one instance (MAX_CONNECTIONS_PER_INSTANCE). Default 64.
	MaxConnectionsPerInstance int `yaml:"max_connections_per_instance"`

	HealthCheck HealthCheck `yaml:"health_check"`
	Breaker     Breaker     `yaml:"breaker"`
	WebSocket   WebSocket   `yaml:"websocket"`
	Failover    Failover    `yaml:"failover"`
	Discovery   Discovery   `yaml:"discovery"`
	Routing     Routing     `yaml:"routing"`
	Jobs        Jobs        `yaml:"jobs"`
	Webhooks    Webhooks    `yaml:"webhooks"`
	ImageURLs   ImageURLs   `yaml:"image_urls"`
	Log         Log         `yaml:"log"`
	State       State       `yaml:"state"`

	// Security (security.go): how clients are seen, API keys, redaction,
	// rate limits and comfygate's own limits towards clients.
	Server    Server    `yaml:"server"`
	Auth      Auth      `yaml:"auth"`
	Redact    Redact    `yaml:"redact"`
	RateLimit RateLimit `yaml:"rate_limit"`
	Limits    Limits    `yaml:"limits"`

	// Workflows names the workflows the async job API runs. The two shipped
	// ones ("remove-background", "upscale-image") are built in and may be
	// overridden here.
	Workflows map[string]Workflow `yaml:"workflows"`

	// Dir is the directory relative paths are resolved against (the config
	// file's directory, or the working directory). Not a YAML key.
	Dir string `yaml:"-"`
}

// Instance is one ComfyUI upstream, or with Discover a DNS name whose
// addresses are each an upstream.
type Instance struct {
	// Name labels the instance in logs and metrics. Default: the address.
	Name string `yaml:"name"`
	// Address is host:port or an http(s) URL.
	Address string `yaml:"address"`
	// Discover re-resolves the host every Discovery.Interval and treats each
	// address as an instance (a headless Service, docker compose --scale).
	Discover bool `yaml:"discover"`
	// Labels describe the instance ("gpu: a100", "pool: flux"); a request's
	// X-Comfygate-Pool header or a job workflow's labels send work only to
	// instances carrying all the labels they name. Discovered instances
	// carry their entry's labels. Default none.
	Labels map[string]string `yaml:"labels"`
	// Weight is the instance's share of work relative to the others (a GPU
	// twice as fast: 2). Selection compares outstanding work per unit of
	// weight. Default 1.
	Weight int `yaml:"weight"`
	// Warmup is an API-format workflow file (relative to the config file)
	// run on the instance when it joins or comes back, before it gets
	// client traffic; while it runs, and when it fails, the instance gets
	// no work and /health says why. Default "": none.
	Warmup string `yaml:"warmup"`
}

// Routing configures catalogue- and model-aware selection.
type Routing struct {
	// CatalogueInterval is how often each instance's node classes
	// (/object_info, compared by hash) and model files (/models) are
	// re-read; they are also read when an instance joins or comes back.
	// Default 60s.
	CatalogueInterval time.Duration `yaml:"catalogue_interval"`
	// AffinityMargin: a prompt goes to an instance that last ran the same
	// set of models unless that instance has more than this many prompts
	// of outstanding work beyond the least busy one that can run it.
	// -1 turns affinity off. Default 2.
	AffinityMargin int `yaml:"affinity_margin"`
	// WarmupTimeout bounds one warm-up run. Default 5m.
	WarmupTimeout time.Duration `yaml:"warmup_timeout"`
	// MovePending: an instance that runs out of work takes a prompt of
	// comfygate's that waits in another instance's queue (deleted there
	// first, moved only if that instance shows it gone and never run;
	// same prompt_id for the client), so that a fast instance does not
	// idle while a slow one still has a queue. Default false (see
	// docs/fleets.md, "Known limits").
	MovePending bool `yaml:"move_pending"`
}

// HealthCheck configures the active GET /system_stats probe.
type HealthCheck struct {
	Interval           time.Duration `yaml:"interval"`            // HEALTH_CHECK_INTERVAL (ms); default 30s
	Timeout            time.Duration `yaml:"timeout"`             // default 5s
	UnhealthyThreshold int           `yaml:"unhealthy_threshold"` // consecutive failures; default 3
	HealthyThreshold   int           `yaml:"healthy_threshold"`   // consecutive successes; default 1
}

// Breaker configures the per-instance circuit breaker fed by real traffic.
type Breaker struct {
	// ConsecutiveFailures opens the breaker. Default 3.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// OpenTimeout is how long it stays open before one half-open probe. Default 5s.
	OpenTimeout time.Duration `yaml:"open_timeout"`
	// Interval clears the closed-state counts; 0 never clears. Default 60s.
	Interval time.Duration `yaml:"interval"`
}

// WebSocket configures both sides of the WebSocket bridge.
type WebSocket struct {
	// ClientBuffer is how many frames may wait for one slow client before it
	// is dropped with close code 1008. Default 1024.
	ClientBuffer int `yaml:"client_buffer"`
	// BacklogGrace is how long the events of a disconnected clientId are kept
	// for its reconnect. 0 disables the backlog. Default 30s.
	BacklogGrace time.Duration `yaml:"backlog_grace"`
	// BacklogSize caps the frames kept per disconnected clientId. Default 4096.
	BacklogSize int `yaml:"backlog_size"`
	// PingInterval is the keepalive period on client and upstream sockets. Default 20s.
	PingInterval time.Duration `yaml:"ping_interval"`
	// ReconnectMin/Max bound the upstream socket's reconnect backoff. Defaults 100ms, 5s.
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	ReconnectMax time.Duration `yaml:"reconnect_max"`
}

// Failover configures the resubmission of accepted prompts.
type Failover struct {
	// MaxResubmits is how often one prompt may be resubmitted. Default 2.
	MaxResubmits int `yaml:"max_resubmits"`
	// SuspectGrace is how long an instance whose socket dropped may take to
	// prove itself alive before its prompts move. Default 2s.
	SuspectGrace time.Duration `yaml:"suspect_grace"`
	// LivenessInterval is how often comfygate pings an instance's socket to
	// see that its process still runs (aiohttp answers pings from its event
	// loop even while a node runs for minutes). Default 2s.
	LivenessInterval time.Duration `yaml:"liveness_interval"`
	// LivenessTimeout is how long an instance's socket may stay silent (no
	// pong, no frame) before the instance is suspect: no new work, and a
	// health check bounded by SuspectGrace decides whether its prompts move.
	// Default 4s.
	LivenessTimeout time.Duration `yaml:"liveness_timeout"`
}

// Discovery configures DNS re-resolution of Discover instances.
type Discovery struct {
	Interval time.Duration `yaml:"interval"` // default 30s
}

// Jobs configures the async job API.
type Jobs struct {
	// Timeout is how long a finished job is kept (JOB_TIMEOUT, ms). Default 5m.
	Timeout time.Duration `yaml:"timeout"`
	// MaxConcurrent jobs are at the instances at once (MAX_CONCURRENT_JOBS). Default 10.
	MaxConcurrent int `yaml:"max_concurrent"`
	// MaxWaiting caps comfygate's wait line; beyond it: 429. Default 1000.
	MaxWaiting int `yaml:"max_waiting"`
	// MaxWaitingBytes caps the images held by jobs in the wait line (in
	// memory up to InputMemoryBytes, in files beyond); a submission that
	// would pass it is answered 429 with Retry-After. Default 1 GiB.
	MaxWaitingBytes int64 `yaml:"max_waiting_bytes"`
	// MaxImageBytes caps an uploaded image. Default 50 MiB.
	MaxImageBytes int64 `yaml:"max_image_bytes"`
	// MaxWait caps how long one request may wait for a job (Prefer: wait=N,
	// ?wait=). Default 5m; longer asks are cut to it.
	MaxWait time.Duration `yaml:"max_wait"`
	// IdempotencyTTL is how long an Idempotency-Key on a submission is
	// remembered. Default 24h.
	IdempotencyTTL time.Duration `yaml:"idempotency_ttl"`
	// OutputMemoryBytes is how many bytes of fetched job outputs are kept in
	// memory; beyond it outputs go to files in OutputDir. Default 256 MiB.
	OutputMemoryBytes int64 `yaml:"output_memory_bytes"`
	// OutputDir holds the outputs beyond OutputMemoryBytes. Default: a
	// directory comfygate creates under the system's temporary directory.
	OutputDir string `yaml:"output_dir"`
	// InputMemoryBytes is how many bytes of the images of unfinished jobs
	// comfygate keeps in memory (it keeps each job's images until the job
	// ends, to upload them again where a failover sends the job); beyond
	// it they are read back from files. 0: always from files. Default 16 MiB.
	InputMemoryBytes int64 `yaml:"input_memory_bytes"`
	// StateDir holds each unfinished or recent job's record and its images
	// (written atomically), so that accepted jobs survive a restart of
	// comfygate: on start the jobs found there are reconciled against the
	// instances. Relative to the working directory. Default "data/jobs";
	// "" keeps jobs in memory only (a restart loses them) and puts images
	// beyond InputMemoryBytes under the system's temporary directory.
	StateDir string `yaml:"state_dir"`
	// S3 uploads every output to S3-compatible storage. Off without Endpoint.
	S3 S3 `yaml:"s3"`
	// CacheMaxBytes bounds the result cache: the outputs of completed jobs
	// of workflows with a cache (Workflow.Cache), kept under StateDir/cache
	// (a temporary directory without StateDir) so that the same job again
	// completes at once from them. Past it the least recently used entries
	// go first. 0 turns the cache off. Default 1 GiB.
	CacheMaxBytes int64 `yaml:"cache_max_bytes"`
}

// S3 is the S3-compatible storage job outputs are uploaded to, each with a
// presigned GET URL in the job's outputs. Credentials come from the
// environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or MINIO_ROOT_USER /
// MINIO_ROOT_PASSWORD).
type S3 struct {
	// Endpoint is host:port of the S3 API ("" = off).
	Endpoint string `yaml:"endpoint"`
	// Bucket receives the outputs; it must exist.
	Bucket string `yaml:"bucket"`
	// Prefix starts every object key (then <job id>/<n>-<file name>).
	Prefix string `yaml:"prefix"`
	// Region of the bucket. Default us-east-1.
	Region string `yaml:"region"`
	// Insecure talks plain HTTP to the endpoint instead of HTTPS.
	Insecure bool `yaml:"insecure"`
	// PresignExpiry is how long the presigned URLs work. Default 1h.
	PresignExpiry time.Duration `yaml:"presign_expiry"`
}

// ImageURLs lets a job's image parameters be URLs that comfygate
// downloads, under the same rules as webhooks. Off without AllowedHosts.
type ImageURLs struct {
	// AllowedHosts are the hosts images may come from (same forms and
	// internal-address rule as Webhooks.AllowedHosts).
	AllowedHosts []string `yaml:"allowed_hosts"`
	// Timeout bounds one download. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
}

// Webhooks configures the job API's completion webhooks. With no
// AllowedHosts, webhooks are off and a job naming a webhook_url is refused.
type Webhooks struct {
	// AllowedHosts are the hosts comfygate may deliver to: "host",
	// "host:port" or "*.domain". Loopback, link-local and private
	// addresses are refused unless listed literally (e.g. "127.0.0.1").
	AllowedHosts []string `yaml:"allowed_hosts"`
	// DefaultURL receives the terminal event of jobs that name no
	// webhook_url. Empty: none.
	DefaultURL string `yaml:"default_url"`
	// Secret signs deliveries (Standard Webhooks: "whsec_" + base64, or any
	// other string used as is). COMFYGATE_WEBHOOK_SECRET overrides it.
	// Required when AllowedHosts is set.
	Secret string `yaml:"secret"`
	// Timeout bounds one delivery attempt. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// RetryFor bounds the time over which a failed delivery is retried
	// (exponential backoff with jitter). Default 1h.
	RetryFor time.Duration `yaml:"retry_for"`
	// MaxAttempts bounds the attempts of one delivery. Default 10.
	MaxAttempts int `yaml:"max_attempts"`
}

// State is where comfygate keeps the state that several replicas share
// (docs/state.md).
type State struct {
	// URL is a Redis URL: redis://[user:password@]host:port[/db], or
	// rediss:// for TLS, any Redis-protocol server (COMFYGATE_STATE_URL).
	// The password and TLS come from the URL. Default "": the state is kept
	// in this process's memory, for one replica.
	URL string `yaml:"url"`
	// LeaseTTL is how long a replica's liveness lease and its instance
	// leases last unless renewed; each is renewed every third of it. A
	// replica that has not renewed its liveness for LeaseTTL stops acting
	// on its prompts, and another replica adopts them. Default 6s; at
	// least 300ms. Unused in memory.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
}

// Log configures logging.
type Log struct {
	Level      string `yaml:"level"`     // LOG_LEVEL: debug|info|warn|error; default info
	Format     string `yaml:"format"`    // LOG_FORMAT: json|text; default json
	Directory  string `yaml:"directory"` // LOG_DIRECTORY: also write combined.log and error.log there
	MaxSizeMB  int    `yaml:"max_size_mb"`
	MaxBackups int    `yaml:"max_backups"`
	MaxAgeDays int    `yaml:"max_age_days"`
}

// Workflow is a ComfyUI API-format workflow the job API can run.
type Workflow struct {
	// File is the API-format JSON; relative to the config file. Empty: the built-in one of that name.
	File string `yaml:"file"`
	// ImageNode and ImageInput receive the uploaded image's file name.
	ImageNode  string `yaml:"image_node"`
	ImageInput string `yaml:"image_input"` // default "image"
	// OutputNode is the node whose images are the result.
	OutputNode string `yaml:"output_node"`
	// Overridable lists "node_id.input" keys callers may set through "inputs".
	Overridable []string `yaml:"overridable"`
	// Labels the instances running this workflow must carry (see
	// Instance.Labels). Default none: any instance that can run it.
	Labels map[string]string `yaml:"labels"`
	// Parameters are named, typed inputs callers set by name.
	Parameters []Parameter `yaml:"parameters"`
	// Cache keeps the workflow's results for reuse (jobs.cache_max_bytes):
	// set it only for a deterministic workflow, whose outputs depend on its
	// graph and images alone. Nil: the built-in workflows keep results for
	// DefaultCacheTTL, others not at all.
	Cache *WorkflowCache `yaml:"cache"`
}

// WorkflowCache is a workflow's use of the job result cache.
type WorkflowCache struct {
	// TTL is how long a result stays reusable after the job that made it
	// completed. 0 keeps none.
	TTL time.Duration `yaml:"ttl"`
}

// DefaultCacheTTL is how long the built-in workflows' results are reused.
const DefaultCacheTTL = 24 * time.Hour

// Parameter is one named input of a workflow: callers send {"name": value}
// and comfygate checks it and sets node.input.
type Parameter struct {
	Name string `yaml:"name"`
	// Node and Input are the graph input the value goes to.
	Node  string `yaml:"node"`
	Input string `yaml:"input"`
	// Type is int, float, string, bool, image or enum.
	Type string `yaml:"type"`
	// Default is used when the caller sends none; without it the graph's
	// own value stays.
	Default any `yaml:"default"`
	// Min and Max bound int and float values (and string lengths).
	Min *float64 `yaml:"min"`
	Max *float64 `yaml:"max"`
	// Options are the values an enum allows.
	Options []string `yaml:"options"`
	// Required parameters must be sent.
	Required bool `yaml:"required"`
	// Description is shown in GET /api/workflows.
	Description string `yaml:"description"`
}

// Default returns the configuration with every default filled in.
func Default() *Config {
	c := &Config{}
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	*c = Config{
		Listen:                    "127.0.0.1:8190",
		Instances:                 []Instance{{Address: "127.0.0.1:8188"}, {Address: "127.0.0.1:8189"}},
		Timeout:                   30 * time.Second,
		MaxConnectionsPerInstance: 64,
		HealthCheck:               HealthCheck{Interval: 30 * time.Second, Timeout: 5 * time.Second, UnhealthyThreshold: 3, HealthyThreshold: 1},
		Breaker:                   Breaker{ConsecutiveFailures: 3, OpenTimeout: 5 * time.Second, Interval: 60 * time.Second},
		WebSocket: WebSocket{ClientBuffer: 1024, BacklogGrace: 30 * time.Second, BacklogSize: 4096,
			PingInterval: 20 * time.Second, ReconnectMin: 100 * time.Millisecond, ReconnectMax: 5 * time.Second},
		Failover:  Failover{MaxResubmits: 2, SuspectGrace: 2 * time.Second, LivenessInterval: 2 * time.Second, LivenessTimeout: 4 * time.Second},
		Discovery: Discovery{Interval: 30 * time.Second},
		Routing:   Routing{CatalogueInterval: 60 * time.Second, AffinityMargin: 2, WarmupTimeout: 5 * time.Minute},
		Jobs: Jobs{Timeout: 5 * time.Minute, MaxConcurrent: 10, MaxWaiting: 1000, MaxWaitingBytes: 1 << 30, MaxImageBytes: 50 << 20,
			MaxWait: 5 * time.Minute, IdempotencyTTL: 24 * time.Hour, OutputMemoryBytes: 256 << 20,
			InputMemoryBytes: 16 << 20, StateDir: "data/jobs", CacheMaxBytes: 1 << 30,
			S3: S3{Region: "us-east-1", PresignExpiry: time.Hour}},
		Webhooks:  Webhooks{Timeout: 5 * time.Second, RetryFor: time.Hour, MaxAttempts: 10},
		ImageURLs: ImageURLs{Timeout: 30 * time.Second},
		Log:       Log{Level: "info", Format: "json", MaxSizeMB: 100, MaxBackups: 5, MaxAgeDays: 30},
		Dir:       ".",
		State:     State{LeaseTTL: 6 * time.Second},
	}
	defaultSecurity(c)
	c.complete()
}

// complete fills the values derived from others: instance names and
// workflow image inputs. Run it again after changing Instances or Workflows.
func (c *Config) complete() {
	for i := range c.Instances {
		if c.Instances[i].Name == "" {
			c.Instances[i].Name = c.Instances[i].HostPort()
		}
		if c.Instances[i].Weight == 0 {
			c.Instances[i].Weight = 1
		}
	}
	for name, w := range c.Workflows {
		if w.ImageInput == "" {
			w.ImageInput = "image"
			c.Workflows[name] = w
		}
	}
	if c.Dir == "" {
		c.Dir = "."
	}
}

// HostPort returns the instance address as host:port, whatever form it was given in.
func (i Instance) HostPort() string {
	a := strings.TrimSpace(i.Address)
	if strings.Contains(a, "://") {
		if u, err := url.Parse(a); err == nil {
			if u.Port() == "" {
				if u.Scheme == "https" {
					return net.JoinHostPort(u.Hostname(), "443")
				}
				return net.JoinHostPort(u.Hostname(), "80")
			}
			return u.Host
		}
	}
	return strings.TrimSuffix(a, "/")
}

// Endpoint is the instance's address normalised for comparison: host:port
// with the host in lower case, whatever scheme, default port or trailing
// slash it was written with ("http://GPU-1/" and "gpu-1:80" are one
// endpoint). Two entries with one endpoint are one ComfyUI, with one
// output folder.
func (i Instance) Endpoint() string {
	hp := i.HostPort()
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return strings.ToLower(hp)
	}
	return net.JoinHostPort(strings.ToLower(host), port)
}

// TLS reports whether the instance is reached over https.
func (i Instance) TLS() bool { return strings.HasPrefix(strings.TrimSpace(i.Address), "https://") }

// Load reads path (may be empty: defaults only), applies the environment
// overrides found in environ (KEY=VALUE pairs as os.Environ returns them;
// nil means the process environment) and validates. The error lists every
// problem found (errors.Join), each on a line of its own starting with its
// key.
func Load(path string, environ []string) (*Config, error) {
	c, err := Read(path, environ)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Read is Load that also returns what it read when it finds errors: the
// configuration holds the valid values of the file and the environment and
// the defaults elsewhere, so that a caller can go on looking for what else
// is wrong (comfygate check). It is nil only when the file cannot be read
// or is not YAML at all.
func Read(path string, environ []string) (*Config, error) {
	if environ == nil {
		environ = os.Environ()
	}
	// Decoding over the defaults keeps them for absent keys and lets an
	// explicit 0 ("never resubmit", "no backlog") mean 0.
	c := Default()
	var errs []error
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if emptyYAML(data) {
			// A truncated or half-written file would otherwise run the
			// defaults (two local instances) in place of the fleet.
			return nil, fmt.Errorf("config %s: the file is empty (no settings): want at least the instances; run without -config for the built-in defaults", path)
		}
		if fatal, err := decode(c, path, data); fatal {
			return nil, err
		} else if err != nil {
			// yaml.v3 decodes every other key before it reports the
			// values it could not take: the rest is still worth checking.
			errs = append(errs, err)
		}
		c.Dir = filepath.Dir(path)
	}
	errs = append(errs, c.applyEnv(environ))
	c.complete()
	errs = append(errs, c.Validate())
	return c, errors.Join(errs...)
}

// decode decodes data over c, refusing unknown keys. A value of the wrong
// type, or an unknown key, is one error each, naming its key, and c holds
// every other value; fatal means data is not YAML (c is then unusable).
func decode(c *Config, path string, data []byte) (fatal bool, err error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err = dec.Decode(c)
	if err == nil || errors.Is(err, io.EOF) {
		return false, nil
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return true, fmt.Errorf("config %s: %s", path, quoteLines(err.Error(), data))
	}
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root) // it decoded above: the tree is there
	errs := make([]error, 0, len(te.Errors))
	for _, msg := range te.Errors {
		key := "config " + path
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			n, _ := strconv.Atoi(m[1])
			var value string
			if m := yamlValue.FindStringSubmatch(msg); m != nil {
				value = m[1]
			}
			if k := keyOnLine(&root, n, value); k != "" {
				key = k
			}
		}
		msg = unknownField.ReplaceAllString(msg, "not a configuration key (config.yaml lists them all)")
		errs = append(errs, fmt.Errorf("%s: %s %s", key, path, quoteLines(msg, data)))
	}
	return false, errors.Join(errs...)
}

var (
	unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)
	yamlValue    = regexp.MustCompile("cannot unmarshal !!\\w+ `([^`]*)`")
)

// keyOnLine returns the dotted path ("health_check.interval",
// "instances[1].address") of the key or sequence item written on line of
// the YAML document under n, or "" if none is. With several keys on the
// line (a flow mapping) it returns the one whose value is value, else the
// mapping holding them.
func keyOnLine(n *yaml.Node, line int, value string) string {
	var walk func(n *yaml.Node, path string) (string, bool)
	walk = func(n *yaml.Node, path string) (string, bool) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				if k, ok := walk(c, path); ok {
					return k, true
				}
			}
		case yaml.MappingNode:
			var here []string
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				if k.Line == line {
					if value != "" && v.Kind == yaml.ScalarNode && v.Value == value {
						return p, true
					}
					here = append(here, p)
					continue
				}
				if found, ok := walk(v, p); ok {
					return found, true
				}
			}
			switch {
			case len(here) == 1:
				return here[0], true
			case len(here) > 1 && path != "":
				return path, true
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if c.Kind == yaml.ScalarNode && c.Line == line {
					return p, true
				}
				if found, ok := walk(c, p); ok {
					return found, true
				}
			}
		}
		return "", false
	}
	k, _ := walk(n, "")
	return k
}

// emptyYAML reports whether data holds no settings: nothing, blanks and
// comments, a bare "---", or a null document ("~", "null"). "{}" is a
// deliberate empty mapping and is not empty. Data that does not parse is
// not empty either: the strict decode reports its error.
func emptyYAML(data []byte) bool {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return false
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return true
	}
	n := doc.Content[0]
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func (c *Config) applyEnv(environ []string) error {
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	var errs []error
	ms := func(key string, dst *time.Duration) {
		v := strings.TrimSpace(env[key])
		if v == "" {
			return
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("%s: %q is not allowed: want a positive number of milliseconds", key, v))
			return
		}
		*dst = time.Duration(n) * time.Millisecond
	}
	num := func(key string, dst *int) {
		v := strings.TrimSpace(env[key])
		if v == "" {
			return
		}
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("%s: %q is not allowed: want a positive whole number", key, v))
			return
		}
		*dst = n
	}
	str := func(key string, dst *string) {
		if v := strings.TrimSpace(env[key]); v != "" {
			*dst = v
		}
	}
	ms("COMFYUI_TIMEOUT", &c.Timeout)
	num("MAX_CONNECTIONS_PER_INSTANCE", &c.MaxConnectionsPerInstance)
	ms("HEALTH_CHECK_INTERVAL", &c.HealthCheck.Interval)
	ms("JOB_TIMEOUT", &c.Jobs.Timeout)
	num("MAX_CONCURRENT_JOBS", &c.Jobs.MaxConcurrent)
	str("LOG_LEVEL", &c.Log.Level)
	str("LOG_FORMAT", &c.Log.Format)
	str("LOG_DIRECTORY", &c.Log.Directory)
	str("COMFYGATE_LISTEN", &c.Listen)
	str("COMFYGATE_STATE_DIR", &c.Jobs.StateDir)
	str("COMFYGATE_STATE_URL", &c.State.URL)
	c.applySecurityEnv(env)
	str("COMFYGATE_WEBHOOK_SECRET", &c.Webhooks.Secret)

	// COMFYUI_HOST_1..N replace the instance list: any N, in order, gaps allowed.
	type numbered struct {
		n    int
		addr string
	}
	var hosts []numbered
	for key, val := range env {
		rest, ok := strings.CutPrefix(key, "COMFYUI_HOST_")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(rest)
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("%s: want COMFYUI_HOST_<n> with n a whole number from 1", key))
			continue
		}
		if v := strings.TrimSpace(val); v != "" {
			hosts = append(hosts, numbered{n, v})
		}
	}
	if len(hosts) > 0 {
		sort.Slice(hosts, func(i, j int) bool { return hosts[i].n < hosts[j].n })
		c.Instances = nil
		for _, h := range hosts {
			c.Instances = append(c.Instances, Instance{Address: h.addr})
		}
	}
	return errors.Join(errs...)
}

// Path resolves a path from the configuration against its directory.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.Dir, p)
}

var yamlLine = regexp.MustCompile(`line (\d+):`)

// quoteLines appends the offending source line to each "line N:" of a YAML
// error, so the message names the key and the value as written.
func quoteLines(msg string, src []byte) string {
	lines := strings.Split(string(src), "\n")
	out := yamlLine.ReplaceAllStringFunc(msg, func(m string) string {
		n, _ := strconv.Atoi(yamlLine.FindStringSubmatch(m)[1])
		if n < 1 || n > len(lines) {
			return m
		}
		return fmt.Sprintf("line %d (%s):", n, strings.TrimSpace(lines[n-1]))
	})
	if strings.Contains(msg, "time.Duration") {
		out += " (durations are written like 500ms, 30s or 5m)"
	}
	return out
}
