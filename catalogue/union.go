package catalogue

import (
	"bytes"
	"encoding/json"
	"slices"

	"github.com/comfygate/comfygate/internal/comfyapi"
	"github.com/comfygate/comfygate/internal/jsonobj"
)

// union is the fleet's catalogue as one ComfyUI would show it, built once
// per catalogue version.
type union struct {
	version    uint64
	objectInfo []byte            // GET /object_info
	classes    map[string][]byte // GET /object_info/{class}: {class: def}
	folders    []byte            // GET /models
	files      map[string][]byte // GET /models/{folder}
}

// The union's rules, for a client that asks comfygate what the fleet can
// run:
//   - /object_info lists every node class some instance has. A class that
//     several instances define differently takes the definition of the
//     first instance in configuration order that has it, except that each
//     combo input's options (the model, image or preset lists) are the
//     union of every instance's options for it, in the first instance's
//     order and then each further instance's new ones: a client can pick
//     any model the fleet has, and comfygate routes the prompt to an
//     instance that has it;
//   - /models lists every folder in first-seen order, and /models/{folder}
//     the sorted union of every instance's files.

// ObjectInfo returns the fleet's /object_info body; ok is false while no
// instance's catalogue is known (the caller then asks an instance).
func (s *Store) ObjectInfo() (body []byte, ok bool) {
	u := s.current()
	return u.objectInfo, u.objectInfo != nil
}

// ObjectInfoClass returns the fleet's /object_info/{class} body: {} for a
// class no instance has (as ComfyUI answers). ok as for ObjectInfo.
func (s *Store) ObjectInfoClass(class string) (body []byte, ok bool) {
	u := s.current()
	if u.objectInfo == nil {
		return nil, false
	}
	if b, found := u.classes[class]; found {
		return b, true
	}
	return []byte("{}"), true
}

// Models returns the fleet's /models body; ok is false while no instance
// has listed its models.
func (s *Store) Models() (body []byte, ok bool) {
	u := s.current()
	return u.folders, u.folders != nil
}

// ModelFiles returns the fleet's /models/{folder} body; ok is false when
// no instance lists that folder (the caller asks an instance, which
// answers 404 as ComfyUI does).
func (s *Store) ModelFiles(folder string) (body []byte, ok bool) {
	u := s.current()
	b, found := u.files[folder]
	return b, found
}

// current returns the union for the current catalogue version.
func (s *Store) current() *union {
	v := s.version.Load()
	s.unionMu.Lock()
	defer s.unionMu.Unlock()
	if s.union != nil && s.union.version == v {
		return s.union
	}
	s.union = s.build(v)
	return s.union
}

// build computes the union from the catalogues, in the pool's order.
func (s *Store) build(v uint64) *union {
	u := &union{version: v, classes: map[string][]byte{}, files: map[string][]byte{}}
	var cats []*Catalogue
	s.mu.RLock()
	for _, inst := range s.pool.Instances() {
		if e := s.byInst[inst]; e != nil && e.cat != nil {
			cats = append(cats, e.cat)
		}
	}
	s.mu.RUnlock()
	if len(cats) == 0 {
		return u
	}

	// Node classes.
	var order []string
	defs := map[string][]json.RawMessage{}
	for _, c := range cats {
		for _, m := range c.classes {
			if _, seen := defs[m.Key]; !seen {
				order = append(order, m.Key)
			}
			defs[m.Key] = append(defs[m.Key], m.Val)
		}
	}
	all := make([]jsonobj.Member, 0, len(order))
	for _, class := range order {
		def := mergeClass(defs[class])
		all = append(all, jsonobj.Member{Key: class, Val: def})
		u.classes[class] = jsonobj.Append(nil, []jsonobj.Member{{Key: class, Val: def}})
	}
	u.objectInfo = jsonobj.Append(nil, all)

	// Models.
	var folders []string
	files := map[string][][]string{}
	listed := false
	for _, c := range cats {
		if c.folders == nil {
			continue
		}
		listed = true
		for _, f := range c.folders {
			if _, seen := files[f]; !seen {
				folders = append(folders, f)
			}
			files[f] = append(files[f], c.files[f])
		}
	}
	if listed {
		u.folders = marshal(folders)
		for f, lists := range files {
			u.files[f] = marshal(sortedUnion(lists...))
		}
	}
	return u
}

func marshal(v []string) []byte {
	if v == nil {
		v = []string{}
	}
	b, _ := json.Marshal(v) // strings: cannot fail
	return b
}

// mergeClass merges one class's definitions (first instance first): the
// first definition, with every combo input's options the union over all.
func mergeClass(defs []json.RawMessage) json.RawMessage {
	first := defs[0]
	same := true
	for _, d := range defs[1:] {
		same = same && bytes.Equal(d, first)
	}
	if same {
		return first
	}
	out, err := comfyapi.EditNodeInputs(first, func(section, name string, spec json.RawMessage) json.RawMessage {
		var more [][]string
		for _, d := range defs[1:] {
			if opts, ok := comboOptions(comfyapi.ParseNodeClass(d).Section(section)[name]); ok {
				more = append(more, opts)
			}
		}
		if merged, ok := mergeCombo(spec, more); ok {
			return merged
		}
		return spec
	})
	if err != nil {
		return first
	}
	return out
}

// comboOptions reads a combo input's options when they are strings:
// [[options...], {...}] (the classic form) or ["COMBO", {"options":
// [...]}] (the V3 form).
func comboOptions(spec json.RawMessage) ([]string, bool) {
	sp, ok := comfyapi.ParseInputSpec(spec)
	if !ok {
		return nil, false
	}
	return sp.StringChoices()
}

// mergeCombo returns spec with more's options appended to its own (new
// ones only, in order); ok is false when spec is no combo or nothing is new.
func mergeCombo(spec json.RawMessage, more [][]string) (json.RawMessage, bool) {
	own, ok := comboOptions(spec)
	if !ok || len(more) == 0 {
		return nil, false
	}
	merged := slices.Clone(own)
	seen := map[string]bool{}
	for _, o := range own {
		seen[o] = true
	}
	for _, l := range more {
		for _, o := range l {
			if !seen[o] {
				seen[o] = true
				merged = append(merged, o)
			}
		}
	}
	if len(merged) == len(own) {
		return nil, false
	}
	return comfyapi.WithStringChoices(spec, merged)
}
