package comfyapi

import (
	"encoding/json"
	"strconv"
	"strings"
)

// Version is the leading major.minor.patch of a comfyui_version.
type Version struct{ Major, Minor, Patch int }

// Versions that introduced protocol features comfygate relies on.
var (
	// VersionFeatures added GET /features (v0.3.44, July 2025); older
	// servers answer 404.
	VersionFeatures = Version{0, 3, 44}
	// VersionClientPromptID accepts a client-supplied prompt_id in POST
	// /prompt (PR #8189, first released in v0.3.45); older servers ignore
	// it and mint their own.
	VersionClientPromptID = Version{0, 3, 45}
	// VersionTargetedInterrupt honours POST /interrupt {"prompt_id"}
	// (PR #9607, v0.3.57); older servers interrupt whatever runs.
	VersionTargetedInterrupt = Version{0, 3, 57}
)

// String formats v as "major.minor.patch".
func (v Version) String() string {
	return strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) + "." + strconv.Itoa(v.Patch)
}

// Less reports whether v is older than w.
func (v Version) Less(w Version) bool {
	if v.Major != w.Major {
		return v.Major < w.Major
	}
	if v.Minor != w.Minor {
		return v.Minor < w.Minor
	}
	return v.Patch < w.Patch
}

// ParseVersion reads the leading major.minor.patch of a comfyui_version as
// /system_stats reports it: "0.3.64" (releases), "v0.2.2-50-gabc1234"
// (2024's git describe), "0.38.0+local" (a local build). Missing parts are
// 0 ("0.3" is 0.3.0); anything after the numbers is ignored. ok is false
// when the string does not start with a number (after an optional "v").
func ParseVersion(s string) (v Version, ok bool) {
	s = strings.TrimSpace(s)
	if len(s) > 0 && (s[0] == 'v' || s[0] == 'V') {
		s = s[1:]
	}
	parts := [3]*int{&v.Major, &v.Minor, &v.Patch}
	for k, p := range parts {
		n := 0
		for n < len(s) && s[n] >= '0' && s[n] <= '9' {
			n++
		}
		if n == 0 {
			return v, k > 0
		}
		x, err := strconv.Atoi(s[:n])
		if err != nil { // more digits than an int holds
			return Version{}, false
		}
		*p = x
		s = s[n:]
		if !strings.HasPrefix(s, ".") {
			return v, true
		}
		s = s[1:]
	}
	return v, true
}

// AtLeast reports whether the comfyui_version s is min or newer. An empty
// or unparsable version counts as recent: comfygate assumes current
// ComfyUI until an instance says otherwise.
func AtLeast(s string, min Version) bool {
	v, ok := ParseVersion(s)
	return !ok || !v.Less(min)
}

// SupportsClientPromptID reports whether the comfyui_version s accepts a
// client-supplied prompt_id (v0.3.45+).
func SupportsClientPromptID(s string) bool { return AtLeast(s, VersionClientPromptID) }

// SupportsTargetedInterrupt reports whether the comfyui_version s honours
// POST /interrupt with a prompt_id (v0.3.57+).
func SupportsTargetedInterrupt(s string) bool { return AtLeast(s, VersionTargetedInterrupt) }

// SystemStatsVersion returns system.comfyui_version of a GET /system_stats
// answer ({"system": {"os", "comfyui_version", ...}, "devices": [...]};
// comfyui_version exists since 2024). "" when the answer has none or it
// is not a string: an older or odd instance's version stays unknown.
func SystemStatsVersion(body []byte) string {
	if !isObject(body) {
		return ""
	}
	var m, sys map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil || !isObject(m["system"]) || json.Unmarshal(m["system"], &sys) != nil {
		return ""
	}
	v, _ := String(sys["comfyui_version"])
	return v
}
