package proxy

// Output file references carry their instance.
//
// Why: file names are instance-local. Two instances with separate output
// folders both write demo_00001_.png, so a /view that names only
// {filename, subfolder, type} cannot say which of the two files the client
// means. A pin table (file -> instance) learned from the outputs passing
// through can only remember one of them, is lost when comfygate restarts,
// and is not shared between replicas: a client could get the other
// prompt's image. comfyui-api.md §5 item 6: encode the instance in any URL
// you hand out.
//
// How: every output or temp file reference comfygate hands to a client
// carries the instance in its subfolder, as a first path segment
// "@<instance>~<id>":
//
//	{"filename": "demo_00001_.png", "subfolder": "",      "type": "output"}
//	  -> {"filename": "demo_00001_.png", "subfolder": "@gpu-1~cdc62bcd",       "type": "output"}
//	{"filename": "demo_00001_.png", "subfolder": "faces", "type": "output"}
//	  -> {"filename": "demo_00001_.png", "subfolder": "@gpu-1~cdc62bcd/faces", "type": "output"}
//
// <instance> is the instance's name (config name, or its address) with
// every character outside [A-Za-z0-9._-] turned into '-'; <id> names its
// machine (upstream.Instance.ID, from its address; here gpu-1:8188). The name is for
// people; the id decides: a reload that gives the name to another address
// must not send an earlier reference to the new machine's file of that
// name. A token resolves to the instance with that name and id, else to
// an instance at that address under another name, else to nothing (404);
// a token without an id ("@gpu-1") resolves to nothing. The references
// rewritten are those of /history and /history/{id} outputs (every list of
// every node's output: images, gifs, video, audio, animated...), of
// /api/jobs and /api/jobs/{id} (outputs and preview_output), and of the
// WebSocket `executed` events delivered to clients. Only types "output"
// and "temp" (and "", which /view reads as output) are rewritten: uploads
// ("input") are kept fleet-unique in one place (files.go) and their names
// round-trip unchanged.
//
// What a client sees: a subfolder it passes back as it got it, which is
// all ComfyUI clients do (they build /view?filename=&subfolder=&type= from
// the reference). GET and HEAD /view decode it and ask that instance for
// the original subfolder, so the answer is always the file of the client's
// own prompt, with no table to consult, across comfygate restarts, reloads
// and replicas. A token that names no instance gets ComfyUI's answer to a
// missing file: 404, empty body.
// POST /upload/mask decodes its original_ref the same way.
//
// POST /prompt: a value "@<instance>~<id>/name.png [output]" (the web UI's way
// of loading an output as an input) names that instance's file. The
// prompt goes to that instance when it is available
// (prompts.SubmitRequest.Prefer; with outputs of several instances, the
// one holding most of them), where the value becomes "name.png [output]".
// When the prompt runs elsewhere (the instance is down or out of
// selection, or the prompt loads outputs of two instances), the prompt table
// copies the file into the other instance's output folder under
// "comfygate-copies/<instance>~<id>/" and the value names the copy
// (prompts.SubmitRequest.Files); if the copy fails the prompt fails
// validation there rather than load that instance's own file of the same
// name. A subfolder without the "@" mark is served as before: the pin
// table, then asking the instances.
//
// Limitations: a real subfolder whose name starts with "@", named directly
// by a client (not taken from a reference comfygate handed out), is taken
// for an encoded one. The history of a prompt that loads an output shows
// the value its instance got (the decoded name, or the copy's).

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/prompts"
	"github.com/comfygate/comfygate/upstream"
)

// outputRefMark starts an encoded subfolder.
const outputRefMark = '@'

// tokenIDMark separates an instance token's name from its machine id; it is
// not a byte outputToken keeps, so the last one in a token is the separator.
const tokenIDMark = '~'

// instanceToken is the token that names inst in a subfolder: its name
// (outputToken), tokenIDMark, its machine id.
func instanceToken(inst *upstream.Instance) string {
	return outputToken(inst.Name) + string(tokenIDMark) + inst.ID()
}

// outputToken returns the token that names an instance in a subfolder: its
// name with every byte outside [A-Za-z0-9._-] replaced by '-' ("-" for an
// empty name).
func outputToken(name string) string {
	if name == "" {
		return "-"
	}
	b := []byte(name)
	changed := false
	for i, c := range b {
		if !tokenByte(c) {
			b[i], changed = '-', true
		}
	}
	if !changed {
		return name
	}
	return string(b)
}

func tokenByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-'
}

// encodeSubfolder returns the subfolder the client sees for sub on the
// instance of token.
func encodeSubfolder(token, sub string) string {
	if sub == "" {
		return string(outputRefMark) + token
	}
	return string(outputRefMark) + token + "/" + sub
}

// decodeSubfolder splits an encoded subfolder into the instance token and
// the instance's own subfolder; ok=false when sub is not encoded.
func decodeSubfolder(sub string) (token, orig string, ok bool) {
	if len(sub) == 0 || sub[0] != outputRefMark {
		return "", "", false
	}
	token, orig, _ = strings.Cut(sub[1:], "/")
	return token, orig, true
}

// encodedType reports whether references of type typ are encoded.
func encodedType(typ string) bool {
	return typ == "" || typ == "output" || typ == "temp"
}

// instanceByToken returns the instance a token (instanceToken) names: the
// one with its name and machine id, else one at that machine under another
// name (a reload renamed it); one that is not leaving the pool first. nil
// when no instance is at that machine, or the token has no id.
func instanceByToken(insts []*upstream.Instance, token string) *upstream.Instance {
	k := strings.LastIndexByte(token, tokenIDMark)
	if k < 0 {
		return nil
	}
	name, id := token[:k], token[k+1:]
	var named, other *upstream.Instance
	better := func(cur, inst *upstream.Instance) bool {
		return cur == nil || cur.State().Leaving() && !inst.State().Leaving()
	}
	for _, inst := range insts {
		if inst.ID() != id {
			continue
		}
		if outputToken(inst.Name) == name {
			if better(named, inst) {
				named = inst
			}
		} else if better(other, inst) {
			other = inst
		}
	}
	if named != nil {
		return named
	}
	return other
}

// subfolderEncoder hands out the file references of type output/temp of
// the instance of token with the instance in their subfolder.
func subfolderEncoder(token string) comfyapi.SubfolderEdit {
	return func(ref comfyapi.FileRef) (string, bool) {
		if !encodedType(ref.Type) {
			return "", false
		}
		return encodeSubfolder(token, ref.Subfolder), true
	}
}

// encodeFileRef rewrites the subfolder of one {filename, subfolder, type}
// object of type output/temp; other values are returned unchanged
// (changed=false).
func encodeFileRef(token string, raw json.RawMessage) (json.RawMessage, bool) {
	return comfyapi.EditFileRef(raw, subfolderEncoder(token))
}

// encodeOutputs rewrites an outputs object ({node: {kind: [refs]}}) of the
// instance of token.
func encodeOutputs(token string, raw json.RawMessage) json.RawMessage {
	return comfyapi.EditOutputs(raw, subfolderEncoder(token))
}

// encodeExecutedFrame rewrites the file references of an `executed` text
// frame ({"type": "executed", "data": {"node", "output": {...}, ...}}) of
// the instance of token. Anything else comes back unchanged.
func encodeExecutedFrame(token string, frame []byte) []byte {
	return comfyapi.EditExecutedFrame(frame, subfolderEncoder(token))
}

// encodedOutputPath decodes a prompt input that loads an output or temp
// file through an encoded subfolder ("@<instance>~<id>/sub/x.png [output]"),
// when the token names exactly one instance of insts: that instance and
// the value as it names the file ("sub/x.png [output]").
func encodedOutputPath(insts []*upstream.Instance, s string) (*upstream.Instance, string, bool) {
	if len(s) == 0 || s[0] != outputRefMark || !(strings.HasSuffix(s, " [output]") || strings.HasSuffix(s, " [temp]")) {
		return nil, s, false
	}
	token, rest, found := strings.Cut(s[1:], "/")
	if !found || rest == "" {
		return nil, s, false
	}
	inst := instanceByToken(insts, token)
	if inst == nil {
		return nil, s, false
	}
	return inst, rest, true
}

// promptFiles finds, in a prompt graph ({node: {"inputs": {...}}}), the
// string inputs that name an output through an encoded subfolder, and
// returns them mapped to the file they mean, with the instance that holds
// most of them (ties: the first named), nil when there are none.
func promptFiles(insts []*upstream.Instance, prompt json.RawMessage) (map[string]prompts.InstanceFile, *upstream.Instance) {
	if !bytes.Contains(prompt, []byte{'"', outputRefMark}) {
		return nil, nil
	}
	var files map[string]prompts.InstanceFile
	var order []*upstream.Instance
	count := map[*upstream.Instance]int{}
	_, _, _ = comfyapi.EditGraphInputs(prompt, func(_, _ string, val json.RawMessage) (json.RawMessage, error) {
		s, ok := comfyapi.String(val)
		if !ok {
			return nil, nil
		}
		if _, seen := files[s]; seen {
			return nil, nil
		}
		inst, d, ok := encodedOutputPath(insts, s)
		if !ok {
			return nil, nil
		}
		if files == nil {
			files = map[string]prompts.InstanceFile{}
		}
		files[s] = prompts.InstanceFile{Instance: inst, Value: d}
		if count[inst] == 0 {
			order = append(order, inst)
		}
		count[inst]++
		return nil, nil
	})
	var prefer *upstream.Instance
	for _, inst := range order {
		if prefer == nil || count[inst] > count[prefer] {
			prefer = inst
		}
	}
	return files, prefer
}
