package comfysim

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultVersion is the ComfyUI version emulated when Options.Version is empty:
// the version the traces in shared/comfyui-traces were captured from.
const DefaultVersion = "0.3.65"

// version is an emulated ComfyUI release. The behaviour switches are:
//
//   - < 0.3.44: no /features (404), no feature_flags WS exchange, no
//     progress_state messages, no type-4 preview frames.
//   - < 0.3.45: a client-supplied prompt_id is ignored; the server mints a uuid4.
//   - < 0.3.48: partial_execution_targets is ignored.
//   - < 0.3.57: POST /interrupt ignores prompt_id (always a global interrupt).
//   - < 0.3.60: GET /history ignores offset.
//   - >= 0.4.0 ("2026 mode", e.g. "0.38.0"): the jobs API (/api/jobs...),
//     client prompt_id must be a canonical lowercase hyphenated UUID (else 400
//     invalid_prompt_id), Sec-Fetch-Site: cross-site is refused with 403,
//     unknown node classes are reported as missing_node_type, extra_data gets
//     create_time, and /system_stats reports sys.platform ("linux").
type version struct {
	major, minor, patch int
	raw                 string
}

func parseVersion(s string) (version, error) {
	raw := strings.TrimPrefix(strings.TrimSpace(s), "v")
	if raw == "" {
		raw = DefaultVersion
	}
	parts := strings.Split(raw, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return version{}, fmt.Errorf("comfysim: version %q: want MAJOR.MINOR[.PATCH]", s)
	}
	var n [3]int
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 {
			return version{}, fmt.Errorf("comfysim: version %q: part %q is not a number", s, p)
		}
		n[i] = v
	}
	return version{major: n[0], minor: n[1], patch: n[2], raw: raw}, nil
}

func (v version) atLeast(major, minor, patch int) bool {
	if v.major != major {
		return v.major > major
	}
	if v.minor != minor {
		return v.minor > minor
	}
	return v.patch >= patch
}

func (v version) hasFeatures() bool          { return v.atLeast(0, 3, 44) }
func (v version) acceptsClientID() bool      { return v.atLeast(0, 3, 45) }
func (v version) hasPartialTargets() bool    { return v.atLeast(0, 3, 48) }
func (v version) hasTargetedInterrupt() bool { return v.atLeast(0, 3, 57) }
func (v version) hasHistoryOffset() bool     { return v.atLeast(0, 3, 60) }
func (v version) is2026() bool               { return v.atLeast(0, 4, 0) }
