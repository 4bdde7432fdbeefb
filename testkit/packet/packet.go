// Package packet builds the raw frames that BPF unit tests feed to programs.
package packet

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// Ethertypes and IP protocols (IPv6 extension headers included): the one set the tests, the
// model and the fuzzer use.
const (
	EtherIPv4 = 0x0800
	EtherIPv6 = 0x86dd
	EtherARP  = 0x0806

	ProtoHopOpts = 0
	ProtoICMP    = 1
	ProtoIPIP    = 4
	ProtoIPv6    = 41 // IPv6 in IPv4 (6in4, RFC 4213)
	ProtoTCP     = 6
	ProtoUDP     = 17
	ProtoRouting = 43
	ProtoFrag6   = 44
	ProtoICMP6   = 58
	ProtoNoNext  = 59
	ProtoDstOpts = 60
	ProtoSCTP    = 132
)

// MAC parses a MAC address or panics.
func MAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// Eth prepends an Ethernet header to payload.
func Eth(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], dst)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:14], etherType)
	return append(b, payload...)
}

// IPv4 describes an IPv4 header.
type IPv4 struct {
	Src, Dst  netip.Addr
	Proto     uint8
	TTL       uint8
	Options   []byte // multiple of 4 bytes
	ID        uint16 // identification: the datagram a fragment belongs to
	MoreFrags bool
	FragOff   uint16 // in 8-byte units
}

// Marshal returns the header (with a valid checksum) followed by payload.
func (h IPv4) Marshal(payload []byte) []byte {
	hl := 20 + len(h.Options)
	b := make([]byte, hl, hl+len(payload))
	b[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(b[2:4], uint16(hl+len(payload)))
	binary.BigEndian.PutUint16(b[4:6], h.ID)
	frag := h.FragOff & 0x1fff
	if h.MoreFrags {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(b[6:8], frag)
	ttl := h.TTL
	if ttl == 0 {
		ttl = 64
	}
	b[8] = ttl
	b[9] = h.Proto
	src, dst := h.Src.As4(), h.Dst.As4()
	copy(b[12:16], src[:])
	copy(b[16:20], dst[:])
	copy(b[20:], h.Options)
	binary.BigEndian.PutUint16(b[10:12], Checksum(b))
	return append(b, payload...)
}

// IPv6 describes an IPv6 header.
type IPv6 struct {
	Src, Dst netip.Addr
	Next     uint8
	HopLimit uint8
}

// Marshal returns the header followed by payload.
func (h IPv6) Marshal(payload []byte) []byte {
	b := make([]byte, 40, 40+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(len(payload)))
	b[6] = h.Next
	hl := h.HopLimit
	if hl == 0 {
		hl = 64
	}
	b[7] = hl
	src, dst := h.Src.As16(), h.Dst.As16()
	copy(b[8:24], src[:])
	copy(b[24:40], dst[:])
	return append(b, payload...)
}

// Checksum is the Internet checksum of b.
func Checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// UDP returns a UDP header and payload (checksum left zero).
func UDP(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

// TCP returns a 20-byte TCP header with a SYN.
func TCP(sport, dport uint16) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12] = 5 << 4
	b[13] = 0x02
	binary.BigEndian.PutUint16(b[14:], 65535)
	return b
}

// SCTP returns an SCTP common header with one INIT chunk header.
func SCTP(sport, dport uint16) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12] = 1 // INIT
	binary.BigEndian.PutUint16(b[14:], 4)
	return b
}

// ICMPEcho returns an ICMP (or ICMPv6 with typ 128) echo request.
func ICMPEcho(typ uint8) []byte {
	b := make([]byte, 16)
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], 1)
	binary.BigEndian.PutUint16(b[6:], 1)
	binary.BigEndian.PutUint16(b[2:], Checksum(b))
	return b
}

// ICMPv6 message types the datapath tells apart (RFC 4443, 4861, 3810).
const (
	ICMP6DestUnreach   = 1
	ICMP6PacketTooBig  = 2
	ICMP6TimeExceeded  = 3
	ICMP6EchoRequest   = 128
	ICMP6EchoReply     = 129
	ICMP6RouterSolicit = 133
	ICMP6NeighSolicit  = 135
	ICMP6NeighAdvert   = 136
	ICMP6MLDv2Report   = 143
)

// Neighbour discovery option types (RFC 4861 4.6).
const (
	NDOptSourceLLAddr = 1
	NDOptTargetLLAddr = 2
)

// ICMP6 returns an ICMPv6 message: type, code, a zero checksum (the datapath reads none) and
// body.
func ICMP6(typ, code uint8, body []byte) []byte {
	return append([]byte{typ, code, 0, 0}, body...)
}

// NDOption returns a neighbour discovery option carrying data, padded to a multiple of 8.
func NDOption(typ uint8, data []byte) []byte {
	n := (2 + len(data) + 7) / 8 * 8
	b := make([]byte, n)
	b[0], b[1] = typ, byte(n/8)
	copy(b[2:], data)
	return b
}

// NeighAdvert returns a solicited, overriding Neighbor Advertisement for target, with opts.
func NeighAdvert(target netip.Addr, opts ...[]byte) []byte {
	body := make([]byte, 20)
	body[0] = 0x60 // S and O
	t := target.As16()
	copy(body[4:], t[:])
	for _, o := range opts {
		body = append(body, o...)
	}
	return ICMP6(ICMP6NeighAdvert, 0, body)
}

// NeighSolicit returns a Neighbor Solicitation for target, with opts.
func NeighSolicit(target netip.Addr, opts ...[]byte) []byte {
	body := make([]byte, 20)
	t := target.As16()
	copy(body[4:], t[:])
	for _, o := range opts {
		body = append(body, o...)
	}
	return ICMP6(ICMP6NeighSolicit, 0, body)
}

// ARP returns an Ethernet/IPv4 ARP body.
func ARP(op uint16, sha net.HardwareAddr, sip netip.Addr, tha net.HardwareAddr, tip netip.Addr) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1)
	binary.BigEndian.PutUint16(b[2:], EtherIPv4)
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], op)
	copy(b[8:14], sha)
	s, t := sip.As4(), tip.As4()
	copy(b[14:18], s[:])
	copy(b[18:24], tha)
	copy(b[24:28], t[:])
	return b
}
