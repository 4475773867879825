package ids

import (
	"strings"
	"testing"
)

func TestUUIDIsCanonicalVersion4AndRandom(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		u := UUID()
		if !IsCanonicalUUID(u) {
			t.Fatalf("UUID() = %q is not canonical", u)
		}
		if u[14] != '4' || !strings.ContainsRune("89ab", rune(u[19])) {
			t.Fatalf("UUID() = %q is not version 4, variant 10", u)
		}
		if seen[u] {
			t.Fatalf("UUID() repeated %q", u)
		}
		seen[u] = true
	}
}

func TestHexIs32LowercaseDigits(t *testing.T) {
	t.Parallel()
	h := Hex()
	if len(h) != 32 || strings.ToLower(h) != h || h[12] != '4' {
		t.Fatalf("Hex() = %q", h)
	}
	if r := Random(8); len(r) != 16 {
		t.Fatalf("Random(8) = %q", r)
	}
}

func TestIsCanonicalUUID(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in   string
		want bool
	}{
		{"6fa8fdd4-cc54-4be9-b55c-7faf53fc5d8d", true},
		{"6FA8FDD4-CC54-4BE9-B55C-7FAF53FC5D8D", false},
		{"6fa8fdd4cc544be9b55c7faf53fc5d8d", false},
		{"6fa8fdd4-cc54-4be9-b55c-7faf53fc5d8", false},
		{"6fa8fdd4-cc54-4be9-b55c_7faf53fc5d8d", false},
		{"6fa8fdd4-cc54-4be9-b55c-7faf53fc5d8g", false},
		{"", false},
	}
	for _, c := range cases {
		if got := IsCanonicalUUID(c.in); got != c.want {
			t.Errorf("IsCanonicalUUID(%q) = %v, want %v", c.in, got, c.want)
		}
	}
}
