package bpf_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// Fragments: a datagram larger than the path's MTU leaves its sender in pieces, only the first
// carrying the L4 header. The later ones must meet the policy, conntrack and translation of
// their first, or a large DNS answer through a Service, or any large UDP datagram a port rule
// admits, never arrives whole.

// fragmentsOf cuts an Ethernet + IPv4 frame (without options) into two fragments of
// datagram id: the first carries the first cut bytes of the IP payload (a multiple of 8) and
// says more follow; the later one carries the rest at offset cut.
func fragmentsOf(f []byte, id uint16, cut int) (first, later []byte) {
	ip, payload := ipv4Parts(f)
	h := packet.IPv4{Src: netip.AddrFrom4([4]byte(ip[12:16])), Dst: netip.AddrFrom4([4]byte(ip[16:20])),
		Proto: ip[9], TTL: ip[8], ID: id}
	eth := f[:14]
	h.MoreFrags = true
	first = append(append([]byte(nil), eth...), h.Marshal(append([]byte(nil), payload[:cut]...))...)
	h.MoreFrags, h.FragOff = false, uint16(cut/8)
	later = append(append([]byte(nil), eth...), h.Marshal(append([]byte(nil), payload[cut:]...))...)
	return first, later
}

// reassembled joins two fragments as they left the datapath, as the receiver's stack would:
// they must name the same datagram (addresses, protocol, identification), and the whole
// datagram's L4 checksum must be right. It returns the datagram's flow.
func reassembled(tb testing.TB, first, later []byte) flow {
	tb.Helper()
	ipA, a := ipv4Parts(first)
	ipB, b := ipv4Parts(later)
	if !bytes.Equal(ipA[4:6], ipB[4:6]) || ipA[9] != ipB[9] || !bytes.Equal(ipA[12:20], ipB[12:20]) {
		tb.Fatalf("the fragments left as two datagrams: %s (id %#x) and %s (id %#x)", flowOf(first),
			binary.BigEndian.Uint16(ipA[4:6]), flowOf(later), binary.BigEndian.Uint16(ipB[4:6]))
	}
	if off := int(binary.BigEndian.Uint16(ipB[6:8])&0x1fff) * 8; off != len(a) {
		tb.Fatalf("the later fragment sits at offset %d, the first carries %d bytes", off, len(a))
	}
	whole := packet.IPv4{Src: netip.AddrFrom4([4]byte(ipA[12:16])), Dst: netip.AddrFrom4([4]byte(ipA[16:20])),
		Proto: ipA[9], TTL: ipA[8]}.Marshal(append(append([]byte(nil), a...), b...))
	f := append(append([]byte(nil), first[:14]...), whole...)
	ip, l4 := ipv4Parts(f)
	switch ip[9] {
	case packet.ProtoTCP, packet.ProtoUDP:
		off := l4CsumOffset(ip[9])
		if got, want := binary.BigEndian.Uint16(l4[off:]), l4Checksum(ip, l4); got != want {
			tb.Errorf("reassembled %s: L4 checksum %#04x, want %#04x", flowOf(f), got, want)
		}
	case packet.ProtoICMP:
		if packet.Checksum(l4) != 0 {
			tb.Errorf("reassembled %s: ICMP checksum %#04x invalid", flowOf(f), binary.BigEndian.Uint16(l4[2:4]))
		}
	}
	return flowOf(f)
}

// addrs is the flow a later fragment shows: addresses, no ports.
func addrs(proto uint8, src, dst netip.Addr) flow {
	return flow{proto, netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)}
}

// sendFragments sends a datagram's first and later fragment through one program: both are
// counted under reason and sent to mac, the first leaves as want, the later with want's
// addresses, and the two, reassembled, make a datagram of want with a right checksum.
func (n *svcNode) sendFragments(t *testing.T, at hook, first, later []byte, reason maps.Reason, mac net.HardwareAddr, want flow) {
	t.Helper()
	outFirst := n.send(t, step{at: at, in: first, reason: reason, checks: []outCheck{leaves(want), sentTo(mac)}})
	outLater := n.send(t, step{at: at, in: later, reason: reason,
		checks: []outCheck{leaves(addrs(want.proto, want.src.Addr(), want.dst.Addr())), sentTo(mac)}})
	if got := reassembled(t, outFirst, outLater); got != want {
		t.Errorf("the datagram arrived as %s, want %s", got, want)
	}
}

// A UDP datagram in two fragments to a ClusterIP reaches the backend whole, and the backend's
// fragmented answer comes back whole from the ClusterIP; no fragment makes entries of its own.
func TestServiceFragments(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	vip, backend := netip.AddrPortFrom(clusterIP, 53), netip.AddrPortFrom(be2, 8080)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoUDP, ServiceID: 3, Backends: []uint32{beID2}}, 0)
	client := netip.AddrPortFrom(ipLocal, 5300)
	qFirst, qLater := fragmentsOf(udp(client, vip, bytes.Repeat([]byte("q"), 64)), 0x4242, 32)
	aFirst, aLater := fragmentsOf(udp(backend, client, bytes.Repeat([]byte("a"), 96)), 0x4343, 48)

	n.sendFragments(t, fromPod, qFirst, qLater, maps.ReasonForwardLocal, beMAC2, udpFlow(client, backend))
	n.sendFragments(t, fromPod, aFirst, aLater, maps.ReasonForwardLocal, macA, udpFlow(vip, client))
	n.wantNAT(t, servicePair(packet.ProtoUDP, client, vip, client, backend, beID2, false))
}

// A pod's fragmented datagram leaving the cluster takes the node's address and port in every
// fragment; the fragmented answer returns to the pod; the same for a large ICMP echo.
func TestMasqueradeFragments(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	pod, remote := netip.AddrPortFrom(ipLocal, 5400), netip.AddrPortFrom(world, 53)
	first, later := fragmentsOf(udp(pod, remote, bytes.Repeat([]byte("m"), 64)), 0x5151, 40)
	outFirst := n.send(t, step{at: fromPod, in: first, reason: maps.ReasonForwardUnder, checks: []outCheck{sentTo(gatewayMAC)}})
	node := masqueradedTo(t, outFirst, remote, natPorts.Min, natPorts.Max)
	outLater := n.send(t, step{at: fromPod, in: later, reason: maps.ReasonForwardUnder,
		checks: []outCheck{leaves(addrs(packet.ProtoUDP, nodeIP, world)), sentTo(gatewayMAC)}})
	if got := reassembled(t, outFirst, outLater); got != udpFlow(node, remote) {
		t.Errorf("the datagram left as %s, want %s", got, udpFlow(node, remote))
	}
	first, later = fragmentsOf(udp(remote, node, bytes.Repeat([]byte("r"), 80)), 0x5252, 48)
	n.sendFragments(t, fromUnderlay, first, later, maps.ReasonForwardLocal, macA, udpFlow(remote, pod))

	// An echo's identifier is in its first fragment only.
	const id = 0x2222
	first, later = fragmentsOf(ping(ipLocal, world, 8, id), 0x5353, 8)
	outFirst = n.send(t, step{at: fromPod, in: first, reason: maps.ReasonForwardUnder})
	echoID := flowOf(outFirst).src.Port()
	masqueradedTo(t, outFirst, netip.AddrPortFrom(world, echoID), natPorts.Min, natPorts.Max)
	outLater = n.send(t, step{at: fromPod, in: later, reason: maps.ReasonForwardUnder,
		checks: []outCheck{leaves(addrs(packet.ProtoICMP, nodeIP, world))}})
	reassembled(t, outFirst, outLater)
	n.wantNAT(t, masqPair(packet.ProtoUDP, pod, node, remote), echoMasqPair(ipLocal, id, netip.AddrPortFrom(nodeIP, echoID), world))
}

// Policy judges a later fragment by its first's ports: A may send UDP/53 into 192.0.2.0/24,
// so a fragmented query passes whole, while a later fragment whose first was never seen is
// judged by port 0 and refused.
func TestPolicyFragments(t *testing.T) {
	dp := loadPolicy(t)
	world := netip.MustParseAddr("192.0.2.5")
	udpTo := func(port uint16) []byte {
		return pod(polA, world, macA, packet.ProtoUDP, packet.UDP(4444, port, bytes.Repeat([]byte("d"), 64)))
	}
	first, later := fragmentsOf(udpTo(53), 0x6161, 32)
	_, stray := fragmentsOf(udpTo(53), 0x6262, 32)
	deniedFirst, deniedLater := fragmentsOf(udpTo(54), 0x6363, 32)
	runFromPod(t, dp, []fromPodCase{
		{name: "first fragment to an allowed port", in: first, want: tcOK, reason: maps.ReasonForwardHost},
		{name: "its later fragment", in: later, want: tcOK, reason: maps.ReasonForwardHost},
		{name: "a later fragment whose first was not seen", in: stray, want: tcShot, reason: maps.ReasonPolicyEgress},
		{name: "first fragment to a port no rule names", in: deniedFirst, want: tcShot, reason: maps.ReasonPolicyEgress},
		{name: "its later fragment", in: deniedLater, want: tcShot, reason: maps.ReasonPolicyEgress},
	})
}
