package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Server configures how comfygate sees the clients on its listen address.
type Server struct {
	// TrustedProxies are the load balancers and reverse proxies in front of
	// comfygate: CIDRs ("10.0.0.0/8") or single addresses ("10.1.2.3",
	// "::1") (COMFYGATE_TRUSTED_PROXIES, comma-separated, replaces the
	// list). A request whose TCP peer is one of them comes from the address
	// its X-Forwarded-For names (the rightmost that is not itself a trusted
	// proxy), or without that header its Forwarded: for=; from any other
	// peer those headers are ignored and the peer is the client. The client
	// address keys the per-IP rate limits and the access log;
	// limits.max_conns_per_ip does not count the trusted proxies' own
	// connections. Default none: every peer is the client.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// ProxyProtocol makes connections from the trusted proxies start with
	// a PROXY protocol v2 header (HAProxy send-proxy-v2, AWS NLB), whose
	// source address is then the connection's peer; a connection from a
	// trusted proxy without one is closed. Connections from other peers
	// are never read for it. Needs TrustedProxies. Default false.
	ProxyProtocol bool `yaml:"proxy_protocol"`
}

// TrustedPrefixes returns TrustedProxies as prefixes (a single address as
// a one-address prefix, IPv4-mapped IPv6 as IPv4). Entries that do not
// parse are left out: Validate reports them.
func (s Server) TrustedPrefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, e := range s.TrustedProxies {
		if p, ok := parsePrefix(e); ok {
			out = append(out, p)
		}
	}
	return out
}

func parsePrefix(s string) (netip.Prefix, bool) {
	s = strings.TrimSpace(s)
	if p, err := netip.ParsePrefix(s); err == nil {
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		return p.Masked(), true
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
}

// Auth configures API keys. Keys are off (every route open, as with
// ComfyUI itself) unless COMFYGATE_API_KEYS, COMFYGATE_ADMIN_KEYS or
// KeysFile name at least one key.
type Auth struct {
	// KeysFile names a file of hashed keys, one per line:
	// "<name> sha256:<hex of the key's SHA-256> [admin] [metrics]"; '#'
	// starts a comment. Relative to the config file. Default "" (none).
	KeysFile string `yaml:"keys_file"`
	// OpenHealth lets /health answer without a key (container and load
	// balancer probes). Default true.
	OpenHealth bool `yaml:"open_health"`
	// Isolation makes each key see and act on only its own prompts, jobs
	// and WebSocket client ids. Default true.
	Isolation bool `yaml:"isolation"`
	// MaxOwners is, per key, how many prompt (and job) ids, and how many
	// WebSocket clientIds, the isolation table remembers as that key's
	// (the key's own oldest forgotten first; a forgotten one belongs to
	// no key). One key's records never push out another's, and a
	// clientId with a live socket is never forgotten. Memory grows with
	// MaxOwners times the number of keys. Default 1000000.
	MaxOwners int `yaml:"max_owners"`
	// CookieMaxAge is how long the web UI's login session (POST /login)
	// lasts. Default 24h.
	CookieMaxAge time.Duration `yaml:"cookie_max_age"`
	// SessionSecret signs the web UI's login session cookies (HMAC-SHA256);
	// COMFYGATE_SESSION_SECRET overrides it. At least 32 characters. Empty:
	// a random secret made at start, so sessions end when comfygate
	// restarts. Default "".
	SessionSecret string `yaml:"session_secret"`
	// AllowedOrigins are browser origins (scheme://host[:port]) accepted
	// with keys on besides the request's own Host. Default none.
	AllowedOrigins []string `yaml:"allowed_origins"`

	// Keys and AdminKeys are the plain keys of COMFYGATE_API_KEYS and
	// COMFYGATE_ADMIN_KEYS (comma-separated). Never from the YAML file,
	// never logged.
	Keys      []string `yaml:"-"`
	AdminKeys []string `yaml:"-"`
	// MetricsKeys (COMFYGATE_METRICS_KEYS) may read /metrics and /stats only.
	MetricsKeys []string `yaml:"-"`
}

// Redact configures which extra_data fields of a prompt are credentials.
type Redact struct {
	// ExtraData names extra_data keys that never leave comfygate towards a
	// client other than the key that submitted them, and never reach logs.
	// Default: api_key_comfy_org, auth_token_comfy_org.
	ExtraData []string `yaml:"extra_data"`
}

// RateLimit configures per-key limits on submissions; the token buckets
// apply per client IP with keys off. A zero rate means no limit.
type RateLimit struct {
	// PromptsPerSecond and PromptBurst are the token bucket on POST /prompt. Default 0 (off), 0.
	PromptsPerSecond float64 `yaml:"prompts_per_second"`
	PromptBurst      int     `yaml:"prompt_burst"`
	// JobsPerSecond and JobBurst are the token bucket on job creation. Default 0 (off), 0.
	JobsPerSecond float64 `yaml:"jobs_per_second"`
	JobBurst      int     `yaml:"job_burst"`
	// MaxConcurrentPrompts caps the prompts one API key has accepted and
	// not finished (the fair share between keys, see docs/security.md);
	// it does not apply with keys off. 0: no cap. Default 256.
	MaxConcurrentPrompts int `yaml:"max_concurrent_prompts"`
}

// Limits are comfygate's own limits towards clients.
type Limits struct {
	// MaxBodyBytes caps a streamed request body (uploads). Default 100 MiB,
	// ComfyUI's own --max-upload-size.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxBufferedBodyBytes bounds the bytes of request bodies comfygate
	// holds in memory at once, over all requests (bodies it must read
	// whole; streamed ones do not count). A request that would go past it
	// gets 429 with Retry-After. Default 256 MiB.
	MaxBufferedBodyBytes int64 `yaml:"max_buffered_body_bytes"`
	// MaxHeaderBytes caps a request's header block (431 beyond). Default 16 KiB.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxConnsPerIP caps the connections one client IP holds open; 0: no cap. Default 1024.
	MaxConnsPerIP int `yaml:"max_conns_per_ip"`
	// HeaderTimeout bounds the arrival of a request's header block once it began. Default 30s.
	HeaderTimeout time.Duration `yaml:"header_timeout"`
	// BodyTimeout bounds reading one request body. Default 1h.
	BodyTimeout time.Duration `yaml:"body_timeout"`
	// IdleTimeout closes keep-alive connections idle this long. Default 2m.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// WriteTimeout cuts a client that reads nothing of an answer this long;
	// 0: COMFYUI_TIMEOUT (timeout). Default 0.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// WSMaxFrameBytes caps one frame (message) a WebSocket client sends. Default 1 MiB.
	WSMaxFrameBytes int64 `yaml:"ws_max_frame_bytes"`
	// WSMessagesPerSecond and WSMessageBurst bound what one WebSocket client
	// sends; over it the socket is closed (1008). Default 20, 100.
	WSMessagesPerSecond float64 `yaml:"ws_messages_per_second"`
	WSMessageBurst      int     `yaml:"ws_message_burst"`
}

func defaultSecurity(c *Config) {
	c.Auth = Auth{OpenHealth: true, Isolation: true, MaxOwners: 1_000_000, CookieMaxAge: 24 * time.Hour}
	c.Redact = Redact{ExtraData: []string{"api_key_comfy_org", "auth_token_comfy_org"}}
	c.Limits = Limits{MaxBodyBytes: 100 << 20, MaxBufferedBodyBytes: 256 << 20, MaxHeaderBytes: 16 << 10, MaxConnsPerIP: 1024,
		HeaderTimeout: 30 * time.Second, BodyTimeout: time.Hour, IdleTimeout: 2 * time.Minute,
		WSMaxFrameBytes: 1 << 20, WSMessagesPerSecond: 20, WSMessageBurst: 100}
	c.RateLimit = RateLimit{MaxConcurrentPrompts: 256}
}

// keyList splits a comma-separated list of keys, dropping blanks.
func keyList(v string) []string {
	var out []string
	for _, k := range strings.Split(v, ",") {
		if k = strings.TrimSpace(k); k != "" {
			out = append(out, k)
		}
	}
	return out
}

func (c *Config) applySecurityEnv(env map[string]string) {
	if v, ok := env["COMFYGATE_API_KEYS"]; ok {
		c.Auth.Keys = keyList(v)
	}
	if v, ok := env["COMFYGATE_ADMIN_KEYS"]; ok {
		c.Auth.AdminKeys = keyList(v)
	}
	if v, ok := env["COMFYGATE_METRICS_KEYS"]; ok {
		c.Auth.MetricsKeys = keyList(v)
	}
	if v := strings.TrimSpace(env["COMFYGATE_SESSION_SECRET"]); v != "" {
		c.Auth.SessionSecret = v
	}
	if v, ok := env["COMFYGATE_TRUSTED_PROXIES"]; ok {
		c.Server.TrustedProxies = keyList(v)
	}
	if v := strings.TrimSpace(env["COMFYGATE_METRICS_LISTEN"]); v != "" {
		c.MetricsListen = v
	}
}

// ClientWriteTimeout is how long a client may read nothing of an answer
// before it is cut: limits.write_timeout, or timeout when that is 0.
func (c *Config) ClientWriteTimeout() time.Duration {
	if c.Limits.WriteTimeout > 0 {
		return c.Limits.WriteTimeout
	}
	return c.Timeout
}

func (c *Config) validateSecurity(bad func(key string, val any, allowed string)) {
	for _, k := range append(append(append([]string(nil), c.Auth.Keys...), c.Auth.AdminKeys...), c.Auth.MetricsKeys...) {
		if len(k) < 16 || strings.ContainsAny(k, " \t\r\n;") {
			// The key itself is never shown.
			bad("COMFYGATE_*_KEYS", fmt.Sprintf("a key of %d characters", len(k)), "keys of at least 16 characters without spaces or ';'")
			break
		}
	}
	if c.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(c.MetricsListen); err != nil || !validPort(port, true) || c.MetricsListen == c.Listen {
			bad("metrics_listen (COMFYGATE_METRICS_LISTEN)", strconv.Quote(c.MetricsListen), "host:port other than listen, e.g. 127.0.0.1:9190")
		}
	}
	for i, e := range c.Server.TrustedProxies {
		if _, ok := parsePrefix(e); !ok {
			bad(fmt.Sprintf("server.trusted_proxies[%d] (COMFYGATE_TRUSTED_PROXIES)", i), strconv.Quote(e),
				`a CIDR such as "10.0.0.0/8" or a single IP address`)
		}
	}
	if c.Server.ProxyProtocol && len(c.Server.TrustedProxies) == 0 {
		bad("server.proxy_protocol", true, "server.trusted_proxies set too: only the proxies listed there may send the header")
	}
	if c.Auth.MaxOwners <= 0 {
		bad("auth.max_owners", c.Auth.MaxOwners, "a positive whole number")
	}
	if c.Auth.CookieMaxAge <= 0 {
		bad("auth.cookie_max_age", c.Auth.CookieMaxAge, "a positive duration such as 24h")
	}
	if n := len(c.Auth.SessionSecret); n > 0 && n < 32 {
		// The secret itself is never shown.
		bad("auth.session_secret (COMFYGATE_SESSION_SECRET)", fmt.Sprintf("a secret of %d characters", n), "at least 32 characters, or empty for a random one per start")
	}
	for i, o := range c.Auth.AllowedOrigins {
		if !(strings.HasPrefix(o, "http://") || strings.HasPrefix(o, "https://")) || strings.Count(o, "/") != 2 {
			bad(fmt.Sprintf("auth.allowed_origins[%d]", i), strconv.Quote(o), "an origin like https://comfy.example.com")
		}
	}
	for i, n := range c.Redact.ExtraData {
		if n == "" {
			bad(fmt.Sprintf("redact.extra_data[%d]", i), `""`, "a field name")
		}
	}
	nonNeg := func(key string, v float64) {
		if v < 0 {
			bad(key, v, "0 (no limit) or a positive number")
		}
	}
	nonNeg("rate_limit.prompts_per_second", c.RateLimit.PromptsPerSecond)
	nonNeg("rate_limit.jobs_per_second", c.RateLimit.JobsPerSecond)
	nonNeg("rate_limit.prompt_burst", float64(c.RateLimit.PromptBurst))
	nonNeg("rate_limit.job_burst", float64(c.RateLimit.JobBurst))
	nonNeg("rate_limit.max_concurrent_prompts", float64(c.RateLimit.MaxConcurrentPrompts))
	if c.Limits.MaxBodyBytes <= 0 {
		bad("limits.max_body_bytes", c.Limits.MaxBodyBytes, "a positive number of bytes")
	}
	if c.Limits.MaxBufferedBodyBytes <= 0 {
		bad("limits.max_buffered_body_bytes", c.Limits.MaxBufferedBodyBytes, "a positive number of bytes")
	}
	if c.Limits.MaxHeaderBytes < 4096 || c.Limits.MaxHeaderBytes > 1<<20 {
		bad("limits.max_header_bytes", c.Limits.MaxHeaderBytes, "4096 to 1048576 bytes")
	}
	nonNeg("limits.max_conns_per_ip", float64(c.Limits.MaxConnsPerIP))
	for key, d := range map[string]time.Duration{"limits.header_timeout": c.Limits.HeaderTimeout,
		"limits.body_timeout": c.Limits.BodyTimeout, "limits.idle_timeout": c.Limits.IdleTimeout} {
		if d <= 0 {
			bad(key, d, "a positive duration such as 30s")
		}
	}
	if c.Limits.WriteTimeout < 0 {
		bad("limits.write_timeout", c.Limits.WriteTimeout, "0 (use timeout) or a positive duration")
	}
	if c.Limits.WSMaxFrameBytes <= 0 {
		bad("limits.ws_max_frame_bytes", c.Limits.WSMaxFrameBytes, "a positive number of bytes")
	}
	nonNeg("limits.ws_messages_per_second", c.Limits.WSMessagesPerSecond)
	nonNeg("limits.ws_message_burst", float64(c.Limits.WSMessageBurst))
}
