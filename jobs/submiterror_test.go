package jobs

import "testing"

func TestSubmitErrorListsEveryNodeErrorInOrder(t *testing.T) {
	body := []byte(`{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": ""},
		"node_errors": {
			"9": {"errors": [{"message": "Value not in list", "details": "image: 'x.png' not in []"}], "class_type": "LoadImage"},
			"10": {"errors": [{"message": "Required input is missing", "details": "images"}, {"message": "Bad", "details": ""}], "class_type": "SaveImage"}}}`)
	want := "Prompt outputs failed validation" +
		"; node 10 (SaveImage): Required input is missing: images" +
		"; node 10 (SaveImage): Bad" +
		"; node 9 (LoadImage): Value not in list: image: 'x.png' not in []"
	for range 5 { // map order varies between runs; the message must not
		if got := submitError(400, body); got != want {
			t.Fatalf("submitError:\n got %q\nwant %q", got, want)
		}
	}
}
