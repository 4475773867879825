package auth

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/config"
)

func loadKeys(t *testing.T, plain ...string) *Keys {
	t.Helper()
	cfg := config.Default()
	cfg.Auth.Keys = plain
	ks, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// TestSessions: a minted value resolves to its key until it expires, and
// never once it is tampered with, signed under another secret, or names a
// key that is gone or was replaced under the same name. The value never
// holds the key.
func TestSessions(t *testing.T) {
	t.Parallel()
	const keyA, keyB = "session-key-a-0123456789", "session-key-b-0123456789"
	ks := loadKeys(t, keyA, keyB)
	now := time.Unix(1_800_000_000, 0)
	ss := NewSessions(strings.Repeat("s", 32))
	ss.now = func() time.Time { return now }
	b := ks.Find([]byte(keyB))
	v := ss.Mint(b, time.Hour)
	if strings.Contains(v, keyB) || strings.Contains(v, base64.RawURLEncoding.EncodeToString([]byte(keyB))) {
		t.Fatalf("the session value holds the key: %s", v)
	}
	if k := ss.Resolve(ks, []byte(v)); k != b {
		t.Fatalf("Resolve(fresh) = %+v, want %s", k, b.Name)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(v)
	renamed := append(append([]byte(nil), raw[:len(raw)-len(b.Name)]...), "key1"...)
	flipped := append([]byte(nil), raw...)
	flipped[3] ^= 1 // the expiry, pushed later
	other := NewSessions(strings.Repeat("t", 32))
	other.now = ss.now
	for desc, val := range map[string]string{
		"another key's name":    base64.RawURLEncoding.EncodeToString(renamed),
		"a changed expiry":      base64.RawURLEncoding.EncodeToString(flipped),
		"another secret":        other.Mint(b, time.Hour),
		"not base64":            v + "!",
		"too short":             v[:20],
		"the raw key":           keyB,
		"empty":                 "",
		"a value over the size": strings.Repeat("A", 2000),
	} {
		if k := ss.Resolve(ks, []byte(val)); k != nil {
			t.Errorf("Resolve(%s) = %s, want nil", desc, k.Name)
		}
	}
	now = now.Add(time.Hour - time.Second)
	if ss.Resolve(ks, []byte(v)) != b {
		t.Errorf("a session a second before its expiry is refused")
	}
	now = now.Add(time.Second)
	if k := ss.Resolve(ks, []byte(v)); k != nil {
		t.Errorf("an expired session resolves to %s", k.Name)
	}
	now = now.Add(-time.Minute)
	if k := ss.Resolve(loadKeys(t, keyA), []byte(v)); k != nil {
		t.Errorf("a session of a removed key resolves to %s", k.Name)
	}
	if k := ss.Resolve(loadKeys(t, keyA, "session-key-c-0123456789"), []byte(v)); k != nil {
		t.Errorf("a session of a key replaced under the same name resolves to %s", k.Name)
	}
	if k := NewSessions(""); k.Resolve(ks, []byte(ss.Mint(b, time.Hour))) != nil || len(k.secret) != 32 {
		t.Errorf("an empty secret is not a random one of 32 bytes")
	}
}
