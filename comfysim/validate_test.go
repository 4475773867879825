package comfysim

import (
	"encoding/json"
	"testing"
)

func TestValidatePrompt(t *testing.T) {
	t.Parallel()
	s := startForTest(t, Options{})
	if code, _ := upload(t, s.URL()+"/upload/image", "in.png", pngBytes(t, srcImage(4, 4)), nil); code != 200 {
		t.Fatalf("upload: %d", code)
	}
	empty := `{"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}`
	save := func(from string) string {
		return `{"class_type": "SaveImage", "inputs": {"images": ["` + from + `", 0], "filename_prefix": "v"}}`
	}
	type nodeErr struct {
		id    string
		types []string
	}
	tests := []struct {
		desc     string
		body     string
		code     int
		errType  string // error.type for 400
		details  string // error.details, checked when not ""
		nodeErrs []nodeErr
	}{
		{desc: "valid", body: `{"prompt": {"1": ` + empty + `, "2": ` + save("1") + `}}`, code: 200},
		{desc: "unknown class", body: `{"prompt": {"1": {"class_type": "Nope", "inputs": {}}, "2": ` + save("1") + `}}`,
			code: 400, errType: "invalid_prompt", details: "Node ID '#1'"},
		{desc: "missing class_type", body: `{"prompt": {"1": {"inputs": {}}}}`, code: 400, errType: "invalid_prompt", details: "Node ID '#1'"},
		{desc: "no outputs", body: `{"prompt": {"1": ` + empty + `}}`, code: 400, errType: "prompt_no_outputs"},
		{desc: "empty prompt", body: `{"prompt": {}}`, code: 400, errType: "prompt_no_outputs"},
		{desc: "no prompt key", body: `{"client_id": "x"}`, code: 400, errType: "no_prompt", details: "No prompt provided"},
		{desc: "missing inputs", body: `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}, "2": ` + save("1") + `}}`,
			code: 400, errType: "prompt_outputs_failed_validation", details: "",
			nodeErrs: []nodeErr{{"1", []string{"required_input_missing", "required_input_missing", "required_input_missing"}}}},
		{desc: "link to missing node", body: `{"prompt": {"3": ` + save("99") + `}}`,
			code: 400, errType: "prompt_outputs_failed_validation", details: "Exception when validating node: '99'",
			nodeErrs: []nodeErr{{"3", []string{"exception_during_validation"}}}},
		{desc: "bad link shape", body: `{"prompt": {"1": ` + empty + `, "2": {"class_type": "SaveImage", "inputs": {"images": ["1"], "filename_prefix": "v"}}}}`,
			code: 400, errType: "prompt_outputs_failed_validation", details: "Bad linked input, must be a length-2 list of [node_id, slot_index]: images",
			nodeErrs: []nodeErr{{"2", []string{"bad_linked_input"}}}},
		{desc: "return type mismatch", body: `{"prompt": {"1": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "RealESRGAN_x4plus.pth"}}, "2": ` + save("1") + `}}`,
			code: 400, errType: "prompt_outputs_failed_validation",
			nodeErrs: []nodeErr{{"2", []string{"return_type_mismatch"}}}},
		{desc: "combo value", body: `{"prompt": {"1": ` + empty + `, "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "nope", "scale_by": 2}}, "3": ` + save("2") + `}}`,
			code: 400, errType: "prompt_outputs_failed_validation", details: "",
			nodeErrs: []nodeErr{{"2", []string{"value_not_in_list"}}}},
		{desc: "below min", body: `{"prompt": {"1": ` + empty + `, "2": {"class_type": "ImageScaleBy", "inputs": {"image": ["1", 0], "upscale_method": "area", "scale_by": 0.001}}, "3": ` + save("2") + `}}`,
			code: 400, errType: "prompt_outputs_failed_validation",
			nodeErrs: []nodeErr{{"2", []string{"value_smaller_than_min"}}}},
		{desc: "above max", body: `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 99999, "height": 8, "batch_size": 1, "color": 0}}, "2": ` + save("1") + `}}`,
			code: 400, errType: "prompt_outputs_failed_validation",
			nodeErrs: []nodeErr{{"1", []string{"value_bigger_than_max"}}}},
		{desc: "not an int", body: `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": "wide", "height": 8, "batch_size": 1, "color": 0}}, "2": ` + save("1") + `}}`,
			code: 400, errType: "prompt_outputs_failed_validation",
			nodeErrs: []nodeErr{{"1", []string{"invalid_input_type"}}}},
		{desc: "int from string", body: `{"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": "16", "height": 8, "batch_size": 1, "color": 0}}, "2": ` + save("1") + `}}`, code: 200},
		{desc: "missing image file", body: `{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}}, "2": ` + save("1") + `}}`,
			code: 400, errType: "prompt_outputs_failed_validation",
			nodeErrs: []nodeErr{{"1", []string{"custom_validation_failed"}}}},
		{desc: "uploaded image file", body: `{"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}}, "2": ` + save("1") + `}}`, code: 200},
		{desc: "one bad output of two still runs", body: `{"prompt": {"1": ` + empty + `, "2": ` + save("1") + `, "3": ` + save("9") + `}}`,
			code: 200, nodeErrs: []nodeErr{{"3", []string{"exception_during_validation"}}}},
		{desc: "cycle", body: `{"prompt": {"1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}, "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}, "3": ` + save("2") + `}}`,
			code: 400, errType: "prompt_outputs_failed_validation"},
		{desc: "partial targets", body: `{"prompt": {"1": ` + empty + `, "2": ` + save("1") + `}, "partial_execution_targets": ["1"]}`,
			code: 400, errType: "prompt_no_outputs"},
		{desc: "prompt is a number", body: `{"prompt": 5}`, code: 500},
		{desc: "malformed json", body: `{"prompt": `, code: 500},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			code, body := postJSON(t, s.URL()+"/prompt", tc.body)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %s", code, tc.code, body)
			}
			if code == 500 {
				if string(body) != body500 {
					t.Fatalf("500 body %q", body)
				}
				return
			}
			var r struct {
				Error *struct {
					Type, Message, Details string
					ExtraInfo              map[string]any `json:"extra_info"`
				} `json:"error"`
				NodeErrors map[string]struct {
					Errors []struct {
						Type string `json:"type"`
					} `json:"errors"`
					DependentOutputs []string `json:"dependent_outputs"`
					ClassType        string   `json:"class_type"`
				} `json:"node_errors"`
				PromptID string `json:"prompt_id"`
			}
			if err := json.Unmarshal(body, &r); err != nil {
				t.Fatalf("decode %s: %v", body, err)
			}
			if code == 400 {
				if r.Error == nil || r.Error.Type != tc.errType {
					t.Fatalf("error %+v, want type %s", r.Error, tc.errType)
				}
				if tc.details != "" && r.Error.Details != tc.details {
					t.Fatalf("details %q, want %q", r.Error.Details, tc.details)
				}
				if r.Error.ExtraInfo == nil {
					t.Fatalf("extra_info missing")
				}
			} else if r.PromptID == "" {
				t.Fatalf("no prompt_id in %s", body)
			}
			if len(r.NodeErrors) != len(tc.nodeErrs) && tc.nodeErrs != nil {
				t.Fatalf("node_errors %s, want %v", body, tc.nodeErrs)
			}
			for _, ne := range tc.nodeErrs {
				got, ok := r.NodeErrors[ne.id]
				if !ok {
					t.Fatalf("no node_errors[%s] in %s", ne.id, body)
				}
				var types []string
				for _, e := range got.Errors {
					types = append(types, e.Type)
				}
				if len(types) != len(ne.types) {
					t.Fatalf("node_errors[%s] types %v, want %v", ne.id, types, ne.types)
				}
				for i := range types {
					if types[i] != ne.types[i] {
						t.Fatalf("node_errors[%s] types %v, want %v", ne.id, types, ne.types)
					}
				}
				if len(got.DependentOutputs) == 0 || got.ClassType == "" {
					t.Fatalf("node_errors[%s] = %+v", ne.id, got)
				}
			}
		})
	}
}

func TestPyJSON(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   any
		want string
	}{
		{ordered{{"a", 1}, {"b", []int{1, 2}}}, `{"a": 1, "b": [1, 2]}`},
		{map[string]string{"k": "a,b: <é>"}, `{"k": "a,b: <\u00e9>"}`},
		{pyFloat(1), `1.0`},
		{pyFloat(0.5), `0.5`},
		{pyFloat(1e-5), `1e-05`},
		{"😀", `"\ud83d\ude00"`},
	} {
		if got := string(pyJSON(tc.in)); got != tc.want {
			t.Errorf("pyJSON(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
