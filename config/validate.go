package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Validate reports every invalid value, each with its key, the value and
// what is allowed.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key string, val any, allowed string) {
		errs = append(errs, fmt.Errorf("%s: %v is not allowed: want %s", key, val, allowed))
	}
	if _, port, err := net.SplitHostPort(c.Listen); err != nil || !validPort(port, true) {
		bad("listen", strconv.Quote(c.Listen), "host:port, e.g. 127.0.0.1:8190")
	}
	if len(c.Instances) == 0 {
		bad("instances", "[]", "at least one ComfyUI instance")
	}
	names := map[string]bool{}
	endpoints := map[string]int{} // endpoint -> index of the first instance with it
	for i, in := range c.Instances {
		key := fmt.Sprintf("instances[%d]", i)
		a := strings.TrimSpace(in.Address)
		if strings.Contains(a, "://") && !strings.HasPrefix(a, "http://") && !strings.HasPrefix(a, "https://") {
			bad(key+".address", strconv.Quote(in.Address), "host:port or an http(s):// URL")
			continue
		}
		host, port, err := net.SplitHostPort(in.HostPort())
		if err != nil || host == "" || !validPort(port, false) {
			bad(key+".address", strconv.Quote(in.Address), "host:port or an http(s):// URL with a host")
		}
		if first, dup := endpoints[in.Endpoint()]; dup && err == nil {
			// One ComfyUI under two names: its prompts, files and queue
			// would be counted twice and its output references would
			// name two instances.
			errs = append(errs, fmt.Errorf("%s.address: %q (instance %q) is the address of instances[%d] (instance %q) too: want an address no other instance has",
				key, in.Address, in.Name, first, c.Instances[first].Name))
		} else if err == nil {
			endpoints[in.Endpoint()] = i
		}
		if names[in.Name] {
			bad(key+".name", strconv.Quote(in.Name), "a name no other instance has")
		}
		names[in.Name] = true
		if in.Weight < 0 || in.Weight > 1000 {
			bad(key+".weight", in.Weight, "a whole number from 1 to 1000 (0 means 1)")
		}
		validLabels(key+".labels", in.Labels, bad)
		if in.Warmup != "" {
			if _, err := os.Stat(c.Path(in.Warmup)); err != nil {
				bad(key+".warmup", strconv.Quote(in.Warmup), "a readable API-format workflow file ("+err.Error()+")")
			}
		}
	}
	pos := func(key string, d time.Duration) {
		if d <= 0 {
			bad(key, d, "a positive duration such as 30s or 500ms")
		}
	}
	posInt := func(key string, n int) {
		if n <= 0 {
			bad(key, n, "a positive whole number")
		}
	}
	pos("timeout", c.Timeout)
	posInt("max_connections_per_instance", c.MaxConnectionsPerInstance)
	pos("health_check.interval", c.HealthCheck.Interval)
	pos("health_check.timeout", c.HealthCheck.Timeout)
	posInt("health_check.unhealthy_threshold", c.HealthCheck.UnhealthyThreshold)
	posInt("health_check.healthy_threshold", c.HealthCheck.HealthyThreshold)
	posInt("breaker.consecutive_failures", c.Breaker.ConsecutiveFailures)
	pos("breaker.open_timeout", c.Breaker.OpenTimeout)
	if c.Breaker.Interval < 0 {
		bad("breaker.interval", c.Breaker.Interval, "0 (never clear) or a positive duration")
	}
	posInt("websocket.client_buffer", c.WebSocket.ClientBuffer)
	if c.WebSocket.BacklogGrace < 0 {
		bad("websocket.backlog_grace", c.WebSocket.BacklogGrace, "0 (no backlog) or a positive duration")
	}
	posInt("websocket.backlog_size", c.WebSocket.BacklogSize)
	pos("websocket.ping_interval", c.WebSocket.PingInterval)
	pos("websocket.reconnect_min", c.WebSocket.ReconnectMin)
	if c.WebSocket.ReconnectMax < c.WebSocket.ReconnectMin {
		bad("websocket.reconnect_max", c.WebSocket.ReconnectMax, "a duration of at least websocket.reconnect_min")
	}
	if c.Failover.MaxResubmits < 0 {
		bad("failover.max_resubmits", c.Failover.MaxResubmits, "0 (never resubmit) or more")
	}
	pos("failover.suspect_grace", c.Failover.SuspectGrace)
	pos("failover.liveness_interval", c.Failover.LivenessInterval)
	if c.Failover.LivenessTimeout <= c.Failover.LivenessInterval {
		bad("failover.liveness_timeout", c.Failover.LivenessTimeout, "a duration longer than failover.liveness_interval")
	}
	pos("discovery.interval", c.Discovery.Interval)
	pos("routing.catalogue_interval", c.Routing.CatalogueInterval)
	if c.Routing.AffinityMargin < -1 {
		bad("routing.affinity_margin", c.Routing.AffinityMargin, "-1 (off) or a whole number of prompts from 0")
	}
	pos("routing.warmup_timeout", c.Routing.WarmupTimeout)
	pos("jobs.timeout", c.Jobs.Timeout)
	posInt("jobs.max_concurrent", c.Jobs.MaxConcurrent)
	posInt("jobs.max_waiting", c.Jobs.MaxWaiting)
	if c.Jobs.MaxWaitingBytes <= 0 {
		bad("jobs.max_waiting_bytes", c.Jobs.MaxWaitingBytes, "a positive number of bytes")
	}
	if c.Jobs.MaxImageBytes <= 0 {
		bad("jobs.max_image_bytes", c.Jobs.MaxImageBytes, "a positive number of bytes")
	}
	pos("jobs.max_wait", c.Jobs.MaxWait)
	if err := validStateURL(c.State.URL); err != nil {
		errs = append(errs, err)
	}
	if c.State.LeaseTTL < 300*time.Millisecond {
		bad("state.lease_ttl", c.State.LeaseTTL, "a duration of at least 300ms")
	}
	pos("jobs.idempotency_ttl", c.Jobs.IdempotencyTTL)
	if c.Jobs.InputMemoryBytes < 0 {
		bad("jobs.input_memory_bytes", c.Jobs.InputMemoryBytes, "0 (every kept image in a file) or a number of bytes")
	}
	if c.Jobs.CacheMaxBytes < 0 {
		bad("jobs.cache_max_bytes", c.Jobs.CacheMaxBytes, "0 (no result cache) or a number of bytes")
	}
	if c.Jobs.OutputMemoryBytes < 0 {
		bad("jobs.output_memory_bytes", c.Jobs.OutputMemoryBytes, "0 (every output on disk) or a number of bytes")
	}
	if s3 := c.Jobs.S3; s3.Endpoint != "" {
		if _, port, err := net.SplitHostPort(s3.Endpoint); err != nil || !validPort(port, false) {
			bad("jobs.s3.endpoint", strconv.Quote(s3.Endpoint), "host:port of the S3 API")
		}
		if s3.Bucket == "" {
			bad("jobs.s3.bucket", `""`, "the bucket outputs go to")
		}
		if s3.PresignExpiry <= 0 || s3.PresignExpiry > 7*24*time.Hour {
			bad("jobs.s3.presign_expiry", s3.PresignExpiry, "a duration up to 168h (S3's limit)")
		}
	}
	hosts := func(key string, list []string) {
		for i, h := range list {
			if h == "" || strings.ContainsAny(h, "/?#@ ") || strings.Contains(h, "*") && !strings.HasPrefix(h, "*.") {
				bad(fmt.Sprintf("%s[%d]", key, i), strconv.Quote(h), `a host, host:port or "*.domain"`)
			}
		}
	}
	hosts("webhooks.allowed_hosts", c.Webhooks.AllowedHosts)
	hosts("image_urls.allowed_hosts", c.ImageURLs.AllowedHosts)
	pos("image_urls.timeout", c.ImageURLs.Timeout)
	if len(c.Webhooks.AllowedHosts) > 0 && c.Webhooks.Secret == "" {
		bad("webhooks.secret (COMFYGATE_WEBHOOK_SECRET)", `""`, "a signing secret when webhooks.allowed_hosts is set")
	}
	if u := c.Webhooks.DefaultURL; u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		bad("webhooks.default_url", strconv.Quote(u), "an http(s):// URL")
	}
	pos("webhooks.timeout", c.Webhooks.Timeout)
	pos("webhooks.retry_for", c.Webhooks.RetryFor)
	posInt("webhooks.max_attempts", c.Webhooks.MaxAttempts)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level (LOG_LEVEL)", strconv.Quote(c.Log.Level), "debug, info, warn or error")
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		bad("log.format (LOG_FORMAT)", strconv.Quote(c.Log.Format), "json or text")
	}
	posInt("log.max_size_mb", c.Log.MaxSizeMB)
	if c.Log.MaxBackups < 0 {
		bad("log.max_backups", c.Log.MaxBackups, "0 or more")
	}
	if c.Log.MaxAgeDays < 0 {
		bad("log.max_age_days", c.Log.MaxAgeDays, "0 or more")
	}
	for name, w := range c.Workflows {
		key := "workflows." + name
		if name == "" || strings.ContainsAny(name, "/ ?#") {
			bad("workflows", strconv.Quote(name), "a name without '/', '?', '#' or spaces")
		}
		if w.File != "" && w.OutputNode == "" {
			bad(key+".output_node", `""`, "the node whose outputs are the result")
		}
		seen := map[string]bool{}
		for i, p := range w.Parameters {
			pk := fmt.Sprintf("%s.parameters[%d]", key, i)
			switch {
			case p.Name == "" || strings.ContainsAny(p.Name, " ./"):
				bad(pk+".name", strconv.Quote(p.Name), "a name without spaces, '.' or '/'")
			case seen[p.Name]:
				bad(pk+".name", strconv.Quote(p.Name), "a name no other parameter of the workflow has")
			}
			seen[p.Name] = true
			if p.Node == "" || p.Input == "" {
				bad(pk, "without node/input", "node and input set")
			}
			switch p.Type {
			case "int", "float", "string", "bool", "image":
			case "enum":
				if len(p.Options) == 0 {
					bad(pk+".options", "[]", "the values the enum allows")
				}
			default:
				bad(pk+".type", strconv.Quote(p.Type), "int, float, string, bool, image or enum")
			}
			if p.Min != nil && p.Max != nil && *p.Min > *p.Max {
				bad(pk+".max", *p.Max, "a value of at least min")
			}
		}
		if w.Cache != nil && w.Cache.TTL < 0 {
			bad(key+".cache.ttl", w.Cache.TTL, "0 (no cache) or a positive duration such as 24h")
		}
		validLabels(key+".labels", w.Labels, bad)
		for _, o := range w.Overridable {
			if n, in, ok := strings.Cut(o, "."); !ok || n == "" || in == "" {
				bad(key+".overridable", strconv.Quote(o), `"node_id.input_name"`)
			}
		}
	}
	c.validateSecurity(bad)
	return errors.Join(errs...)
}

// validLabels checks label names and values: the characters a header
// (X-Comfygate-Pool: gpu=a100,pool=flux) can carry unambiguously.
func validLabels(key string, labels map[string]string, bad func(string, any, string)) {
	for k, v := range labels {
		if !labelText.MatchString(k) {
			bad(key, strconv.Quote(k), "label names of letters, digits, '.', '_', '-' and '/'")
		}
		if !labelText.MatchString(v) {
			bad(key+"."+k, strconv.Quote(v), "label values of letters, digits, '.', '_', '-' and '/'")
		}
	}
}

var labelText = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,63}$`)

func validPort(p string, zeroOK bool) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n <= 65535 && (n > 0 || (zeroOK && n == 0))
}

// validStateURL checks state.url with the parser the state store opens it
// with (redis.ParseURL). The error shows the URL with its password
// replaced, since it goes to logs and terminals.
func validStateURL(raw string) error {
	if raw == "" {
		return nil
	}
	shown := "the value (not shown: it is no URL and may hold a password)"
	if u, err := url.Parse(raw); err == nil {
		shown = strconv.Quote(u.Redacted())
	}
	const allowed = `redis://[user:password@]host:port[/db], rediss://… for TLS, or "" to keep the state in memory`
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return fmt.Errorf("state.url: %s is not allowed: want %s (%s)", shown, allowed, redactedError(err, raw))
	}
	if opt.Network != "unix" {
		if _, port, err := net.SplitHostPort(opt.Addr); err != nil || !validPort(port, false) {
			return fmt.Errorf("state.url: %s is not allowed: want %s (the port must be 1 to 65535)", shown, allowed)
		}
	}
	return nil
}

// redactedError is err's text with any password of raw replaced.
func redactedError(err error, raw string) string {
	msg := err.Error()
	if u, perr := url.Parse(raw); perr == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
	}
	return msg
}
