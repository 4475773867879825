package jobs

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/comfygate/comfygate/config"
)

// Parameter types (config.Parameter.Type).
const (
	ptInt    = "int"
	ptFloat  = "float"
	ptString = "string"
	ptBool   = "bool"
	ptImage  = "image"
	ptEnum   = "enum"
)

// fieldError is one problem with one named value of a request.
type fieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// checkParamConfig validates a workflow's parameter settings against its
// graph (the config package checked the settings on their own).
func (wf *workflow) checkParamConfig() []string {
	var bad []string
	for _, p := range wf.cfg.Parameters {
		n := wf.nodes[p.Node]
		switch p.Name {
		case keyImageBase64, keyInputs, keyWebhookURL, keyWebhookProg:
			bad = append(bad, fmt.Sprintf("parameter %q: the name is taken by the request body's own field", p.Name))
		case "image":
			if wf.needsImage() {
				bad = append(bad, fmt.Sprintf("parameter %q: the name is taken by the uploaded image (image_node); choose another", p.Name))
			}
		}
		switch {
		case n == nil:
			bad = append(bad, fmt.Sprintf("parameter %q: node %q is not in the graph", p.Name, p.Node))
			continue
		case p.Node == wf.cfg.ImageNode && p.Input == wf.cfg.ImageInput:
			bad = append(bad, fmt.Sprintf("parameter %q: %s.%s receives the uploaded image", p.Name, p.Node, p.Input))
		}
		if v, ok := n.inputs[p.Input]; ok {
			if _, link := isLink(v); link {
				bad = append(bad, fmt.Sprintf("parameter %q: node %q (%s) input %q is a link, not a value", p.Name, p.Node, n.class, p.Input))
			}
		}
		if p.Default != nil {
			b, err := json.Marshal(p.Default)
			if err != nil {
				bad = append(bad, fmt.Sprintf("parameter %q: default %v cannot be encoded", p.Name, p.Default))
			} else if _, msg := convertParam(p, b, true); msg != "" {
				bad = append(bad, fmt.Sprintf("parameter %q: default: %s", p.Name, msg))
			}
		}
		if p.Type == ptImage && p.Default != nil {
			bad = append(bad, fmt.Sprintf("parameter %q: an image parameter has no default", p.Name))
		}
	}
	return bad
}

// param returns the workflow's parameter called name.
func (wf *workflow) param(name string) (config.Parameter, bool) {
	for _, p := range wf.cfg.Parameters {
		if p.Name == name {
			return p, true
		}
	}
	return config.Parameter{}, false
}

// checkParams checks a submission's named values: every one must be a
// parameter of the workflow of the right type and range, every required
// one present. It returns the JSON values to set (defaults included) by
// parameter name, and the images by parameter name, and every problem.
//
// An image parameter may be a URL, which fetch downloads (or refuses).
func (wf *workflow) checkParams(sub *submission, maxBytes int64, fetch func(url string) ([]byte, error)) (values map[string]json.RawMessage, images map[string][]byte, errs []fieldError) {
	values = map[string]json.RawMessage{}
	images = map[string][]byte{}
	names := slices.Sorted(maps.Keys(sub.params))
	for name := range sub.files {
		if _, dup := sub.params[name]; !dup {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		if _, ok := wf.param(name); !ok {
			known := make([]string, 0, len(wf.cfg.Parameters))
			for _, p := range wf.cfg.Parameters {
				known = append(known, p.Name)
			}
			msg := "not a parameter of this workflow"
			if len(known) > 0 {
				msg += " (parameters: " + strings.Join(known, ", ") + ")"
			}
			errs = append(errs, fieldError{name, msg})
		}
	}
	for _, p := range wf.cfg.Parameters {
		raw, sent := sub.params[p.Name]
		file, sentFile := sub.files[p.Name]
		switch {
		case p.Type == ptImage && sentFile:
			if aerr := checkImage(file, maxBytes); aerr != nil {
				errs = append(errs, fieldError{p.Name, aerr.msg})
				continue
			}
			images[p.Name] = file
		case p.Type == ptImage && sent:
			var s string
			if json.Unmarshal(raw, &s) != nil {
				errs = append(errs, fieldError{p.Name, "want an image: a multipart file, a base64 string or an allowed URL"})
				continue
			}
			var img []byte
			var aerr *apiError
			if strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") {
				b, err := fetch(s)
				if err != nil {
					errs = append(errs, fieldError{p.Name, "cannot use the image URL: " + err.Error()})
					continue
				}
				img = b
			} else {
				img, aerr = decodeBase64Image(s, maxBytes)
			}
			if aerr == nil {
				aerr = checkImage(img, maxBytes)
			}
			if aerr != nil {
				errs = append(errs, fieldError{p.Name, aerr.msg})
				continue
			}
			images[p.Name] = img
		case sent:
			v, msg := convertParam(p, raw, sub.textParams)
			if msg != "" {
				errs = append(errs, fieldError{p.Name, msg})
				continue
			}
			values[p.Name] = v
		case p.Required:
			errs = append(errs, fieldError{p.Name, "required"})
		case p.Default != nil:
			values[p.Name] = paramDefault(p)
		}
	}
	return values, images, errs
}

// checkImage checks that b is an image comfygate accepts.
func checkImage(b []byte, maxBytes int64) *apiError {
	if len(b) == 0 {
		return badRequest(errMissingImage, "empty image")
	}
	if int64(len(b)) > maxBytes {
		return tooLarge(int64(len(b)), maxBytes)
	}
	_, w, h, err := sniffImage(b)
	if err != nil {
		return badRequest(errInvalidImage, "not an image: want PNG, JPEG, WebP or GIF")
	}
	if w <= 0 || h <= 0 {
		return badRequest(errInvalidImage, "the image has no pixels (%dx%d)", w, h)
	}
	return nil
}

// convertParam checks one value against its parameter and returns the
// JSON the graph gets, or a message naming the type it wants. A JSON value
// must have the parameter's type: "40" is not an int. With text, a string
// is read by the parameter's type instead, as multipart text fields (which
// arrive as JSON strings) and configured defaults are.
func convertParam(p config.Parameter, raw json.RawMessage, text bool) (json.RawMessage, string) {
	k := kindOf(raw)
	var str string
	fromText := false
	if k == kindString && p.Type != ptString && p.Type != ptEnum {
		if !text {
			return nil, fmt.Sprintf("want %s, got a string", jsonTypeName(p.Type))
		}
		_ = json.Unmarshal(raw, &str)
		fromText = true
	}
	inRange := func(f float64) string {
		if p.Min != nil && f < *p.Min {
			return fmt.Sprintf("%v is below the minimum %v", f, *p.Min)
		}
		if p.Max != nil && f > *p.Max {
			return fmt.Sprintf("%v is above the maximum %v", f, *p.Max)
		}
		return ""
	}
	switch p.Type {
	case ptInt, ptFloat:
		var f float64
		var err error
		if fromText {
			f, err = strconv.ParseFloat(strings.TrimSpace(str), 64)
		} else if k == kindNumber {
			err = json.Unmarshal(raw, &f)
		} else {
			return nil, fmt.Sprintf("want %s, got a %s", jsonTypeName(p.Type), k)
		}
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, "want " + jsonTypeName(p.Type)
		}
		if p.Type == ptInt {
			if f != math.Trunc(f) || math.Abs(f) > 1<<53 {
				return nil, fmt.Sprintf("want a whole number, got %v", f)
			}
			if msg := inRange(f); msg != "" {
				return nil, msg
			}
			return json.RawMessage(strconv.FormatInt(int64(f), 10)), ""
		}
		if msg := inRange(f); msg != "" {
			return nil, msg
		}
		return json.RawMessage(strconv.FormatFloat(f, 'g', -1, 64)), ""
	case ptBool:
		var b bool
		if fromText {
			var err error
			if b, err = strconv.ParseBool(strings.TrimSpace(str)); err != nil {
				return nil, "want true or false"
			}
		} else if k != kindBool || json.Unmarshal(raw, &b) != nil {
			return nil, fmt.Sprintf("want %s, got a %s", jsonTypeName(p.Type), k)
		}
		return json.RawMessage(strconv.FormatBool(b)), ""
	case ptString, ptEnum:
		var s string
		if k != kindString || json.Unmarshal(raw, &s) != nil {
			return nil, fmt.Sprintf("want %s, got a %s", jsonTypeName(p.Type), k)
		}
		if p.Type == ptEnum && !slices.Contains(p.Options, s) {
			return nil, fmt.Sprintf("%q is not one of %s", s, strings.Join(p.Options, ", "))
		}
		if msg := inRange(float64(utf8.RuneCountInString(s))); msg != "" && p.Type == ptString {
			return nil, "length " + msg
		}
		b, _ := json.Marshal(s)
		return b, ""
	}
	return nil, "this parameter takes an image"
}

// jsonTypeName names the JSON value a parameter type takes, for messages.
func jsonTypeName(typ string) string {
	switch typ {
	case ptInt:
		return "an integer (a JSON number)"
	case ptFloat:
		return "a number"
	case ptBool:
		return "true or false (a JSON boolean)"
	case ptString, ptEnum:
		return "a string"
	}
	return "an image"
}

// paramDefault is the parameter's configured default as the graph gets
// it, in the parameter's own type (checkParamConfig checked it converts).
func paramDefault(p config.Parameter) json.RawMessage {
	b, _ := json.Marshal(p.Default)
	v, _ := convertParam(p, b, true)
	return v
}

// paramSchema is the JSON Schema (2020-12) of a workflow's request body.
func (wf *workflow) paramSchema() map[string]any {
	props := map[string]any{}
	var required []string
	if wf.needsImage() {
		props["image_base64"] = map[string]any{"type": "string", "contentEncoding": "base64",
			"description": "the image (PNG, JPEG, WebP or GIF), base64, with or without a data: prefix; or a multipart file field \"image\""}
		required = append(required, "image_base64")
	}
	imageAlias := false
	if p, ok := wf.param("image"); ok && p.Type == ptImage && !wf.needsImage() {
		// The JSON key image_base64 fills the parameter called "image" too.
		imageAlias = true
		props["image_base64"] = map[string]any{"type": "string", "contentEncoding": "base64",
			"description": "the parameter \"image\" under the name the built-in routes use"}
	}
	in := map[string]any{}
	for _, key := range slices.Sorted(maps.Keys(wf.overridable)) {
		t := string(wf.overridable[key])
		in[key] = map[string]any{"type": t}
	}
	// An empty "inputs" is accepted even where nothing may be overridden.
	props["inputs"] = map[string]any{"type": "object", "properties": in, "additionalProperties": false,
		"description": "node_id.input overrides the workflow allows"}
	props["webhook_url"] = map[string]any{"type": "string", "format": "uri"}
	props["webhook_progress"] = map[string]any{"type": "boolean",
		"description": "also send the job's non-terminal events to the webhook (once each, no retries)"}
	for _, p := range wf.cfg.Parameters {
		s := map[string]any{}
		switch p.Type {
		case ptInt:
			s["type"] = "integer"
		case ptFloat:
			s["type"] = "number"
		case ptBool:
			s["type"] = "boolean"
		case ptString:
			s["type"] = "string"
		case ptEnum:
			s["type"] = "string"
			s["enum"] = p.Options
		case ptImage:
			s["type"] = "string"
			s["description"] = "base64 (or a data: URL), a multipart file field, or an http(s) URL from image_urls.allowed_hosts"
		}
		if p.Type == ptString {
			if p.Min != nil {
				s["minLength"] = int(*p.Min)
			}
			if p.Max != nil {
				s["maxLength"] = int(*p.Max)
			}
		} else {
			if p.Min != nil {
				s["minimum"] = *p.Min
			}
			if p.Max != nil {
				s["maximum"] = *p.Max
			}
		}
		if p.Default != nil {
			s["default"] = paramDefault(p)
		}
		if p.Description != "" {
			s["description"] = p.Description
		}
		props[p.Name] = s
		if p.Required {
			required = append(required, p.Name)
		}
	}
	schema := map[string]any{
		"$schema":    "https://json-schema.org/draft/2020-12/schema",
		"type":       "object",
		"properties": props,
	}
	if len(wf.cfg.Parameters) > 0 {
		schema["additionalProperties"] = false
	}
	if imageAlias && slices.Contains(required, "image") {
		// Either name gives the required image.
		required = slices.DeleteFunc(required, func(n string) bool { return n == "image" })
		schema["anyOf"] = []any{map[string]any{"required": []string{"image"}}, map[string]any{"required": []string{keyImageBase64}}}
	}
	if len(required) > 0 {
		schema["required"] = required
	}
	return schema
}
