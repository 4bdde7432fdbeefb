package fuzz

import (
	"encoding/binary"

	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// laterFragment is a later fragment of a recent first fragment's datagram (IPv4 with more
// fragments and offset 0, or IPv6 whose fragment header has offset 0): the same addresses,
// identification and protocol, an offset past the first, and payload bytes where the L4
// header was. The datapath must give it its first's ports. Without a first fragment among the
// recent packets it is nothing.
func (g *Gen) laterFragment() sent {
	var firsts []sent
	for _, s := range g.recent {
		if s.at.inner == nil && s.at.l4 != 0 && fragmentHeader(s.Frame, s.at) > 0 {
			firsts = append(firsts, s)
		}
	}
	if len(firsts) == 0 {
		return sent{}
	}
	s := firsts[g.rng.IntN(len(firsts))]
	at := s.at
	at.l4 = 0
	payload := make([]byte, 8+g.rng.IntN(200))
	for i := range payload {
		payload[i] = byte(g.rng.Uint32())
	}
	off := uint16(1 + g.rng.IntN(200))
	more := uint16(g.rng.IntN(2))
	b := append([]byte(nil), s.Frame...)
	hdr := fragmentHeader(b, s.at)
	if at.family == 4 {
		b = append(b[:hdr], payload...)
		ip := b[at.l3:hdr]
		binary.BigEndian.PutUint16(ip[2:], uint16(len(b)-at.l3))
		binary.BigEndian.PutUint16(ip[6:], more<<13|off)
		binary.BigEndian.PutUint16(ip[10:], 0)
		binary.BigEndian.PutUint16(ip[10:], packet.Checksum(ip))
	} else {
		// hdr is the fragment header's offset; what followed it (the L4 header, or more
		// extension headers) was in the first fragment only.
		binary.BigEndian.PutUint16(b[hdr+2:], off<<3|more)
		b = append(b[:hdr+8], payload...)
		binary.BigEndian.PutUint16(b[at.l3+4:], uint16(len(b)-at.l3-40))
	}
	return sent{Packet{s.Hook, b}, at}
}

// fragmentHeader says where the IP header that makes b a first fragment ends (IPv4: its
// header's end; IPv6: the fragment header's start), or 0 when b is not one.
func fragmentHeader(b []byte, at layout) int {
	switch at.family {
	case 4:
		if len(b) < at.l3+20 {
			return 0
		}
		ip := b[at.l3:]
		hlen := int(ip[0]&0x0f) * 4
		if frag := binary.BigEndian.Uint16(ip[6:]); frag&0x2000 == 0 || frag&0x1fff != 0 || hlen < 20 || len(b) < at.l3+hlen {
			return 0
		}
		return at.l3 + hlen
	case 6:
		if len(b) < at.l3+40 {
			return 0
		}
		next, off := b[at.l3+6], at.l3+40
		for range 4 { // the parser's MAX_IPV6_EXT
			if len(b) < off+8 {
				return 0
			}
			switch next {
			case packet.ProtoFrag6:
				if binary.BigEndian.Uint16(b[off+2:])&0xfff8 != 0 {
					return 0
				}
				return off
			case packet.ProtoHopOpts, packet.ProtoRouting, packet.ProtoDstOpts:
				next, off = b[off], off+(int(b[off+1])+1)*8
			default:
				return 0
			}
		}
	}
	return 0
}
