package lab

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/ebpfnet/ebpfnet/namespace"
)

// The underlay's segments. br0 is 10.250.0.0/24: etcd on .254 and, in a lab with a BGP router,
// the router on .253. Rack k (numbered from 1 in the order racks appear) is a bridge of its own,
// rk<k>, on 10.250.k.0/24, with the router on .254. Nodes get .1, .2, … of their segment.
var (
	// underlayCIDR is br0's subnet, where the nodes of a lab without racks live.
	underlayCIDR = netip.MustParsePrefix("10.250.0.0/24")
	// segmentsCIDR holds every segment: nodes in racks and the underlay namespace route it
	// through the router.
	segmentsCIDR = netip.MustParsePrefix("10.250.0.0/16")
	etcdIP       = netip.MustParseAddr("10.250.0.254")
	// routerIP is the router's address on br0, and its BGP router id.
	routerIP = netip.MustParseAddr("10.250.0.253")
	// UnderlayIPv6 is the underlay namespace's address on br0 in a dual-stack lab: the client
	// outside the cluster that IPv6 NodePort probes and masquerading tests talk to. Nodes of
	// a dual-stack lab have underlayIPv6Prefix:<segment>::<host> too, 10.250.<segment>.<host>
	// being their IPv4 address; segments are /64s, and only br0 is reached from outside.
	UnderlayIPv6       = netip.MustParseAddr("fd00:10:250::254")
	underlayIPv6Prefix = netip.MustParsePrefix("fd00:10:250::/48")
)

// nodeIPv6 is the IPv6 underlay address paired with a node's IPv4 one.
func nodeIPv6(ip netip.Addr) netip.Addr {
	a, b := ip.As4(), underlayIPv6Prefix.Addr().As16()
	b[7], b[15] = a[2], a[3]
	return netip.AddrFrom16(b)
}

// Limits of the addressing: node addresses up to .maxNodeOctet of a segment, racks 1 to maxRacks.
const (
	maxNodeOctet = 250
	maxRacks     = 250
)

// Rack is a rack as made: its own L2 segment, joined to the others only through the router.
type Rack struct {
	Name string `json:"name"`
	// Bridge is the rack's switch in the underlay namespace; it has no address there.
	Bridge string       `json:"bridge"`
	Subnet netip.Prefix `json:"subnet"`
	// Router is the router's address in the rack: its nodes' gateway and BGP peer.
	Router netip.Addr `json:"router"`
}

// Router is the lab's BGP router as made: BIRD in a namespace of its own.
type Router struct {
	Netns  string `json:"netns"`
	Config string `json:"config"` // bird.conf, written by the lab
	Socket string `json:"socket"` // BIRD's control socket, for birdc
	PID    int    `json:"pid,omitempty"`
	// Legs are its interfaces, one per segment: br0's first, then each rack's.
	Legs []RouterLeg `json:"legs"`
	// Announced are prefixes the router originates itself (AnnounceFromRouter).
	Announced []netip.Prefix `json:"announced,omitempty"`
}

// RouterLeg is one of the router's interfaces: a veth whose peer, rt-<bridge>, is a port of the
// segment's bridge.
type RouterLeg struct {
	Bridge    string       `json:"bridge"`
	Interface string       `json:"interface"` // in the router's namespace
	Address   netip.Prefix `json:"address"`
	// AddressV6 is its IPv6 address in a dual-stack lab, paired with Address as the nodes'
	// are: the next hop of the IPv6 routes the router gives nodes of the segment.
	AddressV6 netip.Prefix `json:"addressV6,omitzero"`
}

// routerLegOn is the router's leg on bridge at ip, with an IPv6 address in a dual-stack lab.
func routerLegOn(bridge string, ip netip.Addr, bits int, dualStack bool) RouterLeg {
	leg := RouterLeg{Bridge: bridge, Interface: "to-" + bridge, Address: netip.PrefixFrom(ip, bits)}
	if dualStack {
		leg.AddressV6 = netip.PrefixFrom(nodeIPv6(ip), 64)
	}
	return leg
}

// BridgePort is the leg's peer on the segment's bridge, in the underlay namespace.
func (l RouterLeg) BridgePort() string { return "rt-" + l.Bridge }

func planRouter(lab string, dualStack bool) *Router {
	dir := filepath.Join(Dir(lab), "router")
	return &Router{Netns: namespace.Path(lab + "-router"), Config: filepath.Join(dir, "bird.conf"), Socket: filepath.Join(dir, "bird.ctl"),
		Legs: []RouterLeg{routerLegOn(bridgeIf, routerIP, underlayCIDR.Bits(), dualStack)}}
}

// leg returns the router's leg on bridge, or nil.
func (r *Router) leg(bridge string) *RouterLeg {
	for i := range r.Legs {
		if r.Legs[i].Bridge == bridge {
			return &r.Legs[i]
		}
	}
	return nil
}

// rack returns the rack called name, or nil.
func (s *State) rack(name string) *Rack {
	for i := range s.Racks {
		if s.Racks[i].Name == name {
			return &s.Racks[i]
		}
	}
	return nil
}

// addRack plans a new rack, numbered after the last, and the router's leg in it.
func (s *State) addRack(name string) (*Rack, error) {
	k := len(s.Racks) + 1
	if k > maxRacks {
		return nil, fmt.Errorf("rack %s: at most %d racks fit the underlay %s", name, maxRacks, segmentsCIDR)
	}
	if s.Router == nil {
		return nil, fmt.Errorf("rack %s: racks need the lab's BGP router (bgp.routerASN)", name)
	}
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(k), 0}), 24)
	r := Rack{Name: name, Bridge: fmt.Sprintf("rk%d", k), Subnet: subnet, Router: netip.AddrFrom4([4]byte{10, 250, byte(k), 254})}
	s.Racks = append(s.Racks, r)
	s.Router.Legs = append(s.Router.Legs, routerLegOn(r.Bridge, r.Router, 24, s.UnderlayIPv6()))
	return &s.Racks[len(s.Racks)-1], nil
}

// placeNode plans a node joining the lab: its rack (a new one if the lab has none of that
// name) and the next free address of its segment.
func (s *State) placeNode(spec NodeSpec) (Node, error) {
	subnet := underlayCIDR
	if spec.Rack != "" {
		r := s.rack(spec.Rack)
		if r == nil {
			var err error
			if r, err = s.addRack(spec.Rack); err != nil {
				return Node{}, err
			}
		}
		subnet = r.Subnet
	}
	ip := subnet.Addr().Next()
	for _, n := range s.Nodes {
		if subnet.Contains(n.IP) && !n.IP.Less(ip) {
			ip = n.IP.Next()
		}
	}
	if ip.As4()[3] > maxNodeOctet {
		return Node{}, fmt.Errorf("node %s: segment %s is full (at most %d nodes)", spec.Name, subnet, maxNodeOctet)
	}
	n := planNode(s.Name, spec, ip)
	if s.UnderlayIPv6() {
		n.IPv6 = nodeIPv6(ip)
	}
	return n, nil
}

// segment is the bridge node n plugs into and the router's address there (the node's gateway
// to other racks and its BGP peer; invalid in a lab without a router).
func (s *State) segment(n *Node) (bridge string, router netip.Addr) {
	if r := s.rack(n.Rack); n.Rack != "" && r != nil {
		return r.Bridge, r.Router
	}
	if s.Router == nil {
		return bridgeIf, netip.Addr{}
	}
	return bridgeIf, routerIP
}

// portName is the underlay port of the node at ip: n<host> on br0, r<rack>n<host> in a rack,
// unique across racks and at most 8 characters.
func portName(ip netip.Addr) string {
	a := ip.As4()
	if a[2] == 0 {
		return fmt.Sprintf("n%d", a[3])
	}
	return fmt.Sprintf("r%dn%d", a[2], a[3])
}
