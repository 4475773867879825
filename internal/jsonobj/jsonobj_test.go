package jsonobj

import (
	"testing"
)

func TestMembersKeepOrderAndRoundTrip(t *testing.T) {
	t.Parallel()
	in := `{"z": 1, "a": {"x": [1, 2]}, "m": "s\"q"}`
	ms, err := Members([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || ms[0].Key != "z" || ms[1].Key != "a" || ms[2].Key != "m" {
		t.Fatalf("members out of order: %+v", ms)
	}
	ms[0].Val = []byte(`2`)
	if got, want := string(Append(nil, ms)), `{"z": 2, "a": {"x": [1, 2]}, "m": "s\"q"}`; got != want {
		t.Fatalf("Append = %s, want %s", got, want)
	}
}

func TestMembersRejectsNonObjects(t *testing.T) {
	t.Parallel()
	for _, in := range []string{`[]`, `"x"`, `{"a":1} {"b":2}`, `{"a":`, ``} {
		if _, err := Members([]byte(in)); err == nil {
			t.Errorf("Members(%q) accepted it", in)
		}
	}
}

func FuzzMembersAppend(f *testing.F) {
	f.Add(`{"a": 1, "b": [true, null]}`)
	f.Add(`{}`)
	f.Fuzz(func(t *testing.T, in string) {
		ms, err := Members([]byte(in))
		if err != nil {
			return
		}
		again, err := Members(Append(nil, ms))
		if err != nil {
			t.Fatalf("Append of %q is not an object: %v", in, err)
		}
		if len(again) != len(ms) {
			t.Fatalf("round trip changed the member count of %q", in)
		}
		for i := range ms {
			if again[i].Key != ms[i].Key {
				t.Fatalf("round trip changed key %d of %q", i, in)
			}
		}
	})
}
