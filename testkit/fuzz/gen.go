package fuzz

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/model"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

const (
	// maxFrame keeps frames within what BPF_PROG_TEST_RUN takes and the underlay's MTU
	// (plus IP-in-IP) mostly carries; a few go past the MTU on purpose.
	maxFrame = 1560
)

// Packet is one frame for one program.
type Packet struct {
	Hook  model.Hook
	Frame []byte
}

// layout is where a generated frame's headers are; mutations aim at them.
type layout struct {
	l3, l4 int // l4 is 0 when the frame has no L4 header
	family uint8
	proto  uint8
	inner  *layout // IP-in-IP: the inner packet
}

// Gen makes packets for one world from a seed.
type Gen struct {
	rng    *rand.Rand
	w      World
	recent []sent
	flows  []serviceFlow // recent flows to a Service, whose backends answer them
	masq   []masqFlow    // recent flows of pods to outside the cluster, answered from there
}

type sent struct {
	Packet
	at layout
}

// NewGen returns the generator of seed for w.
func NewGen(seed uint64, w World) *Gen {
	return &Gen{rng: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)), w: w}
}

// Next is a fresh packet, a repeat or reply of a recent one, an ICMP error about one, a later
// fragment of one, traffic to and from outside the cluster through a node IPv6 address, or
// random bytes; about half are then mutated.
func (g *Gen) Next() Packet {
	var s sent
	switch r := g.rng.IntN(100); {
	case r < 10 && len(g.recent) > 0:
		s = g.recent[g.rng.IntN(len(g.recent))]
		return Packet{Hook: s.Hook, Frame: append([]byte(nil), s.Frame...)}
	case r < 25 && len(g.recent) > 0:
		s = g.reply(g.recent[g.rng.IntN(len(g.recent))])
	case r < 30 && len(g.recent) > 0:
		s = g.icmpError(g.recent[g.rng.IntN(len(g.recent))])
	case r < 36 && len(g.recent) > 0:
		s = g.laterFragment()
	case r < 46 && len(g.w.Frontends) > 0:
		s = g.service()
	case r < 50:
		b := make([]byte, 14+g.rng.IntN(120))
		for i := range b {
			b[i] = byte(g.rng.Uint32())
		}
		if g.rng.IntN(2) == 0 {
			binary.BigEndian.PutUint16(b[12:], []uint16{packet.EtherIPv4, packet.EtherIPv6, packet.EtherARP}[g.rng.IntN(3)])
		}
		return Packet{Hook: g.hook(), Frame: b}
	case g.w.Node.NodeIPv6.IsValid() && g.rng.IntN(3) == 0:
		s = g.outside6()
	default:
		s = g.fresh(g.hook())
	}
	if s.Frame == nil {
		s = g.fresh(g.hook())
	}
	if s.at.family != 0 {
		g.remember(sent{Packet{s.Hook, append([]byte(nil), s.Frame...)}, s.at})
	}
	if g.rng.IntN(2) == 0 {
		s.Frame = g.mutate(s.Frame, s.at)
	}
	return s.Packet
}

func (g *Gen) remember(s sent) {
	const keep = 48
	if len(g.recent) < keep {
		g.recent = append(g.recent, s)
		return
	}
	g.recent[g.rng.IntN(keep)] = s
}

func (g *Gen) hook() model.Hook {
	return model.Hooks[g.rng.IntN(len(model.Hooks))]
}

func (g *Gen) pick(addrs ...netip.Addr) netip.Addr { return addrs[g.rng.IntN(len(addrs))] }

// addr is an address that some part of the world knows about, or not.
func (g *Gen) addr(v6 bool) netip.Addr {
	if v6 {
		switch g.rng.IntN(6) {
		case 0, 1, 2:
			return pods[g.rng.IntN(len(pods))].ip6
		case 3:
			switch g.rng.IntN(4) {
			case 0, 1:
				return remotes6[g.rng.IntN(len(remotes6))].pod
			case 2:
				return g.pick(netip.MustParseAddr("fd00:244:0:7::7"), netip.MustParseAddr("fd00:244:0:8::8"))
			}
			return g.pick(netip.MustParseAddr("fd00:244:0:1::5"), netip.MustParseAddr("fd00:244::99"),
				netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::1"),
				netip.MustParseAddr("::ffff:10.244.0.10"), netip.IPv6Unspecified())
		case 4:
			return netip.AddrFrom16([16]byte{0xfd, 0, 0x02, 0x44, 15: byte(g.rng.IntN(20))})
		}
		var a [16]byte
		for i := range a {
			a[i] = byte(g.rng.Uint32())
		}
		return netip.AddrFrom16(a)
	}
	switch g.rng.IntN(8) {
	case 0, 1, 2:
		return pods[g.rng.IntN(len(pods))].ip4
	case 3:
		if g.rng.IntN(2) == 0 {
			return g.pick(netip.MustParseAddr("10.244.7.7"), netip.MustParseAddr("10.244.8.8"), netip.MustParseAddr("10.244.9.9"))
		}
		return remotes[g.rng.IntN(len(remotes)-1)].pod
	case 4:
		return g.pick(nodeIP, peerIP, strangerIP, netip.MustParseAddr("10.244.0.99"), netip.MustParseAddr("10.244.77.1"))
	case 5:
		return g.pick(netip.MustParseAddr("192.0.2.5"), netip.MustParseAddr("192.0.2.200"),
			netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("203.0.113.9"),
			netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255"), netip.MustParseAddr("224.0.0.1"))
	case 6:
		return netip.AddrFrom4([4]byte{10, 244, byte(g.rng.IntN(8)), byte(g.rng.IntN(32))})
	}
	return netip.AddrFrom4([4]byte{byte(g.rng.Uint32()), byte(g.rng.Uint32()), byte(g.rng.Uint32()), byte(g.rng.Uint32())})
}

func (g *Gen) port() uint16 {
	if g.rng.IntN(4) == 0 {
		return uint16(g.rng.Uint32())
	}
	return ports[g.rng.IntN(len(ports))]
}

// endpointMAC is the MAC the world's endpoint for ip has, or a stranger's.
func (g *Gen) endpointMAC(ip netip.Addr) net.HardwareAddr {
	for _, ep := range g.w.Endpoints {
		if ep.IP == ip {
			return ep.MAC
		}
	}
	return net.HardwareAddr{2, 0, 0, 0, 0x99, byte(g.rng.IntN(4))}
}

// fresh builds a new packet for h: from a pod to anyone for from_pod, from anyone to a
// pod for the others, IP-in-IP for some of from_underlay's.
func (g *Gen) fresh(h model.Hook) sent {
	if g.rng.IntN(20) == 0 {
		return g.arp(h)
	}
	if (h == model.FromPod || h == model.ToPod) && g.rng.IntN(16) == 0 {
		return g.ndp(h)
	}
	v6 := g.rng.IntN(4) == 0
	src, dst := g.addr(v6), g.addr(v6)
	if h == model.FromPod && g.rng.IntN(4) > 0 {
		p := pods[g.rng.IntN(len(pods))]
		src = p.ip4
		if v6 {
			src = p.ip6
		}
	} else if h != model.FromPod && g.rng.IntN(3) > 0 {
		p := pods[g.rng.IntN(len(pods))]
		dst = p.ip4
		if v6 {
			dst = p.ip6
		}
	}
	frame, at := g.ipPacket(src, dst)
	if h != model.FromPod {
		copy(frame[6:12], g.pick4MAC())
	}
	if h == model.FromUnderlay && g.rng.IntN(3) > 0 {
		if g.w.Node.VXLANPort != 0 && g.rng.IntN(2) == 0 {
			return sent{Packet{h, nil}, layout{}}.withFrame(g.vxlan(frame, at))
		}
		return sent{Packet{h, nil}, layout{}}.withFrame(g.ipip(frame, at))
	}
	return sent{Packet{h, frame}, at}
}

func (s sent) withFrame(frame []byte, at layout) sent {
	s.Frame, s.at = frame, at
	return s
}

func (g *Gen) pick4MAC() net.HardwareAddr {
	return []net.HardwareAddr{gatewayMAC, peerMAC, pods[g.rng.IntN(len(pods))].mac}[g.rng.IntN(3)]
}

// ipPacket is Ethernet, IPv4 (options, fragment bits) or IPv6 (an extension-header chain),
// and an L4 header with a payload; from a pod, its own MAC.
func (g *Gen) ipPacket(src, dst netip.Addr) ([]byte, layout) {
	proto, l4 := g.l4()
	at := layout{l3: 14, proto: proto}
	var ip []byte
	if src.Is4() {
		at.family = 4
		ip = g.ipv4Header(src, dst, proto, len(l4))
		at.l4 = 14 + len(ip)
		if frag := binary.BigEndian.Uint16(ip[6:]); frag&0x1fff != 0 {
			at.l4 = 0
		}
	} else {
		at.family = 6
		var exts []byte
		ip, exts = g.ipv6Header(src, dst, proto, len(l4))
		ip = append(ip, exts...)
		at.l4 = 14 + len(ip)
	}
	frame := make([]byte, 14, 14+len(ip)+len(l4))
	copy(frame[0:6], pods[g.rng.IntN(len(pods))].nodeMAC)
	copy(frame[6:12], g.endpointMAC(src))
	binary.BigEndian.PutUint16(frame[12:], packet.EtherIPv4)
	if at.family == 6 {
		binary.BigEndian.PutUint16(frame[12:], packet.EtherIPv6)
	}
	frame = append(append(frame, ip...), l4...)
	return frame, at
}

func (g *Gen) ttl() uint8 {
	switch g.rng.IntN(12) {
	case 0:
		return 0
	case 1:
		return 1
	case 2:
		return 2
	}
	return 64
}

func (g *Gen) ipv4Header(src, dst netip.Addr, proto uint8, payload int) []byte {
	opts := 0
	if g.rng.IntN(8) == 0 {
		opts = 4 * (1 + g.rng.IntN(10))
	}
	h := make([]byte, 20+opts)
	h[0] = 0x40 | byte((20+opts)/4)
	binary.BigEndian.PutUint16(h[2:], uint16(len(h)+payload))
	binary.BigEndian.PutUint16(h[4:], uint16(g.rng.Uint32()))
	switch g.rng.IntN(10) {
	case 0:
		binary.BigEndian.PutUint16(h[6:], 0x2000) // first fragment
	case 1:
		binary.BigEndian.PutUint16(h[6:], uint16(1+g.rng.IntN(200))|uint16(g.rng.IntN(2))<<13)
	case 2, 3:
		binary.BigEndian.PutUint16(h[6:], 0x4000) // DF
	}
	h[8] = g.ttl()
	h[9] = proto
	s, d := src.As4(), dst.As4()
	copy(h[12:16], s[:])
	copy(h[16:20], d[:])
	for i := 20; i < len(h); i++ {
		h[i] = 1 // NOP options
	}
	binary.BigEndian.PutUint16(h[10:], packet.Checksum(h))
	return h
}

// ipv6Header is the fixed header and an extension-header chain (hop-by-hop, routing,
// destination options, fragment) ending in proto.
func (g *Gen) ipv6Header(src, dst netip.Addr, proto uint8, payload int) ([]byte, []byte) {
	var exts []byte
	nextHdr := proto
	if g.rng.IntN(3) == 0 {
		n := 1 + g.rng.IntN(6) // past four the parser stops walking
		kinds := []uint8{packet.ProtoHopOpts, packet.ProtoRouting, packet.ProtoDstOpts, packet.ProtoFrag6}
		for range n {
			kind := kinds[g.rng.IntN(len(kinds))]
			var ext []byte
			if kind == packet.ProtoFrag6 {
				ext = make([]byte, 8)
				var off uint16
				if g.rng.IntN(3) == 0 {
					off = uint16(1 + g.rng.IntN(100))
				}
				binary.BigEndian.PutUint16(ext[2:], off<<3|uint16(g.rng.IntN(2)))
				binary.BigEndian.PutUint32(ext[4:], g.rng.Uint32()) // identification
			} else {
				units := g.rng.IntN(3)
				ext = make([]byte, 8*(units+1))
				ext[1] = byte(units)
				for i := 2; i < len(ext); i++ {
					ext[i] = byte(g.rng.Uint32())
				}
			}
			ext[0] = nextHdr
			nextHdr = kind
			exts = append(ext, exts...)
		}
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(exts)+payload))
	h[6] = nextHdr
	h[7] = g.ttl()
	s, d := src.As16(), dst.As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
	return h, exts
}

// l4 is a protocol and its header with a payload.
func (g *Gen) l4() (uint8, []byte) {
	payload := make([]byte, g.rng.IntN(48))
	if g.rng.IntN(40) == 0 {
		payload = make([]byte, 1300+g.rng.IntN(200))
	}
	for i := range payload {
		payload[i] = byte(g.rng.Uint32())
	}
	switch r := g.rng.IntN(20); {
	case r < 6:
		b := make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], g.port())
		binary.BigEndian.PutUint16(b[2:], g.port())
		b[12] = 5 << 4
		if g.rng.IntN(6) == 0 {
			opts := 4 * (1 + g.rng.IntN(10))
			b = append(b, make([]byte, opts)...)
			b[12] = byte(len(b)/4) << 4
		}
		b[13] = []byte{0x02, 0x12, 0x10, 0x11, 0x04, 0x18, byte(g.rng.Uint32())}[g.rng.IntN(7)]
		return packet.ProtoTCP, append(b, payload...)
	case r < 11:
		b := make([]byte, 8)
		binary.BigEndian.PutUint16(b[0:], g.port())
		binary.BigEndian.PutUint16(b[2:], g.port())
		binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
		return packet.ProtoUDP, append(b, payload...)
	case r < 13:
		b := make([]byte, 12)
		binary.BigEndian.PutUint16(b[0:], g.port())
		binary.BigEndian.PutUint16(b[2:], g.port())
		return packet.ProtoSCTP, append(b, payload...)
	case r < 16:
		b := make([]byte, 8)
		b[0] = []byte{8, 0, 3, 11, 13, byte(g.rng.Uint32())}[g.rng.IntN(6)]
		binary.BigEndian.PutUint16(b[4:], g.port())
		return packet.ProtoICMP, append(b, payload...)
	case r < 18:
		b := make([]byte, 8)
		b[0] = []byte{128, 129, 133, 135, 1}[g.rng.IntN(5)]
		binary.BigEndian.PutUint16(b[4:], g.port())
		return packet.ProtoICMP6, append(b, payload...)
	}
	return []uint8{47, 50, packet.ProtoNoNext, packet.ProtoIPIP, 255}[g.rng.IntN(5)], payload
}

// ipip wraps an IPv4 (IP-in-IP) or IPv6 (6in4) frame in an outer header, mostly from a peer
// node to this one, mostly naming the protocol inside.
func (g *Gen) ipip(frame []byte, inner layout) ([]byte, layout) {
	src := g.pick(peerIP, strangerIP, netip.MustParseAddr("203.0.113.9"))
	dst := nodeIP
	if g.rng.IntN(6) == 0 {
		dst = g.pick(peerIP, netip.MustParseAddr("10.250.0.9"), pods[0].ip4)
	}
	proto := uint8(packet.ProtoIPIP)
	if (inner.family == 6) != (g.rng.IntN(10) == 0) {
		proto = packet.ProtoIPv6
	}
	outer := g.ipv4Header(src, dst, proto, len(frame)-14)
	if g.rng.IntN(3) > 0 {
		// Mostly well-formed: no fragment bits, TTL to spare.
		outer[6], outer[7], outer[8] = 0x40, 0, 64
		outer[10], outer[11] = 0, 0
		binary.BigEndian.PutUint16(outer[10:], packet.Checksum(outer))
	}
	b := append(append(append([]byte(nil), frame[:14]...), outer...), frame[14:]...)
	binary.BigEndian.PutUint16(b[12:], packet.EtherIPv4)
	in := inner
	in.l3 += len(outer)
	if in.l4 != 0 {
		in.l4 += len(outer)
	}
	return b, layout{l3: 14, l4: 14 + len(outer), family: 4, proto: proto, inner: &in}
}

// vxlan wraps an IPv4 or IPv6 frame in VXLAN, mostly from a peer node to this one's VXLAN
// port with the I flag, a pod identity as the VNI and the frame's own ethertype inside.
func (g *Gen) vxlan(frame []byte, inner layout) ([]byte, layout) {
	src := g.pick(peerIP, strangerIP, netip.MustParseAddr("203.0.113.9"))
	dst := nodeIP
	if g.rng.IntN(8) == 0 {
		dst = g.pick(peerIP, netip.MustParseAddr("10.250.0.9"))
	}
	port := uint16(vxlanPort)
	if g.rng.IntN(8) == 0 {
		port = g.pick16(4789, 8473, 53)
	}
	hdr := make([]byte, 8+8+14)
	binary.BigEndian.PutUint16(hdr[0:], uint16(32768+g.rng.IntN(32768)))
	binary.BigEndian.PutUint16(hdr[2:], port)
	binary.BigEndian.PutUint16(hdr[4:], uint16(len(hdr)+len(frame)-14))
	if g.rng.IntN(8) > 0 {
		hdr[8] = 0x08
	} else {
		hdr[8] = byte(g.rng.Uint32())
	}
	vnis := []uint32{0, idPodA, idPodB, idPodC, idRemote, maps.IdentityWorld, g.rng.Uint32() & 0xffffff}
	binary.BigEndian.PutUint32(hdr[12:], vnis[g.rng.IntN(len(vnis))]<<8)
	copy(hdr[16:22], frame[0:6])
	copy(hdr[22:28], frame[6:12])
	innerType := binary.BigEndian.Uint16(frame[12:])
	if g.rng.IntN(10) == 0 {
		innerType = g.pick16(packet.EtherIPv4, packet.EtherIPv6, packet.EtherARP)
	}
	binary.BigEndian.PutUint16(hdr[28:], innerType)
	if g.rng.IntN(3) == 0 {
		return g.vxlanOverIPv6(hdr, frame, inner)
	}
	outer := g.ipv4Header(src, dst, packet.ProtoUDP, len(hdr)+len(frame)-14)
	if g.rng.IntN(3) > 0 {
		// Mostly well-formed: no fragment bits, TTL to spare.
		outer[6], outer[7], outer[8] = 0x40, 0, 64
		outer[10], outer[11] = 0, 0
		binary.BigEndian.PutUint16(outer[10:], packet.Checksum(outer))
	}
	b := append(append(append(append([]byte(nil), frame[:14]...), outer...), hdr...), frame[14:]...)
	binary.BigEndian.PutUint16(b[12:], packet.EtherIPv4)
	in := inner
	shift := len(outer) + len(hdr)
	in.l3 += shift
	if in.l4 != 0 {
		in.l4 += shift
	}
	return b, layout{l3: 14, l4: 14 + len(outer), family: 4, proto: packet.ProtoUDP, inner: &in}
}

// vxlanOverIPv6 puts VXLAN's UDP header and what follows (hdr, then frame's payload) behind an
// outer IPv6 header: mostly from the peer node to this one's IPv6 address, at times from the
// stranger or outside, or to another address; now and then behind extension headers.
func (g *Gen) vxlanOverIPv6(hdr, frame []byte, inner layout) ([]byte, layout) {
	src := g.pick(peerIP6, peerIP6, strangerIP6, netip.MustParseAddr("2001:db8::1"))
	dst := nodeIP6
	if g.rng.IntN(8) == 0 {
		dst = g.pick(peerIP6, netip.MustParseAddr("fd00:250::9"))
	}
	ip, exts := g.ipv6Header(src, dst, packet.ProtoUDP, len(hdr)+len(frame)-14)
	if g.rng.IntN(3) > 0 {
		exts = nil // mostly none, and hop limit to spare
		binary.BigEndian.PutUint16(ip[4:], uint16(len(hdr)+len(frame)-14))
		ip[6], ip[7] = packet.ProtoUDP, 64
	}
	outer := append(ip, exts...)
	b := append(append(append(append([]byte(nil), frame[:14]...), outer...), hdr...), frame[14:]...)
	binary.BigEndian.PutUint16(b[12:], packet.EtherIPv6)
	in := inner
	shift := len(outer) + len(hdr)
	in.l3 += shift
	if in.l4 != 0 {
		in.l4 += shift
	}
	return b, layout{l3: 14, l4: 14 + len(outer), family: 6, proto: packet.ProtoUDP, inner: &in}
}

func (g *Gen) pick16(v ...uint16) uint16 { return v[g.rng.IntN(len(v))] }

// ndp is the link's own ICMPv6 from a pod (to a pod, for to_pod): neighbour discovery and
// MLD (and now and then
// echo) from a link-local, unspecified or global source, behind a hop-by-hop or fragment
// header at times; Neighbor Advertisements of its own address or another's, with target
// link-layer options of its own MAC or another's, of length 0, or more than are read.
func (g *Gen) ndp(h model.Hook) sent {
	p := pods[g.rng.IntN(len(pods))]
	other := pods[g.rng.IntN(len(pods))]
	src := g.pick(netip.MustParseAddr("fe80::a"), netip.MustParseAddr("fe80::2:b"), netip.IPv6Unspecified(), p.ip6, other.ip6)
	dst := g.pick(netip.MustParseAddr("ff02::1"), netip.MustParseAddr("ff02::2"), netip.MustParseAddr("ff02::16"),
		netip.MustParseAddr("ff02::1:ff00:a"), netip.MustParseAddr("fe80::1"), other.ip6)
	typ := []uint8{packet.ICMP6NeighAdvert, packet.ICMP6NeighAdvert, packet.ICMP6NeighAdvert, packet.ICMP6NeighSolicit,
		packet.ICMP6RouterSolicit, 134, 137, 130, 131, 132, packet.ICMP6MLDv2Report, 129, 138, 1}[g.rng.IntN(14)]
	body := make([]byte, 4, 64)
	if typ == packet.ICMP6NeighAdvert || typ == packet.ICMP6NeighSolicit || g.rng.IntN(4) == 0 {
		target := g.pick(p.ip6, p.ip6, other.ip6, g.addr(true), netip.MustParseAddr("fe80::a"))
		t := target.As16()
		body = append(body, t[:]...)
		for range g.rng.IntN(7) {
			mac := []net.HardwareAddr{p.mac, p.mac, other.mac}[g.rng.IntN(3)]
			opt := packet.NDOption([]uint8{packet.NDOptTargetLLAddr, packet.NDOptTargetLLAddr, packet.NDOptSourceLLAddr, 14}[g.rng.IntN(4)], mac)
			if g.rng.IntN(12) == 0 {
				opt[1] = byte(g.rng.IntN(3)) // 0, or a length the option's bytes do not have
			}
			body = append(body, opt...)
		}
	}
	l4 := packet.ICMP6(typ, 0, body)
	var exts []byte
	next := uint8(packet.ProtoICMP6)
	switch g.rng.IntN(8) {
	case 0:
		exts, next = []byte{packet.ProtoICMP6, 0, 5, 2, 0, 0, 1, 0}, packet.ProtoHopOpts // router alert, as MLD carries
	case 1:
		exts, next = []byte{packet.ProtoICMP6, 0, 0, byte(g.rng.IntN(2)), 0, 0, 0, 7}, packet.ProtoFrag6
	}
	hop := []uint8{255, 255, 1}[g.rng.IntN(3)]
	ip := packet.IPv6{Src: src, Dst: dst, Next: next, HopLimit: hop}.Marshal(append(exts, l4...))
	mac := p.mac
	if g.rng.IntN(8) == 0 {
		mac = other.mac
	}
	frame := packet.Eth(p.nodeMAC, mac, packet.EtherIPv6, ip)
	return sent{Packet{h, frame}, layout{l3: 14, l4: 14 + 40 + len(exts), family: 6, proto: packet.ProtoICMP6}}
}

func (g *Gen) arp(h model.Hook) sent {
	p := pods[g.rng.IntN(len(pods))]
	sha, sip := p.mac, p.ip4
	if g.rng.IntN(4) == 0 {
		sha = pods[g.rng.IntN(len(pods))].mac
	}
	if g.rng.IntN(4) == 0 {
		sip = g.addr(false)
	}
	b := make([]byte, 14+28)
	copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[6:12], p.mac)
	if g.rng.IntN(4) == 0 {
		copy(b[6:12], pods[g.rng.IntN(len(pods))].mac)
	}
	binary.BigEndian.PutUint16(b[12:], packet.EtherARP)
	a := b[14:]
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], packet.EtherIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], uint16(1+g.rng.IntN(2)))
	copy(a[8:14], sha)
	s, t := sip.As4(), g.addr(false).As4()
	copy(a[14:18], s[:])
	copy(a[24:28], t[:])
	return sent{Packet{h, b}, layout{l3: 14}}
}

// MaxFrame is the longest frame the harness runs.
const MaxFrame = maxFrame

// FuzzWorld is the seed of the i-th of the sixteen worlds FuzzDatapath draws from.
func FuzzWorld(i uint8) uint64 { return 0xf0220000 + uint64(i%16) }

// SeedCorpus is n generated packets over all programs, for a fuzzing engine to start from.
func SeedCorpus(n int) []Packet {
	var out []Packet
	for i := range n {
		w := NewWorld(FuzzWorld(uint8(i)))
		g := NewGen(uint64(i), w)
		out = append(out, g.Next())
	}
	return out
}
