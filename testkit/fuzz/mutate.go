package fuzz

import (
	"encoding/binary"
	"slices"

	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// A mutation changes one thing of a frame whose headers are at at; it returns the frame
// (which it may reallocate). Each aims at a field the parser reads: every length, the
// fragment bits, the extension-header chain, the version, TTL, protocol and ethertype.
type mutation func(g *Gen, b []byte, at layout) []byte

var mutations = []mutation{
	mutIHL, mutTotalLength, mutPayloadLength, mutDataOffset, mutUDPLength, mutFragment,
	mutFragmentHeader, mutExtensionHeader, mutExtensionLength, mutTruncate, mutPad, mutFlip,
	mutTTL, mutVersion, mutProtocol, mutEthertype, mutSourceMAC, mutIPv4Options,
}

// mutate applies one to three mutations, each to the outer or (IP-in-IP) the inner packet.
func (g *Gen) mutate(b []byte, at layout) []byte {
	for range 1 + g.rng.IntN(3) {
		target := at
		if at.inner != nil && g.rng.IntN(3) > 0 {
			target = *at.inner
		}
		b = mutations[g.rng.IntN(len(mutations))](g, b, target)
		if len(b) > maxFrame {
			b = b[:maxFrame]
		}
	}
	return b
}

// has says whether b reaches n bytes.
func has(b []byte, n int) bool { return n <= len(b) }

// lengthValue is a value for a length field whose honest value is honest: off by a little,
// zero, the maximum or anything.
func (g *Gen) lengthValue(honest int) uint16 {
	switch g.rng.IntN(6) {
	case 0:
		return 0
	case 1:
		return 0xffff
	case 2:
		return uint16(g.rng.Uint32())
	}
	return uint16(honest + g.rng.IntN(17) - 8)
}

func mutIHL(g *Gen, b []byte, at layout) []byte {
	if at.family == 4 && has(b, at.l3+1) {
		b[at.l3] = b[at.l3]&0xf0 | byte(g.rng.IntN(16))
	}
	return b
}

func mutTotalLength(g *Gen, b []byte, at layout) []byte {
	if at.family == 4 && has(b, at.l3+4) {
		binary.BigEndian.PutUint16(b[at.l3+2:], g.lengthValue(len(b)-at.l3))
	}
	return b
}

func mutPayloadLength(g *Gen, b []byte, at layout) []byte {
	if at.family == 6 && has(b, at.l3+6) {
		binary.BigEndian.PutUint16(b[at.l3+4:], g.lengthValue(len(b)-at.l3-40))
	}
	return b
}

func mutDataOffset(g *Gen, b []byte, at layout) []byte {
	if at.proto == packet.ProtoTCP && at.l4 != 0 && has(b, at.l4+13) {
		b[at.l4+12] = byte(g.rng.IntN(16))<<4 | b[at.l4+12]&0x0f
	}
	return b
}

func mutUDPLength(g *Gen, b []byte, at layout) []byte {
	if at.proto == packet.ProtoUDP && at.l4 != 0 && has(b, at.l4+6) {
		binary.BigEndian.PutUint16(b[at.l4+4:], g.lengthValue(len(b)-at.l4))
	}
	return b
}

// mutFragment sets the IPv4 fragment bits: more fragments, an offset, both, DF, or the
// reserved bit.
func mutFragment(g *Gen, b []byte, at layout) []byte {
	if at.family == 4 && has(b, at.l3+8) {
		v := []uint16{0x2000, uint16(1 + g.rng.IntN(0x1fff)), 0x2000 | uint16(1+g.rng.IntN(64)), 0x4000, 0x8000, 0}[g.rng.IntN(6)]
		binary.BigEndian.PutUint16(b[at.l3+6:], v)
	}
	return b
}

// insertIPv6Ext puts ext right after the fixed IPv6 header, chaining it in and counting it
// in the payload length.
func insertIPv6Ext(b []byte, at layout, kind uint8, ext []byte) []byte {
	if at.family != 6 || !has(b, at.l3+40) {
		return b
	}
	ext[0] = b[at.l3+6]
	b[at.l3+6] = kind
	plen := binary.BigEndian.Uint16(b[at.l3+4:])
	binary.BigEndian.PutUint16(b[at.l3+4:], plen+uint16(len(ext)))
	return slices.Insert(b, at.l3+40, ext...)
}

func mutFragmentHeader(g *Gen, b []byte, at layout) []byte {
	ext := make([]byte, 8)
	off := uint16(0)
	if g.rng.IntN(2) == 0 {
		off = uint16(g.rng.IntN(0x2000))
	}
	binary.BigEndian.PutUint16(ext[2:], off<<3|uint16(g.rng.IntN(8)))
	return insertIPv6Ext(b, at, packet.ProtoFrag6, ext)
}

func mutExtensionHeader(g *Gen, b []byte, at layout) []byte {
	units := g.rng.IntN(4)
	ext := make([]byte, 8*(units+1))
	ext[1] = byte(units)
	kind := []uint8{packet.ProtoHopOpts, packet.ProtoRouting, packet.ProtoDstOpts}[g.rng.IntN(3)]
	return insertIPv6Ext(b, at, kind, ext)
}

// mutExtensionLength inserts an extension header whose length byte lies.
func mutExtensionLength(g *Gen, b []byte, at layout) []byte {
	ext := make([]byte, 8)
	ext[1] = byte(g.rng.Uint32())
	kind := []uint8{packet.ProtoHopOpts, packet.ProtoRouting, packet.ProtoDstOpts}[g.rng.IntN(3)]
	return insertIPv6Ext(b, at, kind, ext)
}

// mutTruncate cuts the frame short; half the time the IP length fields are made to agree so
// that only the layers beyond are short.
func mutTruncate(g *Gen, b []byte, at layout) []byte {
	if len(b) <= 14 {
		return b
	}
	n := 14 + g.rng.IntN(len(b)-14)
	b = b[:n]
	if g.rng.IntN(2) == 0 {
		switch {
		case at.family == 4 && has(b, at.l3+4):
			binary.BigEndian.PutUint16(b[at.l3+2:], uint16(n-at.l3))
		case at.family == 6 && has(b, at.l3+6):
			binary.BigEndian.PutUint16(b[at.l3+4:], uint16(max(0, n-at.l3-40)))
		}
	}
	return b
}

// mutPad adds bytes past the IP datagram, as Ethernet padding does.
func mutPad(g *Gen, b []byte, _ layout) []byte {
	pad := make([]byte, 1+g.rng.IntN(40))
	if g.rng.IntN(2) == 0 {
		for i := range pad {
			pad[i] = byte(g.rng.Uint32())
		}
	}
	return append(b, pad...)
}

func mutFlip(g *Gen, b []byte, _ layout) []byte {
	for range 1 + g.rng.IntN(3) {
		b[g.rng.IntN(len(b))] = byte(g.rng.Uint32())
	}
	return b
}

// setL3Byte sets the IP header's byte at off4 (IPv4) or off6 (IPv6), when the packet has it.
func setL3Byte(b []byte, at layout, off4, off6 int, v byte) []byte {
	switch {
	case at.family == 4 && has(b, at.l3+off4+1):
		b[at.l3+off4] = v
	case at.family == 6 && has(b, at.l3+off6+1):
		b[at.l3+off6] = v
	}
	return b
}

// mutTTL sets the IPv4 TTL or the IPv6 hop limit.
func mutTTL(g *Gen, b []byte, at layout) []byte {
	return setL3Byte(b, at, 8, 7, []byte{0, 1, 2, 255}[g.rng.IntN(4)])
}

func mutVersion(g *Gen, b []byte, at layout) []byte {
	if at.family != 0 && has(b, at.l3+1) {
		b[at.l3] = byte(g.rng.IntN(16))<<4 | b[at.l3]&0x0f
	}
	return b
}

func mutProtocol(g *Gen, b []byte, at layout) []byte {
	proto := []byte{packet.ProtoHopOpts, packet.ProtoICMP, packet.ProtoIPIP, packet.ProtoTCP, packet.ProtoUDP, packet.ProtoRouting, packet.ProtoFrag6,
		packet.ProtoICMP6, packet.ProtoNoNext, packet.ProtoDstOpts, packet.ProtoSCTP, packet.ProtoIPv6, byte(g.rng.Uint32())}[g.rng.IntN(13)]
	return setL3Byte(b, at, 9, 6, proto)
}

func mutEthertype(g *Gen, b []byte, _ layout) []byte {
	t := []uint16{packet.EtherIPv4, packet.EtherIPv6, packet.EtherARP, 0x8100, 0x88cc, 0x0600, uint16(g.rng.Uint32())}[g.rng.IntN(7)]
	binary.BigEndian.PutUint16(b[12:], t)
	return b
}

func mutSourceMAC(g *Gen, b []byte, _ layout) []byte {
	copy(b[6:12], []byte{2, 0, 0, 0, 0, byte(0x0a + g.rng.IntN(8))})
	return b
}

// mutIPv4Options inserts options after the IPv4 header, with the IHL and total length
// adjusted (or, a third of the time, left to lie).
func mutIPv4Options(g *Gen, b []byte, at layout) []byte {
	if at.family != 4 || !has(b, at.l3+20) {
		return b
	}
	hlen := int(b[at.l3]&0x0f) * 4
	n := 4 * (1 + g.rng.IntN(10))
	if hlen < 20 || hlen+n > 60 || !has(b, at.l3+hlen) {
		return b
	}
	opts := make([]byte, n)
	for i := range opts {
		opts[i] = []byte{0, 1, 7, 68, byte(g.rng.Uint32())}[g.rng.IntN(5)]
	}
	b = slices.Insert(b, at.l3+hlen, opts...)
	if g.rng.IntN(3) > 0 {
		b[at.l3] = b[at.l3]&0xf0 | byte((hlen+n)/4)
		tot := binary.BigEndian.Uint16(b[at.l3+2:])
		binary.BigEndian.PutUint16(b[at.l3+2:], tot+uint16(n))
	}
	return b
}
