package bpf_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// VXLAN over an IPv6 underlay, on loadNode6's node (nodeIP6 on the underlay): a peer node known
// by its IPv6 address owns an IPv4 and an IPv6 pod CIDR. The outer headers expected here are
// RFC 7348's over RFC 8200's, written out, and the UDP checksum is summed here.

var (
	peerIP6     = netip.MustParseAddr("fd00:250::2") // the peer node, on the underlay's link
	strangerIP6 = netip.MustParseAddr("fd00:250::9") // on the link, no node of the cluster
	v4OnPeer6   = netip.MustParseAddr("10.244.6.5")  // a pod of the peer's IPv4 pod CIDR
	v6OnPeer6   = netip.MustParseAddr("fd00:244:0:6::5")
)

// loadVXLAN6 is loadNode6 with routes to the peer's pod CIDRs by its IPv6 address, the peer's
// address in the ipcache as a node's, and its neighbour entry on the underlay.
func loadVXLAN6(t *testing.T) *svcNode {
	t.Helper()
	n := loadNode6(t)
	link, err := n.ns.NL.LinkByName("underlay")
	must(t, err)
	must(t, n.ns.NL.NeighAdd(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V6,
		State: netlink.NUD_PERMANENT, IP: peerIP6.AsSlice(), HardwareAddr: peerMAC}))
	for _, r := range []maps.Route{
		{Prefix: netip.MustParsePrefix("10.244.6.0/24"), NodeIP: peerIP6, Mode: maps.ModeVXLAN},
		{Prefix: netip.MustParsePrefix("fd00:244:0:6::/64"), NodeIP: peerIP6, Mode: maps.ModeVXLAN},
	} {
		must(t, n.Routes().Upsert(r))
	}
	must(t, n.IPCache().Upsert(maps.IPCacheEntry{Prefix: netip.PrefixFrom(peerIP6, 128), Identity: maps.IdentityRemoteNode}))
	return n
}

// udp6Checksum is the checksum a UDP datagram from src to dst must carry (RFC 8200 8.1), its
// own checksum field taken as zero; 0 comes out as 0xffff.
func udp6Checksum(src, dst netip.Addr, seg []byte) uint16 {
	s, d := src.As16(), dst.As16()
	b := append(append([]byte(nil), s[:]...), d[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(seg)))
	b = append(append(b, 0, 0, 0, packet.ProtoUDP), seg...)
	b[40+6], b[40+7] = 0, 0
	if c := packet.Checksum(b); c != 0 {
		return c
	}
	return 0xffff
}

// vxlan6Frame is what a node sends over the IPv6 underlay from src to dst: UDP to dport with a
// right checksum, VXLAN with flags and vni, and the inner Ethernet frame carrying inner.
func vxlan6Frame(src, dst netip.Addr, dport uint16, flags byte, vni uint32, innerType uint16, inner []byte) []byte {
	hdr := make([]byte, 8)
	hdr[0] = flags
	binary.BigEndian.PutUint32(hdr[4:], vni<<8)
	payload := append(hdr, packet.Eth(packet.MAC("0e:00:00:00:00:01"), packet.MAC("0e:00:00:00:00:02"), innerType, inner)...)
	seg := packet.UDP(51234, dport, payload)
	binary.BigEndian.PutUint16(seg[6:], udp6Checksum(src, dst, seg))
	return packet.Eth(underlayMAC, peerMAC, packet.EtherIPv6, packet.IPv6{Src: src, Dst: dst, Next: packet.ProtoUDP}.Marshal(seg))
}

// wantVXLAN6 checks a frame encapsulated towards the peer over IPv6 from in (inner, the inner
// packet it must carry, of ethertype innerType): every outer field, the VNI and the UDP
// checksum.
func wantVXLAN6(tb testing.TB, in, out []byte, vni uint32, innerType uint16, inner []byte) {
	tb.Helper()
	if len(out) != len(in)+maps.VXLANOverheadIPv6 {
		tb.Fatalf("%d bytes out, want %d (%d of VXLAN over IPv6)", len(out), len(in)+maps.VXLANOverheadIPv6, maps.VXLANOverheadIPv6)
	}
	if !bytes.Equal(out[0:6], peerMAC) || !bytes.Equal(out[6:12], underlayMAC) || binary.BigEndian.Uint16(out[12:]) != packet.EtherIPv6 {
		tb.Errorf("outer Ethernet %x: want %s <- %s, IPv6", out[:14], peerMAC, underlayMAC)
	}
	ip := out[14:54]
	if ip[0]>>4 != 6 || ip[0]&0x0f != 0 || ip[1]&0xf0 != 0 || int(binary.BigEndian.Uint16(ip[4:])) != len(out)-54 ||
		ip[6] != packet.ProtoUDP || ip[7] != 64 {
		tb.Errorf("outer IPv6 header %x: want version 6, traffic class 0, payload length %d, UDP, hop limit 64", ip[:8], len(out)-54)
	}
	if src, dst := netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40])); src != nodeIP6 || dst != peerIP6 {
		tb.Errorf("outer addresses %s -> %s, want %s -> %s", src, dst, nodeIP6, peerIP6)
	}
	udp := out[54:]
	if sport := binary.BigEndian.Uint16(udp[0:]); sport < 0xc000 {
		tb.Errorf("UDP source port %d, want one of the ephemeral range", sport)
	}
	if binary.BigEndian.Uint16(udp[2:]) != testVXLANPort || int(binary.BigEndian.Uint16(udp[4:])) != len(udp) {
		tb.Errorf("UDP header %x: want port %d, length %d", udp[:8], testVXLANPort, len(udp))
	}
	if got, want := binary.BigEndian.Uint16(udp[6:]), udp6Checksum(nodeIP6, peerIP6, udp); got != want {
		tb.Errorf("UDP checksum %#04x, want %#04x", got, want)
	}
	vx := udp[8:16]
	if vx[0] != 0x08 || binary.BigEndian.Uint32(vx[4:])>>8 != vni || vx[7] != 0 {
		tb.Errorf("VXLAN header %x: want the I flag and VNI %d", vx, vni)
	}
	eth := udp[16:30]
	if !bytes.Equal(eth[0:6], packet.MAC("0e:00:00:00:00:02")) || !bytes.Equal(eth[6:12], packet.MAC("0e:00:00:00:00:01")) ||
		binary.BigEndian.Uint16(eth[12:]) != innerType {
		tb.Errorf("inner Ethernet %x: want 0e:00 and the last four bytes of the peer's IPv6 address, from the node's, type %#04x", eth, innerType)
	}
	if !bytes.Equal(udp[30:], inner) {
		tb.Errorf("inner packet\n got %x\nwant %x", udp[30:], inner)
	}
}

// ttlLess is an IPv4 packet with its TTL one lower and its header checksum redone.
func ttlLess(ip []byte) []byte {
	want := append([]byte(nil), ip...)
	want[8]--
	binary.BigEndian.PutUint16(want[10:], 0)
	binary.BigEndian.PutUint16(want[10:], packet.Checksum(want[:20]))
	return want
}

func TestVXLAN6Encapsulated(t *testing.T) {
	n := loadVXLAN6(t)
	v4tcp := frame(macA, ipLocal, v4OnPeer6, packet.ProtoTCP, tcpSeg(1000, 80, tcpSYN))
	v4udp := frame(macA, ipLocal, v4OnPeer6, packet.ProtoUDP, packet.UDP(1000, 53, []byte("an odd-length payload")))
	v4icmp := packet.Eth(nodeMacA, macA, packet.EtherIPv4, packet.IPv4{Src: ipLocal, Dst: v4OnPeer6, Proto: packet.ProtoICMP}.Marshal(echo(8, 7, 1)))
	v6tcp := tcpV6From(macA, netip.AddrPortFrom(v6Pod, 1000), netip.AddrPortFrom(v6OnPeer6, 80), tcpSYN)
	v6udp := v6Frame(macA, v6Pod, v6OnPeer6, packet.ProtoUDP, withChecksum6(v6Pod, v6OnPeer6, packet.ProtoUDP, packet.UDP(1000, 53, []byte("q?"))))
	v6echo := echoV6(macA, v6Pod, v6OnPeer6, packet.ICMP6EchoRequest, 9)
	over6 := func(innerType uint16) func(tb testing.TB, in, out []byte) {
		return func(tb testing.TB, in, out []byte) {
			inner := hopLess(in, 14)
			if innerType == packet.EtherIPv4 {
				inner = ttlLess(in[14:])
			}
			wantVXLAN6(tb, in, out, 77, innerType, inner)
		}
	}
	// Through the device: the frame as it was, but for the TTL and, over IPv6, the tunnel MACs.
	byDevice := func(tb testing.TB, in, out []byte) {
		if len(out) != len(in) || !bytes.Equal(out[14:34], ttlLess(in[14:34])) {
			tb.Errorf("left as %x, want the frame with its TTL lowered and no headers added", out)
		}
		if !bytes.Equal(out[0:6], packet.MAC("0e:00:00:00:00:02")) || !bytes.Equal(out[6:12], packet.MAC("0e:00:00:00:00:01")) {
			tb.Errorf("MACs %x, want the tunnel MACs, to the peer's from the node's", out[:12])
		}
	}
	v4udpNoSum := packet.Eth(nodeMacA, macA, packet.EtherIPv4, packet.IPv4{Src: ipLocal, Dst: v4OnPeer6, Proto: packet.ProtoUDP}.Marshal(packet.UDP(1000, 53, []byte("x"))))
	v4frag := packet.Eth(nodeMacA, macA, packet.EtherIPv4, packet.IPv4{Src: ipLocal, Dst: v4OnPeer6, Proto: packet.ProtoTCP, MoreFrags: true}.Marshal(tcpSeg(1001, 80, tcpSYN)))
	n.run6(t, []v6Case{
		{name: "ipv4 tcp in vxlan over ipv6", at: fromPod, in: v4tcp, reason: maps.ReasonForwardTunnel, check: over6(packet.EtherIPv4)},
		{name: "ipv4 udp of odd length", at: fromPod, in: v4udp, reason: maps.ReasonForwardTunnel, check: over6(packet.EtherIPv4)},
		{name: "ipv4 icmp echo", at: fromPod, in: v4icmp, reason: maps.ReasonForwardTunnel, check: over6(packet.EtherIPv4)},
		{name: "ipv6 tcp in vxlan over ipv6", at: fromPod, in: v6tcp, reason: maps.ReasonForwardTunnel, check: over6(packet.EtherIPv6)},
		{name: "ipv6 udp", at: fromPod, in: v6udp, reason: maps.ReasonForwardTunnel, check: over6(packet.EtherIPv6)},
		{name: "icmpv6 echo", at: fromPod, in: v6echo, reason: maps.ReasonForwardTunnel, check: over6(packet.EtherIPv6)},
		{name: "the node's own traffic carries the remote-node identity", at: fromHost,
			in: tcpV6From(hostMAC, netip.AddrPortFrom(v6NodeSrc, 45000), netip.AddrPortFrom(v6OnPeer6, 80), tcpSYN), reason: maps.ReasonForwardTunnel,
			check: func(tb testing.TB, in, out []byte) {
				wantVXLAN6(tb, in, out, maps.IdentityRemoteNode, packet.EtherIPv6, hopLess(in, 14))
			}},
		// What cannot be summed without reading the payload goes through the device.
		{name: "ipv4 udp without a checksum takes the device", at: fromPod, in: v4udpNoSum, reason: maps.ReasonForwardTunnel, check: byDevice},
		{name: "a first fragment takes the device", at: fromPod, in: v4frag, reason: maps.ReasonForwardTunnel, check: byDevice},
	})
	// Without VXLAN's port the device encapsulates, with an IPv6 tunnel key (which a test run
	// cannot read back: TestVXLAN6WithTheKernel shows the kernel takes what the device sends).
	n.configure(t, func(c *maps.NodeConfig) { c.VXLANPort = 0 })
	n.run6(t, []v6Case{{name: "through the device", at: fromPod, in: frame(macA, ipLocal, v4OnPeer6, packet.ProtoTCP, tcpSeg(1002, 80, tcpSYN)),
		reason: maps.ReasonForwardTunnel, check: byDevice}})
	// Other modes than VXLAN do not run over IPv6.
	must(t, n.Routes().Upsert(maps.Route{Prefix: netip.MustParsePrefix("10.244.6.0/24"), NodeIP: peerIP6, Mode: maps.ModeIPIP}))
	n.run6(t, []v6Case{{name: "ip-in-ip to an ipv6 node address", at: fromPod, in: v4tcp, reason: maps.ReasonNoRoute}})
}

func TestVXLAN6Decapsulated(t *testing.T) {
	n := loadVXLAN6(t)
	n.configure(t, func(c *maps.NodeConfig) { c.VXLANPort = testVXLANPort })
	sport := uint16(2000) // each packet a flow of its own: conntrack must not answer for policy
	in4 := func(dst netip.Addr) []byte {
		sport++
		return packet.IPv4{Src: v4OnPeer6, Dst: dst, Proto: packet.ProtoTCP, TTL: 63}.Marshal(packet.TCP(sport, 80))
	}
	in6 := func(dst netip.Addr) []byte {
		sport++
		return packet.IPv6{Src: v6OnPeer6, Dst: dst, Next: packet.ProtoTCP, HopLimit: 63}.Marshal(tcpSeg(sport, 80, tcpSYN))
	}
	delivered := func(mac net.HardwareAddr, etherType uint16, ip []byte) func(tb testing.TB, in, out []byte) {
		return func(tb testing.TB, _, out []byte) {
			tb.Helper()
			if !bytes.Equal(out[0:6], mac) || binary.BigEndian.Uint16(out[12:]) != etherType {
				tb.Errorf("Ethernet %x, want to %s, type %#04x", out[:14], mac, etherType)
			}
			if len(out) != 14+len(ip) || !bytes.Equal(out[14:], ip) {
				tb.Errorf("inner packet changed or outer headers left:\n got %x\nwant %x", out[14:], ip)
			}
		}
	}
	toLocal4, toLocal6, toGuard := in4(ipLocal), in6(v6Pod), in6(v6Guard)
	from := func(src netip.Addr, dport uint16, flags byte, vni uint32, innerType uint16, inner []byte) []byte {
		return vxlan6Frame(src, nodeIP6, dport, flags, vni, innerType, inner)
	}
	n.run6(t, []v6Case{
		{name: "ipv4 inside, for a local pod", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: from(peerIP6, testVXLANPort, 0x08, 9, packet.EtherIPv4, toLocal4), reason: maps.ReasonForwardLocal,
			check: delivered(macA, packet.EtherIPv4, toLocal4)},
		{name: "ipv6 inside, for a local pod", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: from(peerIP6, testVXLANPort, 0x08, 9, packet.EtherIPv6, toLocal6), reason: maps.ReasonForwardLocal,
			check: delivered(macA, packet.EtherIPv6, toLocal6)},
		{name: "the vni is the sender's identity: one policy allows", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: from(peerIP6, testVXLANPort, 0x08, idGuardPeer, packet.EtherIPv6, toGuard), reason: maps.ReasonForwardLocal,
			check: delivered(macGuard, packet.EtherIPv6, toGuard)},
		{name: "the vni is the sender's identity: one policy does not allow", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: from(peerIP6, testVXLANPort, 0x08, idGuardPeer+1, packet.EtherIPv6, in6(v6Guard)), reason: maps.ReasonPolicyIngress},
		{name: "for a pod that is not here", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: from(peerIP6, testVXLANPort, 0x08, 9, packet.EtherIPv4, in4(netip.MustParseAddr("10.244.0.99"))), reason: maps.ReasonUnknownDest},
		{name: "from an address no node has: dropped, not left to the device", at: fromUnderlay,
			in: from(strangerIP6, testVXLANPort, 0x08, 9, packet.EtherIPv4, in4(ipLocal)), reason: maps.ReasonSpoofedSource},
		{name: "from a pod's address", at: fromUnderlay,
			in: from(v6OnPeer6, testVXLANPort, 0x08, 9, packet.EtherIPv4, in4(ipLocal)), reason: maps.ReasonSpoofedSource},
		{name: "to another port is the node's", at: fromUnderlay,
			in: from(peerIP6, 4789, 0x08, 9, packet.EtherIPv4, in4(ipLocal)), reason: maps.ReasonForwardHost, check: untouched},
		{name: "without the I flag it is left to the device", at: fromUnderlay,
			in: from(peerIP6, testVXLANPort, 0, 9, packet.EtherIPv4, in4(ipLocal)), reason: maps.ReasonForwardHost, check: untouched},
		{name: "to another address is not ours", at: fromUnderlay,
			in:     vxlan6Frame(peerIP6, netip.MustParseAddr("fd00:250::7"), testVXLANPort, 0x08, 9, packet.EtherIPv4, in4(ipLocal)),
			reason: maps.ReasonForwardHost, check: untouched},
	})
	// With no VXLAN port BPF leaves VXLAN to the device.
	n.configure(t, func(c *maps.NodeConfig) { c.VXLANPort = 0 })
	n.run6(t, []v6Case{{name: "no vxlan port", at: fromUnderlay, in: from(peerIP6, testVXLANPort, 0x08, 9, packet.EtherIPv4, in4(ipLocal)),
		reason: maps.ReasonForwardHost, check: untouched}})
}
