package proxy

// Fleet-aware routing of prompts (catalogue, labels, model affinity), the
// fleet-wide catalogue answers, and the admin routes (drain, undrain,
// reload).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/comfygate/comfygate/metrics"
	"net/url"
	"strings"
	"time"

	"github.com/comfygate/comfygate/catalogue"
	"github.com/comfygate/comfygate/config"
	"github.com/comfygate/comfygate/internal/jsonobj"
	"github.com/comfygate/comfygate/placement"
	"github.com/comfygate/comfygate/upstream"
	"github.com/valyala/fasthttp"
)

// fleetRoutes places prompts over the fleet (placement policy, labels),
// answers the catalogue routes from the fleet's catalogue, and serves the
// admin routes.
type fleetRoutes struct {
	pool   *upstream.Pool
	m      *metrics.Metrics  // may be nil
	cat    *catalogue.Store  // may be nil
	policy *placement.Policy // where prompts may and had better run
	reload Reloader          // may be nil
	dash   *dashboard        // told when an instance is drained
}

// poolHeader names the labels a request's prompt must run under:
// "gpu=a100,pool=flux", or a bare value meaning pool=<value>.
const poolHeader = "X-Comfygate-Pool"

// Reloader re-reads the configuration and applies it while everything
// runs (main wires it; nil: POST /admin/reload answers 501).
type Reloader func(ctx context.Context) (ReloadResult, error)

// ReloadResult is what a reload changed.
type ReloadResult struct {
	Added   []string `json:"added"`
	Removed []string `json:"removed"`
	Changed []string `json:"changed"`
	// Restart lists changed keys that take effect only at the next start.
	Restart []string `json:"restart_needed"`
}

// placement is where a prompt may go.
// place decides where a prompt with graph may run, given the labels the
// request asks for (placement.Policy, the policy the job API uses too).
// It writes the 400 itself and returns ok false when no instance can run
// it.
func (s *fleetRoutes) place(ctx *fasthttp.RequestCtx, graph json.RawMessage) (placement.Decision, bool) {
	labels, err := upstream.ParseLabels(string(ctx.Request.Header.Peek(poolHeader)))
	if err != nil {
		writeComfyError(ctx, fasthttp.StatusBadRequest, "invalid_prompt", "Invalid "+poolHeader+" header", err.Error())
		return placement.Decision{}, false
	}
	d, refused := s.policy.Place(placement.Request{Graph: graph, Labels: labels})
	switch {
	case refused == nil:
		return d, true
	case refused.NoLabels:
		writeComfyError(ctx, fasthttp.StatusBadRequest, "invalid_prompt",
			"No instance carries the labels "+placement.FormatLabels(labels),
			"the "+poolHeader+" header asks for labels that no configured instance has")
	default:
		s.m.PromptUnrunnable()
		writeUnrunnable(ctx, refused.Verdict, labels)
	}
	return d, false
}

// setRouting is Server.SetRouting.
func (s *fleetRoutes) setRouting(r config.Routing) {
	s.policy.SetMargin(r.AffinityMargin)
	if s.cat != nil {
		s.cat.SetInterval(r.CatalogueInterval)
	}
}

// writeUnrunnable answers 400 in ComfyUI's error shape for a prompt no
// instance can run: the message says what is missing, details where;
// node_errors marks the nodes whose model no instance has (value_not_in_list,
// as ComfyUI marks a model it does not have), so the web UI highlights them.
func writeUnrunnable(ctx *fasthttp.RequestCtx, v catalogue.Verdict, labels map[string]string) {
	msg := "No instance can run this prompt"
	if len(labels) > 0 {
		msg += " among those labelled " + placement.FormatLabels(labels)
	}
	if len(v.Nowhere) > 0 {
		msg += ": no instance has " + strings.Join(v.Nowhere, ", ")
	} else {
		msg += ": no single instance has every node class and model it needs"
	}
	var details []string
	for _, m := range v.Missing {
		details = append(details, m.Instance+" lacks "+strings.Join(m.Lacks, ", "))
	}
	b := []byte(`{"error": {"type": "prompt_no_instance", "message": `)
	b = append(b, quoteJSON(msg)...)
	b = append(b, `, "details": `...)
	b = append(b, quoteJSON(strings.Join(details, "; "))...)
	b = append(b, `, "extra_info": {}}, "node_errors": `...)
	var nodes []jsonobj.Member
	for _, m := range v.NowhereModels {
		ne, _ := json.Marshal(map[string]any{
			"errors": []map[string]any{{
				"type":    "value_not_in_list",
				"message": "Value not in list",
				"details": fmt.Sprintf("%s: '%s' not in any instance's %s", m.Input, m.Value, m.Folders[0]),
				"extra_info": map[string]any{
					"input_name":     m.Input,
					"received_value": m.Value,
				},
			}},
			"dependent_outputs": []string{},
			"class_type":        m.Class,
		})
		found := false
		for _, n := range nodes {
			found = found || n.Key == m.NodeID
		}
		if !found {
			nodes = append(nodes, jsonobj.Member{Key: m.NodeID, Val: ne})
		}
	}
	b = jsonobj.Append(b, nodes)
	b = append(b, '}')
	ctx.Response.Reset()
	ctx.SetStatusCode(fasthttp.StatusBadRequest)
	ctx.SetContentType(jsonContentType)
	ctx.SetBody(b)
}

// serveUnion answers /object_info, /object_info/{class}, /models and
// /models/{folder} from the fleet's catalogue (catalogue/union.go says
// which definition wins); false when the catalogue cannot answer (not read
// yet, or a folder no instance lists): the request then goes to an instance.
func (s *fleetRoutes) serveUnion(ctx *fasthttp.RequestCtx, p []byte) bool {
	if s.cat == nil {
		return false
	}
	var body []byte
	ok := false
	switch path := string(p); {
	case path == "/object_info":
		body, ok = s.cat.ObjectInfo()
	case strings.HasPrefix(path, "/object_info/"):
		if class, good := unescapeSegment(p[len("/object_info/"):]); good {
			body, ok = s.cat.ObjectInfoClass(class)
		}
	case path == "/models":
		body, ok = s.cat.Models()
	case strings.HasPrefix(path, "/models/"):
		if folder, good := unescapeSegment(p[len("/models/"):]); good {
			body, ok = s.cat.ModelFiles(folder)
		}
	}
	if !ok {
		return false
	}
	ctx.SetContentType(jsonContentType)
	ctx.SetBody(body)
	return true
}

// Admin routes. They live under /admin/ and nowhere else, are matched in
// serveAdmin only, and are dispatched before any ComfyUI route, so one
// check at their single entry point (the admin key, when API keys are on)
// guards all of them.
const (
	routeAdminDrain   = "/admin/instances/{name}/drain"
	routeAdminUndrain = "/admin/instances/{name}/undrain"
	routeAdminReload  = "/admin/reload"
	routeAdminOther   = "/admin/other"
)

var adminPrefix = []byte("/admin/")

// serveAdmin serves the admin routes under /admin/ and returns the route
// template. With API keys on, only an admin key may use them (admit has
// already refused a request without a valid key).
func (s *fleetRoutes) serveAdmin(ctx *fasthttp.RequestCtx, raw []byte) string {
	if k := requestKey(ctx); k != nil && !k.Admin {
		authRefused(s.m, "forbidden")
		writeJSONError(ctx, fasthttp.StatusForbidden, "forbidden", "the admin routes need an admin key")
		return routeAuth
	}
	rest := string(raw[len(adminPrefix):])
	if rest == "reload" {
		if !ctx.IsPost() {
			writeJSONError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "POST /admin/reload")
			return routeAdminReload
		}
		s.adminReload(ctx)
		return routeAdminReload
	}
	if r, ok := strings.CutPrefix(rest, "instances/"); ok {
		name, action, _ := strings.Cut(r, "/")
		name, err := url.PathUnescape(name)
		if err == nil && name != "" && (action == "drain" || action == "undrain") {
			route := routeAdminDrain
			if action == "undrain" {
				route = routeAdminUndrain
			}
			if !ctx.IsPost() {
				writeJSONError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "POST /admin/instances/{name}/"+action)
				return route
			}
			s.adminDrain(ctx, name, action == "drain")
			return route
		}
	}
	writeJSONError(ctx, fasthttp.StatusNotFound, "not_found", "unknown admin route; see docs/operations.md for the admin routes")
	return routeAdminOther
}

// drainAnswer is the answer of drain and undrain.
type drainAnswer struct {
	Instance   string `json:"instance"`
	Draining   bool   `json:"draining"`
	Drained    bool   `json:"drained"` // nothing left to finish: safe to stop
	Inflight   int64  `json:"inflight"`
	QueueDepth int64  `json:"queue_depth"`
}

// adminDrain drains or undrains one instance. ?move=1 (move its pending
// prompts elsewhere) is refused: moving a prompt off a live instance
// exactly once needs the prompt lifecycle to offer a safe move (delete
// there, confirmed, then resubmit), which it does not offer; the queue
// finishes where it is.
func (s *fleetRoutes) adminDrain(ctx *fasthttp.RequestCtx, name string, drain bool) {
	if drain && len(ctx.QueryArgs().Peek("move")) > 0 && string(ctx.QueryArgs().Peek("move")) != "0" {
		writeJSONError(ctx, fasthttp.StatusNotImplemented, "not_implemented",
			"move=1 is not supported: a drained instance finishes its own queue; drain without move and wait for drained: true")
		return
	}
	var inst *upstream.Instance
	var err error
	if drain {
		inst, err = s.pool.Fleet().Drain(name)
	} else {
		inst, err = s.pool.Fleet().Undrain(name)
	}
	if err != nil {
		writeJSONError(ctx, fasthttp.StatusNotFound, "unknown_instance", fmt.Sprintf("no instance is named %q", name))
		return
	}
	setInstance(ctx, inst)
	s.dash.pokeDashboard()
	st := inst.Status()
	b, _ := json.Marshal(drainAnswer{Instance: st.Name, Draining: st.Draining, Drained: st.Drained,
		Inflight: st.Inflight, QueueDepth: st.QueueDepth})
	ctx.SetContentType(jsonContentType)
	ctx.SetBody(b)
}

// adminReload re-reads the configuration (as SIGHUP does).
func (s *fleetRoutes) adminReload(ctx *fasthttp.RequestCtx) {
	if s.reload == nil {
		writeJSONError(ctx, fasthttp.StatusNotImplemented, "not_implemented", "this comfygate was started without a configuration file to reload")
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := s.reload(rctx)
	if err != nil {
		var ce interface{ Unwrap() []error }
		msg := err.Error()
		if errors.As(err, &ce) {
			msg = strings.ReplaceAll(msg, "\n", "; ")
		}
		writeJSONError(ctx, fasthttp.StatusBadRequest, "invalid_config", "configuration refused, the running one stays: "+msg)
		return
	}
	b, _ := json.Marshal(res)
	ctx.SetContentType(jsonContentType)
	ctx.SetBody(b)
}
