// Package comfysim is a simulated ComfyUI: a Go HTTP + WebSocket server that
// speaks ComfyUI's real protocol (as captured in shared/comfyui-traces from
// ComfyUI 0.3.65) for model-free workflows, so that a proxy, an SDK or
// ComfyUI's own websocket example cannot tell it from the real server. Every
// integration test, the demo command and the benchmarks run against it.
//
// It owns: the routes under both /x and /api/x (prompt, queue, interrupt,
// history, view, upload/image, upload/mask, system_stats, object_info,
// embeddings, models, extensions, features, free, settings, users, userdata
// (userdata.go), the 2026 jobs API, /ws); graph validation with ComfyUI's
// error shapes; a real single-worker queue; real image execution; per-node
// output caching; the
// WebSocket message order and routing rules; failure injection (Kill,
// Restart, SetHang, SetFail500, SetFrozen, FailAfter) for fault tests, and
// what a fault test counts (Runs: how often each prompt id ran to success;
// Queue; Up; SocketIDs: the clientIds with a socket registered); and
// SetPaused, which holds the queue so tests can look at it
// without racing the worker. Tests start it with internal/testkit.Sim.
//
// # Parts
//
// A Server is the process: its options, start, Kill, Restart, Close and
// the fault controls (SetHang, SetFail500, SetFrozen, SetPaused), with
// parts that outlive a process lifetime: its directories (fileDirs), what
// ran (runLog: Runs, RunsByExtra, PromptsExecuted), the models it holds
// loaded (modelMemory) and the user directory (userStore). One process
// lifetime is an instance (Kill drops it): its queue (promptQueue) and
// worker, history, node cache and WebSocket clients (wsClients), all under
// the instance's one lock, as ComfyUI's server holds them. Its routes are
// grouped by what they serve, each a view of the instance: promptRoutes
// (/prompt, /queue, /interrupt, /free), historyRoutes, jobRoutes (the
// jobs API), fileRoutes (uploads, /view), userdataRoutes, infoRoutes
// (/object_info, /models, /system_stats and the like) and socketRoutes
// (/ws).
//
// # Nodes
//
// EmptyImage, LoadImage, SaveImage (files prefix_00001_.png in the output
// dir, with the prompt embedded as PNG text), PreviewImage (temp dir),
// ImageInvert, ImageScale, ImageScaleBy, ImageBlur, UpscaleModelLoader +
// ImageUpscaleWithModel (the factor comes from the model name: "4x-..." or
// "RealESRGAN_x4plus" -> 4, "2x..." or "..._x2plus" -> 2, otherwise 4),
// SaveImageWebsocket (binary frames), VideoHelperSuite's VHS_VideoCombine
// (an animated GIF reported under "gifs", the only format offered) and the WAS Node Suite's
// "Image Rembg (Remove Background)" (RembgClass), which flood-fills the
// background from the borders by colour distance and outputs RGBA with a
// transparent background. All of the WAS node's inputs are required, as in
// WAS; a minimal valid node is
//
//	{"class_type": "Image Rembg (Remove Background)", "inputs": {
//	  "images": ["1", 0], "transparency": true, "model": "u2net",
//	  "post_processing": false, "only_mask": false, "alpha_matting": false,
//	  "alpha_matting_foreground_threshold": 240,
//	  "alpha_matting_background_threshold": 10,
//	  "alpha_matting_erode_size": 10, "background_color": "none"}}
//
// Options.Delay is the run time of each image-processing node; the heavy
// nodes (upscale with model, background removal) spread it over
// Options.Steps progress ticks, each with a binary preview (type 1 JPEG, or
// type 4 with metadata for sockets that sent feature_flags with
// supports_preview_metadata).
//
// # Versions
//
// Options.Version selects the emulated release (default "0.3.65"):
// before 0.3.44 there is no /features, no feature_flags exchange, no
// progress_state and no type-4 preview; before 0.3.45 a client prompt_id is
// ignored and the server mints one; before 0.3.48 partial_execution_targets
// is ignored; before 0.3.57 /interrupt is always global; before 0.3.60
// /history ignores offset. 0.4.0 and later (e.g. "0.38.0") is "2026 mode":
// the jobs API, canonical-lowercase-UUID-only prompt_id (else 400
// invalid_prompt_id), 403 for Sec-Fetch-Site: cross-site, missing_node_type
// for unknown classes, create_time in extra_data.
//
// # Known deviations
//
// /view?preview=webp answers a JPEG (the standard library has no WebP
// encoder). Host names in the origin check are not resolved: only IP
// literals and localhost count as loopback. A socket whose send buffer
// (4096 frames) overflows is dropped instead of stalling everyone. Python's
// set iteration order (which input's error comes first) is replaced by
// sorted order.
package comfysim
