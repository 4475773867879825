package catalogue

import (
	"encoding/json"
	"github.com/comfygate/comfygate/internal/comfyapi"
	"slices"
	"strings"
)

// modelInputs maps the input names through which ComfyUI's loaders (and
// the custom nodes that follow their naming) name a model file to the
// model folders (/models/{folder}) the file may be in. A value is present
// on an instance when one of the folders lists it. Folders an instance
// does not list at all are not judged (the instance's own validation is).
var modelInputs = map[string][]string{
	"ckpt_name":          {"checkpoints"},
	"lora_name":          {"loras"},
	"vae_name":           {"vae"},
	"control_net_name":   {"controlnet"},
	"unet_name":          {"diffusion_models", "unet"},
	"clip_name":          {"text_encoders", "clip"},
	"clip_name1":         {"text_encoders", "clip"},
	"clip_name2":         {"text_encoders", "clip"},
	"clip_name3":         {"text_encoders", "clip"},
	"clip_name4":         {"text_encoders", "clip"},
	"clip_vision_name":   {"clip_vision"},
	"style_model_name":   {"style_models"},
	"gligen_name":        {"gligen"},
	"hypernetwork_name":  {"hypernetworks"},
	"upscale_model_name": {"upscale_models"},
	"model_name":         {"upscale_models", "checkpoints", "diffusion_models"},
	"audio_encoder_name": {"audio_encoders"},
	"photomaker_name":    {"photomaker"},
}

// ModelFolders returns the folders a model input of that name names a file
// in, or nil when the input does not name a model.
func ModelFolders(input string) []string { return modelInputs[input] }

// NodeNeed is a node class a prompt uses.
type NodeNeed struct {
	NodeID, Class string
}

// ModelNeed is a model file a prompt loads.
type ModelNeed struct {
	NodeID, Class, Input string
	// Value is the file as the prompt names it ("sd15/v1-5.safetensors").
	Value string
	// Folders it may be in.
	Folders []string
}

// Needs is what a prompt needs of the instance that runs it.
type Needs struct {
	Nodes  []NodeNeed
	Models []ModelNeed
	// ModelKey names the set of model files (sorted, unique), for
	// affinity: "" when the prompt loads none.
	ModelKey string
}

// Empty reports a prompt that names nothing to check.
func (n Needs) Empty() bool { return len(n.Nodes) == 0 && len(n.Models) == 0 }

// PromptNeeds reads the node classes and model files a prompt graph (the
// "prompt" of a POST /prompt body, API format) names, ordered by node id.
// A graph it cannot read needs nothing: the instance's own validation
// answers it in ComfyUI's words.
func PromptNeeds(graph json.RawMessage) Needs {
	nodes, err := comfyapi.ParseGraph(graph)
	if err != nil {
		return Needs{}
	}
	ids := make([]string, 0, len(nodes))
	for id := range nodes {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, compareNodeIDs)
	var n Needs
	seenClass := map[string]bool{}
	var keys []string
	for _, id := range ids {
		nd := nodes[id]
		class := nd.ClassType
		if class == "" {
			continue
		}
		if !seenClass[class] {
			seenClass[class] = true
			n.Nodes = append(n.Nodes, NodeNeed{NodeID: id, Class: class})
		}
		inputs := make([]string, 0, len(nd.Inputs))
		for k := range nd.Inputs {
			inputs = append(inputs, k)
		}
		slices.Sort(inputs)
		for _, in := range inputs {
			folders := modelInputs[in]
			if folders == nil {
				continue
			}
			v, _ := comfyapi.String(nd.Inputs[in])
			if v == "" {
				continue // a link to another node's output, or not a name
			}
			n.Models = append(n.Models, ModelNeed{NodeID: id, Class: class, Input: in, Value: v, Folders: folders})
			keys = append(keys, folders[0]+"/"+normalize(v))
		}
	}
	slices.Sort(keys)
	n.ModelKey = strings.Join(slices.Compact(keys), "\n")
	return n
}

// compareNodeIDs orders node ids numerically when both are numbers
// ("2" before "10"), else as text.
func compareNodeIDs(a, b string) int {
	if len(a) != len(b) && allDigits(a) && allDigits(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// normalize makes a model path comparable across operating systems: a
// Windows instance lists "sd15\\x.safetensors" for what a Linux one lists
// as "sd15/x.safetensors".
func normalize(p string) string { return strings.ReplaceAll(p, "\\", "/") }
