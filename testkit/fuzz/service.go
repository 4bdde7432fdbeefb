package fuzz

import (
	"encoding/binary"
	"net/netip"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/model"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// hairpin6 is the source a pod reaching itself through a Service is given
// (HAIRPIN_ADDR6_HI/_LO).
var hairpin6 = netip.MustParseAddr("100::7:7")

// serviceFlow is a flow to a Service frontend: its client, and the backend its frontend's
// slots name (0: none the world has).
type serviceFlow struct {
	client   netip.AddrPort
	frontend maps.Frontend
	backend  maps.Backend
}

// service is IPv6 Service traffic: a client's packet to a frontend (from a local pod, the
// backend itself at times, from another node, or to a NodePort mostly from outside the
// cluster), or a backend's answer to a recent flow.
func (g *Gen) service() sent {
	if len(g.flows) > 0 && g.rng.IntN(2) == 0 {
		return g.serviceReply(g.flows[g.rng.IntN(len(g.flows))])
	}
	f := g.w.Frontends[g.rng.IntN(len(g.w.Frontends))]
	if g.w.Node.NodeIPv6.IsValid() && g.rng.IntN(2) == 0 {
		// Half of a node IPv6 address's Service traffic to its NodePorts.
		var nodePorts []maps.Frontend
		for _, np := range g.w.Frontends {
			if np.NodePort {
				nodePorts = append(nodePorts, np)
			}
		}
		if len(nodePorts) > 0 {
			f = nodePorts[g.rng.IntN(len(nodePorts))]
		}
	}
	var be maps.Backend
	for _, b := range g.w.Backends {
		if len(f.Backends) > 0 && b.ID == f.Backends[0] {
			be = b
		}
	}
	client := pods[g.rng.IntN(len(pods))].ip6
	h := model.FromPod
	switch r := g.rng.IntN(10); {
	case r < 2 && be.Addr.Addr().Is6():
		client = be.Addr.Addr() // hairpin
	case r < 3:
		client = remotes6[g.rng.IntN(len(remotes6))].pod
		h = []model.Hook{model.FromUnderlay, model.FromOverlay}[g.rng.IntN(2)]
	case f.NodePort && r < 8:
		client = outsiders6[g.rng.IntN(len(outsiders6))]
		h = []model.Hook{model.FromUnderlay, model.FromUnderlay, model.FromOverlay}[g.rng.IntN(3)]
	}
	flow := serviceFlow{client: netip.AddrPortFrom(client, 40000+uint16(g.rng.IntN(4))), frontend: f, backend: be}
	if len(g.flows) < 16 {
		g.flows = append(g.flows, flow)
	} else {
		g.flows[g.rng.IntN(len(g.flows))] = flow
	}
	flags := []byte{0x02, 0x02, 0x10, 0x18, 0x11, 0x14}[g.rng.IntN(6)]
	return g.l4Packet(h, flow.client, f.Addr, f.Protocol, flags)
}

// serviceReply is the backend's answer to a flow: to its client, to the hairpin address
// when the client is the backend, or (a backend elsewhere, on a node with an IPv6 address) to
// the node's address and a port of its NAT range; from a local pod, from another node
// (natively, in VXLAN or through the VXLAN device), or through the node's stack.
func (g *Gen) serviceReply(f serviceFlow) sent {
	if !f.backend.Addr.IsValid() {
		return sent{}
	}
	dst := f.client
	if f.client.Addr() == f.backend.Addr.Addr() {
		dst = netip.AddrPortFrom(hairpin6, f.client.Port())
	}
	if g.w.Node.NodeIPv6.IsValid() && !f.backend.Local && g.rng.IntN(3) > 0 {
		dst = netip.AddrPortFrom(nodeIP6, g.natPort())
	}
	h := model.FromPod
	if !podCIDR6.Contains(f.backend.Addr.Addr()) {
		h = []model.Hook{model.FromUnderlay, model.FromOverlay}[g.rng.IntN(2)]
	} else if g.rng.IntN(6) == 0 {
		h = model.ToPod
	}
	flags := []byte{0x12, 0x10, 0x18, 0x11, 0x14}[g.rng.IntN(5)]
	s := g.l4Packet(h, f.backend.Addr, dst, f.frontend.Protocol, flags)
	if h == model.FromUnderlay && g.w.Node.VXLANPort != 0 && g.rng.IntN(2) == 0 {
		return s.withFrame(g.vxlan(s.Frame, s.at))
	}
	return s
}

// l4Packet is a TCP segment (with flags) or UDP datagram from src to dst for hook h, in an
// IPv6 packet (with extension headers at times), with a right L4 checksum mostly.
func (g *Gen) l4Packet(h model.Hook, src, dst netip.AddrPort, proto uint8, flags byte) sent {
	payload := make([]byte, g.rng.IntN(32))
	for i := range payload {
		payload[i] = byte(g.rng.Uint32())
	}
	var l4 []byte
	csum := 6
	if proto == packet.ProtoTCP {
		l4 = make([]byte, 20)
		l4[12], l4[13] = 5<<4, flags
		csum = 16
	} else {
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[4:], uint16(8+len(payload)))
	}
	binary.BigEndian.PutUint16(l4[0:], src.Port())
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	l4 = append(l4, payload...)
	if g.rng.IntN(4) > 0 {
		binary.BigEndian.PutUint16(l4[csum:], checksum6(src.Addr(), dst.Addr(), proto, l4))
	}
	ip, exts := g.ipv6Header(src.Addr(), dst.Addr(), proto, len(l4))
	ip = append(ip, exts...)
	frame := make([]byte, 14, 14+len(ip)+len(l4))
	copy(frame[0:6], pods[g.rng.IntN(len(pods))].nodeMAC)
	copy(frame[6:12], g.endpointMAC(src.Addr()))
	if h != model.FromPod {
		copy(frame[6:12], g.pick4MAC())
	}
	binary.BigEndian.PutUint16(frame[12:], packet.EtherIPv6)
	frame = append(append(frame, ip...), l4...)
	return sent{Packet{h, frame}, layout{l3: 14, l4: 14 + len(ip), family: 6, proto: proto}}
}

// checksum6 is the TCP or UDP checksum of seg (its checksum field zero) from src to dst.
func checksum6(src, dst netip.Addr, proto uint8, seg []byte) uint16 {
	s, d := src.As16(), dst.As16()
	b := append(append([]byte(nil), s[:]...), d[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(seg)))
	b = append(append(b, 0, 0, 0, proto), seg...)
	if sum := packet.Checksum(b); sum != 0 || proto != packet.ProtoUDP {
		return sum
	}
	return 0xffff
}

// natPort is a port of the world's NAT range, or now and then (always, for an empty range) one
// just past it.
func (g *Gen) natPort() uint16 {
	r := g.w.Node.NATPorts
	if r.Max < r.Min || g.rng.IntN(8) == 0 {
		return r.Max + 1
	}
	return r.Min + uint16(g.rng.IntN(int(r.Max-r.Min)+1))
}

// masqFlow is a pod's recent flow to outside the cluster, whose answers and ICMPv6 errors
// come back to the node's address.
type masqFlow struct {
	pod, remote netip.AddrPort
	proto       uint8 // TCP, UDP or ICMPv6 (echo: the ports are its identifier)
}

// outside6 is IPv6 to and from outside the cluster on a node with an IPv6 address: a pod's
// TCP, UDP or echo request to an outside address (masqueraded, or not), an answer from there
// to the node's address and a port of its NAT range, or an ICMPv6 error about such a flow
// from a router or the remote end.
func (g *Gen) outside6() sent {
	r := g.rng.IntN(8)
	if r < 3 || len(g.masq) == 0 {
		p := pods[g.rng.IntN(len(pods))]
		f := masqFlow{pod: netip.AddrPortFrom(p.ip6, g.port()), remote: netip.AddrPortFrom(outsiders6[g.rng.IntN(len(outsiders6))], g.port()),
			proto: []uint8{packet.ProtoTCP, packet.ProtoUDP, packet.ProtoICMP6}[g.rng.IntN(3)]}
		if len(g.masq) < 16 {
			g.masq = append(g.masq, f)
		} else {
			g.masq[g.rng.IntN(len(g.masq))] = f
		}
		if f.proto == packet.ProtoICMP6 {
			return g.icmp6(model.FromPod, f.pod.Addr(), f.remote.Addr(), packet.ICMP6EchoRequest, echoBody(f.pod.Port()))
		}
		return g.l4Packet(model.FromPod, f.pod, f.remote, f.proto, []byte{0x02, 0x02, 0x10, 0x18, 0x11}[g.rng.IntN(5)])
	}
	f := g.masq[g.rng.IntN(len(g.masq))]
	node := netip.AddrPortFrom(nodeIP6, g.natPort())
	h := []model.Hook{model.FromUnderlay, model.FromUnderlay, model.FromOverlay}[g.rng.IntN(3)]
	if r < 6 {
		if f.proto == packet.ProtoICMP6 {
			return g.icmp6(h, f.remote.Addr(), nodeIP6, packet.ICMP6EchoReply, echoBody(node.Port()))
		}
		return g.l4Packet(h, f.remote, node, f.proto, []byte{0x12, 0x10, 0x18, 0x11, 0x14}[g.rng.IntN(5)])
	}
	// What left the node for the flow, as a router quotes it: the IPv6 header and as much of
	// the L4 header as it cares to.
	var l4 []byte
	switch f.proto {
	case packet.ProtoICMP6:
		l4 = packet.ICMP6(packet.ICMP6EchoRequest, 0, echoBody(node.Port()))
	case packet.ProtoTCP:
		l4 = append(binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, node.Port()), f.remote.Port()), make([]byte, 16)...)
		l4[12], l4[13] = 5<<4, 0x02
	default:
		l4 = packet.UDP(node.Port(), f.remote.Port(), nil)
	}
	sent := packet.IPv6{Src: nodeIP6, Dst: f.remote.Addr(), Next: f.proto, HopLimit: 63}.Marshal(l4)
	quoted := sent[:min(len(sent), 40+2+g.rng.IntN(len(l4)+4))]
	from := g.pick(router6, f.remote.Addr())
	typ := []uint8{packet.ICMP6DestUnreach, packet.ICMP6PacketTooBig, packet.ICMP6PacketTooBig, packet.ICMP6TimeExceeded, 4}[g.rng.IntN(5)]
	return g.icmp6(h, from, nodeIP6, typ, append(binary.BigEndian.AppendUint32(nil, 1280), quoted...))
}

// echoBody is an echo's body: identifier id, sequence 1 and a little data.
func echoBody(id uint16) []byte {
	return append(binary.BigEndian.AppendUint16(nil, id), 0, 1, 'f', 'u', 'z', 'z')
}

// icmp6 is an ICMPv6 message of typ with body from src to dst for hook h, its checksum right
// mostly.
func (g *Gen) icmp6(h model.Hook, src, dst netip.Addr, typ uint8, body []byte) sent {
	l4 := packet.ICMP6(typ, 0, body)
	if g.rng.IntN(6) > 0 {
		binary.BigEndian.PutUint16(l4[2:], checksum6(src, dst, packet.ProtoICMP6, l4))
	}
	mac := g.endpointMAC(src)
	if h != model.FromPod {
		mac = g.pick4MAC()
	}
	frame := packet.Eth(pods[g.rng.IntN(len(pods))].nodeMAC, mac, packet.EtherIPv6, packet.IPv6{Src: src, Dst: dst, Next: packet.ProtoICMP6}.Marshal(l4))
	return sent{Packet{h, frame}, layout{l3: 14, l4: 14 + 40, family: 6, proto: packet.ProtoICMP6}}
}
