package fuzz

import (
	"encoding/binary"
	"net/netip"

	"github.com/ebpfnet/ebpfnet/testkit/model"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// hookFor is where a packet from src enters: from_pod for a pod's own, else any other way.
func (g *Gen) hookFor(src netip.Addr) model.Hook {
	for _, p := range pods {
		if (p.ip4 == src || p.ip6 == src) && g.rng.IntN(5) > 0 {
			return model.FromPod
		}
	}
	return []model.Hook{model.ToPod, model.FromOverlay, model.FromUnderlay}[g.rng.IntN(3)]
}

// reply answers a recent packet (its inner one, for IP-in-IP): addresses, ports and MACs
// swapped, an echo request turned into a reply, a SYN into a SYN-ACK.
func (g *Gen) reply(s sent) sent {
	at := s.at
	b := append([]byte(nil), s.Frame...)
	if at.inner != nil {
		in := *at.inner
		if in.l3 > len(b) {
			return sent{}
		}
		b = append(b[:14:14], b[in.l3:]...)
		if in.l4 != 0 {
			in.l4 -= in.l3 - 14
		}
		in.l3 = 14
		at = in
	}
	if at.family == 0 || len(b) < at.l3+20 {
		return sent{}
	}
	var src netip.Addr
	if at.family == 4 {
		ip := b[at.l3:]
		s4, d4 := [4]byte(ip[12:16]), [4]byte(ip[16:20])
		copy(ip[12:16], d4[:])
		copy(ip[16:20], s4[:])
		src = netip.AddrFrom4(d4)
	} else {
		if len(b) < at.l3+40 {
			return sent{}
		}
		ip := b[at.l3:]
		s6, d6 := [16]byte(ip[8:24]), [16]byte(ip[24:40])
		copy(ip[8:24], d6[:])
		copy(ip[24:40], s6[:])
		src = netip.AddrFrom16(d6)
	}
	if l4 := at.l4; l4 > 0 && l4+4 <= len(b) {
		switch at.proto {
		case packet.ProtoTCP, packet.ProtoUDP, packet.ProtoSCTP:
			sp, dp := [2]byte(b[l4:l4+2]), [2]byte(b[l4+2:l4+4])
			copy(b[l4:], dp[:])
			copy(b[l4+2:], sp[:])
			if at.proto == packet.ProtoTCP && l4+14 <= len(b) && b[l4+13] == 0x02 {
				b[l4+13] = 0x12
			}
		case packet.ProtoICMP:
			if b[l4] == 8 {
				b[l4] = 0
			}
		case packet.ProtoICMP6:
			if b[l4] == 128 {
				b[l4] = 129
			}
		}
	}
	copy(b[0:6], b[6:12])
	copy(b[6:12], g.endpointMAC(src))
	return sent{Packet{g.hookFor(src), b}, at}
}

// icmpError is an ICMP error (unreachable, time exceeded, parameter problem) about a recent
// IPv4 packet, or an ICMPv6 one (those and packet too big) about an IPv6 packet, sent back
// towards its source.
func (g *Gen) icmpError(s sent) sent {
	at := s.at
	b := s.Frame
	if at.inner != nil {
		at = *at.inner
	}
	if at.family == 6 {
		return g.icmp6Error(b, at)
	}
	if at.family != 4 || len(b) < at.l3+20 {
		return sent{}
	}
	quoted := b[at.l3:min(len(b), at.l3+int(b[at.l3]&0x0f)*4+8)]
	orig := b[at.l3:]
	from, to := netip.AddrFrom4([4]byte(orig[16:20])), netip.AddrFrom4([4]byte(orig[12:16]))
	if g.rng.IntN(3) == 0 {
		from = g.pick(gatewayIP, peerIP, netip.MustParseAddr("192.0.2.5"))
	}
	if g.rng.IntN(4) == 0 {
		to = g.addr(false) // an error for someone the quoted packet did not come from
	}
	icmp := make([]byte, 8, 8+len(quoted))
	icmp[0] = []byte{3, 11, 12}[g.rng.IntN(3)]
	icmp = append(icmp, quoted...)
	binary.BigEndian.PutUint16(icmp[2:], packet.Checksum(icmp))
	h := g.ipv4Header(from, to, packet.ProtoICMP, len(icmp))
	h[6], h[7] = 0, 0
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:], packet.Checksum(h))
	frame := make([]byte, 14, 14+len(h)+len(icmp))
	copy(frame[0:6], hostMAC)
	copy(frame[6:12], g.endpointMAC(from))
	binary.BigEndian.PutUint16(frame[12:], packet.EtherIPv4)
	frame = append(append(frame, h...), icmp...)
	return sent{Packet{g.hookFor(from), frame}, layout{l3: 14, l4: 14 + len(h), family: 4, proto: packet.ProtoICMP}}
}

// layoutOf finds the headers of a frame that nobody described (a fuzzing engine's): IPv4
// with its IHL, IPv6 past the extension headers the datapath walks, IP-in-IP's inner packet.
func layoutOf(b []byte) layout {
	at := layout{l3: 14}
	if len(b) < 14 {
		return at
	}
	switch binary.BigEndian.Uint16(b[12:]) {
	case packet.EtherIPv4:
		if len(b) < 34 {
			return at
		}
		at.family, at.proto = 4, b[23]
		if binary.BigEndian.Uint16(b[20:])&0x1fff == 0 {
			at.l4 = 14 + int(b[14]&0x0f)*4
		}
		if at.proto == packet.ProtoIPIP && at.l4 >= 34 && len(b) >= at.l4+20 {
			in := layoutOf(append(append([]byte(nil), b[:14]...), b[at.l4:]...))
			in.l3 += at.l4 - 14
			if in.l4 != 0 {
				in.l4 += at.l4 - 14
			}
			at.inner = &in
		}
	case packet.EtherIPv6:
		if len(b) < 54 {
			return at
		}
		at.family = 6
		next, off := b[20], 54
		for range 4 {
			if next != packet.ProtoHopOpts && next != packet.ProtoRouting && next != packet.ProtoDstOpts && next != packet.ProtoFrag6 {
				break
			}
			if len(b) < off+8 {
				return at
			}
			if next == packet.ProtoFrag6 {
				next, off = b[off], off+8
			} else {
				next, off = b[off], off+(int(b[off+1])+1)*8
			}
		}
		at.proto, at.l4 = next, off
	}
	return at
}

// Reply answers frame as the generator answers its own packets.
func (g *Gen) Reply(frame []byte) (Packet, bool) {
	s := g.reply(sent{Packet: Packet{Frame: frame}, at: layoutOf(frame)})
	return s.Packet, s.Frame != nil
}

// icmp6Error is an ICMPv6 error quoting the IPv6 packet of b at at.
func (g *Gen) icmp6Error(b []byte, at layout) sent {
	if len(b) < at.l3+40 {
		return sent{}
	}
	quoted := b[at.l3:min(len(b), at.l3+40+8+g.rng.IntN(40))]
	orig := b[at.l3:]
	from, to := netip.AddrFrom16([16]byte(orig[24:40])), netip.AddrFrom16([16]byte(orig[8:24]))
	if g.rng.IntN(3) == 0 {
		from = g.pick(netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("fe80::1"), pods[g.rng.IntN(len(pods))].ip6)
	}
	if g.rng.IntN(4) == 0 {
		to = g.addr(true) // an error for someone the quoted packet did not come from
	}
	typ := []uint8{packet.ICMP6DestUnreach, packet.ICMP6PacketTooBig, packet.ICMP6TimeExceeded, 4, 5}[g.rng.IntN(5)]
	body := binary.BigEndian.AppendUint32(nil, 1280)
	l4 := packet.ICMP6(typ, 0, append(body, quoted...))
	frame := packet.Eth(hostMAC, g.endpointMAC(from), packet.EtherIPv6,
		packet.IPv6{Src: from, Dst: to, Next: packet.ProtoICMP6}.Marshal(l4))
	return sent{Packet{g.hookFor(from), frame}, layout{l3: 14, l4: 14 + 40, family: 6, proto: packet.ProtoICMP6}}
}
