package comfyapi

import "strconv"

// The messages comfygate writes itself are written byte for byte as
// ComfyUI's Python json.dumps writes them (separators ", " and ": ",
// ensure_ascii), so a client cannot tell them from an instance's.

// StatusMessage is ComfyUI's status message; withSID adds the sid of the
// first message on a socket.
func StatusMessage(queueRemaining int64, sid string, withSID bool) []byte {
	b := make([]byte, 0, 96+len(sid))
	b = append(b, `{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": `...)
	b = strconv.AppendInt(b, queueRemaining, 10)
	b = append(b, `}}`...)
	if withSID {
		b = append(b, `, "sid": `...)
		b = AppendPyString(b, sid)
	}
	return append(b, `}}`...)
}

// ExecutingNull is the executing message with node null that ends every
// run of prompt promptID.
func ExecutingNull(promptID string) []byte {
	b := append(make([]byte, 0, 64+len(promptID)), `{"type": "executing", "data": {"node": null, "prompt_id": `...)
	b = AppendPyString(b, promptID)
	return append(b, `}}`...)
}

// AppendPyString appends s as Python's json.dumps writes a str
// (ensure_ascii: everything outside space..~ as \uXXXX, surrogate pairs
// above U+FFFF).
func AppendPyString(b []byte, s string) []byte {
	const hexd = "0123456789abcdef"
	u4 := func(b []byte, r rune) []byte {
		return append(b, '\\', 'u', hexd[r>>12&0xf], hexd[r>>8&0xf], hexd[r>>4&0xf], hexd[r&0xf])
	}
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"':
			b = append(b, '\\', '"')
		case r == '\\':
			b = append(b, '\\', '\\')
		case r == '\n':
			b = append(b, '\\', 'n')
		case r == '\r':
			b = append(b, '\\', 'r')
		case r == '\t':
			b = append(b, '\\', 't')
		case r == '\b':
			b = append(b, '\\', 'b')
		case r == '\f':
			b = append(b, '\\', 'f')
		case r < 0x20 || (r >= 0x7f && r <= 0xffff):
			b = u4(b, r)
		case r > 0xffff:
			r -= 0x10000
			b = u4(b, 0xd800+(r>>10))
			b = u4(b, 0xdc00+(r&0x3ff))
		default:
			b = append(b, byte(r))
		}
	}
	return append(b, '"')
}
