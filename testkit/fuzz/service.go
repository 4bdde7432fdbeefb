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
// backend itself at times, or from another node), or a backend's answer to a recent flow.
func (g *Gen) service() sent {
	if len(g.flows) > 0 && g.rng.IntN(2) == 0 {
		return g.serviceReply(g.flows[g.rng.IntN(len(g.flows))])
	}
	f := g.w.Frontends[g.rng.IntN(len(g.w.Frontends))]
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

// serviceReply is the backend's answer to a flow: to its client, or to the hairpin address
// when the client is the backend; from a local pod, from another node (natively, in VXLAN or
// through the VXLAN device), or through the node's stack.
func (g *Gen) serviceReply(f serviceFlow) sent {
	if !f.backend.Addr.IsValid() {
		return sent{}
	}
	dst := f.client
	if f.client.Addr() == f.backend.Addr.Addr() {
		dst = netip.AddrPortFrom(hairpin6, f.client.Port())
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
