package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/valyala/fasthttp"
)

// serveDryRun answers POST .../{workflow}?dry_run=1: the parameters were
// checked; the graph they make is checked against an instance's
// /object_info (node classes, required inputs, value types and ranges,
// choices, link outputs) without running anything.
func (s *api) serveDryRun(ctx *fasthttp.RequestCtx, wf *workflow, sub *submission, values map[string]json.RawMessage, images map[string][]byte) {
	names := map[string]string{}
	if wf.needsImage() {
		names[""] = "comfygate-dry-run.png"
	}
	for name := range images {
		names[name] = "comfygate-dry-run-" + name + ".png"
	}
	graph, err := wf.buildWith(names, sub.inputs, values)
	if err != nil {
		writeError(ctx, badRequest(errInvalidOverride, "cannot apply the inputs: %v", err))
		return
	}
	inst, info, aerr := s.objectInfo()
	if aerr != nil {
		writeError(ctx, aerr)
		return
	}
	// Inputs that receive uploaded files are checked at run time.
	fileInputs := map[string]bool{}
	if wf.needsImage() {
		fileInputs[wf.cfg.ImageNode+"."+wf.cfg.ImageInput] = true
	}
	for _, p := range wf.cfg.Parameters {
		if p.Type == ptImage {
			fileInputs[p.Node+"."+p.Input] = true
		}
	}
	if errs := checkGraph(graph, info, fileInputs); len(errs) > 0 {
		e := invalidParams(errs)
		e.typ = errInvalidWorkflow
		writeError(ctx, e)
		return
	}
	if values == nil {
		values = map[string]json.RawMessage{} // a workflow without parameters: {}
	}
	// status tells this answer from the other 200s of a submission (a job
	// that finished within the wait, an expired Idempotency-Key's job).
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{
		"status": statusValid, "valid": true, "workflow": wf.name, "comfyui_instance": inst, "parameters": values,
	})
}

// objectInfo reads /object_info from an instance selection picks.
func (s *api) objectInfo() (string, map[string]classInfo, *apiError) {
	inst, err := s.be.Select()
	if err != nil {
		return "", nil, &apiError{status: fasthttp.StatusServiceUnavailable, typ: errNoUpstream, msg: "no ComfyUI instance is available to check the workflow", retryAfter: 1}
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.MaxWait)
	defer cancel()
	status, body, err := s.be.Call(ctx, inst, "GET", "/object_info", nil, nil)
	if err != nil || status != 200 {
		return "", nil, &apiError{status: fasthttp.StatusBadGateway, typ: errNoUpstream, msg: "could not read /object_info from " + inst.Name}
	}
	info, err := comfyapi.ParseObjectInfo(body)
	if err != nil {
		return "", nil, &apiError{status: fasthttp.StatusBadGateway, typ: errNoUpstream, msg: "could not read /object_info from " + inst.Name}
	}
	return inst.Name, info, nil
}

// maxValidateBody caps POST /api/prompt/validate's body, as ComfyUI's
// own prompt bodies are capped by the proxy.
const maxValidateBody = 32 << 20

// serveValidatePrompt answers POST /api/prompt/validate: the body of a
// POST /prompt ({"prompt": graph, ...}, or the bare graph) is checked
// against an instance's /object_info like a dry run, and nothing runs.
// Inputs that name uploaded files (object_info's image_upload) are not
// checked: comfygate places files at submission, on whichever instance.
func (s *api) serveValidatePrompt(ctx *fasthttp.RequestCtx) {
	mem := s.newBodyMem()
	defer mem.release()
	body, aerr := readBody(ctx, mem, maxValidateBody, maxValidateBody)
	if aerr != nil {
		writeError(ctx, aerr)
		return
	}
	req, err := comfyapi.ParsePromptRequest(body)
	if err != nil {
		writeError(ctx, badRequest(errInvalidRequest, "body is not JSON {\"prompt\": {...}}"))
		return
	}
	graph := req.Prompt
	if kindOf(graph) != kindObject {
		graph = body // the bare graph
	}
	instName, info, aerr := s.objectInfo()
	if aerr != nil {
		writeError(ctx, aerr)
		return
	}
	if errs := checkGraph(graph, info, uploadInputs(graph, info)); len(errs) > 0 {
		e := invalidParams(errs)
		e.typ = errInvalidWorkflow
		writeError(ctx, e)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"valid": true, "comfyui_instance": instName})
}

// uploadInputs names the graph's inputs whose spec takes an uploaded file
// ({"image_upload": true} and the like in object_info).
func uploadInputs(graph json.RawMessage, info map[string]classInfo) map[string]bool {
	nodes, _ := comfyapi.ParseGraph(graph)
	out := map[string]bool{}
	for id, n := range nodes {
		ci := info[n.ClassType]
		for _, specs := range []map[string]json.RawMessage{ci.Required, ci.Optional} {
			for in, spec := range specs {
				if sp, ok := comfyapi.ParseInputSpec(spec); ok && sp.Upload {
					out[id+"."+in] = true
				}
			}
		}
	}
	return out
}

// classInfo is the part of one /object_info entry the dry run reads.
type classInfo = comfyapi.NodeClass

// checkGraph checks an API-format graph against object_info and returns
// every problem found.
func checkGraph(graph json.RawMessage, info map[string]classInfo, fileInputs map[string]bool) []fieldError {
	nodes, err := comfyapi.ParseGraph(graph)
	if err != nil {
		return []fieldError{{"graph", "not an API-format graph"}}
	}
	var errs []fieldError
	for _, id := range slices.Sorted(maps.Keys(nodes)) {
		n := nodes[id]
		field := func(in string) string { return fmt.Sprintf("node %s (%s).%s", id, n.ClassType, in) }
		ci, ok := info[n.ClassType]
		if !ok {
			errs = append(errs, fieldError{fmt.Sprintf("node %s", id), fmt.Sprintf("node class %q is not installed on the instance", n.ClassType)})
			continue
		}
		for _, in := range slices.Sorted(maps.Keys(ci.Required)) {
			if _, ok := n.Inputs[in]; !ok {
				errs = append(errs, fieldError{field(in), "required input missing"})
			}
		}
		for _, in := range slices.Sorted(maps.Keys(n.Inputs)) {
			v := n.Inputs[in]
			spec, ok := ci.Input(in)
			if !ok {
				continue // ComfyUI ignores inputs a class does not declare
			}
			if src, idx, link := comfyapi.InputLink(v); link {
				if sn, ok := nodes[src]; ok {
					if sci, ok := info[sn.ClassType]; ok && (idx < 0 || idx >= sci.Outputs) {
						errs = append(errs, fieldError{field(in), fmt.Sprintf("links to output %d of node %s (%s), which has %d outputs", idx, src, sn.ClassType, sci.Outputs)})
					}
				}
				continue
			}
			if fileInputs[id+"."+in] {
				continue
			}
			if msg := checkValue(spec, v); msg != "" {
				errs = append(errs, fieldError{field(in), msg})
			}
		}
	}
	return errs
}

// checkValue checks one input value against its object_info spec:
// [TYPE, {min, max}] or [[choices], {...}] or ["COMBO", {"options": [...]}].
func checkValue(spec, v json.RawMessage) string {
	sp, ok := comfyapi.ParseInputSpec(spec)
	if !ok {
		return ""
	}
	typ := sp.Type
	if sp.Combo {
		if !sp.HasChoice(v) {
			return fmt.Sprintf("value %s is not one of the instance's choices", strings.TrimSpace(string(v)))
		}
		return ""
	}
	switch typ {
	case "INT", "FLOAT":
		f, ok := comfyapi.Number(v)
		if !ok {
			return fmt.Sprintf("want a number for %s, got a %s", typ, kindOf(v))
		}
		if typ == "INT" && f != math.Trunc(f) {
			return fmt.Sprintf("want a whole number, got %v", f)
		}
		if sp.Min != nil && f < *sp.Min {
			return fmt.Sprintf("%v is below the minimum %v", f, *sp.Min)
		}
		if sp.Max != nil && f > *sp.Max {
			return fmt.Sprintf("%v is above the maximum %v", f, *sp.Max)
		}
	case "STRING":
		if kindOf(v) != kindString {
			return fmt.Sprintf("want a string, got a %s", kindOf(v))
		}
	case "BOOLEAN":
		if kindOf(v) != kindBool {
			return fmt.Sprintf("want true or false, got a %s", kindOf(v))
		}
	}
	return ""
}

// workflowView is one workflow in GET /api/workflows.
type workflowView struct {
	Name       string         `json:"name"`
	URL        string         `json:"url"`
	TakesImage bool           `json:"takes_image"`
	OutputNode string         `json:"output_node"`
	Schema     map[string]any `json:"schema"`
}

// serveWorkflows lists the workflows with their request bodies as JSON Schema.
func (s *api) serveWorkflows(ctx *fasthttp.RequestCtx) {
	wfs := s.cat.workflows()
	out := make([]workflowView, 0, len(wfs))
	for _, name := range slices.Sorted(maps.Keys(wfs)) {
		wf := wfs[name]
		url := routeWorkflows + name
		switch name {
		case "remove-background":
			url = routeRemoveBackground
		case "upscale-image":
			url = routeUpscaleImage
		}
		out = append(out, workflowView{Name: name, URL: url, TakesImage: wf.needsImage(), OutputNode: wf.cfg.OutputNode, Schema: wf.paramSchema()})
	}
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"workflows": out})
}

// serveOutputList answers GET /api/jobs/{id}/outputs.
func (s *api) serveOutputList(ctx *fasthttp.RequestCtx, id, scope string) {
	j := s.lockCompleted(ctx, id, scope)
	if j == nil {
		return
	}
	v := s.del.outputViewsLocked(j, isTrue(ctx.QueryArgs().Peek("base64")))
	s.eng.unlock()
	writeJSON(ctx, fasthttp.StatusOK, map[string]any{"job_id": id, "outputs": v})
}
