package comfysim

import (
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"github.com/comfygate/comfygate/internal/ids"
)

type promptResponse struct {
	PromptID   string  `json:"prompt_id"`
	Number     prioNum `json:"number"`
	NodeErrors ordered `json:"node_errors"`
}

type promptErrorResponse struct {
	Error      *apiError `json:"error"`
	NodeErrors ordered   `json:"node_errors"`
}

// sensitiveExtraKeys are popped out of extra_data by 2026 servers.
var sensitiveExtraKeys = []string{"auth_token_comfy_org", "api_key_comfy_org"}

// promptRoutes are the queue's routes: /prompt, /queue, /interrupt and
// /free. Like every route type here, it is a view of its instance, whose
// mu guards the state it reads.
type promptRoutes struct{ *instance }

// historyRoutes are /history's routes.
type historyRoutes struct{ *instance }

// infoRoutes answer what the instance has and is: /object_info,
// /embeddings, /extensions, /models, /features, /users, /settings and
// /system_stats.
type infoRoutes struct{ *instance }

// postPrompt is POST /prompt.
func (in promptRoutes) postPrompt(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	s := in.s
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	req, err := parseRawObj(body)
	if err != nil {
		if !errors.Is(err, errNotObject) {
			write500(w) // json.loads raised
			return
		}
		// `"prompt" in <list or str>` is legal Python; numbers and null raise.
		switch jsonKind(body) {
		case "array", "string":
			req = &rawObj{vals: map[string]json.RawMessage{}}
		default:
			write500(w)
			return
		}
	}

	var number prioNum
	in.mu.Lock()
	if raw, ok := req.get("number"); ok {
		f, ok := pyFloatOf(decodeAny(raw))
		if !ok {
			in.mu.Unlock()
			write500(w)
			return
		}
		number = prioNum{f: f, isFloat: true}
	} else {
		n := in.number
		if raw, ok := req.get("front"); ok && truthy(decodeAny(raw)) {
			n = -n
		}
		number = prioNum{f: float64(n)}
		in.number++
	}
	in.mu.Unlock()

	rawPrompt, ok := req.get("prompt")
	if !ok {
		writeJSON(w, http.StatusBadRequest, promptErrorResponse{
			Error:      &apiError{Type: "no_prompt", Message: "No prompt provided", Details: "No prompt provided", ExtraInfo: ordered{}},
			NodeErrors: ordered{},
		})
		return
	}

	promptID := ""
	rawID, hasID := req.get("prompt_id")
	switch {
	case !hasID || !s.ver.acceptsClientID():
		promptID = newUUID()
	case s.ver.is2026():
		v := decodeAny(rawID)
		if v == nil {
			promptID = newUUID()
			break
		}
		str, isStr := v.(string)
		if !isStr || !ids.IsCanonicalUUID(str) {
			writeJSON(w, http.StatusBadRequest, promptErrorResponse{
				Error: &apiError{Type: "invalid_prompt_id", Message: "prompt_id must be a valid UUID",
					Details:   "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the server generate one",
					ExtraInfo: ordered{}},
				NodeErrors: ordered{},
			})
			return
		}
		promptID = str
	default:
		promptID = pyStr(decodeAny(rawID)) // str(json_data.get("prompt_id"))
	}

	var partial []string
	if raw, ok := req.get("partial_execution_targets"); ok && s.ver.hasPartialTargets() {
		v := decodeAny(raw)
		if v != nil {
			list, isList := v.([]any)
			if !isList {
				write500(w)
				return
			}
			partial = []string{}
			for _, x := range list {
				if xs, ok := x.(string); ok {
					partial = append(partial, xs)
				}
			}
		}
	}

	p, err := parsePrompt(rawPrompt)
	if err != nil {
		write500(w)
		return
	}
	res, err := s.validatePrompt(p, partial)
	if err != nil {
		write500(w)
		return
	}

	extra := &rawObj{vals: map[string]json.RawMessage{}}
	if raw, ok := req.get("extra_data"); ok {
		o, perr := parseRawObj(raw)
		if perr != nil {
			if _, hasClient := req.get("client_id"); hasClient || s.ver.is2026() {
				write500(w) // item assignment on a non-dict
				return
			}
			o = &rawObj{vals: map[string]json.RawMessage{}}
		}
		extra = o
	}
	if raw, ok := req.get("client_id"); ok {
		extra.set("client_id", raw)
	}
	if !res.ok {
		s.log.Warn("invalid prompt", "type", res.err.Type)
		writeJSON(w, http.StatusBadRequest, promptErrorResponse{Error: res.err, NodeErrors: res.nodeErrors})
		return
	}
	if s.ver.is2026() {
		for _, k := range sensitiveExtraKeys {
			extra.del(k)
		}
		extra.set("create_time", json.RawMessage(strconv.FormatInt(nowMS(), 10)))
	}
	item := &queueItem{number: number, id: promptID, prompt: p, extra: extra, outputs: res.outputs}
	in.mu.Lock()
	in.putLocked(item)
	in.mu.Unlock()
	s.log.Info("got prompt", "prompt_id", promptID)
	writeJSON(w, http.StatusOK, promptResponse{PromptID: promptID, Number: number, NodeErrors: res.nodeErrors})
	if n := s.opts.FailAfter; n > 0 && in.accepted.Add(1) >= int64(n) {
		in.wedged.Store(true)
	}
}

// pyFloatOf is float(x) for a decoded JSON value.
func pyFloatOf(v any) (float64, bool) {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	case bool:
		if x {
			return 1, true
		}
		return 0, true
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
		return f, err == nil
	}
	return 0, false
}

func newUUID() string { return ids.UUID() }

// getPrompt is GET /prompt.
func (in promptRoutes) getPrompt(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	in.mu.Lock()
	n := in.queueRemainingLocked()
	in.mu.Unlock()
	writeJSON(w, http.StatusOK, queueStatus{ExecInfo: execInfo{QueueRemaining: n}})
}

type queueResponse struct {
	Running [][]any `json:"queue_running"`
	Pending [][]any `json:"queue_pending"`
}

// getQueue is GET /queue: running, then pending in heap order.
func (in promptRoutes) getQueue(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	in.mu.Lock()
	resp := queueResponse{Running: [][]any{}, Pending: [][]any{}}
	if in.running != nil {
		resp.Running = append(resp.Running, in.running.tuple())
	}
	for _, it := range in.queue {
		resp.Pending = append(resp.Pending, it.tuple())
	}
	body := pyJSON(resp) // encode under the lock: tuples share live state
	in.mu.Unlock()
	writeRawJSON(w, http.StatusOK, body)
}

func writeRawJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// clearDelete parses the {"clear": bool, "delete": [ids]} body of POST
// /queue and POST /history. ok=false means Python would have raised.
func clearDelete(body []byte) (clear bool, del []string, ok bool) {
	req, err := parseRawObj(body)
	if err != nil {
		if errors.Is(err, errNotObject) && (jsonKind(body) == "array" || jsonKind(body) == "string") {
			return false, nil, true
		}
		return false, nil, false
	}
	if raw, has := req.get("clear"); has {
		clear = truthy(decodeAny(raw))
	}
	if raw, has := req.get("delete"); has {
		switch v := decodeAny(raw).(type) {
		case []any:
			for _, x := range v {
				if xs, isStr := x.(string); isStr {
					del = append(del, xs)
				}
			}
		case string:
			for _, r := range v {
				del = append(del, string(r))
			}
		default:
			return false, nil, false
		}
	}
	return clear, del, true
}

// postQueue is POST /queue.
func (in promptRoutes) postQueue(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	clear, del, ok := clearDelete(body)
	if !ok {
		write500(w)
		return
	}
	in.mu.Lock()
	if clear {
		in.wipeQueueLocked()
	}
	for _, id := range del {
		in.deletePendingLocked(id)
	}
	in.mu.Unlock()
	writeEmpty(w, http.StatusOK)
}

// postInterrupt is POST /interrupt, global or targeted.
func (in promptRoutes) postInterrupt(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var target any
	if len(strings.TrimSpace(string(body))) > 0 {
		req, err := parseRawObj(body)
		switch {
		case err == nil:
			if raw, has := req.get("prompt_id"); has {
				target = decodeAny(raw)
			}
		case errors.Is(err, errNotObject):
			write500(w) // list/str has no .get
			return
		}
		// Invalid JSON counts as {}.
	}
	in.mu.Lock()
	if truthy(target) && in.s.ver.hasTargetedInterrupt() {
		if id, isStr := target.(string); isStr && in.running != nil && in.running.id == id {
			in.interrupted = true
		}
	} else {
		in.interrupted = true
	}
	in.mu.Unlock()
	writeEmpty(w, http.StatusOK)
}

// postFree is POST /free: free_memory drops the output cache after the
// current prompt (or now, when idle).
func (in promptRoutes) postFree(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	req, err := parseRawObj(body)
	if err != nil {
		write500(w)
		return
	}
	if raw, has := req.get("free_memory"); has && truthy(decodeAny(raw)) {
		in.mu.Lock()
		if in.running == nil && len(in.queue) == 0 {
			in.cache = map[string]*cacheEntry{}
		} else {
			in.freeMemory = true
		}
		in.mu.Unlock()
	}
	writeEmpty(w, http.StatusOK)
}

// pyInt is int(str) as the history handler applies it to query values.
func pyInt(s string) (int, bool) {
	t := strings.ReplaceAll(strings.TrimSpace(s), "_", "")
	n, err := strconv.Atoi(strings.TrimPrefix(t, "+"))
	return n, err == nil
}

// getHistory is GET /history?max_items=&offset=.
func (in historyRoutes) getHistory(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	q := r.URL.Query()
	maxItems := -1
	if v, has := q["max_items"]; has {
		n, ok := pyInt(v[0])
		if !ok {
			write500(w)
			return
		}
		maxItems = n
	}
	offset := -1
	if v, has := q["offset"]; has && in.s.ver.hasHistoryOffset() {
		n, ok := pyInt(v[0])
		if !ok {
			write500(w)
			return
		}
		offset = n
	}
	in.mu.Lock()
	keys := in.history.keys
	if offset < 0 && maxItems >= 0 {
		offset = len(keys) - maxItems
	}
	out := ordered{}
	for i, k := range keys {
		if i >= offset {
			out = append(out, kv{k, in.history.entries[k]})
			if maxItems >= 0 && len(out) >= maxItems {
				break
			}
		}
	}
	body := pyJSON(out)
	in.mu.Unlock()
	writeRawJSON(w, http.StatusOK, body)
}

// getHistoryID is GET /history/{id}: {} while pending, running or unknown.
func (in historyRoutes) getHistoryID(w http.ResponseWriter, _ *http.Request, p map[string]string) {
	id := p["id"]
	in.mu.Lock()
	out := ordered{}
	if e, ok := in.history.entries[id]; ok {
		out = append(out, kv{id, e})
	}
	body := pyJSON(out)
	in.mu.Unlock()
	writeRawJSON(w, http.StatusOK, body)
}

// postHistory is POST /history {clear, delete}.
func (in historyRoutes) postHistory(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	clear, del, ok := clearDelete(body)
	if !ok {
		write500(w)
		return
	}
	in.mu.Lock()
	if clear {
		in.history.clear()
	}
	for _, id := range del {
		in.history.del(id)
	}
	in.mu.Unlock()
	writeEmpty(w, http.StatusOK)
}

// getObjectInfo is GET /object_info.
func (in infoRoutes) getObjectInfo(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	names := make([]string, 0, len(in.s.defs))
	for n := range in.s.defs {
		names = append(names, n)
	}
	sort.Strings(names)
	out := ordered{}
	for _, n := range names {
		out = append(out, kv{n, in.s.defs[n].objectInfo(in.s)})
	}
	writeJSON(w, http.StatusOK, out)
}

// getObjectInfoClass is GET /object_info/{class}; {} for unknown classes.
func (in infoRoutes) getObjectInfoClass(w http.ResponseWriter, _ *http.Request, p map[string]string) {
	out := ordered{}
	if d := in.s.defs[p["class"]]; d != nil {
		out = append(out, kv{d.name, d.objectInfo(in.s)})
	}
	writeJSON(w, http.StatusOK, out)
}

func (in infoRoutes) getEmbeddings(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	writeJSON(w, http.StatusOK, []string{})
}

func (in infoRoutes) getExtensions(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	writeJSON(w, http.StatusOK, []string{})
}

var modelFolders = []string{"checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders"}

func (in infoRoutes) getModels(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	folders := append([]string{}, modelFolders...)
	for f := range in.s.models {
		if !contains(folders, f) {
			folders = append(folders, f)
		}
	}
	writeJSON(w, http.StatusOK, folders)
}

func (in infoRoutes) getModelFolder(w http.ResponseWriter, _ *http.Request, p map[string]string) {
	folder := p["folder"]
	if _, ok := in.s.models[folder]; !ok && !contains(modelFolders, folder) {
		writeText(w, http.StatusNotFound, "404: Not Found")
		return
	}
	files := append([]string{}, in.s.models[folder]...)
	sort.Strings(files)
	writeJSON(w, http.StatusOK, files)
}

func (in infoRoutes) getFeatures(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	writeJSON(w, http.StatusOK, in.s.serverFeatures())
}

func (in infoRoutes) getUsers(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	writeJSON(w, http.StatusOK, ordered{{"storage", "server"}, {"migrated", true}})
}

func (in infoRoutes) getSettings(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	writeJSON(w, http.StatusOK, ordered{})
}

func (in infoRoutes) getSetting(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	writeJSON(w, http.StatusOK, nil)
}

func (in infoRoutes) postSettings(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	if _, ok := readBody(w, r); !ok {
		return
	}
	writeEmpty(w, http.StatusOK)
}

// getSystemStats is GET /system_stats with one plausible CUDA device.
func (in infoRoutes) getSystemStats(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
	s := in.s
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	const ramTotal = int64(67430866944)
	const vramTotal = int64(25386352640)
	ramFree := ramTotal - int64(ms.Sys) - 9_800_000_000
	vramFree := vramTotal - 1_536_000_000
	osName := "posix"
	if s.ver.is2026() {
		osName = "linux"
	}
	host, port := "127.0.0.1", "8188"
	if h, p, ok := strings.Cut(s.Addr(), ":"); ok {
		host, port = h, p
	}
	argv := []string{"main.py", "--listen", host, "--port", port,
		"--input-directory", s.inputDir, "--output-directory", s.outputDir, "--temp-directory", s.tempDir}
	if s.opts.EnableCORSHeader {
		argv = append(argv, "--enable-cors-header")
	}
	frontend, templates := "1.28.7", "0.1.95"
	if s.ver.is2026() {
		frontend, templates = "1.41.3", "0.7.25"
	}
	system := ordered{
		{"os", osName},
		{"ram_total", ramTotal},
		{"ram_free", ramFree},
		{"comfyui_version", s.ver.raw},
		{"required_frontend_version", frontend},
		{"installed_templates_version", templates},
		{"required_templates_version", templates},
		{"python_version", "3.12.10 (main, Apr  9 2025, 04:44:59) [GCC 14.2.0]"},
		{"pytorch_version", "2.8.0+cu128"},
		{"embedded_python", false},
		{"argv", argv},
	}
	device := ordered{
		{"name", "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync"},
		{"type", "cuda"},
		{"index", 0},
		{"vram_total", vramTotal},
		{"vram_free", vramFree},
		{"torch_vram_total", int64(1_610_612_736)},
		{"torch_vram_free", int64(73_400_320)},
	}
	writeJSON(w, http.StatusOK, ordered{{"system", system}, {"devices", []any{device}}})
}

var _ = os.Stat
