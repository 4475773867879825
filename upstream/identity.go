package upstream

// Which machine an instance is. A name is what the configuration calls an
// instance, and a reload may give it to another address; files and prompts
// live on the machine. Anything that remembers where a file is (the file
// pins, the output references handed to clients, the folders of copies)
// names the machine by Endpoint or ID, so that a reference made before
// the address changed never reaches the new machine's file of that name.

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"strings"
)

// idLen is the number of hex digits of an ID: 32 bits, ample to tell the
// few endpoints of one fleet apart.
const idLen = 8

// Endpoint is the instance's address as host:port with the host in lower
// case (config.Instance.Endpoint): equal for two instances at one ComfyUI,
// whatever their names.
func (i *Instance) Endpoint() string {
	host, port, err := net.SplitHostPort(i.Addr)
	if err != nil {
		return strings.ToLower(i.Addr)
	}
	return net.JoinHostPort(strings.ToLower(host), port)
}

// ID is a short identifier of the instance's machine: idLen hex digits of
// the SHA-256 of its Endpoint. It is the same across restarts and replicas
// of comfygate and under any name, and changes when the address does.
func (i *Instance) ID() string {
	if i.id != "" {
		return i.id
	}
	return endpointID(i.Endpoint())
}

func endpointID(endpoint string) string {
	sum := sha256.Sum256([]byte(endpoint))
	return hex.EncodeToString(sum[:idLen/2])
}

// SameMachine reports whether a and b are at one endpoint.
func SameMachine(a, b *Instance) bool {
	return a != nil && b != nil && (a == b || a.Endpoint() == b.Endpoint())
}

// ByEndpoint returns the instance of insts at endpoint, one not leaving
// the pool first; nil when none is.
func ByEndpoint(insts []*Instance, endpoint string) *Instance {
	var leaving *Instance
	for _, inst := range insts {
		if inst.Endpoint() != endpoint {
			continue
		}
		if !inst.state.Leaving() {
			return inst
		}
		if leaving == nil {
			leaving = inst
		}
	}
	return leaving
}
