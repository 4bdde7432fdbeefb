package maps

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
)

// Endpoint is one entry of the endpoints map in Go terms.
type Endpoint struct {
	IP       netip.Addr `json:"ip"`
	Ifindex  uint32     `json:"ifindex"`
	ID       uint32     `json:"id"`
	Identity uint32     `json:"identity"`
	Local    bool       `json:"local"`
	// IngressEnforced and EgressEnforced: some policy selects the pod in that direction.
	IngressEnforced bool             `json:"ingressEnforced"`
	EgressEnforced  bool             `json:"egressEnforced"`
	MAC             net.HardwareAddr `json:"mac"`
	NodeMAC         net.HardwareAddr `json:"nodeMAC"`
}

// Endpoints is a typed view of the endpoints map.
type Endpoints struct{ m *ebpf.Map }

// NewEndpoints wraps the endpoints map.
func NewEndpoints(m *ebpf.Map) *Endpoints { return &Endpoints{m: m} }

// EndpointKey builds the map key for ip.
func EndpointKey(ip netip.Addr) bpf.DatapathEndpointKey {
	var k bpf.DatapathEndpointKey
	ip = ip.Unmap()
	if ip.Is4() {
		k.Family = afInet
		a := ip.As4()
		copy(k.Ip[:], a[:])
	} else {
		k.Family = afInet6
		k.Ip = ip.As16()
	}
	return k
}

func keyAddr(k bpf.DatapathEndpointKey) netip.Addr {
	if k.Family == afInet {
		return netip.AddrFrom4([4]byte(k.Ip[:4]))
	}
	return netip.AddrFrom16(k.Ip)
}

const (
	afInet  = 2
	afInet6 = 10
	// epLocal mirrors EP_F_LOCAL.
	epLocal = 1
)

// Upsert writes ep, replacing any entry for the same IP.
func (e *Endpoints) Upsert(ep Endpoint) error {
	if len(ep.MAC) != 6 || len(ep.NodeMAC) != 6 {
		return fmt.Errorf("endpoint %s: MACs must be 6 bytes", ep.IP)
	}
	v := bpf.DatapathEndpointInfo{Ifindex: ep.Ifindex, Id: ep.ID, Identity: ep.Identity}
	if ep.Local {
		v.Flags |= epLocal
	}
	if ep.IngressEnforced {
		v.Flags |= epIngressEnforced
	}
	if ep.EgressEnforced {
		v.Flags |= epEgressEnforced
	}
	copy(v.Mac[:], ep.MAC)
	copy(v.NodeMac[:], ep.NodeMAC)
	k := EndpointKey(ep.IP)
	if err := e.m.Put(&k, &v); err != nil {
		return fmt.Errorf("write endpoint %s: %w", ep.IP, err)
	}
	return nil
}

// Delete removes the entry for ip; deleting a missing entry is not an error.
func (e *Endpoints) Delete(ip netip.Addr) error {
	k := EndpointKey(ip)
	if err := e.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint %s: %w", ip, err)
	}
	return nil
}

// Lookup returns the entry for ip and whether there is one.
func (e *Endpoints) Lookup(ip netip.Addr) (Endpoint, bool, error) {
	k := EndpointKey(ip)
	var v bpf.DatapathEndpointInfo
	if err := e.m.Lookup(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Endpoint{}, false, nil
		}
		return Endpoint{}, false, fmt.Errorf("look up endpoint %s: %w", ip, err)
	}
	return toEndpoint(k, v), true, nil
}

// List returns every entry.
func (e *Endpoints) List() ([]Endpoint, error) {
	var (
		k   bpf.DatapathEndpointKey
		v   bpf.DatapathEndpointInfo
		out []Endpoint
	)
	it := e.m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, toEndpoint(k, v))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	return out, nil
}

func toEndpoint(k bpf.DatapathEndpointKey, v bpf.DatapathEndpointInfo) Endpoint {
	return Endpoint{
		IP: keyAddr(k), Ifindex: v.Ifindex, ID: v.Id, Identity: v.Identity,
		Local:           v.Flags&epLocal != 0,
		IngressEnforced: v.Flags&epIngressEnforced != 0,
		EgressEnforced:  v.Flags&epEgressEnforced != 0,
		MAC:             net.HardwareAddr(append([]byte(nil), v.Mac[:]...)),
		NodeMAC:         net.HardwareAddr(append([]byte(nil), v.NodeMac[:]...)),
	}
}
