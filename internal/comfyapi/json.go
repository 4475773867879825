package comfyapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
)

var (
	errNotObject = errors.New("comfyapi: not a JSON object")
	errNotArray  = errors.New("comfyapi: not a JSON array")
	errNoName    = errors.New("comfyapi: no file name")
)

// isObject reports whether data starts like a JSON object.
func isObject(data []byte) bool {
	data = bytes.TrimSpace(data)
	return len(data) > 0 && data[0] == '{'
}

// String returns the value of a JSON string; ok is false for any other
// JSON value.
func String(raw []byte) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// IDText returns a prompt id carried as any JSON value: a string's value,
// or the compact text of any other value; "" when absent or null.
func IDText(raw []byte) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	if s, ok := String(raw); ok {
		return s
	}
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

// Number returns a JSON number's value.
func Number(raw []byte) (float64, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || !(raw[0] == '-' || ('0' <= raw[0] && raw[0] <= '9')) || !json.Valid(raw) {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	return f, err == nil
}

// objectMembers splits a JSON object one level deep (exact-case keys, the
// last of a repeated key winning, as Python's json); nil when raw is not
// an object.
func objectMembers(raw []byte) map[string]json.RawMessage {
	if !isObject(raw) {
		return nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return nil
	}
	return m
}
