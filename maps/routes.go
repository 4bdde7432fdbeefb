package maps

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
)

// lpmPrefixBase mirrors LPM_PREFIX_BASE: the family byte and padding are matched whole.
const lpmPrefixBase = 32

// LPMKey builds the key of an LPM map for p.
func LPMKey(p netip.Prefix) bpf.DatapathLpmKey {
	p = p.Masked()
	k := EndpointKey(p.Addr())
	return bpf.DatapathLpmKey{Prefixlen: uint32(lpmPrefixBase + p.Bits()), Family: k.Family, Ip: k.Ip}
}

func lpmPrefix(k bpf.DatapathLpmKey) netip.Prefix {
	ip := keyAddr(bpf.DatapathEndpointKey{Family: k.Family, Ip: k.Ip})
	return netip.PrefixFrom(ip, int(k.Prefixlen)-lpmPrefixBase)
}

// Mode is how pod traffic crosses between nodes (enum tunnel_mode in C).
type Mode uint8

// The modes, with the names people write in configs and lab files.
const (
	ModeVXLAN  Mode = Mode(bpf.DatapathTunnelModeMODE_VXLAN)
	ModeNative Mode = Mode(bpf.DatapathTunnelModeMODE_NATIVE)
	ModeIPIP   Mode = Mode(bpf.DatapathTunnelModeMODE_IPIP)
)

var modeNames = map[Mode]string{ModeVXLAN: "vxlan", ModeNative: "native", ModeIPIP: "ipip"}

func (m Mode) String() string {
	if n, ok := modeNames[m]; ok {
		return n
	}
	return fmt.Sprintf("mode-%d", uint8(m))
}

// ParseMode turns "vxlan", "native" or "ipip" into a Mode.
func ParseMode(s string) (Mode, error) {
	for m, n := range modeNames {
		if n == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown mode %q (want vxlan, native or ipip)", s)
}

// VXLANOverheadIPv6 is what VXLAN adds over an IPv6 underlay (outer IPv6 40, UDP 8, VXLAN 8,
// inner Ethernet 14), where Overhead's 50 is over IPv4.
const VXLANOverheadIPv6 = 70

// Overhead is the bytes a mode's encapsulation adds over an IPv4 underlay, which pod MTUs leave
// room for (VXLAN over IPv6: VXLANOverheadIPv6).
func (m Mode) Overhead() int {
	switch m {
	case ModeVXLAN:
		return 50
	case ModeIPIP:
		return 20
	}
	return 0
}

// Route flags, mirroring enum route_flags.
const (
	RouteLocal       = uint8(bpf.DatapathRouteFlagsROUTE_F_LOCAL)
	RouteUnreachable = uint8(bpf.DatapathRouteFlagsROUTE_F_UNREACHABLE)
	// routeNodeIPv6 says the node address is IPv6 (VXLAN over an IPv6 underlay). Upsert sets
	// it from Route.NodeIP's family and List reads it back there: no Route carries it.
	routeNodeIPv6 = uint8(bpf.DatapathRouteFlagsROUTE_F_NODE_IPV6)
)

// Route says which node owns a pod CIDR. NodeIP is the node's underlay address; an IPv6 one
// takes VXLAN over the IPv6 underlay (the datapath sends other modes only to IPv4 ones).
type Route struct {
	Prefix netip.Prefix `json:"prefix"`
	NodeIP netip.Addr   `json:"nodeIP"`
	NodeID uint32       `json:"nodeID"`
	Mode   Mode         `json:"mode"`
	Flags  uint8        `json:"flags"`
}

// Routes is a typed view of the routes map.
type Routes struct{ m *ebpf.Map }

// NewRoutes wraps the routes map.
func NewRoutes(m *ebpf.Map) *Routes { return &Routes{m: m} }

// Upsert writes r.
func (rs *Routes) Upsert(r Route) error {
	k := LPMKey(r.Prefix)
	v := bpf.DatapathRouteInfo{Mode: uint8(r.Mode), Flags: r.Flags, NodeId: r.NodeID}
	if r.NodeIP.IsValid() {
		nk := EndpointKey(r.NodeIP)
		v.NodeIp = nk.Ip
		if nk.Family == afInet6 {
			v.Flags |= routeNodeIPv6
		}
	}
	if err := rs.m.Put(&k, &v); err != nil {
		return fmt.Errorf("write route %s: %w", r.Prefix, err)
	}
	return nil
}

// Delete removes the route for p; a missing one is not an error.
func (rs *Routes) Delete(p netip.Prefix) error {
	k := LPMKey(p)
	if err := rs.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete route %s: %w", p, err)
	}
	return nil
}

// List returns every route.
func (rs *Routes) List() ([]Route, error) {
	var (
		k   bpf.DatapathLpmKey
		v   bpf.DatapathRouteInfo
		out []Route
	)
	it := rs.m.Iterate()
	for it.Next(&k, &v) {
		r := Route{Prefix: lpmPrefix(k), Mode: Mode(v.Mode), Flags: v.Flags &^ routeNodeIPv6, NodeID: v.NodeId}
		if r.Flags&(RouteLocal|RouteUnreachable) == 0 {
			r.NodeIP = netip.AddrFrom4([4]byte(v.NodeIp[:4]))
			if v.Flags&routeNodeIPv6 != 0 {
				r.NodeIP = netip.AddrFrom16(v.NodeIp)
			}
		}
		out = append(out, r)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return out, nil
}

// NodeConfig is what the datapath needs to know about its own node.
type NodeConfig struct {
	NodeIP netip.Addr
	// NodeIPv6 is the node's IPv6 underlay address; invalid: it has none, and IPv6 gets no
	// NodePort source translation, no masquerading and no way out of the cluster but the
	// node's stack.
	NodeIPv6        netip.Addr
	UnderlayIfindex uint32
	TunnelIfindex   uint32
	Mode            Mode
	// MonitorVerdicts makes the datapath report every policy-allowed new flow.
	MonitorVerdicts bool
	// HostIfindex and HostMAC are the host device's: the node's routes to remote pods and
	// Services lead there, and the datapath hands the node its packets through it.
	HostIfindex uint32
	HostMAC     net.HardwareAddr
	// Masquerade gives pod traffic leaving the cluster the node's address, with source
	// ports from NATPorts.
	Masquerade bool
	NATPorts   PortRange
	// VXLANPort is VXLAN's UDP port: the datapath adds and strips VXLAN headers itself. With
	// 0 it leaves VXLAN to the device at TunnelIfindex.
	VXLANPort uint16
}

// PortRange is an inclusive range of ports.
type PortRange struct{ Min, Max uint16 }

// SetConfig writes the config map's one entry.
func SetConfig(m *ebpf.Map, c NodeConfig) error {
	v := bpf.DatapathNodeConfig{UnderlayIfindex: c.UnderlayIfindex, TunnelIfindex: c.TunnelIfindex, Mode: uint8(c.Mode),
		HostIfindex: c.HostIfindex, NatPortMin: c.NATPorts.Min, NatPortMax: c.NATPorts.Max,
		VxlanPort: htons(c.VXLANPort)}
	if c.MonitorVerdicts {
		v.MonitorVerdicts = 1
	}
	if c.Masquerade {
		v.Masquerade = 1
	}
	copy(v.HostMac[:], c.HostMAC)
	if c.NodeIP.IsValid() {
		v.NodeIp = EndpointKey(c.NodeIP).Ip
	}
	if c.NodeIPv6.IsValid() {
		if !c.NodeIPv6.Is6() || c.NodeIPv6.Is4In6() || !c.NodeIPv6.IsGlobalUnicast() {
			return fmt.Errorf("write node config: %s is not a global unicast IPv6 address", c.NodeIPv6)
		}
		v.NodeIpv6 = c.NodeIPv6.As16()
	}
	if err := m.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("write node config: %w", err)
	}
	return nil
}
