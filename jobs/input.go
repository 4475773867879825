package jobs

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/gif" // LoadImage reads GIF (first frames)
	_ "image/jpeg"
	_ "image/png"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"

	"github.com/valyala/fasthttp"
)

// apiError is an error answer on the job API's routes:
// {"error": {"type", "message"}} with status.
type apiError struct {
	status     int
	typ        string
	msg        string
	retryAfter int // seconds; 0 = no Retry-After header
	details    []fieldError
}

func (e *apiError) Error() string { return e.typ + ": " + e.msg }

// The error types the job API answers with.
const (
	errInvalidRequest   = "invalid_request"
	errMissingImage     = "missing_image"
	errInvalidImage     = "invalid_image"
	errImageTooLarge    = "image_too_large"
	errUnknownWorkflow  = "unknown_workflow"
	errInvalidOverride  = "invalid_override"
	errQueueFull        = "queue_full"
	errNoUpstream       = "no_upstream"
	errNotFound         = "not_found"
	errMethodNotAllowed = "method_not_allowed"
	errShuttingDown     = "shutting_down"
	errInvalidParams    = "invalid_parameters"
	errInvalidWorkflow  = "invalid_workflow"
	errWebhook          = "webhook_not_allowed"
	errIdempotency      = "idempotency_key_reused"
	errIdemInProgress   = "idempotency_key_in_use"
	errStateUnavailable = "state_unavailable"
)

func badRequest(typ, format string, args ...any) *apiError {
	return &apiError{status: fasthttp.StatusBadRequest, typ: typ, msg: fmt.Sprintf(format, args...)}
}

// submission is what a caller sent to start a job.
type submission struct {
	image  []byte
	format string // png, jpeg, gif or webp; "" without image
	width  int
	height int
	inputs map[string]json.RawMessage
	// params are the other top-level JSON keys (or multipart text fields,
	// as JSON strings): a workflow's named parameters.
	params map[string]json.RawMessage
	// textParams says params came as multipart text fields, which are
	// read by their parameter's type; JSON values must have it.
	textParams bool
	// files are multipart file fields other than "image".
	files map[string][]byte
	// webhookURL is the caller's webhook_url ("" when none).
	webhookURL string
	// webhookProgress asks for the job's non-terminal events too.
	webhookProgress bool
	// spool holds the image instead of image when a large raw body went
	// straight to a file (spoolRawImage).
	spool *spooledImage
}

// Reserved keys of a JSON submission; the others are parameters.
const (
	keyImageBase64 = "image_base64"
	keyInputs      = "inputs"
	keyWebhookURL  = "webhook_url"
	keyWebhookProg = "webhook_progress"
)

// parseSubmission reads the image and the overrides from a request:
// multipart/form-data (file field "image", optional field "inputs" holding
// JSON), JSON {"image_base64", "inputs"}, or a raw image body with an
// image/* Content-Type. The image is checked to be a PNG, JPEG, GIF or
// WebP of at most maxBytes.
func parseSubmission(ctx *fasthttp.RequestCtx, maxBytes int64, wantImage bool) (*submission, *apiError) {
	return parseSubmissionN(ctx, maxBytes, wantImage, 0, false, nil)
}

// spoolFunc reads an image part of at most maxBytes: a small one into
// memory (mem), a larger one into a file (sp).
type spoolFunc func(r io.Reader, maxBytes int64) (sp *spooledImage, mem []byte, aerr *apiError)

// spoolBase64Func decodes base64 text (an image_base64 value) of an
// image of at most maxBytes into a file as it arrives. raw is the text's
// length (0: an empty value).
type spoolBase64Func func(r io.Reader, maxBytes int64) (sp *spooledImage, raw int64, aerr *apiError)

// bodyIO is how a submission's body is read. What it holds in memory is
// charged to mem (nil: not charged). With spool and spoolBase64, the
// workflow's image goes to a file as it arrives instead of into memory: a
// multipart file part through spool, base64 text (a JSON image_base64
// member, or a multipart text field) decoded through spoolBase64.
type bodyIO struct {
	mem         *bodyMem
	spool       spoolFunc
	spoolBase64 spoolBase64Func
}

// parseSubmissionN is parseSubmission for a workflow that also takes
// extraImages image parameters (each up to maxBytes); imageParam says one
// of them is called "image" (the workflow then takes no other image).
// bio (nil: in memory, uncharged) says how the body is read.
func parseSubmissionN(ctx *fasthttp.RequestCtx, maxBytes int64, wantImage bool, extraImages int, imageParam bool, bio *bodyIO) (sub *submission, aerr *apiError) {
	rd := bodyIO{}
	if bio != nil {
		rd = *bio
	}
	if !wantImage {
		// An image there is a parameter's, read into memory.
		rd.spool, rd.spoolBase64 = nil, nil
	}
	defer func() {
		if aerr != nil && sub != nil {
			// Refused: what it spooled goes, and the caller gets no submission.
			sub.spool.discard()
			sub = nil
		}
	}()
	sub, aerr = parseSubmissionInto(ctx, maxBytes, wantImage, extraImages, imageParam, &rd, &submission{params: map[string]json.RawMessage{}, files: map[string][]byte{}})
	return sub, aerr
}

func parseSubmissionInto(ctx *fasthttp.RequestCtx, maxBytes int64, wantImage bool, extraImages int, imageParam bool, bio *bodyIO, sub *submission) (*submission, *apiError) {
	ct := string(ctx.Request.Header.ContentType())
	mt, _, _ := mime.ParseMediaType(ct)
	// A body that cannot hold an image within the limit is refused before
	// it is read: base64 adds a third, multipart and JSON some framing.
	imageText := maxBytes + maxBytes/3 + 4
	bodyLimit := imageText*int64(1+extraImages) + bodySlack
	if n := ctx.Request.Header.ContentLength(); n > 0 && int64(n) > bodyLimit {
		return nil, badRequest(errImageTooLarge, "request body too large: %d bytes (images up to %d bytes)", n, maxBytes)
	}
	var b64 *string
	var body []byte
	if mt != "multipart/form-data" {
		br, aerr := bodyReader(ctx, bio.mem, bodyLimit)
		if aerr != nil {
			return nil, aerr
		}
		isJSON := mt == "application/json"
		if mt == "" {
			head, _ := br.Peek(streamBufSize)
			isJSON = bytes.HasPrefix(bytes.TrimLeft(head, " \t\r\n"), []byte("{"))
		}
		if isJSON {
			// Held in memory: everything but the image's base64 text
			// when that streams to a file, else all of it (as before).
			memLimit := bodyLimit
			if bio.spoolBase64 != nil {
				memLimit -= imageText
			}
			if aerr := readJSONSubmission(br, bio, maxBytes, memLimit, sub, &b64); aerr != nil {
				return sub, aerr
			}
			mt = "application/json"
		} else {
			b, err := bio.mem.readAll(br, bodyLimit, int64(ctx.Request.Header.ContentLength()))
			if aerr := bodyReadError(err, maxBytes); aerr != nil {
				return nil, aerr
			}
			body = b
		}
	}
	switch {
	case mt == "multipart/form-data":
		sub.textParams = true
		if aerr := readMultipart(ctx, ct, bodyLimit, maxBytes, extraImages, sub, &b64, bio); aerr != nil {
			return sub, aerr
		}
	case mt == "application/json":
	case strings.HasPrefix(mt, "image/") || mt == "application/octet-stream":
		sub.image = body
	case len(body) == 0:
	default:
		return nil, badRequest(errInvalidRequest, "unsupported Content-Type %q: send multipart/form-data with a file field \"image\", or JSON {\"image_base64\": ...}", mt)
	}
	if b64 != nil {
		sub.spool.discard() // the base64 field came first: it is the image
		sub.spool = nil
		img, aerr := decodeBase64Image(*b64, maxBytes)
		if aerr != nil {
			return nil, aerr
		}
		sub.image = img
	}
	if !wantImage {
		if len(sub.image) > 0 && imageParam {
			// The workflow's parameter called "image", sent as the file
			// field "image" or multipart base64 text.
			sub.files["image"], sub.image = sub.image, nil
			return sub, nil
		}
		if len(sub.image) > 0 {
			return nil, badRequest(errInvalidRequest, "this workflow takes no image")
		}
		return sub, nil
	}
	if sub.spool != nil && b64 == nil {
		return sub, checkSpooled(sub)
	}
	if len(sub.image) == 0 {
		return nil, badRequest(errMissingImage, "no image: send multipart/form-data with a file field \"image\", or JSON {\"image_base64\": \"...\"}")
	}
	if int64(len(sub.image)) > maxBytes {
		return nil, tooLarge(int64(len(sub.image)), maxBytes)
	}
	format, w, h, err := sniffImage(sub.image)
	if err != nil {
		return nil, badRequest(errInvalidImage, "not an image: want PNG, JPEG, WebP or GIF")
	}
	if w <= 0 || h <= 0 {
		return nil, badRequest(errInvalidImage, "the image has no pixels (%dx%d)", w, h)
	}
	sub.format, sub.width, sub.height = format, w, h
	return sub, nil
}

// bodyReader returns a buffered reader over the request body, at most
// limit bytes (past it: errBodyTooLarge), its buffer charged to mem. A
// body the server already read whole is charged whole.
func bodyReader(ctx *fasthttp.RequestCtx, mem *bodyMem, limit int64) (*bufio.Reader, *apiError) {
	var src io.Reader
	if r := ctx.RequestBodyStream(); r != nil {
		src = r
	} else {
		b := ctx.PostBody()
		if !mem.take(int64(len(b))) {
			return nil, budgetError()
		}
		src = bytes.NewReader(b)
	}
	if !mem.take(streamBufSize) {
		return nil, budgetError()
	}
	return bufio.NewReaderSize(&limitedReader{r: src, n: limit}, streamBufSize), nil
}

// bodyReadError is the answer to a failed read of a body read whole.
func bodyReadError(err error, maxImage int64) *apiError {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errBodyTooLarge):
		return badRequest(errImageTooLarge, "request body too large (images up to %d bytes)", maxImage)
	case errors.Is(err, errBodyBudget):
		return budgetError()
	}
	return badRequest(errInvalidRequest, "cannot read the request body")
}

// readJSONSubmission reads a JSON submission object from br member by
// member. The image_base64 string goes through bio.spoolBase64 when set
// (decoded into a file as it arrives); every other member, and the image
// text without it, is held in memory, memLimit bytes at most together.
// A member given twice counts once, the last one, as json.Unmarshal into
// a map would.
func readJSONSubmission(br *bufio.Reader, bio *bodyIO, maxBytes, memLimit int64, sub *submission, b64 **string) *apiError {
	notObject := badRequest(errInvalidRequest, "body is not a JSON object {\"image_base64\": ..., \"inputs\": {...}}")
	fail := func(err error) *apiError {
		switch {
		case errors.Is(err, errNotJSON):
			return notObject
		case errors.Is(err, errFieldTooLarge):
			return badRequest(errImageTooLarge, "request body too large: its members other than image_base64 take more than %d bytes", memLimit)
		}
		return bodyReadError(err, maxBytes)
	}
	o := &jsonObject{br: br}
	if err := o.begin(); err != nil {
		return fail(err)
	}
	held := int64(0)
	// imageErr is what was wrong with the image_base64 value read last: it
	// counts only if no later image_base64 member replaces it.
	var imageErr *apiError
	for {
		key, more, err := o.next(bio.mem)
		if err != nil {
			return fail(err)
		}
		if !more {
			return imageErr
		}
		held += int64(len(key))
		if key == keyImageBase64 {
			// This member replaces an earlier one, whatever it holds.
			imageErr = nil
			sub.spool.discard()
			sub.spool, *b64 = nil, nil
		}
		if key == keyImageBase64 && o.peek() == '"' && bio.spoolBase64 != nil {
			str := &jsonString{br: br}
			sp, _, aerr := bio.spoolBase64(str, maxBytes)
			if aerr != nil && aerr.status != fasthttp.StatusBadRequest {
				return aerr // comfygate's own trouble, or the budget
			}
			if err := str.drain(); err != nil {
				sp.discard()
				return fail(err)
			}
			sub.spool, imageErr = sp, aerr
			continue
		}
		v, err := o.value(memLimit-held, bio.mem)
		if err != nil {
			return fail(err)
		}
		held += int64(len(v))
		switch key {
		case keyImageBase64:
			if kindOf(v) == kindNull {
				continue
			}
			var s string
			if json.Unmarshal(v, &s) != nil {
				return badRequest(errInvalidRequest, "image_base64 is not a string")
			}
			*b64 = &s
		case keyInputs:
			sub.inputs = nil
			if kindOf(v) != kindNull && json.Unmarshal(v, &sub.inputs) != nil {
				return notObject
			}
		case keyWebhookURL:
			sub.webhookURL = ""
			if json.Unmarshal(v, &sub.webhookURL) != nil {
				return badRequest(errInvalidRequest, "webhook_url is not a string")
			}
		case keyWebhookProg:
			sub.webhookProgress = false
			if json.Unmarshal(v, &sub.webhookProgress) != nil {
				return badRequest(errInvalidRequest, "webhook_progress is not true or false")
			}
		default:
			sub.params[key] = v
		}
	}
}

// errBodyTooLarge ends a read that went past the body limit.
var errBodyTooLarge = errors.New("request body too large")

// limitedReader is io.LimitReader that fails with errBodyTooLarge past
// the limit instead of ending quietly.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errBodyTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// maxFieldBytes caps a multipart text field other than image_base64.
const maxFieldBytes = 1 << 20

// readMultipart reads a multipart/form-data submission part by part, in
// bounded memory and without temporary files: the file field "image" (or
// a text field "image_base64"/"image" with base64) and the text field
// "inputs"; other parts are skipped.
func readMultipart(ctx *fasthttp.RequestCtx, ct string, bodyLimit, maxBytes int64, extraImages int, sub *submission, b64 **string, bio *bodyIO) *apiError {
	_, params, err := mime.ParseMediaType(ct)
	if err != nil || params["boundary"] == "" {
		return badRequest(errInvalidRequest, "multipart/form-data without a boundary")
	}
	var body io.Reader
	if r := ctx.RequestBodyStream(); r != nil {
		body = r
	} else {
		b := ctx.PostBody()
		if !bio.mem.take(int64(len(b))) {
			return budgetError()
		}
		body = bytes.NewReader(b)
	}
	lr := &limitedReader{r: body, n: bodyLimit}
	mr := multipart.NewReader(lr, params["boundary"])
	parts := 0
	malformed := badRequest(errInvalidRequest, "malformed multipart/form-data body")
	read := func(part io.Reader, limit int64, what string) ([]byte, *apiError) {
		b, err := bio.mem.readAll(io.LimitReader(part, limit+1), limit+1, 0)
		switch {
		case errors.Is(err, errBodyBudget):
			return nil, budgetError()
		case errors.Is(err, errBodyTooLarge):
			return nil, badRequest(errImageTooLarge, "request body too large (images up to %d bytes)", maxBytes)
		case err != nil:
			return nil, malformed
		case int64(len(b)) > limit:
			if _, err := io.Copy(io.Discard, part); errors.Is(err, errBodyTooLarge) {
				return nil, badRequest(errImageTooLarge, "request body too large (images up to %d bytes)", maxBytes)
			}
			if what == "image" {
				return nil, badRequest(errImageTooLarge, "image too large: more than %d bytes, the limit", maxBytes)
			}
			return nil, badRequest(errInvalidRequest, "multipart field %q is too large", what)
		}
		return b, nil
	}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			if parts == 0 && lr.n < bodyLimit {
				return malformed // bytes, but no part: not multipart
			}
			return nil
		}
		if errors.Is(err, errBodyTooLarge) {
			return badRequest(errImageTooLarge, "request body too large (images up to %d bytes)", maxBytes)
		}
		if err != nil {
			return malformed
		}
		parts++
		name := part.FormName()
		switch {
		case name == "image" && part.FileName() != "" && sub.image == nil && sub.spool == nil && bio.spool != nil:
			sp, mem, aerr := bio.spool(part, maxBytes)
			if aerr != nil {
				return aerr
			}
			sub.spool, sub.image = sp, mem
		case name == "image" && part.FileName() != "" && sub.image == nil && sub.spool == nil:
			b, aerr := read(part, maxBytes, "image")
			if aerr != nil {
				return aerr
			}
			sub.image = b
		case (name == "image_base64" || name == "image") && *b64 == nil && sub.image == nil && sub.spool == nil && bio.spoolBase64 != nil:
			sp, raw, aerr := bio.spoolBase64(part, maxBytes)
			switch {
			case raw == 0:
				sp.discard() // an empty field: as if not sent
			case aerr != nil:
				return aerr
			default:
				sub.spool = sp
			}
		case (name == "image_base64" || name == "image") && *b64 == nil && sub.image == nil && sub.spool == nil:
			b, aerr := read(part, bodyLimit, name)
			if aerr != nil {
				return aerr
			}
			if v := string(b); v != "" {
				*b64 = &v
			}
		case part.FileName() != "" && name != "image":
			if len(sub.files) >= extraImages {
				if _, err := io.Copy(io.Discard, part); err != nil {
					return malformed
				}
				sub.files[name] = nil // reported as not a parameter (or a second file)
				break
			}
			b, aerr := read(part, maxBytes, "image")
			if aerr != nil {
				return aerr
			}
			sub.files[name] = b
		case name == keyWebhookURL || name == keyWebhookProg:
			b, aerr := read(part, maxFieldBytes, name)
			if aerr != nil {
				return aerr
			}
			if name == keyWebhookURL {
				sub.webhookURL = string(b)
			} else {
				sub.webhookProgress = isTrue(b)
			}
		case name != "image" && name != "image_base64" && name != "inputs":
			b, aerr := read(part, maxFieldBytes, name)
			if aerr != nil {
				return aerr
			}
			v, _ := json.Marshal(string(b))
			sub.params[name] = v
		case name == "inputs":
			b, aerr := read(part, maxFieldBytes, name)
			if aerr != nil {
				return aerr
			}
			if len(bytes.TrimSpace(b)) > 0 {
				if err := json.Unmarshal(b, &sub.inputs); err != nil {
					return badRequest(errInvalidOverride, "multipart field \"inputs\" is not a JSON object of \"node_id.input\": value")
				}
			}
		default:
			if _, err := io.Copy(io.Discard, part); err != nil {
				if errors.Is(err, errBodyTooLarge) {
					return badRequest(errImageTooLarge, "request body too large (images up to %d bytes)", maxBytes)
				}
				return malformed
			}
		}
		_ = part.Close()
	}
}

// bodySlack is what a submission body may hold beyond the encoded image
// (JSON keys, inputs, multipart headers).
const bodySlack = 1 << 20

// readBody returns the request body, reading at most limit bytes of a
// streamed one, charged to mem.
func readBody(ctx *fasthttp.RequestCtx, mem *bodyMem, limit, maxImage int64) ([]byte, *apiError) {
	r := ctx.RequestBodyStream()
	if r == nil {
		b := ctx.PostBody()
		if int64(len(b)) > limit {
			return nil, badRequest(errImageTooLarge, "request body too large: %d bytes (images up to %d bytes)", len(b), maxImage)
		}
		if !mem.take(int64(len(b))) {
			return nil, budgetError()
		}
		return b, nil
	}
	b, err := mem.readAll(&limitedReader{r: r, n: limit}, limit, int64(ctx.Request.Header.ContentLength()))
	if aerr := bodyReadError(err, maxImage); aerr != nil {
		return nil, aerr
	}
	return b, nil
}

func tooLarge(size, limit int64) *apiError {
	return badRequest(errImageTooLarge, "image too large: %d bytes, the limit is %d bytes", size, limit)
}

// decodeBase64Image decodes standard or URL-safe base64, padded or not,
// with or without a "data:<type>;base64," prefix and with line breaks.
func decodeBase64Image(s string, maxBytes int64) ([]byte, *apiError) {
	s = strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(s, "data:"); ok {
		meta, data, found := strings.Cut(rest, ",")
		if !found || !strings.HasSuffix(meta, ";base64") {
			return nil, badRequest(errInvalidImage, "image_base64: a data: URL must be base64 encoded (data:image/png;base64,...)")
		}
		s = data
	}
	if strings.ContainsAny(s, "\r\n\t ") {
		s = strings.Map(func(r rune) rune {
			if r == '\r' || r == '\n' || r == '\t' || r == ' ' {
				return -1
			}
			return r
		}, s)
	}
	if s == "" {
		return nil, badRequest(errMissingImage, "image_base64 is empty")
	}
	if n := int64(base64.RawStdEncoding.DecodedLen(len(strings.TrimRight(s, "=")))); n > maxBytes {
		return nil, tooLarge(n, maxBytes)
	}
	enc := base64.StdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.URLEncoding
	}
	if !strings.HasSuffix(s, "=") && len(s)%4 != 0 {
		enc = enc.WithPadding(base64.NoPadding)
	}
	out, err := enc.DecodeString(s)
	if err != nil {
		return nil, badRequest(errInvalidImage, "image_base64 is not valid base64")
	}
	return out, nil
}

// sniffImage identifies the image format and size from its header. WebP is
// read here (the standard library has no WebP decoder); the rest through
// image.DecodeConfig.
func sniffImage(b []byte) (format string, w, h int, err error) {
	if w, h, ok := webpSize(b); ok {
		return "webp", w, h, nil
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		return "", 0, 0, err
	}
	return format, cfg.Width, cfg.Height, nil
}

// webpSize reads the canvas size of a RIFF WebP file (VP8, VP8L or VP8X).
func webpSize(b []byte) (w, h int, ok bool) {
	if len(b) < 30 || string(b[0:4]) != "RIFF" || string(b[8:12]) != "WEBP" {
		return 0, 0, false
	}
	switch string(b[12:16]) {
	case "VP8 ":
		if b[23] != 0x9d || b[24] != 0x01 || b[25] != 0x2a {
			return 0, 0, false
		}
		return int(binary.LittleEndian.Uint16(b[26:]) & 0x3fff), int(binary.LittleEndian.Uint16(b[28:]) & 0x3fff), true
	case "VP8L":
		if b[20] != 0x2f {
			return 0, 0, false
		}
		v := binary.LittleEndian.Uint32(b[21:])
		return int(v&0x3fff) + 1, int((v>>14)&0x3fff) + 1, true
	case "VP8X":
		le24 := func(p []byte) int { return int(p[0]) | int(p[1])<<8 | int(p[2])<<16 }
		return le24(b[24:]) + 1, le24(b[27:]) + 1, true
	}
	return 0, 0, false
}

// extension returns the file extension for an image format.
func extension(format string) string {
	switch format {
	case "jpeg":
		return ".jpg"
	case "":
		return ".png"
	}
	return "." + format
}

// contentType names the type of result bytes.
func contentType(b []byte) string {
	if _, _, ok := webpSize(b); ok {
		return "image/webp"
	}
	return http.DetectContentType(b)
}
