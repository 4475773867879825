package proxy

// Files: /view and the uploads.
//
// File names are instance-local: two instances both write
// ComfyUI_00001_.png, and an upload exists only where it was sent. The pool
// keeps a pin table of which instance holds which file, fed by the outputs
// of every /history answer passing through, the WebSocket `executed`
// events, and the uploads below; on a miss it asks the instances.
//
// Uploads go to the home instance (the first available in configuration
// order), not to the least busy one: ComfyUI keeps upload names unique by
// itself (same name and same content: the existing name; same name and
// other content: "name (1).png"), and that only holds fleet-wide when the
// uploads land in one place. Two clients pasting different "image.png"s get
// two names, as with one ComfyUI, and a later prompt on any instance gets
// the right one: the pool copies inputs to the instance that runs the
// prompt (Pool.EnsureInputs).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime/multipart"

	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// maxMaskBody caps a POST /upload/mask body, which comfygate reads whole to
// find its original_ref field (the multipart part comes after the image).
// Masks are PNGs of the edited image's size; ComfyUI's own limit is 100 MB.
const maxMaskBody = 64 << 20

// view serves GET /view: the file from the instance that holds it, streamed.
// A file no instance has gets ComfyUI's own answer to a missing file: 404
// with an empty body.
func (s *Server) view(ctx *fasthttp.RequestCtx) {
	args := ctx.QueryArgs()
	filename := string(args.Peek("filename"))
	typ := string(args.Peek("type"))
	if filename == "" || (typ != "" && typ != "output" && typ != "input" && typ != "temp") {
		// ComfyUI's own 404 (no filename) or 400 (bad type): let the home
		// instance give it.
		s.forwardPicked(ctx, s.home, nil)
		return
	}
	ref := upstream.FileRef{Filename: filename, Subfolder: string(args.Peek("subfolder")), Type: typ}
	cctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	inst, ok := s.pool.FileOwner(cctx, ref)
	cancel()
	if !ok {
		if len(s.pool.Healthy()) == 0 {
			s.writeError(ctx, upstream.ErrNoUpstream)
			return
		}
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		ctx.SetContentType("application/octet-stream")
		return
	}
	s.forwardTo(ctx, inst, nil)
}

// uploadAnswer is ComfyUI's answer to an upload.
type uploadAnswer struct {
	Name      string `json:"name"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}

// pinUpload is a forwardOpts.rewrite that learns where an upload landed
// and passes the answer through unchanged.
func (s *Server) pinUpload(inst *upstream.Instance, status int, body []byte) []byte {
	if status != fasthttp.StatusOK {
		return body
	}
	var a uploadAnswer
	if json.Unmarshal(body, &a) != nil || a.Name == "" {
		return body
	}
	if a.Type == "" {
		a.Type = "input"
	}
	s.pool.PinFile(upstream.FileRef{Filename: a.Name, Subfolder: a.Subfolder, Type: a.Type}, inst)
	return body
}

// uploadImage serves POST /upload/image: the multipart body streams through
// unchanged to the home instance (see the file comment), and the file is
// pinned there from the answer.
func (s *Server) uploadImage(ctx *fasthttp.RequestCtx) {
	s.forwardPicked(ctx, s.home, &forwardOpts{rewrite: s.pinUpload})
}

// uploadMask serves POST /upload/mask. ComfyUI applies the mask to the
// original image named by the original_ref field, which must be on the
// same instance: the request goes to the instance holding the original
// (home when no instance is known to hold it). Finding original_ref needs
// the multipart form, so this body is read whole, up to maxMaskBody (413
// past it).
func (s *Server) uploadMask(ctx *fasthttp.RequestCtx) {
	body, err := readClientBody(ctx, maxMaskBody)
	if err != nil {
		if errors.Is(err, errBodyTooLarge) {
			s.writeError(ctx, err)
			return
		}
		ctx.SetStatusCode(fasthttp.StatusBadRequest)
		return
	}
	o := &forwardOpts{body: body, setBody: true, rewrite: s.pinUpload}
	if ref, ok := originalRef(body, ctx.Request.Header.MultipartFormBoundary()); ok {
		cctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		inst, found := s.pool.FileOwner(cctx, ref)
		cancel()
		if found {
			s.forwardTo(ctx, inst, o)
			return
		}
	}
	s.forwardPicked(ctx, s.home, o)
}

// originalRef finds the original_ref field of a mask upload.
func originalRef(body, boundary []byte) (upstream.FileRef, bool) {
	if len(boundary) == 0 {
		return upstream.FileRef{}, false
	}
	mr := multipart.NewReader(bytes.NewReader(body), string(boundary))
	for {
		part, err := mr.NextPart()
		if err != nil {
			return upstream.FileRef{}, false
		}
		if part.FormName() != "original_ref" {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(part, 64<<10))
		if err != nil {
			return upstream.FileRef{}, false
		}
		var r struct {
			Filename  string `json:"filename"`
			Subfolder string `json:"subfolder"`
			Type      string `json:"type"`
		}
		if json.Unmarshal(b, &r) != nil || r.Filename == "" {
			return upstream.FileRef{}, false
		}
		return upstream.FileRef{Filename: r.Filename, Subfolder: r.Subfolder, Type: r.Type}, true
	}
}
