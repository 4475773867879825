package proxy

// Files: /view and the uploads.
//
// File names are instance-local: two instances both write
// ComfyUI_00001_.png, and an upload exists only where it was sent. Output
// and temp references comfygate hands out name their instance in the
// subfolder ("@<instance>~<id>", outputref.go), and /view sends those to that
// instance. For other references the prompt table keeps a pin table of which
// instance holds which file, fed by the outputs of every /history answer
// passing through, the WebSocket `executed` events, and the uploads below;
// on a miss it asks the instances.
//
// Uploads go to the home instance (the first available in configuration
// order), not to the least busy one: ComfyUI keeps upload names unique by
// itself (same name and same content: the existing name; same name and
// other content: "name (1).png"), and that only holds fleet-wide when the
// uploads land in one place. Two clients pasting different "image.png"s get
// two names, as with one ComfyUI, and a later prompt on any instance gets
// the right one: the prompt table copies inputs to the instance that runs the
// prompt (prompts.Table.EnsureInputs).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/comfygate/comfygate/config"
	"io"
	"log/slog"
	"mime/multipart"
	"strings"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// fileRoutes serves /view and the uploads, with each isolated key's
// files under its own names (keyfiles.go).
type fileRoutes struct {
	cfg     *config.Config
	pool    *upstream.Pool
	prompts *prompts.Table
	log     *slog.Logger
	fwd     *forwarder
	bodies  *clientBodies
	keys    *keyGuard
}

// maxMaskBody caps a POST /upload/mask body, which comfygate reads whole to
// find its original_ref field (the multipart part comes after the image).
// Masks are PNGs of the edited image's size; ComfyUI's own limit is 100 MB.
const maxMaskBody = 64 << 20

// view serves GET /view: the file from the instance that holds it, streamed.
// A file no instance has gets ComfyUI's own answer to a missing file: 404
// with an empty body.
func (s *fileRoutes) view(ctx *fasthttp.RequestCtx) {
	args := ctx.QueryArgs()
	filename := string(args.Peek("filename"))
	typ := string(args.Peek("type"))
	if filename == "" || (typ != "" && typ != "output" && typ != "input" && typ != "temp") {
		// ComfyUI's own 404 (no filename) or 400 (bad type): let the home
		// instance give it.
		s.fwd.forwardPicked(ctx, s.fwd.home, nil)
		return
	}
	ref := prompts.FileRef{Filename: filename, Subfolder: string(args.Peek("subfolder")), Type: typ}
	if token, orig, ok := decodeSubfolder(ref.Subfolder); ok && encodedType(viewType(filename, typ)) {
		s.viewEncoded(ctx, token, orig)
		return
	}
	if ns := s.keyNamespace(ctx); ns != "" {
		s.viewNamespaced(ctx, ns, ref)
		return
	}
	cctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	inst, ok := s.prompts.FileOwner(cctx, ref)
	cancel()
	if !ok {
		if len(s.pool.Healthy()) == 0 {
			s.fwd.writeError(ctx, upstream.ErrNoUpstream)
			return
		}
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		ctx.SetContentType("application/octet-stream")
		return
	}
	s.fwd.forwardTo(ctx, inst, nil)
}

// viewEncoded serves a /view whose subfolder names its instance
// (outputref.go): that instance, asked for its own subfolder orig. A token
// that names no single instance gets ComfyUI's answer to a missing file.
func (s *fileRoutes) viewEncoded(ctx *fasthttp.RequestCtx, token, orig string) {
	inst := instanceByToken(s.pool.Instances(), token)
	if inst == nil {
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		ctx.SetContentType("application/octet-stream")
		return
	}
	var args fasthttp.Args
	ctx.QueryArgs().CopyTo(&args)
	args.Set("subfolder", orig)
	uri := append(append([]byte(nil), splitPath(rawRequestURI(ctx))...), '?')
	uri = append(uri, args.QueryString()...)
	s.fwd.forwardTo(ctx, inst, &forwardOpts{uri: uri})
}

// viewType is the type /view serves filename from: a " [input]",
// " [output]" or " [temp]" suffix of the name overrides the type parameter.
func viewType(filename, typ string) string {
	for _, t := range []string{"input", "output", "temp"} {
		if strings.HasSuffix(filename, " ["+t+"]") {
			return t
		}
	}
	return typ
}

// pinUpload is a forwardOpts.rewrite that learns where an upload landed
// and passes the answer through unchanged. The file may have replaced an
// older one of that name (overwrite=true, or a mask written over its
// original), which other instances hold copies of for earlier prompts:
// prompts.Table.FileChanged drops those, so the next prompt there copies the new
// file. Between replicas the pin is shared before the answer goes out: a
// client may send the prompt that loads the upload to another replica at
// once.
func (s *fileRoutes) pinUpload(inst *upstream.Instance, status int, body []byte) []byte {
	if status != fasthttp.StatusOK {
		return body
	}
	ref, err := comfyapi.ParseUploadAnswer(body)
	if err != nil {
		return body
	}
	s.prompts.FileChanged(ref, inst)
	s.prompts.ShareUploadNow(ref, inst)
	return body
}

// uploadImage serves POST /upload/image: the multipart body streams through
// unchanged to the home instance (see the file comment), and the file is
// pinned there from the answer.
func (s *fileRoutes) uploadImage(ctx *fasthttp.RequestCtx) {
	if ns := s.keyNamespace(ctx); ns != "" {
		s.uploadImageNamespaced(ctx, ns)
		return
	}
	s.fwd.forwardPicked(ctx, s.fwd.home, &forwardOpts{rewrite: s.pinUpload})
}

// uploadMask serves POST /upload/mask. ComfyUI applies the mask to the
// original image named by the original_ref field, which must be on the
// same instance: the request goes to the instance holding the original
// (home when no instance is known to hold it). Finding original_ref needs
// the multipart form, so this body is read whole, up to maxMaskBody (413
// past it).
func (s *fileRoutes) uploadMask(ctx *fasthttp.RequestCtx) {
	body, err := s.bodies.readClientBody(ctx, maxMaskBody)
	if err != nil {
		if errors.Is(err, errBodyTooLarge) || errors.Is(err, errBodiesBusy) {
			s.fwd.writeError(ctx, err)
			return
		}
		ctx.SetStatusCode(fasthttp.StatusBadRequest)
		return
	}
	if ns := s.keyNamespace(ctx); ns != "" {
		s.uploadMaskNamespaced(ctx, ns, body)
		return
	}
	o := &forwardOpts{body: body, setBody: true, rewrite: s.pinUpload}
	boundary := ctx.Request.Header.MultipartFormBoundary()
	if ref, ok := originalRef(body, boundary); ok {
		if token, orig, enc := decodeSubfolder(ref.Subfolder); enc && encodedType(ref.Type) {
			// An original handed out by comfygate (outputref.go): its
			// instance, with the instance's own subfolder in original_ref.
			// A token of no instance goes home unchanged, where the
			// original is missing: ComfyUI's 200 with nothing written.
			if inst := instanceByToken(s.pool.Instances(), token); inst != nil {
				ref.Subfolder = orig
				nb, ct, err := replaceOriginalRef(body, boundary, ref)
				if err == nil {
					o.body = nb
					ctx.Request.Header.SetContentType(ct)
					s.fwd.forwardTo(ctx, inst, o)
					return
				}
				s.log.Debug("mask upload: original_ref not rewritten", "err", err)
			}
			s.fwd.forwardPicked(ctx, s.fwd.home, o)
			return
		}
		cctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		inst, found := s.prompts.FileOwner(cctx, ref)
		cancel()
		if found {
			s.fwd.forwardTo(ctx, inst, o)
			return
		}
	}
	s.fwd.forwardPicked(ctx, s.fwd.home, o)
}

// replaceOriginalRef returns the multipart body with its original_ref
// field set to ref, and the Content-Type that goes with it. Every other
// part is copied unchanged (raw, whatever its transfer encoding); the
// boundary is kept when the multipart writer accepts it, else a new one
// is chosen.
func replaceOriginalRef(body, boundary []byte, ref prompts.FileRef) ([]byte, string, error) {
	val, err := json.Marshal(map[string]string{"filename": ref.Filename, "subfolder": ref.Subfolder, "type": ref.Type})
	if err != nil {
		return nil, "", err
	}
	var out bytes.Buffer
	out.Grow(len(body) + 64)
	mw := multipart.NewWriter(&out)
	if mw.SetBoundary(string(boundary)) != nil {
		mw = multipart.NewWriter(&out) // a fresh random boundary
	}
	mr := multipart.NewReader(bytes.NewReader(body), string(boundary))
	replaced := false
	for {
		part, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			if !replaced {
				return nil, "", errors.New("no original_ref field")
			}
			break
		}
		if err != nil {
			return nil, "", err
		}
		pw, err := mw.CreatePart(part.Header)
		if err != nil {
			return nil, "", err
		}
		if part.FormName() == "original_ref" {
			_, err = pw.Write(val)
			replaced = true
		} else {
			_, err = io.Copy(pw, part)
		}
		if err != nil {
			return nil, "", err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, "", err
	}
	return out.Bytes(), mw.FormDataContentType(), nil
}

// originalRef finds the original_ref field of a mask upload.
func originalRef(body, boundary []byte) (prompts.FileRef, bool) {
	if len(boundary) == 0 {
		return prompts.FileRef{}, false
	}
	mr := multipart.NewReader(bytes.NewReader(body), string(boundary))
	for {
		part, err := mr.NextPart()
		if err != nil {
			return prompts.FileRef{}, false
		}
		if part.FormName() != "original_ref" {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(part, 64<<10))
		if err != nil {
			return prompts.FileRef{}, false
		}
		return comfyapi.ParseFileRef(b)
	}
}
