package catalogue

import (
	"slices"
	"testing"
)

// TestLastModels: an instance's last models are those of the last prompt
// sent to it (what affinity prefers it for), none before one.
func TestLastModels(t *testing.T) {
	t.Parallel()
	s, insts := fakeFleet(t, 1)
	inst := insts[0]
	if got := s.LastModels(inst); got != nil {
		t.Fatalf("before any prompt: %v", got)
	}
	s.Ran(inst, PromptNeeds([]byte(`{"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
		"2": {"class_type": "LoraLoader", "inputs": {"lora_name": "a.safetensors"}}}`)).ModelKey)
	if got, want := s.LastModels(inst), []string{"checkpoints/b.safetensors", "loras/a.safetensors"}; !slices.Equal(got, want) {
		t.Errorf("LastModels = %q, want %q", got, want)
	}
}
