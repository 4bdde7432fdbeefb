package model

import (
	"encoding/binary"
	"net/netip"

	"github.com/ebpfnet/ebpfnet/maps"
	wire "github.com/ebpfnet/ebpfnet/testkit/packet"
)

// Address families and header sizes the datapath knows (parse.h); ethertypes and protocols
// are package packet's, imported as wire (this package's packet is struct packet of parse.h).
const (
	afInet  = 2
	afInet6 = 10

	ethHeaderLen   = 14
	ipv4HeaderLen  = 20
	udpHeaderLen   = 8
	vxlanHeaderLen = 8
	ipv6HeaderLen  = 40
	// maxIPv6Ext is how many extension headers the parser walks before it takes what
	// follows for L4 (MAX_IPV6_EXT).
	maxIPv6Ext = 4

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// packet is what parsing learned about a frame (struct packet in parse.h).
type packet struct {
	len          int
	family       uint8 // afInet, afInet6, or 0 for ARP
	l4Proto      uint8
	l3Off        int
	l4Off        int // 0 when there is no L4 header to read (later fragments)
	ttl          uint8
	fragment     bool
	fragID       uint32 // the datagram's identification, when fragment
	sport, dport uint16
	saddr, daddr netip.Addr
	smac         [6]byte
	arpSHA       [6]byte
	arpSIP       netip.Addr
	tcpFlags     uint8
	icmpType     uint8
	icmpID       uint16
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

// parse reads a frame as parse() in parse.h does; it returns next or a drop reason.
func parse(b []byte) (packet, maps.Reason) {
	p := packet{len: len(b)}
	if len(b) < ethHeaderLen {
		return p, maps.ReasonMalformed
	}
	copy(p.smac[:], b[6:12])
	p.l3Off = ethHeaderLen
	switch be16(b[12:14]) {
	case wire.EtherIPv4:
		return p, parseIPv4(b, &p)
	case wire.EtherIPv6:
		return p, parseIPv6(b, &p)
	case wire.EtherARP:
		return p, parseARP(b, &p)
	}
	return p, maps.ReasonUnsupportedL3
}

// parseIPv4 checks the header's lengths against each other and the frame. The L4 header
// must lie inside the datagram (the total length), not merely inside the frame.
func parseIPv4(b []byte, p *packet) maps.Reason {
	if len(b) < p.l3Off+ipv4HeaderLen {
		return maps.ReasonMalformed
	}
	ip := b[p.l3Off:]
	hlen, tot := int(ip[0]&0x0f)*4, int(be16(ip[2:4]))
	if ip[0]>>4 != 4 || hlen < ipv4HeaderLen || tot < hlen {
		return maps.ReasonMalformed
	}
	if p.l3Off+hlen > len(b) || p.l3Off+tot > p.len {
		return maps.ReasonMalformed
	}
	p.family = afInet
	p.l4Proto = ip[9]
	p.ttl = ip[8]
	p.saddr = netip.AddrFrom4([4]byte(ip[12:16]))
	p.daddr = netip.AddrFrom4([4]byte(ip[16:20]))
	if frag := be16(ip[6:8]); frag&0x3fff != 0 {
		p.fragment = true
		p.fragID = uint32(be16(ip[4:6]))
		if frag&0x1fff != 0 {
			return next // only the first fragment carries the L4 header
		}
	}
	p.l4Off = p.l3Off + hlen
	return parseL4(b[:p.l3Off+tot], p)
}

func isIPv6Ext(proto uint8) bool {
	return proto == wire.ProtoHopOpts || proto == wire.ProtoRouting || proto == wire.ProtoDstOpts || proto == wire.ProtoFrag6
}

// parseIPv6 walks up to maxIPv6Ext extension headers; what follows them is taken for L4. A
// payload length of 0 (a jumbogram, or a BIG TCP packet) leaves the frame as the bound.
func parseIPv6(b []byte, p *packet) maps.Reason {
	if len(b) < p.l3Off+ipv6HeaderLen {
		return maps.ReasonMalformed
	}
	ip := b[p.l3Off:]
	plen := int(be16(ip[4:6]))
	if ip[0]>>4 != 6 || p.l3Off+ipv6HeaderLen+plen > p.len {
		return maps.ReasonMalformed
	}
	end := len(b)
	if plen != 0 {
		end = p.l3Off + ipv6HeaderLen + plen
	}
	p.family = afInet6
	p.ttl = ip[7]
	p.saddr = netip.AddrFrom16([16]byte(ip[8:24]))
	p.daddr = netip.AddrFrom16([16]byte(ip[24:40]))
	nextHdr := ip[6]
	off := p.l3Off + ipv6HeaderLen
	for range maxIPv6Ext {
		if !isIPv6Ext(nextHdr) {
			break
		}
		if off+8 > end {
			return maps.ReasonMalformed
		}
		ext := b[off:]
		if nextHdr == wire.ProtoFrag6 {
			p.fragment = true
			p.fragID = binary.BigEndian.Uint32(ext[4:8])
			if be16(ext[2:4])&0xfff8 != 0 {
				p.l4Proto = ext[0] // a later fragment: no L4 header here
				return next
			}
			nextHdr = ext[0]
			off += 8
		} else {
			nextHdr = ext[0]
			off += (int(ext[1]) + 1) * 8
		}
	}
	p.l4Proto = nextHdr
	p.l4Off = off
	return parseL4(b[:end], p)
}

// parseL4 reads ports, TCP flags and the ICMP type and echo identifier; b ends where the
// datagram does.
func parseL4(b []byte, p *packet) maps.Reason {
	off := p.l4Off
	switch p.l4Proto {
	case wire.ProtoTCP:
		if off+20 > len(b) {
			return maps.ReasonMalformed
		}
		doff := int(b[off+12] >> 4)
		if doff < 5 || off+doff*4 > len(b) {
			return maps.ReasonMalformed
		}
		p.sport, p.dport = be16(b[off:]), be16(b[off+2:])
		p.tcpFlags = b[off+13]
	case wire.ProtoUDP:
		if off+8 > len(b) {
			return maps.ReasonMalformed
		}
		p.sport, p.dport = be16(b[off:]), be16(b[off+2:])
	case wire.ProtoSCTP:
		if off+12 > len(b) {
			return maps.ReasonMalformed
		}
		p.sport, p.dport = be16(b[off:]), be16(b[off+2:])
	case wire.ProtoICMP, wire.ProtoICMP6:
		if off+8 > len(b) {
			return maps.ReasonMalformed
		}
		p.icmpType = b[off]
		p.icmpID = be16(b[off+4:])
	}
	return next
}

// parseARP accepts only Ethernet/IPv4 ARP and keeps the sender, which anti-spoofing checks.
func parseARP(b []byte, p *packet) maps.Reason {
	if len(b) < p.l3Off+8+20 {
		return maps.ReasonMalformed
	}
	a := b[p.l3Off:]
	if be16(a[0:2]) != 1 || be16(a[2:4]) != wire.EtherIPv4 || a[4] != 6 || a[5] != 4 {
		return maps.ReasonMalformed
	}
	copy(p.arpSHA[:], a[8:14])
	p.arpSIP = netip.AddrFrom4([4]byte(a[14:18]))
	return next
}

// fragKey names a fragmented datagram (struct frag_key).
type fragKey struct {
	family, proto uint8
	id            uint32
	saddr, daddr  netip.Addr
}

// fragL4 is what a first fragment's L4 header said (struct frag_l4).
type fragL4 struct {
	sport, dport uint16
	icmpID       uint16
	icmpType     uint8
}

// parse is parse_skb: parse, then a first fragment's ports are remembered under its datagram
// and a later fragment takes them (track_fragment).
func (r *run) parse(b []byte) (packet, maps.Reason) {
	p, reason := parse(b)
	if reason == next {
		r.family = p.family
	}
	if reason != next || !p.fragment || p.family == 0 {
		return p, reason
	}
	k := fragKey{family: p.family, proto: p.l4Proto, id: p.fragID, saddr: p.saddr, daddr: p.daddr}
	if p.l4Off != 0 {
		r.m.frags[k] = fragL4{sport: p.sport, dport: p.dport, icmpID: p.icmpID, icmpType: p.icmpType}
		return p, reason
	}
	if f, ok := r.m.frags[k]; ok {
		p.sport, p.dport, p.icmpID, p.icmpType = f.sport, f.dport, f.icmpID, f.icmpType
		r.laterFragment = true
	}
	return p, reason
}
