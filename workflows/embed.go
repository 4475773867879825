// Package workflows holds the ComfyUI API-format workflows comfygate ships
// for its async job API, embedded so the binary runs them without any file
// on disk. The configuration's workflows: section may point a name at a
// file of its own or add new names; the jobs package loads and validates both.
package workflows

import (
	"embed"
	"maps"
	"slices"

	"github.com/comfygate/comfygate/config"
)

// FS holds the shipped workflow files, one "<name>.json" per built-in name.
//
//go:embed *.json
var FS embed.FS

// Built-in workflow names.
const (
	RemoveBackground = "remove-background"
	UpscaleImage     = "upscale-image"
)

// defaults are the settings of the shipped workflows. File names the
// embedded file; config.Workflows entries override field by field.
var defaults = map[string]config.Workflow{
	// LoadImage -> WAS Node Suite "Image Rembg (Remove Background)" (u2net,
	// transparent background) -> SaveImage: an RGBA PNG.
	RemoveBackground: {
		File:       "remove-background.json",
		ImageNode:  "1",
		ImageInput: "image",
		OutputNode: "3",
		Cache:      &config.WorkflowCache{TTL: config.DefaultCacheTTL},
		Overridable: []string{
			"2.model",
			"2.alpha_matting",
			"2.post_processing",
			"2.background_color",
			"2.only_mask",
		},
	},
	// LoadImage -> UpscaleModelLoader (RealESRGAN_x4plus.pth) ->
	// ImageUpscaleWithModel -> SaveImage: a 4x PNG.
	UpscaleImage: {
		File:        "upscale-image.json",
		ImageNode:   "1",
		ImageInput:  "image",
		OutputNode:  "4",
		Cache:       &config.WorkflowCache{TTL: config.DefaultCacheTTL},
		Overridable: []string{"2.model_name"},
	},
}

// Default returns the settings of the built-in workflow name; File names a
// file in FS. ok is false when name is not built in.
func Default(name string) (w config.Workflow, ok bool) {
	w, ok = defaults[name]
	w.Overridable = slices.Clone(w.Overridable)
	if w.Cache != nil {
		c := *w.Cache
		w.Cache = &c
	}
	return w, ok
}

// Names returns the built-in workflow names, sorted.
func Names() []string { return slices.Sorted(maps.Keys(defaults)) }
