package jobs

import (
	"encoding/json"
	"testing"

	"github.com/comfygate/comfygate/config"
)

// FuzzParseRange: whatever the Range header, an accepted range lies inside
// the file and is not empty.
func FuzzParseRange(f *testing.F) {
	for _, h := range []string{"", "bytes=0-9", "bytes=5-", "bytes=-3", "bytes=9-0", "bytes=0-1,4-5", "bytes=-0", "items=1-2", "bytes= 2 - 3"} {
		f.Add(h, int64(10))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			return
		}
		start, end, partial, ok := parseRange(h, size)
		if !ok {
			return
		}
		if !partial && (start != 0 || end != size) {
			t.Fatalf("%q/%d: whole file as %d-%d", h, size, start, end)
		}
		if partial && (start < 0 || end > size || start >= end) {
			t.Fatalf("%q/%d: range %d-%d", h, size, start, end)
		}
	})
}

// FuzzConvertParam: an accepted value is JSON of the parameter's type,
// within its bounds, and converting it again as JSON changes nothing; a
// JSON string is a number or a boolean only when read as text.
func FuzzConvertParam(f *testing.F) {
	for _, v := range []string{`1`, `1.5`, `"7"`, `"x"`, `true`, `"false"`, `null`, `[1]`, `{"a":1}`, `1e400`, `"NaN"`, `-0`} {
		for _, typ := range []string{ptInt, ptFloat, ptString, ptBool, ptEnum} {
			f.Add(typ, v, false)
			f.Add(typ, v, true)
		}
	}
	lo, hi := -5.0, 100.0
	f.Fuzz(func(t *testing.T, typ, raw string, text bool) {
		if !json.Valid([]byte(raw)) {
			return
		}
		p := config.Parameter{Name: "p", Type: typ, Min: &lo, Max: &hi, Options: []string{"x", "7"}}
		out, msg := convertParam(p, json.RawMessage(raw), text)
		if msg != "" {
			return
		}
		if !text && kindOf(json.RawMessage(raw)) == kindString && typ != ptString && typ != ptEnum {
			t.Fatalf("%s %s: a JSON string accepted as %s", typ, raw, out)
		}
		var v any
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("%s %s: invalid JSON %s", typ, raw, out)
		}
		switch typ {
		case ptInt, ptFloat:
			f, ok := v.(float64)
			if !ok || f < lo || f > hi {
				t.Fatalf("%s %s: %s outside [%v, %v]", typ, raw, out, lo, hi)
			}
		case ptBool:
			if _, ok := v.(bool); !ok {
				t.Fatalf("%s %s: %s", typ, raw, out)
			}
		case ptString, ptEnum:
			if _, ok := v.(string); !ok {
				t.Fatalf("%s %s: %s", typ, raw, out)
			}
		}
		again, msg := convertParam(p, out, false)
		if msg != "" || string(again) != string(out) {
			t.Fatalf("%s %s: %s converts to %s (%s)", typ, raw, out, again, msg)
		}
	})
}
