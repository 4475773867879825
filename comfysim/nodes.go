package comfysim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color/palette"
	"image/draw"
	"image/gif"
	_ "image/gif"  // LoadImage accepts GIF uploads
	_ "image/jpeg" // LoadImage accepts JPEG uploads
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// inputDef is one input of a node class, as INPUT_TYPES declares it.
type inputDef struct {
	name     string
	typ      string                   // INT, FLOAT, STRING, BOOLEAN, IMAGE, ... ; "" for a combo
	combo    func(s *Server) []string // non-nil: a combo whose options are listed by the server
	extra    ordered                  // the options dict shown in object_info (may be empty)
	optional bool
}

func (d inputDef) opt(k string) (any, bool) { return d.extra.get(k) }

// nodeUI is a node's UI output ("ui" in ComfyUI): what executed/history show.
type nodeUI struct {
	Images []imageRef `json:"images"`
	// Gifs is where VideoHelperSuite's VHS_VideoCombine reports its
	// videos; a node with Gifs reports no images.
	Gifs []videoRef `json:"gifs,omitempty"`
}

// MarshalJSON leaves "images" out of a video node's output, as VHS does.
func (u nodeUI) MarshalJSON() ([]byte, error) {
	type plain nodeUI
	if u.Gifs != nil && u.Images == nil {
		return json.Marshal(struct {
			Gifs []videoRef `json:"gifs"`
		}{u.Gifs})
	}
	return json.Marshal(plain(u))
}

// videoRef is one VHS_VideoCombine output.
type videoRef struct {
	Filename  string  `json:"filename"`
	Subfolder string  `json:"subfolder"`
	Type      string  `json:"type"`
	Format    string  `json:"format"`
	FrameRate float64 `json:"frame_rate"`
}

type imageRef struct {
	Filename  string `json:"filename"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}

// nodeDef is one implemented node class.
type nodeDef struct {
	name, display, category, description, module string
	inputs                                       []inputDef
	hidden                                       ordered
	outputs, outputNames, outputTooltips         []string
	outputNode                                   bool
	// validate is VALIDATE_INPUTS for the inputs it names: a non-empty
	// message fails the input with custom_validation_failed.
	validate map[string]func(s *Server, v any) string
	// isChanged is IS_CHANGED: part of the cache signature.
	isChanged func(s *Server, in map[string]any) string
	run       func(c *nodeCall) ([]any, *nodeUI, error)
}

func (d *nodeDef) input(name string) (inputDef, bool) {
	for _, in := range d.inputs {
		if in.name == name {
			return in, true
		}
	}
	return inputDef{}, false
}

var upscaleMethods = []string{"nearest-exact", "bilinear", "area", "bicubic", "lanczos"}

func fixedCombo(items ...string) func(*Server) []string {
	return func(*Server) []string { return items }
}

// RembgClass is the background-removal node's class_type, named after the
// WAS Node Suite node that workflows in the wild use.
const RembgClass = "Image Rembg (Remove Background)"

// VideoCombineClass is VideoHelperSuite's video node. The simulator
// writes animated GIFs (format "image/gif", the only choice it offers)
// and reports them under "gifs", as VHS does.
const VideoCombineClass = "VHS_VideoCombine"

// DefaultUpscaleModels are the upscale model names the simulator lists when
// Options.UpscaleModels is empty. The scale is read from the name.
var DefaultUpscaleModels = []string{
	"4x-UltraSharp.pth",
	"RealESRGAN_x2plus.pth",
	"RealESRGAN_x4plus.pth",
	"RealESRGAN_x4plus_anime_6B.pth",
}

// nodeDefs returns the implemented node classes, keyed by class_type.
func nodeDefs() map[string]*nodeDef {
	imageIn := func(name string, extra ...kv) inputDef { return inputDef{name: name, typ: "IMAGE", extra: extra} }
	intIn := func(name string, def, lo, hi, step int64) inputDef {
		ex := ordered{{"default", def}, {"min", lo}, {"max", hi}}
		if step != 0 {
			ex = append(ex, kv{"step", step})
		}
		return inputDef{name: name, typ: "INT", extra: ex}
	}
	hiddenPrompt := ordered{{"prompt", "PROMPT"}, {"extra_pnginfo", "EXTRA_PNGINFO"}}
	defs := []*nodeDef{
		{
			name: "EmptyImage", display: "EmptyImage", category: "image", module: "nodes",
			inputs: []inputDef{
				intIn("width", 512, 1, 16384, 1),
				intIn("height", 512, 1, 16384, 1),
				intIn("batch_size", 1, 1, 4096, 0),
				{name: "color", typ: "INT", extra: ordered{{"default", int64(0)}, {"min", int64(0)}, {"max", int64(16777215)}, {"step", int64(1)}, {"display", "color"}}},
			},
			outputs: []string{"IMAGE"},
			run:     runEmptyImage,
		},
		{
			name: "LoadImage", display: "Load Image", category: "image", module: "nodes",
			inputs:   []inputDef{{name: "image", combo: (*Server).inputImages, extra: ordered{{"image_upload", true}}}},
			outputs:  []string{"IMAGE", "MASK"},
			validate: map[string]func(*Server, any) string{"image": validateLoadImage},
			isChanged: func(s *Server, in map[string]any) string {
				p, _ := s.annotatedPath(pyStr(in["image"]), "input")
				data, err := os.ReadFile(p)
				if err != nil {
					return ""
				}
				sum := sha256.Sum256(data)
				return hex.EncodeToString(sum[:])
			},
			run: runLoadImage,
		},
		{
			name: "SaveImage", display: "Save Image", category: "image", module: "nodes",
			description: "Saves the input images to your ComfyUI output directory.",
			inputs: []inputDef{
				imageIn("images", kv{"tooltip", "The images to save."}),
				{name: "filename_prefix", typ: "STRING", extra: ordered{{"default", "ComfyUI"}, {"tooltip", "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."}}},
			},
			hidden:     hiddenPrompt,
			outputNode: true,
			run:        runSaveImage,
		},
		{
			name: "PreviewImage", display: "Preview Image", category: "image", module: "nodes",
			description: "Saves the input images to your ComfyUI output directory.",
			inputs:      []inputDef{imageIn("images")},
			hidden:      hiddenPrompt,
			outputNode:  true,
			run:         runPreviewImage,
		},
		{
			name: "ImageInvert", display: "Invert Image", category: "image", module: "nodes",
			inputs:  []inputDef{imageIn("image")},
			outputs: []string{"IMAGE"},
			run:     runImageInvert,
		},
		{
			name: "ImageScale", display: "Upscale Image", category: "image/upscaling", module: "nodes",
			inputs: []inputDef{
				imageIn("image"),
				{name: "upscale_method", combo: fixedCombo(upscaleMethods...)},
				intIn("width", 512, 0, 16384, 1),
				intIn("height", 512, 0, 16384, 1),
				{name: "crop", combo: fixedCombo("disabled", "center")},
			},
			outputs: []string{"IMAGE"},
			run:     runImageScale,
		},
		{
			name: "ImageScaleBy", display: "Upscale Image By", category: "image/upscaling", module: "nodes",
			inputs: []inputDef{
				imageIn("image"),
				{name: "upscale_method", combo: fixedCombo(upscaleMethods...)},
				{name: "scale_by", typ: "FLOAT", extra: ordered{{"default", pyFloat(1)}, {"min", pyFloat(0.01)}, {"max", pyFloat(8)}, {"step", pyFloat(0.01)}}},
			},
			outputs: []string{"IMAGE"},
			run:     runImageScaleBy,
		},
		{
			name: "ImageBlur", display: "Image Blur", category: "image/postprocessing", module: "comfy_extras.nodes_post_processing",
			inputs: []inputDef{
				imageIn("image"),
				intIn("blur_radius", 1, 1, 31, 1),
				{name: "sigma", typ: "FLOAT", extra: ordered{{"default", pyFloat(1)}, {"min", pyFloat(0.1)}, {"max", pyFloat(10)}, {"step", pyFloat(0.1)}}},
			},
			outputs: []string{"IMAGE"},
			run:     runImageBlur,
		},
		{
			name: "UpscaleModelLoader", display: "Load Upscale Model", category: "loaders", module: "comfy_extras.nodes_upscale_model",
			inputs:  []inputDef{{name: "model_name", combo: func(s *Server) []string { return s.upscaleModels }}},
			outputs: []string{"UPSCALE_MODEL"},
			run:     runUpscaleModelLoader,
		},
		{
			name: "ImageUpscaleWithModel", display: "Upscale Image (using Model)", category: "image/upscaling", module: "comfy_extras.nodes_upscale_model",
			inputs:  []inputDef{{name: "upscale_model", typ: "UPSCALE_MODEL"}, imageIn("image")},
			outputs: []string{"IMAGE"},
			run:     runImageUpscaleWithModel,
		},
		{
			name: "SaveImageWebsocket", display: "SaveImageWebsocket", category: "api node/image", module: "custom_nodes.websocket_image_save",
			inputs:     []inputDef{imageIn("images")},
			outputNode: true,
			run:        runSaveImageWebsocket,
		},
		{
			name: VideoCombineClass, display: "Video Combine 🎥🅥🅗🅢", category: "Video Helper Suite 🎥🅥🅗🅢", module: "custom_nodes.ComfyUI-VideoHelperSuite",
			inputs: []inputDef{
				imageIn("images"),
				{name: "frame_rate", typ: "FLOAT", extra: ordered{{"default", pyFloat(8)}, {"min", pyFloat(1)}, {"step", pyFloat(1)}}},
				intIn("loop_count", 0, 0, 100, 1),
				{name: "filename_prefix", typ: "STRING", extra: ordered{{"default", "AnimateDiff"}}},
				{name: "format", combo: fixedCombo("image/gif")},
				{name: "pingpong", typ: "BOOLEAN", extra: ordered{{"default", false}}},
				{name: "save_output", typ: "BOOLEAN", extra: ordered{{"default", true}}},
			},
			hidden:      hiddenPrompt,
			outputs:     []string{"VHS_FILENAMES"},
			outputNames: []string{"Filenames"},
			outputNode:  true,
			run:         runVideoCombine,
		},
		{
			name: RembgClass, display: RembgClass, category: "WAS Suite/Image/AI", module: "custom_nodes.was-node-suite-comfyui",
			inputs: []inputDef{
				imageIn("images"),
				{name: "transparency", typ: "BOOLEAN", extra: ordered{{"default", true}}},
				{name: "model", combo: fixedCombo("u2net", "u2netp", "u2net_human_seg", "silueta", "isnet-general-use", "isnet-anime")},
				{name: "post_processing", typ: "BOOLEAN", extra: ordered{{"default", false}}},
				{name: "only_mask", typ: "BOOLEAN", extra: ordered{{"default", false}}},
				{name: "alpha_matting", typ: "BOOLEAN", extra: ordered{{"default", false}}},
				intIn("alpha_matting_foreground_threshold", 240, 0, 255, 0),
				intIn("alpha_matting_background_threshold", 10, 0, 255, 0),
				intIn("alpha_matting_erode_size", 10, 0, 255, 0),
				{name: "background_color", combo: fixedCombo("none", "black", "white", "magenta", "chroma green", "chroma blue")},
			},
			outputs: []string{"IMAGE"},
			run:     runRembg,
		},
	}
	m := make(map[string]*nodeDef, len(defs))
	for _, d := range defs {
		if d.outputNames == nil {
			d.outputNames = d.outputs
		}
		m[d.name] = d
	}
	return m
}

// objectInfo renders one class as /object_info shows it.
func (d *nodeDef) objectInfo(s *Server) ordered {
	var req, opt ordered
	var reqOrder, optOrder []string
	for _, in := range d.inputs {
		var spec []any
		if in.combo != nil {
			opts := in.combo(s)
			if opts == nil {
				opts = []string{}
			}
			spec = []any{opts}
		} else {
			spec = []any{in.typ}
		}
		if len(in.extra) > 0 {
			spec = append(spec, in.extra)
		}
		if in.optional {
			opt = append(opt, kv{in.name, spec})
			optOrder = append(optOrder, in.name)
		} else {
			req = append(req, kv{in.name, spec})
			reqOrder = append(reqOrder, in.name)
		}
	}
	input := ordered{{"required", req}}
	order := ordered{{"required", reqOrder}}
	if opt != nil {
		input = append(input, kv{"optional", opt})
		order = append(order, kv{"optional", optOrder})
	}
	if d.hidden != nil {
		input = append(input, kv{"hidden", d.hidden})
		var h []string
		for _, m := range d.hidden {
			h = append(h, m.K)
		}
		order = append(order, kv{"hidden", h})
	}
	outs := d.outputs
	if outs == nil {
		outs = []string{}
	}
	isList := make([]bool, len(outs))
	names := d.outputNames
	if names == nil {
		names = []string{}
	}
	info := ordered{
		{"input", input},
		{"input_order", order},
		{"output", outs},
		{"output_is_list", isList},
		{"output_name", names},
		{"name", d.name},
		{"display_name", d.display},
		{"description", d.description},
		{"python_module", d.module},
		{"category", d.category},
		{"output_node", d.outputNode},
	}
	if d.outputTooltips != nil {
		info = append(info, kv{"output_tooltips", d.outputTooltips})
	}
	return info
}

// ---- node implementations ----

// maxPixels bounds one node's output so a typo cannot exhaust memory; beyond
// it the node fails like a GPU running out of memory.
const maxPixels = 1 << 26

func oom(w, h, n int) error {
	return &execError{typ: "torch.OutOfMemoryError", msg: fmt.Sprintf("Allocation on device would exceed memory: %d x %d x %d pixels", n, h, w)}
}

func argInt(in map[string]any, k string) int64 {
	switch v := in[k].(type) {
	case int64:
		return v
	case float64:
		return int64(v)
	}
	return 0
}

func argFloat(in map[string]any, k string) float64 {
	switch v := in[k].(type) {
	case float64:
		return v
	case int64:
		return float64(v)
	}
	return 0
}

func argBool(in map[string]any, k string) bool { b, _ := in[k].(bool); return b }
func argStr(in map[string]any, k string) string {
	if s, ok := in[k].(string); ok {
		return s
	}
	return pyStr(in[k])
}

func argImage(in map[string]any, k string) (*imageBatch, error) {
	b, ok := in[k].(*imageBatch)
	if !ok || b == nil || len(b.frames) == 0 {
		return nil, &execError{typ: "TypeError", msg: fmt.Sprintf("input %s is not an IMAGE", k)}
	}
	return b, nil
}

func runEmptyImage(c *nodeCall) ([]any, *nodeUI, error) {
	w, h, n := int(argInt(c.in, "width")), int(argInt(c.in, "height")), int(argInt(c.in, "batch_size"))
	if w*h*n > maxPixels {
		return nil, nil, oom(w, h, n)
	}
	color := argInt(c.in, "color")
	b := &imageBatch{}
	for range n {
		b.frames = append(b.frames, solidFrame(w, h, color))
	}
	return []any{b}, nil, nil
}

func validateLoadImage(s *Server, v any) string {
	name := pyStr(v)
	p, err := s.annotatedPath(name, "input")
	if err == nil {
		if st, serr := os.Stat(p); serr == nil && st.Mode().IsRegular() {
			return ""
		}
	}
	return "Invalid image file: " + name
}

func runLoadImage(c *nodeCall) ([]any, *nodeUI, error) {
	name := argStr(c.in, "image")
	p, err := c.s.annotatedPath(name, "input")
	if err != nil {
		return nil, nil, &execError{typ: "FileNotFoundError", msg: err.Error()}
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, nil, &execError{typ: "FileNotFoundError", msg: fmt.Sprintf("[Errno 2] No such file or directory: '%s'", p)}
	}
	var frames []image.Image
	if g, gerr := gif.DecodeAll(bytes.NewReader(data)); gerr == nil && len(g.Image) > 0 {
		for _, f := range g.Image {
			frames = append(frames, f)
		}
	} else {
		img, _, derr := image.Decode(bytes.NewReader(data))
		if derr != nil {
			return nil, nil, &execError{typ: "PIL.UnidentifiedImageError", msg: fmt.Sprintf("cannot identify image file '%s'", p)}
		}
		frames = []image.Image{img}
	}
	b := &imageBatch{}
	m := &maskBatch{}
	for _, f := range frames {
		n := toNRGBA(f)
		if len(b.frames) > 0 && n.Rect != b.frames[0].Rect {
			continue // ComfyUI skips frames whose size differs from the first
		}
		mask := image.NewGray(n.Rect)
		for i := 0; i < len(n.Pix)/4; i++ {
			mask.Pix[i] = 255 - n.Pix[i*4+3]
		}
		opaque(n)
		b.frames = append(b.frames, n)
		m.frames = append(m.frames, mask)
	}
	return []any{b, m}, nil, nil
}

var saveVarRe = regexp.MustCompile(`%[^%]+%`)

// saveImagePath is folder_paths.get_save_image_path: it resolves the prefix's
// subfolder and finds the next free counter for prefix_NNNNN_.png.
func saveImagePath(prefix, outDir string, w, h int) (fullDir, filename, subfolder string, counter int, err error) {
	now := time.Now()
	prefix = saveVarRe.ReplaceAllStringFunc(prefix, func(v string) string {
		switch v {
		case "%width%":
			return strconv.Itoa(w)
		case "%height%":
			return strconv.Itoa(h)
		case "%year%":
			return strconv.Itoa(now.Year())
		case "%month%":
			return fmt.Sprintf("%02d", now.Month())
		case "%day%":
			return fmt.Sprintf("%02d", now.Day())
		case "%hour%":
			return fmt.Sprintf("%02d", now.Hour())
		case "%minute%":
			return fmt.Sprintf("%02d", now.Minute())
		case "%second%":
			return fmt.Sprintf("%02d", now.Second())
		}
		return v
	})
	norm := filepath.Clean(prefix)
	subfolder = filepath.Dir(norm)
	if subfolder == "." {
		subfolder = ""
	}
	filename = filepath.Base(norm)
	fullDir = filepath.Join(outDir, subfolder)
	if !within(outDir, fullDir) {
		return "", "", "", 0, &execError{typ: "Exception", msg: fmt.Sprintf("**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: %s\n         output_dir: %s\n         commonpath: %s", fullDir, outDir, outDir)}
	}
	entries, rerr := os.ReadDir(fullDir)
	if rerr != nil {
		if mkErr := os.MkdirAll(fullDir, 0o755); mkErr != nil {
			return "", "", "", 0, &execError{typ: "OSError", msg: mkErr.Error()}
		}
		return fullDir, filename, subfolder, 1, nil
	}
	counter = 0
	plen := len(filename)
	for _, e := range entries {
		n := e.Name()
		if len(n) < plen+1 || !strings.EqualFold(n[:plen], filename) || n[plen] != '_' {
			continue
		}
		digits, _, _ := strings.Cut(n[plen+1:], "_")
		digits = strings.TrimSuffix(digits, filepath.Ext(digits)) // VHS: prefix_00001.gif
		d, _ := strconv.Atoi(digits)
		counter = max(counter, d)
	}
	return fullDir, filename, subfolder, counter + 1, nil
}

func (c *nodeCall) saveImages(b *imageBatch, prefix, dir, typ string, level png.CompressionLevel, meta bool) (*nodeUI, error) {
	w, h := b.size()
	fullDir, filename, subfolder, counter, err := saveImagePath(prefix, dir, w, h)
	if err != nil {
		return nil, err
	}
	ui := &nodeUI{Images: []imageRef{}}
	for i, f := range b.frames {
		name := fmt.Sprintf("%s_%05d_.png", strings.ReplaceAll(filename, "%batch_num%", strconv.Itoa(i)), counter)
		var img image.Image = f
		data, err := encodePNG(img, level)
		if err != nil {
			return nil, &execError{typ: "OSError", msg: err.Error()}
		}
		if meta {
			data = withTextChunks(data, c.ex.pngInfo())
		}
		if err := os.WriteFile(filepath.Join(fullDir, name), data, 0o644); err != nil {
			return nil, &execError{typ: "OSError", msg: err.Error()}
		}
		ui.Images = append(ui.Images, imageRef{Filename: name, Subfolder: subfolder, Type: typ})
		counter++
	}
	return ui, nil
}

func runSaveImage(c *nodeCall) ([]any, *nodeUI, error) {
	b, err := argImage(c.in, "images")
	if err != nil {
		return nil, nil, err
	}
	prefix := argStr(c.in, "filename_prefix")
	ui, err := c.saveImages(b, prefix, c.s.outputDir, "output", png.DefaultCompression, true)
	return nil, ui, err
}

func runPreviewImage(c *nodeCall) ([]any, *nodeUI, error) {
	b, err := argImage(c.in, "images")
	if err != nil {
		return nil, nil, err
	}
	const letters = "abcdefghijklmnopqrstupvxyz" // sic: ComfyUI's own alphabet
	suffix := make([]byte, 5)
	for i := range suffix {
		suffix[i] = letters[rand.IntN(len(letters))]
	}
	ui, err := c.saveImages(b, "ComfyUI_temp_"+string(suffix), c.s.tempDir, "temp", png.BestSpeed, true)
	return nil, ui, err
}

func mapFrames(b *imageBatch, f func(*image.NRGBA) *image.NRGBA) *imageBatch {
	out := &imageBatch{alpha: b.alpha}
	for _, fr := range b.frames {
		out.frames = append(out.frames, f(fr))
	}
	return out
}

func runImageInvert(c *nodeCall) ([]any, *nodeUI, error) {
	b, err := argImage(c.in, "image")
	if err != nil {
		return nil, nil, err
	}
	if err := c.work(); err != nil {
		return nil, nil, err
	}
	return []any{mapFrames(b, func(f *image.NRGBA) *image.NRGBA { return invertFrame(f, b.alpha) })}, nil, nil
}

func scaled(b *imageBatch, w, h int, method string, crop bool) (*imageBatch, error) {
	if w*h*len(b.frames) > maxPixels {
		return nil, oom(w, h, len(b.frames))
	}
	return mapFrames(b, func(f *image.NRGBA) *image.NRGBA {
		if crop {
			f = centerCrop(f, w, h)
		}
		return resizeFrame(f, w, h, method)
	}), nil
}

func runImageScale(c *nodeCall) ([]any, *nodeUI, error) {
	b, err := argImage(c.in, "image")
	if err != nil {
		return nil, nil, err
	}
	if err := c.work(); err != nil {
		return nil, nil, err
	}
	w, h := int(argInt(c.in, "width")), int(argInt(c.in, "height"))
	sw, sh := b.size()
	if w == 0 && h == 0 {
		return []any{b}, nil, nil
	}
	if w == 0 {
		w = max(1, int(math.Round(float64(sw)*float64(h)/float64(sh))))
	} else if h == 0 {
		h = max(1, int(math.Round(float64(sh)*float64(w)/float64(sw))))
	}
	out, err := scaled(b, w, h, argStr(c.in, "upscale_method"), argStr(c.in, "crop") == "center")
	if err != nil {
		return nil, nil, err
	}
	return []any{out}, nil, nil
}

func runImageScaleBy(c *nodeCall) ([]any, *nodeUI, error) {
	b, err := argImage(c.in, "image")
	if err != nil {
		return nil, nil, err
	}
	if err := c.work(); err != nil {
		return nil, nil, err
	}
	s := argFloat(c.in, "scale_by")
	sw, sh := b.size()
	w, h := pyRound(float64(sw)*s), pyRound(float64(sh)*s)
	out, err := scaled(b, w, h, argStr(c.in, "upscale_method"), false)
	if err != nil {
		return nil, nil, err
	}
	return []any{out}, nil, nil
}

// pyRound is Python's round(): half to even.
func pyRound(f float64) int { return int(math.RoundToEven(f)) }

func runImageBlur(c *nodeCall) ([]any, *nodeUI, error) {
	b, err := argImage(c.in, "image")
	if err != nil {
		return nil, nil, err
	}
	if err := c.work(); err != nil {
		return nil, nil, err
	}
	r, sigma := int(argInt(c.in, "blur_radius")), argFloat(c.in, "sigma")
	if r == 0 {
		return []any{b}, nil, nil
	}
	return []any{mapFrames(b, func(f *image.NRGBA) *image.NRGBA { return blurFrame(f, r, sigma) })}, nil, nil
}

var scaleInName = regexp.MustCompile(`(?i)(?:^|[^a-z0-9])x?([1-8])x(?:[^a-z0-9]|$)|x([1-8])(?:[^0-9]|$)`)

// modelScale reads the upscale factor from a model file name: "4x-UltraSharp"
// and "RealESRGAN_x4plus" give 4, "2x_..." and "..._x2plus" give 2; default 4.
func modelScale(name string) int {
	base := strings.TrimSuffix(filepath.Base(name), filepath.Ext(name))
	if m := scaleInName.FindStringSubmatch(base); m != nil {
		for _, g := range m[1:] {
			if g != "" {
				n, _ := strconv.Atoi(g)
				return n
			}
		}
	}
	return 4
}

func runUpscaleModelLoader(c *nodeCall) ([]any, *nodeUI, error) {
	name := argStr(c.in, "model_name")
	if err := c.loadModel("upscale_models/" + name); err != nil {
		return nil, nil, err
	}
	return []any{&upscaleModel{name: name, scale: modelScale(name)}}, nil, nil
}

func runImageUpscaleWithModel(c *nodeCall) ([]any, *nodeUI, error) {
	m, ok := c.in["upscale_model"].(*upscaleModel)
	if !ok {
		return nil, nil, &execError{typ: "TypeError", msg: "upscale_model is not an UPSCALE_MODEL"}
	}
	b, err := argImage(c.in, "image")
	if err != nil {
		return nil, nil, err
	}
	sw, sh := b.size()
	out, err := scaled(b, sw*m.scale, sh*m.scale, "bicubic", false)
	if err != nil {
		return nil, nil, err
	}
	if err := c.heavy(out.frames[0]); err != nil {
		return nil, nil, err
	}
	return []any{out}, nil, nil
}

var bgColors = map[string][3]uint8{
	"black": {0, 0, 0}, "white": {255, 255, 255}, "magenta": {255, 0, 255},
	"chroma green": {0, 177, 64}, "chroma blue": {0, 71, 187},
}

func runRembg(c *nodeCall) ([]any, *nodeUI, error) {
	b, err := argImage(c.in, "images")
	if err != nil {
		return nil, nil, err
	}
	transparent := argBool(c.in, "transparency")
	onlyMask := argBool(c.in, "only_mask")
	bgName := argStr(c.in, "background_color")
	out := &imageBatch{alpha: transparent && !onlyMask}
	for _, f := range b.frames {
		cut, fg := removeBackground(f, 48)
		switch {
		case onlyMask:
			for i, isFg := range fg {
				v := uint8(0)
				if isFg {
					v = 255
				}
				cut.Pix[i*4], cut.Pix[i*4+1], cut.Pix[i*4+2], cut.Pix[i*4+3] = v, v, v, 255
			}
		case !transparent || bgName != "none":
			bg := bgColors[bgName] // "none" without transparency: black, like RGBA->RGB
			for i, isFg := range fg {
				if !isFg {
					cut.Pix[i*4], cut.Pix[i*4+1], cut.Pix[i*4+2] = bg[0], bg[1], bg[2]
				}
				cut.Pix[i*4+3] = 255
			}
			out.alpha = false
		}
		out.frames = append(out.frames, cut)
	}
	if err := c.heavy(out.frames[0]); err != nil {
		return nil, nil, err
	}
	return []any{out}, nil, nil
}

// runVideoCombine writes the batch as an animated GIF, one frame per
// image at frame_rate, looping loop_count times (0: forever).
func runVideoCombine(c *nodeCall) ([]any, *nodeUI, error) {
	b, err := argImage(c.in, "images")
	if err != nil {
		return nil, nil, err
	}
	rate := argFloat(c.in, "frame_rate")
	if rate <= 0 {
		rate = 8
	}
	frames := b.frames
	if argBool(c.in, "pingpong") && len(frames) > 2 {
		for i := len(frames) - 2; i > 0; i-- {
			frames = append(frames, frames[i])
		}
	}
	g := &gif.GIF{LoopCount: int(argInt(c.in, "loop_count"))} // 0: forever, in GIF as in VHS
	delay := int(math.Round(100 / rate))
	for _, f := range frames {
		p := image.NewPaletted(f.Bounds(), palette.Plan9)
		draw.FloydSteinberg.Draw(p, f.Bounds(), f, image.Point{})
		g.Image = append(g.Image, p)
		g.Delay = append(g.Delay, delay)
	}
	var buf bytes.Buffer
	if err := gif.EncodeAll(&buf, g); err != nil {
		return nil, nil, &execError{typ: "OSError", msg: err.Error()}
	}
	dir, typ := c.s.outputDir, "output"
	if !argBool(c.in, "save_output") {
		dir, typ = c.s.tempDir, "temp"
	}
	w, h := b.size()
	fullDir, filename, subfolder, counter, err := saveImagePath(argStr(c.in, "filename_prefix"), dir, w, h)
	if err != nil {
		return nil, nil, err
	}
	name := fmt.Sprintf("%s_%05d.gif", filename, counter)
	if err := os.WriteFile(filepath.Join(fullDir, name), buf.Bytes(), 0o644); err != nil {
		return nil, nil, &execError{typ: "OSError", msg: err.Error()}
	}
	ref := videoRef{Filename: name, Subfolder: subfolder, Type: typ, Format: "image/gif", FrameRate: rate}
	return []any{[]any{true, []any{filepath.Join(fullDir, name)}}}, &nodeUI{Gifs: []videoRef{ref}}, nil
}

func runSaveImageWebsocket(c *nodeCall) ([]any, *nodeUI, error) {
	b, err := argImage(c.in, "images")
	if err != nil {
		return nil, nil, err
	}
	n := len(b.frames)
	for i, f := range b.frames {
		data, err := encodePNG(f, png.DefaultCompression)
		if err != nil {
			return nil, nil, &execError{typ: "OSError", msg: err.Error()}
		}
		if err := c.progress(i, n, &preview{format: formatPNG, data: data}); err != nil {
			return nil, nil, err
		}
	}
	return nil, nil, nil
}

// inputImages lists LoadImage's combo: image files directly in the input dir.
func (d *fileDirs) inputImages() []string {
	entries, err := os.ReadDir(d.inputDir)
	if err != nil {
		return []string{}
	}
	files := []string{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".apng":
			files = append(files, e.Name())
		}
	}
	sort.Strings(files)
	return files
}
