package comfyapi

import (
	"bytes"
	"strconv"
)

// Truthy reports Python's bool() of a JSON value, which is how ComfyUI reads
// flags such as POST /prompt "front" and POST /queue "clear": false, null,
// any zero number (0, 0.0, -0, 0e3), "" and empty arrays and objects (with
// or without whitespace inside: "[ ]", "{\n}") are false; an absent value
// (empty input) is false; everything else is true. Input that is not JSON
// counts as true (a non-empty value of unknown shape).
func Truthy(raw []byte) bool {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return false
	}
	switch raw[0] {
	case 't':
		return true
	case 'f', 'n':
		return string(raw) != "false" && string(raw) != "null"
	case '"':
		return len(raw) > 2
	case '[', '{':
		if len(raw) < 2 {
			return true
		}
		return len(bytes.TrimSpace(raw[1:len(raw)-1])) > 0
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	return err != nil || f != 0
}
