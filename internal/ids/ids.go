// Package ids mints the random identifiers comfygate and its simulator hand
// out, in the exact forms ComfyUI uses: uuid4 strings for prompt ids and
// uuid4 hex for WebSocket client ids.
package ids

import (
	"crypto/rand"
	"encoding/hex"
)

func uuid4() [16]byte {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails; it panics instead
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return b
}

// UUID returns a random canonical lowercase hyphenated UUIDv4, the form
// ComfyUI mints for prompt ids and the only one its 2026 versions accept
// from clients.
func UUID() string {
	b := uuid4()
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// Hex returns a random UUIDv4 as 32 lowercase hex digits, like Python's
// uuid.uuid4().hex that ComfyUI uses for WebSocket client ids.
func Hex() string {
	b := uuid4()
	return hex.EncodeToString(b[:])
}

// Random returns n random bytes as 2n lowercase hex digits.
func Random(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// IsCanonicalUUID reports a lowercase hyphenated UUID (any version).
func IsCanonicalUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}
