package comfyapi

import (
	"bytes"
	"encoding/binary"
	"encoding/json"

	"github.com/comfygate/comfygate/internal/jsonobj"
)

// Binary WebSocket frames start with a 4-byte big-endian event type.
const (
	// BinPreviewImage: 4-byte image format, then the image.
	BinPreviewImage uint32 = 1
	// BinUnencodedPreview is internal to ComfyUI; it goes out as type 1.
	BinUnencodedPreview uint32 = 2
	// BinText (2025): 4-byte length N, N bytes node id, then UTF-8 text.
	BinText uint32 = 3
	// BinPreviewImageWithMetadata (July 2025): 4-byte length N, N bytes of
	// JSON metadata naming the prompt, then the image. Sent only to a
	// client that negotiated supports_preview_metadata.
	BinPreviewImageWithMetadata uint32 = 4
)

// Image formats of a type-1 preview.
const (
	FormatJPEG uint32 = 1
	FormatPNG  uint32 = 2
)

// BinaryType returns a binary frame's event type; ok is false for a frame
// shorter than 4 bytes.
func BinaryType(b []byte) (typ uint32, ok bool) {
	if len(b) < 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(b), true
}

// splitLengthPrefixed splits a type-3 or type-4 frame into its
// length-prefixed part and the rest.
func splitLengthPrefixed(b []byte) (head, rest []byte, ok bool) {
	if len(b) < 8 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b[4:8])
	if uint64(n) > uint64(len(b)-8) {
		return nil, nil, false
	}
	return b[8 : 8+n], b[8+n:], true
}

// PreviewMetadata is the JSON metadata of a type-4 preview.
type PreviewMetadata struct {
	NodeID        string `json:"node_id"`
	PromptID      string `json:"prompt_id"`
	DisplayNodeID string `json:"display_node_id"`
	ParentNodeID  string `json:"parent_node_id"`
	RealNodeID    string `json:"real_node_id"`
	ImageType     string `json:"image_type"` // "image/png", "image/jpeg"
}

// SplitPreviewMetadata splits a type-4 frame into its metadata JSON and its
// image; ok is false for another type or a malformed frame.
func SplitPreviewMetadata(b []byte) (meta, image []byte, ok bool) {
	if t, _ := BinaryType(b); t != BinPreviewImageWithMetadata {
		return nil, nil, false
	}
	return splitLengthPrefixed(b)
}

// ParsePreviewMetadata reads a type-4 frame's metadata. Fields of another
// type than expected are left empty; ok is false when b is not a
// well-formed type-4 frame with a JSON object as metadata.
func ParsePreviewMetadata(b []byte) (PreviewMetadata, bool) {
	var md PreviewMetadata
	meta, _, ok := SplitPreviewMetadata(b)
	if !ok || !isObject(meta) {
		return md, false
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(meta, &m) != nil {
		return md, false
	}
	md.NodeID, _ = String(m["node_id"])
	md.PromptID = IDText(m["prompt_id"])
	md.DisplayNodeID, _ = String(m["display_node_id"])
	md.ParentNodeID, _ = String(m["parent_node_id"])
	md.RealNodeID, _ = String(m["real_node_id"])
	md.ImageType, _ = String(m["image_type"])
	return md, true
}

// RewritePreviewPromptID returns a type-4 frame whose metadata prompt_id is
// to instead of from, with the length prefix fixed and every other byte as
// it was. b itself is returned (ok true) when its prompt_id is not from;
// ok is false for a frame that is not a well-formed type-4 preview.
func RewritePreviewPromptID(b []byte, from, to string) ([]byte, bool) {
	meta, img, ok := SplitPreviewMetadata(b)
	if !ok {
		return b, false
	}
	ms, err := jsonobj.Members(meta)
	if err != nil {
		return b, false
	}
	changed := false
	for i, m := range ms {
		if m.Key == "prompt_id" && IDText(m.Val) == from && from != to {
			ms[i].Val, changed = jsonobj.Quote(to), true
		}
	}
	if !changed {
		return b, true
	}
	newMeta := jsonobj.Append(nil, ms)
	out := make([]byte, 0, 8+len(newMeta)+len(img))
	out = append(out, b[:4]...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(newMeta)))
	out = append(out, newMeta...)
	return append(out, img...), true
}

// PreviewToType1 turns a type-4 preview into the type-1 frame a client
// that did not negotiate metadata gets: an 8-byte head (type 1, format)
// and the image, not copied. The format comes from image_type; when that
// is missing or unknown, from the image bytes (JPEG's magic, else PNG, as
// ComfyUI treats an unknown format). ok is false for a malformed frame.
func PreviewToType1(b []byte) (head [8]byte, image []byte, ok bool) {
	meta, img, ok := SplitPreviewMetadata(b)
	if !ok {
		return head, nil, false
	}
	format := uint32(0)
	var md struct {
		ImageType string `json:"image_type"`
	}
	if json.Unmarshal(meta, &md) == nil {
		switch md.ImageType {
		case "image/png":
			format = FormatPNG
		case "image/jpeg":
			format = FormatJPEG
		}
	}
	if format == 0 {
		format = FormatPNG
		if bytes.HasPrefix(img, []byte{0xff, 0xd8, 0xff}) {
			format = FormatJPEG
		}
	}
	binary.BigEndian.PutUint32(head[0:4], BinPreviewImage)
	binary.BigEndian.PutUint32(head[4:8], format)
	return head, img, true
}
