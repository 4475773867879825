package comfysim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// pyJSON encodes v the way Python's json.dumps does with its defaults, which is
// what aiohttp's json_response and ComfyUI's WebSocket sender use: ", " and ": "
// separators, non-ASCII escaped as \uXXXX, and no HTML escaping. Byte-for-byte
// equal bodies keep Content-Length and any client that hashes bodies honest.
func pyJSON(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only programming errors get here (unsupported types); keep it visible.
		panic(fmt.Sprintf("comfysim: encode json: %v", err))
	}
	compact := bytes.TrimRight(buf.Bytes(), "\n")
	out := make([]byte, 0, len(compact)+len(compact)/8)
	inStr, esc := false, false
	for i := 0; i < len(compact); {
		c := compact[i]
		if inStr {
			if esc {
				esc = false
				out = append(out, c)
				i++
				continue
			}
			switch {
			case c == '\\':
				esc = true
				out = append(out, c)
				i++
			case c == '"':
				inStr = false
				out = append(out, c)
				i++
			case c < utf8.RuneSelf:
				out = append(out, c)
				i++
			default:
				r, size := utf8.DecodeRune(compact[i:])
				i += size
				if r > 0xFFFF {
					r -= 0x10000
					out = fmt.Appendf(out, `\u%04x\u%04x`, 0xD800+(r>>10), 0xDC00+(r&0x3FF))
				} else {
					out = fmt.Appendf(out, `\u%04x`, r)
				}
			}
			continue
		}
		switch c {
		case '"':
			inStr = true
			out = append(out, c)
		case ':':
			out = append(out, ':', ' ')
		case ',':
			out = append(out, ',', ' ')
		default:
			out = append(out, c)
		}
		i++
	}
	return out
}

// pyFloat is a float that marshals like Python's float repr ("1.0", not "1").
type pyFloat float64

func (f pyFloat) MarshalJSON() ([]byte, error) { return []byte(pyFloatRepr(float64(f))), nil }

func pyFloatRepr(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case math.IsNaN(f):
		return "NaN"
	}
	if f == math.Trunc(f) && math.Abs(f) < 1e16 {
		return strconv.FormatFloat(f, 'f', 1, 64)
	}
	s := strconv.FormatFloat(f, 'g', -1, 64)
	// Python writes exponents with at least two digits: 1e-05, 1e+16.
	if i := strings.IndexByte(s, 'e'); i >= 0 {
		mant, exp := s[:i], s[i+1:]
		sign := exp[0]
		digits := exp[1:]
		if len(digits) < 2 {
			digits = "0" + digits
		}
		s = mant + "e" + string(sign) + digits
	}
	return s
}

// kv is one member of an ordered JSON object.
type kv struct {
	K string
	V any
}

// ordered is a JSON object that keeps its member order, like a Python dict.
type ordered []kv

func (o ordered) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, _ := json.Marshal(m.K)
		buf.Write(k)
		buf.WriteByte(':')
		b, err := marshalNoHTML(m.V)
		if err != nil {
			return nil, err
		}
		buf.Write(b)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

func marshalNoHTML(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// get returns the value stored under k.
func (o ordered) get(k string) (any, bool) {
	for _, m := range o {
		if m.K == k {
			return m.V, true
		}
	}
	return nil, false
}

// rawObj is a decoded JSON object whose member order and raw values are kept.
// Duplicate keys keep the first position and the last value, like Python.
type rawObj struct {
	keys []string
	vals map[string]json.RawMessage
}

func (o *rawObj) MarshalJSON() ([]byte, error) {
	if o == nil {
		return []byte("null"), nil
	}
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(o.vals[k])
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

func (o *rawObj) get(k string) (json.RawMessage, bool) {
	if o == nil {
		return nil, false
	}
	v, ok := o.vals[k]
	return v, ok
}

func (o *rawObj) set(k string, v json.RawMessage) {
	if _, ok := o.vals[k]; !ok {
		o.keys = append(o.keys, k)
	}
	o.vals[k] = v
}

func (o *rawObj) del(k string) {
	if _, ok := o.vals[k]; !ok {
		return
	}
	delete(o.vals, k)
	for i, kk := range o.keys {
		if kk == k {
			o.keys = append(o.keys[:i:i], o.keys[i+1:]...)
			break
		}
	}
}

// errNotObject says a JSON value was valid but not an object.
var errNotObject = fmt.Errorf("json value is not an object")

// parseRawObj decodes a JSON object keeping member order. It returns
// errNotObject (wrapped) for any other valid JSON value.
func parseRawObj(data []byte) (*rawObj, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("decode json: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		// Consume the rest so invalid trailing JSON is still an error.
		if d, ok := tok.(json.Delim); ok && d == '[' {
			for dec.More() {
				var r json.RawMessage
				if err := dec.Decode(&r); err != nil {
					return nil, fmt.Errorf("decode json: %w", err)
				}
			}
			if _, err := dec.Token(); err != nil {
				return nil, fmt.Errorf("decode json: %w", err)
			}
		}
		if err := expectEOF(dec); err != nil {
			return nil, err
		}
		return nil, errNotObject
	}
	o := &rawObj{vals: map[string]json.RawMessage{}}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("decode json: %w", err)
		}
		k, _ := kt.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("decode json: %w", err)
		}
		o.set(k, append(json.RawMessage(nil), v...))
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("decode json: %w", err)
	}
	if err := expectEOF(dec); err != nil {
		return nil, err
	}
	return o, nil
}

func expectEOF(dec *json.Decoder) error {
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("decode json: trailing data")
	}
	return nil
}

// decodeAny decodes a raw JSON value with numbers kept as json.Number.
func decodeAny(raw json.RawMessage) any {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil
	}
	return v
}

// jsonKind names the JSON type of a raw value: object, array, string, number, bool or null.
func jsonKind(raw json.RawMessage) string {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return ""
	}
	switch t[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// pyStr renders a decoded JSON value as Python's str() would.
func pyStr(v any) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case string:
		return x
	case bool:
		if x {
			return "True"
		}
		return "False"
	case json.Number:
		s := string(x)
		if strings.ContainsAny(s, ".eE") {
			f, err := x.Float64()
			if err == nil {
				return pyFloatRepr(f)
			}
		}
		return s
	case float64:
		return pyFloatRepr(x)
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = pyRepr(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case map[string]any:
		parts := make([]string, 0, len(x))
		for k, e := range x {
			parts = append(parts, pyRepr(k)+": "+pyRepr(e))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	default:
		return fmt.Sprint(x)
	}
}

// pyRepr renders a decoded JSON value as Python's repr() would (close enough
// for messages: strings get single quotes).
func pyRepr(v any) string {
	if s, ok := v.(string); ok {
		if strings.Contains(s, "'") && !strings.Contains(s, `"`) {
			return `"` + s + `"`
		}
		return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'"
	}
	return pyStr(v)
}

// pyListRepr renders a list of strings as Python's str(list) does.
func pyListRepr(items []string) string {
	parts := make([]string, len(items))
	for i, s := range items {
		parts[i] = pyRepr(s)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// truthy reports Python truthiness of a decoded JSON value.
func truthy(v any) bool {
	switch x := v.(type) {
	case nil:
		return false
	case bool:
		return x
	case string:
		return x != ""
	case json.Number:
		f, err := x.Float64()
		return err != nil || f != 0
	case []any:
		return len(x) > 0
	case map[string]any:
		return len(x) > 0
	}
	return true
}
