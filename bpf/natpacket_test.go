package bpf_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// Frames with real L4 checksums, and the checks that a translation kept them right: the
// Service and NAT tests read what a packet became from these.

// TCP flags the tests send.
const (
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// flow is a packet's tuple as it is on the wire; an ICMP echo carries its identifier as
// both ports, as the datapath's conntrack and nat keys do.
type flow struct {
	proto    uint8
	src, dst netip.AddrPort
}

func (f flow) String() string {
	return fmt.Sprintf("proto %d %s -> %s", f.proto, f.src, f.dst)
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// tcpSeg is a 20-byte TCP header with the given flags (packet.TCP sends a SYN).
func tcpSeg(sport, dport uint16, flags byte) []byte {
	b := packet.TCP(sport, dport)
	b[13] = flags
	return b
}

// echo is an ICMP echo request (typ 8) or reply (typ 0) with its checksum set.
func echo(typ uint8, id, seq uint16) []byte {
	b := make([]byte, 16)
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], "ebpfnet!")
	binary.BigEndian.PutUint16(b[2:], packet.Checksum(b))
	return b
}

// frame builds Ethernet + IPv4 from srcMAC with a valid TCP or UDP checksum.
func frame(srcMAC net.HardwareAddr, src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	b := packet.Eth(nodeMacA, srcMAC, packet.EtherIPv4,
		packet.IPv4{Src: src, Dst: dst, Proto: proto}.Marshal(append([]byte(nil), l4...)))
	if off := l4CsumOffset(proto); off >= 0 {
		ip, seg := ipv4Parts(b)
		binary.BigEndian.PutUint16(seg[off:], l4Checksum(ip, seg))
	}
	return b
}

// withoutUDPChecksum returns a UDP frame whose checksum is 0: "none" in IPv4.
func withoutUDPChecksum(f []byte) []byte {
	b := append([]byte(nil), f...)
	_, seg := ipv4Parts(b)
	seg[6], seg[7] = 0, 0
	return b
}

// l4CsumOffset is where the checksum sits in a TCP or UDP header, or -1.
func l4CsumOffset(proto uint8) int {
	switch proto {
	case packet.ProtoTCP:
		return 16
	case packet.ProtoUDP:
		return 6
	}
	return -1
}

// ipv4Parts splits an Ethernet + IPv4 frame into the IP header and the L4 bytes the IP
// total length covers (the test-run output buffer may run past it).
func ipv4Parts(f []byte) (ip, l4 []byte) {
	ihl := int(f[14]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(f[16:18]))
	return f[14 : 14+ihl], f[14+ihl : 14+total]
}

// l4Checksum is the TCP or UDP checksum of seg (its checksum field taken as zero) under the
// pseudo header of ip.
func l4Checksum(ip, seg []byte) uint16 {
	off := l4CsumOffset(ip[9])
	b := make([]byte, 0, 12+len(seg))
	b = append(b, ip[12:20]...)
	b = append(b, 0, ip[9])
	b = binary.BigEndian.AppendUint16(b, uint16(len(seg)))
	b = append(b, seg...)
	b[12+off], b[12+off+1] = 0, 0
	sum := packet.Checksum(b)
	if sum == 0 && ip[9] == packet.ProtoUDP {
		return 0xffff // UDP sends a computed 0 as all ones: 0 means "no checksum"
	}
	return sum
}

// laterFragment says whether an IPv4 header is of a fragment past the first: no L4 header.
func laterFragment(ip []byte) bool { return binary.BigEndian.Uint16(ip[6:8])&0x1fff != 0 }

// fragmented says whether an IPv4 header is of any fragment: its L4 checksum covers bytes
// that other fragments carry.
func fragmented(ip []byte) bool { return binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0 }

// flowOf reads the tuple of an Ethernet + IPv4 frame; a later fragment's ports are 0.
func flowOf(f []byte) flow {
	ip, l4 := ipv4Parts(f)
	fl := flow{proto: ip[9]}
	src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	var sport, dport uint16
	switch {
	case laterFragment(ip):
	case fl.proto == packet.ProtoICMP:
		sport = binary.BigEndian.Uint16(l4[4:6])
		dport = sport
	default:
		sport, dport = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	}
	fl.src, fl.dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	return fl
}

// checkChecksums says whether out's IPv4 header and L4 checksums are right. A UDP datagram
// that came without a checksum (0) must leave without one; one that had a checksum must keep
// one (never 0). A fragment's L4 checksum is checked on the reassembled datagram
// (reassembled).
func checkChecksums(tb testing.TB, in, out []byte) {
	tb.Helper()
	ip, l4 := ipv4Parts(out)
	if packet.Checksum(ip) != 0 {
		tb.Errorf("IPv4 header checksum %#04x invalid", binary.BigEndian.Uint16(ip[10:12]))
	}
	if fragmented(ip) {
		return
	}
	switch ip[9] {
	case packet.ProtoTCP, packet.ProtoUDP:
		off := l4CsumOffset(ip[9])
		got := binary.BigEndian.Uint16(l4[off:])
		if ip[9] == packet.ProtoUDP {
			_, inL4 := ipv4Parts(in)
			if had := binary.BigEndian.Uint16(inL4[off:]); had == 0 || got == 0 {
				if had != got {
					tb.Errorf("UDP checksum %#04x, came as %#04x: 0 (none) must stay 0 and a checksum must not become 0", got, had)
				}
				return
			}
		}
		if want := l4Checksum(ip, l4); got != want {
			tb.Errorf("L4 (proto %d) checksum %#04x, want %#04x", ip[9], got, want)
		}
	case packet.ProtoICMP:
		if packet.Checksum(l4) != 0 {
			tb.Errorf("ICMP checksum %#04x invalid", binary.BigEndian.Uint16(l4[2:4]))
		}
	}
}

// outCheck inspects a packet as it left a program.
type outCheck func(tb testing.TB, out []byte)

// leaves: the packet left with exactly this tuple.
func leaves(want flow) outCheck {
	return func(tb testing.TB, out []byte) {
		tb.Helper()
		if got := flowOf(out); got != want {
			tb.Errorf("left as %s\n            want %s", got, want)
		}
	}
}

// sentTo: the frame's destination MAC.
func sentTo(mac net.HardwareAddr) outCheck {
	return func(tb testing.TB, out []byte) {
		tb.Helper()
		if !bytes.Equal(out[0:6], mac) {
			tb.Errorf("destination MAC %s, want %s", net.HardwareAddr(out[0:6]), mac)
		}
	}
}

// ttlIs: the IPv4 TTL.
func ttlIs(ttl uint8) outCheck {
	return func(tb testing.TB, out []byte) {
		tb.Helper()
		if out[14+8] != ttl {
			tb.Errorf("TTL %d, want %d", out[14+8], ttl)
		}
	}
}

// udpChecksumIs: the UDP checksum field, exactly.
func udpChecksumIs(want uint16) outCheck {
	return func(tb testing.TB, out []byte) {
		tb.Helper()
		_, l4 := ipv4Parts(out)
		if got := binary.BigEndian.Uint16(l4[6:8]); got != want {
			tb.Errorf("UDP checksum %#04x, want %#04x", got, want)
		}
	}
}

// TestNATPacketHelpers keeps the checksum helpers honest: a frame built here is valid, a
// flipped byte is caught.
func TestNATPacketHelpers(t *testing.T) {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for _, f := range [][]byte{
		frame(macA, a, b, packet.ProtoTCP, tcpSeg(1, 2, tcpSYN)),
		frame(macA, a, b, packet.ProtoUDP, packet.UDP(1, 2, []byte("x"))),
		frame(macA, a, b, packet.ProtoICMP, echo(8, 7, 1)),
	} {
		checkChecksums(t, f, f)
		bad := append([]byte(nil), f...)
		bad[len(bad)-1] ^= 0x40
		var rec recorder
		checkChecksums(&rec, f, bad)
		if !rec.failed {
			t.Errorf("proto %d: a corrupted payload passed the checksum check", f[14+9])
		}
	}
	if got := flowOf(frame(macA, a, b, packet.ProtoICMP, echo(8, 7, 1))); got != (flow{packet.ProtoICMP, ap("10.0.0.1:7"), ap("10.0.0.2:7")}) {
		t.Errorf("flowOf icmp = %s", got)
	}
}

// recorder is a testing.TB that only remembers whether it was failed.
type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Errorf(string, ...any) { r.failed = true }

// zeroSumPayload is a two-byte UDP payload that makes the checksum of a datagram with tuple
// f come out as zero, which UDP must send as 0xffff.
func zeroSumPayload(f flow) []byte {
	b := frame(macA, f.src.Addr(), f.dst.Addr(), packet.ProtoUDP, packet.UDP(f.src.Port(), f.dst.Port(), []byte{0, 0}))
	ip, seg := ipv4Parts(b)
	c := l4Checksum(ip, seg) // with the payload word 0: adding exactly c makes the sum all ones
	return binary.BigEndian.AppendUint16(nil, c)
}
