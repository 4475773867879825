package auth

// The web UI's login sessions: after POST /login with a valid key, the
// browser holds an opaque, signed, expiring cookie that names the key and
// never holds it.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"time"
)

// Sessions mints and checks session cookie values. A value is
// base64url(expiry | mac | name): expiry the Unix second after which it is
// refused (8 bytes, big-endian), mac the HMAC-SHA256 under the secret of
// expiry, the key's hash and its name. The key's hash is in the MAC so that
// a key replaced under the same name ends the sessions of the old one.
type Sessions struct {
	secret []byte
	now    func() time.Time
}

const (
	sessionExpiryLen = 8
	sessionMACLen    = sha256.Size
	// maxSessionValue bounds a cookie value worth decoding (names are short).
	maxSessionValue = 1024
)

// NewSessions signs with secret; an empty secret is replaced by 32 random
// bytes, so sessions then end when the process does.
func NewSessions(secret string) *Sessions {
	s := &Sessions{secret: []byte(secret), now: time.Now}
	if len(s.secret) == 0 {
		s.secret = make([]byte, 32)
		_, _ = rand.Read(s.secret) // crypto/rand.Read never fails (Go 1.24+)
	}
	return s
}

func (s *Sessions) mac(k *Key, expiry []byte) []byte {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte("comfygate-session\x00"))
	m.Write(expiry)
	m.Write(k.hash[:])
	m.Write([]byte(k.Name))
	return m.Sum(nil)
}

// Mint returns a session value for k that lasts ttl.
func (s *Sessions) Mint(k *Key, ttl time.Duration) string {
	buf := make([]byte, sessionExpiryLen, sessionExpiryLen+sessionMACLen+len(k.Name))
	binary.BigEndian.PutUint64(buf, uint64(s.now().Add(ttl).Unix()))
	buf = append(buf, s.mac(k, buf[:sessionExpiryLen])...)
	buf = append(buf, k.Name...)
	return base64.RawURLEncoding.EncodeToString(buf)
}

// Resolve returns the key a session value names, or nil when the value is
// malformed, badly signed, expired, or names a key that no longer exists
// (or was replaced under the same name).
func (s *Sessions) Resolve(ks *Keys, value []byte) *Key {
	if len(value) == 0 || len(value) > maxSessionValue {
		return nil
	}
	raw := make([]byte, base64.RawURLEncoding.DecodedLen(len(value)))
	n, err := base64.RawURLEncoding.Decode(raw, value)
	if err != nil || n <= sessionExpiryLen+sessionMACLen {
		return nil
	}
	raw = raw[:n]
	expiry, mac, name := raw[:sessionExpiryLen], raw[sessionExpiryLen:sessionExpiryLen+sessionMACLen], raw[sessionExpiryLen+sessionMACLen:]
	k := ks.ByName(string(name))
	if k == nil {
		return nil
	}
	if !hmac.Equal(mac, s.mac(k, expiry)) {
		return nil
	}
	if int64(binary.BigEndian.Uint64(expiry)) <= s.now().Unix() {
		return nil
	}
	return k
}

// ByName returns the key called name, or nil.
func (ks *Keys) ByName(name string) *Key {
	if ks == nil {
		return nil
	}
	for _, k := range ks.keys {
		if k.Name == name {
			return k
		}
	}
	return nil
}
