package comfysim

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/draw"
	"image/jpeg"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// within reports whether path is dir or inside it (os.path.commonpath == dir).
func within(dir, path string) bool {
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// dirByType is folder_paths.get_directory_by_type.
func (d *fileDirs) dirByType(t string) (string, bool) {
	switch t {
	case "output":
		return d.outputDir, true
	case "input":
		return d.inputDir, true
	case "temp":
		return d.tempDir, true
	}
	return "", false
}

// annotated is folder_paths.annotated_filepath: "x.png [output]" names its
// directory; dir is "" when the name carries no annotation.
func (d *fileDirs) annotated(name string) (string, string) {
	for _, t := range []string{"output", "input", "temp"} {
		suffix := " [" + t + "]"
		if strings.HasSuffix(name, suffix) {
			dir, _ := d.dirByType(t)
			return strings.TrimSuffix(name, suffix), dir
		}
	}
	return name, ""
}

// annotatedPath is folder_paths.get_annotated_filepath with a default type.
func (d *fileDirs) annotatedPath(name, defType string) (string, error) {
	n, dir := d.annotated(name)
	if dir == "" {
		dir, _ = d.dirByType(defType)
	}
	p := filepath.Join(dir, n)
	if !within(dir, p) {
		return "", fmt.Errorf("path %q escapes %s", name, defType)
	}
	return p, nil
}

type uploadResponse struct {
	Name      string `json:"name"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}

// fileRoutes are the file routes: /upload/image, /upload/mask and /view.
type fileRoutes struct{ *instance }

// postUploadImage is POST /upload/image.
func (in fileRoutes) postUploadImage(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	in.upload(w, r, nil)
}

// postUploadMask is POST /upload/mask: the upload's alpha is copied onto
// original_ref and saved; a missing original still answers 200.
func (in fileRoutes) postUploadMask(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	in.upload(w, r, func(form map[string]string, data []byte, dst string) error {
		var ref struct {
			Filename  string `json:"filename"`
			Subfolder string `json:"subfolder"`
			Type      string `json:"type"`
		}
		if err := json.Unmarshal([]byte(form["original_ref"]), &ref); err != nil {
			return errServer500
		}
		name, dir := in.s.annotated(ref.Filename)
		if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "..") {
			return nil // ComfyUI's early returns are ignored: 200
		}
		if dir == "" {
			t := ref.Type
			if t == "" {
				t = "output"
			}
			var ok bool
			if dir, ok = in.s.dirByType(t); !ok {
				return nil
			}
		}
		if ref.Subfolder != "" {
			full := filepath.Join(dir, ref.Subfolder)
			if !within(dir, full) {
				return nil
			}
			dir = full
		}
		origData, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil
		}
		orig, _, err := image.Decode(bytes.NewReader(origData))
		if err != nil {
			return errServer500
		}
		mask, _, err := image.Decode(bytes.NewReader(data))
		if err != nil {
			return errServer500
		}
		out := toNRGBA(orig)
		m := toNRGBA(mask)
		for y := 0; y < out.Rect.Dy() && y < m.Rect.Dy(); y++ {
			for x := 0; x < out.Rect.Dx() && x < m.Rect.Dx(); x++ {
				out.Pix[out.PixOffset(x, y)+3] = m.Pix[m.PixOffset(x, y)+3]
			}
		}
		enc, err := encodePNG(out, 0)
		if err != nil {
			return errServer500
		}
		return os.WriteFile(dst, enc, 0o644)
	})
}

// upload is image_upload: multipart "image", "overwrite", "type", "subfolder".
// save, when set, writes the file instead of copying the upload.
func (in fileRoutes) upload(w http.ResponseWriter, r *http.Request, save func(form map[string]string, data []byte, dst string) error) {
	r.Body = http.MaxBytesReader(w, r.Body, maxUploadSize)
	if err := r.ParseMultipartForm(32 << 20); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeText(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("Maximum request body size %d exceeded, actual body size %d", maxUploadSize, r.ContentLength))
			return
		}
		write500(w)
		return
	}
	defer func() { _ = r.MultipartForm.RemoveAll() }()
	form := map[string]string{}
	for k, v := range r.MultipartForm.Value {
		if len(v) > 0 {
			form[k] = v[0]
		}
	}
	typ := "input"
	if t, ok := r.MultipartForm.Value["type"]; ok && len(t) > 0 {
		typ = t[0]
	}
	dir, ok := in.s.dirByType(typ)
	if !ok {
		write500(w) // UnboundLocalError in get_dir_by_type
		return
	}
	files := r.MultipartForm.File["image"]
	if len(files) == 0 {
		writeEmpty(w, http.StatusBadRequest)
		return
	}
	fh := files[0]
	filename := fh.Filename
	if filename == "" {
		writeEmpty(w, http.StatusBadRequest)
		return
	}
	f, err := fh.Open()
	if err != nil {
		write500(w)
		return
	}
	data, err := io.ReadAll(f)
	_ = f.Close()
	if err != nil {
		write500(w)
		return
	}
	subfolder := form["subfolder"]
	fullDir := filepath.Join(dir, filepath.Clean(subfolder))
	target := filepath.Join(fullDir, filename)
	if !within(dir, target) {
		writeEmpty(w, http.StatusBadRequest)
		return
	}
	if err := os.MkdirAll(fullDir, 0o755); err != nil {
		write500(w)
		return
	}
	overwrite := form["overwrite"] == "true" || form["overwrite"] == "1"
	duplicate := false
	if !overwrite {
		ext := filepath.Ext(filename)
		stem := strings.TrimSuffix(filename, ext)
		sum := sha256.Sum256(data)
		for i := 1; ; i++ {
			existing, err := os.ReadFile(target)
			if err != nil {
				break
			}
			if sha256.Sum256(existing) == sum {
				duplicate = true
				break
			}
			filename = fmt.Sprintf("%s (%d)%s", stem, i, ext)
			target = filepath.Join(fullDir, filename)
		}
	}
	if !duplicate {
		if save != nil {
			if err := save(form, data, target); err != nil {
				write500(w)
				return
			}
		} else if err := os.WriteFile(target, data, 0o644); err != nil {
			write500(w)
			return
		}
	}
	writeJSON(w, http.StatusOK, uploadResponse{Name: filename, Subfolder: subfolder, Type: typ})
}

// getView is GET /view.
func (in fileRoutes) getView(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	q := r.URL.Query()
	names, ok := q["filename"]
	if !ok {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	filename, dir := in.s.annotated(names[0])
	if filename == "" || strings.HasPrefix(filename, "/") || strings.Contains(filename, "..") {
		writeEmpty(w, http.StatusBadRequest)
		return
	}
	if dir == "" {
		t := "output"
		if v, has := q["type"]; has {
			t = v[0]
		}
		if dir, ok = in.s.dirByType(t); !ok {
			writeEmpty(w, http.StatusBadRequest)
			return
		}
	}
	if v, has := q["subfolder"]; has {
		full := filepath.Join(dir, v[0])
		if filepath.IsAbs(v[0]) {
			full = filepath.Clean(v[0])
		}
		if !within(dir, full) {
			writeEmpty(w, http.StatusForbidden)
			return
		}
		dir = full
	}
	filename = filepath.Base(filename)
	file := filepath.Join(dir, filename)
	st, err := os.Stat(file)
	if err != nil || !st.Mode().IsRegular() {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	disposition := "filename=\"" + filename + "\""
	if pv, has := q["preview"]; has {
		in.viewPreview(w, file, filename, pv[0])
		return
	}
	channel := "rgba"
	if c, has := q["channel"]; has {
		channel = c[0]
	}
	if channel == "rgb" || channel == "a" {
		data, err := os.ReadFile(file)
		if err != nil {
			write500(w)
			return
		}
		img, _, err := image.Decode(bytes.NewReader(data))
		if err != nil {
			write500(w)
			return
		}
		n := toNRGBA(img)
		var out image.Image
		if channel == "rgb" {
			opaque(n)
			out = n
		} else {
			a := image.NewNRGBA(n.Rect)
			for i := 3; i < len(n.Pix); i += 4 {
				a.Pix[i] = n.Pix[i]
			}
			out = a
		}
		enc, err := encodePNG(out, 0)
		if err != nil {
			write500(w)
			return
		}
		w.Header().Set("Content-Disposition", disposition)
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Content-Length", strconv.Itoa(len(enc)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(enc)
		return
	}
	ctype := mime.TypeByExtension(strings.ToLower(filepath.Ext(filename)))
	if i := strings.IndexByte(ctype, ';'); i >= 0 {
		ctype = ctype[:i]
	}
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	switch ctype {
	case "text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css":
		ctype = "application/octet-stream"
	}
	f, err := os.Open(file)
	if err != nil {
		writeEmpty(w, http.StatusNotFound)
		return
	}
	defer f.Close()
	h := w.Header()
	h.Set("Content-Disposition", disposition)
	h.Set("Content-Type", ctype)
	// aiohttp's FileResponse ETag: mtime in ns and size, both hex.
	h.Set("Etag", fmt.Sprintf(`"%x-%x"`, st.ModTime().UnixNano(), st.Size()))
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// viewPreview answers preview=format[;quality]. Go's standard library has
// no WebP encoder, so webp previews are served as JPEG (documented deviation).
func (in fileRoutes) viewPreview(w http.ResponseWriter, file, filename, spec string) {
	format, qs, _ := strings.Cut(spec, ";")
	quality := 90
	if qs != "" {
		if q, err := strconv.Atoi(qs); err == nil {
			quality = q
		}
	}
	if format != "webp" && format != "jpeg" {
		format = "webp"
	}
	data, err := os.ReadFile(file)
	if err != nil {
		write500(w)
		return
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		write500(w)
		return
	}
	rgb := image.NewRGBA(img.Bounds())
	draw.Draw(rgb, rgb.Rect, img, img.Bounds().Min, draw.Src)
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, rgb, &jpeg.Options{Quality: min(max(quality, 1), 100)}); err != nil {
		write500(w)
		return
	}
	ctype := "image/jpeg" // also for webp: see the doc comment
	w.Header().Set("Content-Disposition", "filename=\""+filename+"\"")
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
}
