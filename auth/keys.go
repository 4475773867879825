// Package auth owns comfygate's optional API keys: which keys exist (from
// COMFYGATE_*_KEYS or a file of hashed keys), which key a request carries
// (Authorization: Bearer, a token query parameter, or the web UI's login
// cookie), which key owns a prompt or a WebSocket clientId, and what one
// key may see of another's prompts (isolation and redaction of
// credentials in queue, history and job views).
package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/comfygate/comfygate/config"
)

// Key is one configured API key. Only its SHA-256 is kept.
type Key struct {
	// Name labels the key in logs and owner tables; never the key itself.
	Name string
	// Admin keys may run fleet-wide actions (POST /free, an interrupt
	// without prompt_id, queue and history clear) and read /metrics and /stats.
	Admin bool
	// Metrics keys may read /metrics and /stats.
	Metrics bool
	// MetricsOnly keys may read nothing else.
	MetricsOnly bool

	hash [sha256.Size]byte
}

// Keys is the set of configured keys; the zero set means keys are off.
type Keys struct {
	keys []*Key
}

// Load builds the key set from the configuration: the plain keys of the
// environment and the hashed keys of auth.keys_file.
func Load(cfg *config.Config) (*Keys, error) {
	ks := &Keys{}
	add := func(prefix string, plain []string, admin, metricsOnly bool) {
		for _, k := range plain {
			ks.keys = append(ks.keys, &Key{Name: PlainKeyName(prefix, k), Admin: admin,
				Metrics: admin || metricsOnly, MetricsOnly: metricsOnly, hash: sha256.Sum256([]byte(k))})
		}
	}
	add("key", cfg.Auth.Keys, false, false)
	add("admin", cfg.Auth.AdminKeys, true, false)
	add("metrics", cfg.Auth.MetricsKeys, false, true)
	if cfg.Auth.KeysFile != "" {
		path := cfg.Path(cfg.Auth.KeysFile)
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("auth.keys_file: %w", err)
		}
		fromFile, err := ParseKeysFile(data)
		if err != nil {
			// One error per bad line, each naming the key and the file.
			var errs []error
			for _, e := range joined(err) {
				errs = append(errs, fmt.Errorf("auth.keys_file: %s %w", path, e))
			}
			return nil, errors.Join(errs...)
		}
		ks.keys = append(ks.keys, fromFile...)
	}
	seen := map[string]bool{}
	for _, k := range ks.keys {
		if seen[k.Name] {
			return nil, fmt.Errorf("auth.keys_file: key name %q is used twice (a key listed twice, or a name COMFYGATE_*_KEYS take: key-<hex>, admin-<hex>, metrics-<hex>)", k.Name)
		}
		seen[k.Name] = true
	}
	return ks, nil
}

// PlainKeyName names a key given in plain (COMFYGATE_API_KEYS and the
// like) by the start of its SHA-256: "key-2c26b46b". The name is what
// ownership, uploads and user data are kept under, so it must not change
// when another key is added to or removed from the list.
func PlainKeyName(prefix, key string) string {
	h := sha256.Sum256([]byte(key))
	return fmt.Sprintf("%s-%x", prefix, h[:4])
}

// joined returns the errors err joins (errors.Join), or err alone.
func joined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// ParseKeysFile reads lines "<name> sha256:<64 hex> [admin] [metrics]";
// blank lines and '#' comments are skipped. "metrics" alone makes a key
// that may read /metrics and /stats only.
func ParseKeysFile(data []byte) ([]*Key, error) {
	var out []*Key
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 2 {
			errs = append(errs, fmt.Errorf("line %d: want \"<name> sha256:<hex> [admin] [metrics]\"", n))
			continue
		}
		hexHash, ok := strings.CutPrefix(f[1], "sha256:")
		raw, err := hex.DecodeString(hexHash)
		if !ok || err != nil || len(raw) != sha256.Size {
			errs = append(errs, fmt.Errorf("line %d: key %q: want sha256: and 64 hex digits", n, f[0]))
			continue
		}
		k := &Key{Name: f[0]}
		copy(k.hash[:], raw)
		for _, role := range f[2:] {
			switch role {
			case "admin":
				k.Admin, k.Metrics = true, true
			case "metrics":
				k.Metrics = true
			default:
				errs = append(errs, fmt.Errorf("line %d: key %q: role %q: want admin or metrics", n, f[0], role))
			}
		}
		k.MetricsOnly = k.Metrics && !k.Admin && len(f) == 3
		out = append(out, k)
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	return out, errors.Join(errs...)
}

// On reports whether any key is configured.
func (ks *Keys) On() bool { return ks != nil && len(ks.keys) > 0 }

// Find returns the key whose secret is presented, or nil. Every key's
// hash is compared in constant time, whether or not one matched before.
func (ks *Keys) Find(presented []byte) *Key {
	if ks == nil || len(presented) == 0 {
		return nil
	}
	h := sha256.Sum256(presented)
	var found *Key
	for _, k := range ks.keys {
		if subtle.ConstantTimeCompare(h[:], k.hash[:]) == 1 {
			found = k
		}
	}
	return found
}
