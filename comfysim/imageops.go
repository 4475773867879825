package comfysim

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"image/png"
	"math"
)

// imageBatch is ComfyUI's IMAGE: a batch of same-sized frames. alpha marks a
// 4-channel (RGBA) tensor; otherwise every pixel is opaque RGB.
type imageBatch struct {
	frames []*image.NRGBA
	alpha  bool
}

func (b *imageBatch) size() (w, h int) {
	if b == nil || len(b.frames) == 0 {
		return 0, 0
	}
	r := b.frames[0].Bounds()
	return r.Dx(), r.Dy()
}

// maskBatch is ComfyUI's MASK: one float per pixel, 1 = masked.
type maskBatch struct {
	frames []*image.Gray
}

// upscaleModel is what UpscaleModelLoader hands to ImageUpscaleWithModel.
type upscaleModel struct {
	name  string
	scale int
}

// toNRGBA converts any decoded image into a fresh NRGBA with origin (0,0).
func toNRGBA(src image.Image) *image.NRGBA {
	b := src.Bounds()
	if n, ok := src.(*image.NRGBA); ok && b.Min == (image.Point{}) {
		c := image.NewNRGBA(b)
		copy(c.Pix, n.Pix)
		return c
	}
	dst := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(dst, dst.Bounds(), src, b.Min, draw.Src)
	return dst
}

func opaque(img *image.NRGBA) {
	for i := 3; i < len(img.Pix); i += 4 {
		img.Pix[i] = 255
	}
}

func solidFrame(w, h int, rgb int64) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	r, g, b := uint8(rgb>>16), uint8(rgb>>8), uint8(rgb)
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = r, g, b, 255
	}
	return img
}

func invertFrame(src *image.NRGBA, alpha bool) *image.NRGBA {
	dst := image.NewNRGBA(src.Rect)
	for i := 0; i < len(src.Pix); i += 4 {
		dst.Pix[i] = 255 - src.Pix[i]
		dst.Pix[i+1] = 255 - src.Pix[i+1]
		dst.Pix[i+2] = 255 - src.Pix[i+2]
		if alpha {
			dst.Pix[i+3] = 255 - src.Pix[i+3]
		} else {
			dst.Pix[i+3] = 255
		}
	}
	return dst
}

// resampler describes one of ComfyUI's upscale_method values.
type resampler struct {
	kernel  func(x float64) float64
	support float64
	// widen scales the kernel when shrinking (PIL-style antialiasing), as
	// ComfyUI's lanczos (PIL) does; torch's bilinear/bicubic do not.
	widen bool
}

func cubic(x float64) float64 {
	const a = -0.75 // torch's bicubic coefficient
	x = math.Abs(x)
	switch {
	case x <= 1:
		return ((a+2)*x-(a+3))*x*x + 1
	case x < 2:
		return ((a*x-5*a)*x+8*a)*x - 4*a
	}
	return 0
}

func sinc(x float64) float64 {
	if x == 0 {
		return 1
	}
	x *= math.Pi
	return math.Sin(x) / x
}

var resamplers = map[string]resampler{
	"bilinear": {kernel: func(x float64) float64 { return math.Max(0, 1-math.Abs(x)) }, support: 1},
	"bicubic":  {kernel: cubic, support: 2},
	"lanczos": {kernel: func(x float64) float64 {
		if x > -3 && x < 3 {
			return sinc(x) * sinc(x/3)
		}
		return 0
	}, support: 3, widen: true},
}

// resizeFrame scales src to w x h with the named ComfyUI upscale_method
// ("nearest-exact", "bilinear", "area", "bicubic", "lanczos").
func resizeFrame(src *image.NRGBA, w, h int, method string) *image.NRGBA {
	sw, sh := src.Rect.Dx(), src.Rect.Dy()
	if w < 1 {
		w = 1
	}
	if h < 1 {
		h = 1
	}
	dst := image.NewNRGBA(image.Rect(0, 0, w, h))
	switch method {
	case "nearest-exact", "nearest":
		for y := 0; y < h; y++ {
			sy := min(int(math.Floor((float64(y)+0.5)*float64(sh)/float64(h))), sh-1)
			for x := 0; x < w; x++ {
				sx := min(int(math.Floor((float64(x)+0.5)*float64(sw)/float64(w))), sw-1)
				copy(dst.Pix[dst.PixOffset(x, y):dst.PixOffset(x, y)+4], src.Pix[src.PixOffset(sx, sy):src.PixOffset(sx, sy)+4])
			}
		}
		return dst
	case "area":
		return areaResize(src, w, h)
	}
	rs, ok := resamplers[method]
	if !ok {
		rs = resamplers["bilinear"]
	}
	// Horizontal pass into float planes, then vertical pass.
	tmp := make([]float64, w*sh*4)
	wx := weights(sw, w, rs)
	for y := 0; y < sh; y++ {
		row := src.Pix[y*src.Stride:]
		for x := 0; x < w; x++ {
			var acc [4]float64
			for _, t := range wx[x] {
				p := row[t.i*4:]
				acc[0] += float64(p[0]) * t.w
				acc[1] += float64(p[1]) * t.w
				acc[2] += float64(p[2]) * t.w
				acc[3] += float64(p[3]) * t.w
			}
			copy(tmp[(y*w+x)*4:], acc[:])
		}
	}
	wy := weights(sh, h, rs)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var acc [4]float64
			for _, t := range wy[y] {
				p := tmp[(t.i*w+x)*4:]
				acc[0] += p[0] * t.w
				acc[1] += p[1] * t.w
				acc[2] += p[2] * t.w
				acc[3] += p[3] * t.w
			}
			o := dst.PixOffset(x, y)
			for c := 0; c < 4; c++ {
				dst.Pix[o+c] = clamp8(acc[c])
			}
		}
	}
	return dst
}

type tap struct {
	i int
	w float64
}

func weights(in, out int, rs resampler) [][]tap {
	scale := float64(in) / float64(out)
	fs := 1.0
	if rs.widen && scale > 1 {
		fs = scale
	}
	support := rs.support * fs
	res := make([][]tap, out)
	for x := 0; x < out; x++ {
		center := (float64(x)+0.5)*scale - 0.5
		lo := int(math.Floor(center - support))
		hi := int(math.Ceil(center + support))
		var taps []tap
		sum := 0.0
		for i := lo; i <= hi; i++ {
			wt := rs.kernel((float64(i) - center) / fs)
			if wt == 0 {
				continue
			}
			idx := min(max(i, 0), in-1)
			taps = append(taps, tap{idx, wt})
			sum += wt
		}
		if sum != 0 {
			for i := range taps {
				taps[i].w /= sum
			}
		}
		if len(taps) == 0 {
			taps = []tap{{min(max(int(math.Round(center)), 0), in-1), 1}}
		}
		res[x] = taps
	}
	return res
}

func areaResize(src *image.NRGBA, w, h int) *image.NRGBA {
	sw, sh := src.Rect.Dx(), src.Rect.Dy()
	dst := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		y0 := y * sh / h
		y1 := max((y+1)*sh/h, y0+1)
		if (y+1)*sh%h != 0 {
			y1 = max(y1, (y+1)*sh/h+1)
		}
		y1 = min(y1, sh)
		for x := 0; x < w; x++ {
			x0 := x * sw / w
			x1 := max((x+1)*sw/w, x0+1)
			if (x+1)*sw%w != 0 {
				x1 = max(x1, (x+1)*sw/w+1)
			}
			x1 = min(x1, sw)
			var acc [4]float64
			n := float64((y1 - y0) * (x1 - x0))
			for yy := y0; yy < y1; yy++ {
				for xx := x0; xx < x1; xx++ {
					p := src.Pix[src.PixOffset(xx, yy):]
					for c := 0; c < 4; c++ {
						acc[c] += float64(p[c])
					}
				}
			}
			o := dst.PixOffset(x, y)
			for c := 0; c < 4; c++ {
				dst.Pix[o+c] = clamp8(acc[c] / n)
			}
		}
	}
	return dst
}

func clamp8(v float64) uint8 {
	v = math.Round(v)
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return uint8(v)
}

// centerCrop crops src to the aspect ratio w:h around its centre, as
// comfy.utils.common_upscale does with crop="center".
func centerCrop(src *image.NRGBA, w, h int) *image.NRGBA {
	sw, sh := src.Rect.Dx(), src.Rect.Dy()
	oldAspect := float64(sw) / float64(sh)
	newAspect := float64(w) / float64(h)
	x, y, cw, ch := 0, 0, sw, sh
	if oldAspect > newAspect {
		x = int(math.Round(float64(sw-int(float64(sw)*(newAspect/oldAspect))) / 2))
		cw = sw - 2*x
	} else if oldAspect < newAspect {
		y = int(math.Round(float64(sh-int(float64(sh)*(oldAspect/newAspect))) / 2))
		ch = sh - 2*y
	}
	if cw < 1 || ch < 1 {
		return src
	}
	dst := image.NewNRGBA(image.Rect(0, 0, cw, ch))
	draw.Draw(dst, dst.Rect, src, image.Pt(x, y), draw.Src)
	return dst
}

// blurFrame is ComfyUI's ImageBlur: a Gaussian over a kernel of
// 2*radius+1 taps whose coordinates span [-1, 1], with reflect padding.
func blurFrame(src *image.NRGBA, radius int, sigma float64) *image.NRGBA {
	size := radius*2 + 1
	k := make([]float64, size)
	sum := 0.0
	for i := range k {
		t := -1 + 2*float64(i)/float64(size-1)
		k[i] = math.Exp(-(t * t) / (2 * sigma * sigma))
		sum += k[i]
	}
	for i := range k {
		k[i] /= sum
	}
	w, h := src.Rect.Dx(), src.Rect.Dy()
	reflect := func(i, n int) int {
		if n == 1 {
			return 0
		}
		period := 2 * (n - 1)
		i %= period
		if i < 0 {
			i += period
		}
		if i >= n {
			i = period - i
		}
		return i
	}
	tmp := make([]float64, w*h*4)
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var acc [4]float64
			for j, kw := range k {
				p := src.Pix[src.PixOffset(reflect(x+j-radius, w), y):]
				for c := 0; c < 4; c++ {
					acc[c] += float64(p[c]) * kw
				}
			}
			copy(tmp[(y*w+x)*4:], acc[:])
		}
	}
	dst := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			var acc [4]float64
			for j, kw := range k {
				p := tmp[(reflect(y+j-radius, h)*w+x)*4:]
				for c := 0; c < 4; c++ {
					acc[c] += p[c] * kw
				}
			}
			o := dst.PixOffset(x, y)
			for c := 0; c < 4; c++ {
				dst.Pix[o+c] = clamp8(acc[c])
			}
		}
	}
	return dst
}

// removeBackground makes the background transparent: the background colour is
// the most common border colour, and every pixel connected to the border whose
// colour is within tolerance of it becomes background (flood fill).
// It returns the RGBA frame and the foreground mask (255 = foreground).
func removeBackground(src *image.NRGBA, tolerance float64) (*image.NRGBA, []bool) {
	w, h := src.Rect.Dx(), src.Rect.Dy()
	counts := map[[3]uint8]int{}
	var best [3]uint8
	bestN := 0
	borderPx := func(x, y int) [3]uint8 {
		p := src.Pix[src.PixOffset(x, y):]
		return [3]uint8{p[0], p[1], p[2]}
	}
	addBorder := func(x, y int) {
		c := borderPx(x, y)
		counts[c]++
		if counts[c] > bestN {
			best, bestN = c, counts[c]
		}
	}
	for x := 0; x < w; x++ {
		addBorder(x, 0)
		addBorder(x, h-1)
	}
	for y := 0; y < h; y++ {
		addBorder(0, y)
		addBorder(w-1, y)
	}
	near := func(x, y int) bool {
		c := borderPx(x, y)
		dr := float64(c[0]) - float64(best[0])
		dg := float64(c[1]) - float64(best[1])
		db := float64(c[2]) - float64(best[2])
		return math.Sqrt(dr*dr+dg*dg+db*db) <= tolerance
	}
	bg := make([]bool, w*h)
	stack := make([]int, 0, 2*(w+h))
	push := func(x, y int) {
		i := y*w + x
		if bg[i] || !near(x, y) {
			return
		}
		bg[i] = true
		stack = append(stack, i)
	}
	for x := 0; x < w; x++ {
		push(x, 0)
		push(x, h-1)
	}
	for y := 0; y < h; y++ {
		push(0, y)
		push(w-1, y)
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		x, y := i%w, i/w
		if x > 0 {
			push(x-1, y)
		}
		if x < w-1 {
			push(x+1, y)
		}
		if y > 0 {
			push(x, y-1)
		}
		if y < h-1 {
			push(x, y+1)
		}
	}
	dst := image.NewNRGBA(image.Rect(0, 0, w, h))
	copy(dst.Pix, src.Pix)
	fg := make([]bool, w*h)
	for i := range bg {
		fg[i] = !bg[i]
		if bg[i] {
			dst.Pix[i*4+3] = 0
		} else {
			dst.Pix[i*4+3] = 255
		}
	}
	return dst, fg
}

// encodePNG encodes a frame; opaque frames become RGB PNGs (Go's encoder
// drops an all-255 alpha channel), like PIL saving an RGB image.
func encodePNG(img image.Image, level png.CompressionLevel) ([]byte, error) {
	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: level}
	if err := enc.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// withTextChunks inserts tEXt chunks right after IHDR, as PIL's PngInfo does
// for ComfyUI's "prompt" and "workflow" metadata.
func withTextChunks(pngData []byte, chunks []kv) []byte {
	const ihdrEnd = 8 + 4 + 4 + 13 + 4
	if len(chunks) == 0 || len(pngData) < ihdrEnd {
		return pngData
	}
	var buf bytes.Buffer
	buf.Write(pngData[:ihdrEnd])
	for _, c := range chunks {
		text, _ := c.V.(string)
		payload := append(append([]byte(c.K), 0), []byte(latin1(text))...)
		var hdr [8]byte
		binary.BigEndian.PutUint32(hdr[:4], uint32(len(payload)))
		copy(hdr[4:], "tEXt")
		buf.Write(hdr[:])
		buf.Write(payload)
		crc := crc32.NewIEEE()
		crc.Write(hdr[4:])
		crc.Write(payload)
		var sum [4]byte
		binary.BigEndian.PutUint32(sum[:], crc.Sum32())
		buf.Write(sum[:])
	}
	buf.Write(pngData[ihdrEnd:])
	return buf.Bytes()
}

// latin1 keeps tEXt payloads legal: PIL writes ASCII-escaped JSON anyway.
func latin1(s string) string {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		if r < 256 {
			b = append(b, byte(r))
		} else {
			b = append(b, '?')
		}
	}
	return string(b)
}

// previewJPEG renders the preview ComfyUI streams during progress: JPEG, at
// most 512 pixels on the long side (--preview-size default).
func previewJPEG(img *image.NRGBA) []byte {
	w, h := img.Rect.Dx(), img.Rect.Dy()
	const maxSide = 512
	if w > maxSide || h > maxSide {
		if w >= h {
			h = max(1, h*maxSide/w)
			w = maxSide
		} else {
			w = max(1, w*maxSide/h)
			h = maxSide
		}
		img = resizeFrame(img, w, h, "bilinear")
	}
	rgb := image.NewRGBA(img.Rect)
	draw.Draw(rgb, rgb.Rect, &image.Uniform{color.Black}, image.Point{}, draw.Src)
	draw.Draw(rgb, rgb.Rect, img, image.Point{}, draw.Over)
	var buf bytes.Buffer
	_ = jpeg.Encode(&buf, rgb, &jpeg.Options{Quality: 95})
	return buf.Bytes()
}
