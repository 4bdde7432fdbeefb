package bpf_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// What a node's IPv6 underlay address brings: IPv6 NodePorts whose remote backends see the
// node, replies through the node, and the node's own IPv6 traffic to Services. The node is
// loadSvc6's with nodeIP6 on its underlay (masquerade6_test.go has masquerading).

var (
	nodeIP6    = netip.MustParseAddr("fd00:250::1")  // the node's IPv6 underlay address
	gatewayIP6 = netip.MustParseAddr("fd00:250::fe") // the underlay's IPv6 default gateway, at gatewayMAC
	outsider6  = netip.MustParseAddr("2001:db8:feed::9")
)

// loadNode6 is loadSvc6 on a node whose underlay has nodeIP6/64 and an IPv6 default route via
// gatewayIP6 (a permanent neighbour entry, so that bpf_fib_lookup succeeds), and IPv6
// forwarding on the underlay, which bpf_fib_lookup wants as it does IPv4's.
func loadNode6(t *testing.T) *svcNode {
	t.Helper()
	n := loadSvc6(t)
	nl := n.ns.NL
	link, err := nl.LinkByName("underlay")
	must(t, err)
	n.ns.Sysctl(t, "ipv6/conf/underlay/disable_ipv6", "0")
	n.ns.Sysctl(t, "ipv6/conf/underlay/forwarding", "1")
	must(t, nl.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: nodeIP6.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}))
	must(t, nl.NeighAdd(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V6,
		State: netlink.NUD_PERMANENT, IP: gatewayIP6.AsSlice(), HardwareAddr: gatewayMAC}))
	must(t, nl.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gatewayIP6.AsSlice(),
		Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}))
	n.configure(t, func(c *maps.NodeConfig) { c.NodeIPv6 = nodeIP6 })
	return n
}

// tcpV6From is tcpV6 from a pod whose MAC macOf6 does not know.
func tcpV6From(mac net.HardwareAddr, src, dst netip.AddrPort, flags byte) []byte {
	return v6Frame(mac, src.Addr(), dst.Addr(), packet.ProtoTCP,
		withChecksum6(src.Addr(), dst.Addr(), packet.ProtoTCP, tcpSeg(src.Port(), dst.Port(), flags)))
}

// icmp6Checksum is the checksum of an ICMPv6 message (its checksum field taken as zero) from
// src to dst, under IPv6's pseudo-header.
func icmp6Checksum(src, dst netip.Addr, msg []byte) uint16 {
	s, d := src.As16(), dst.As16()
	b := append(append([]byte(nil), s[:]...), d[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(msg)))
	b = append(append(b, 0, 0, 0, packet.ProtoICMP6), msg...)
	b[40+2], b[40+3] = 0, 0
	return packet.Checksum(b)
}

// icmp6Packet is an IPv6 packet (no Ethernet header) carrying an ICMPv6 message of typ with
// body, its checksum right, with the given hop limit.
func icmp6Packet(src, dst netip.Addr, hops uint8, typ uint8, body []byte) []byte {
	msg := packet.ICMP6(typ, 0, body)
	binary.BigEndian.PutUint16(msg[2:], icmp6Checksum(src, dst, msg))
	return packet.IPv6{Src: src, Dst: dst, Next: packet.ProtoICMP6, HopLimit: hops}.Marshal(msg)
}

// echoV6 is an ICMPv6 echo request (128) or reply (129) with identifier id in a frame from
// mac, its checksum right.
func echoV6(mac net.HardwareAddr, src, dst netip.Addr, typ uint8, id uint16) []byte {
	return packet.Eth(nodeMacA, mac, packet.EtherIPv6, icmp6Packet(src, dst, 64, typ, echo(typ, id, 1)[4:]))
}

// icmp6Sum: the ICMPv6 checksum of the IPv6 packet that left is right.
func icmp6Sum(tb testing.TB, out []byte) {
	tb.Helper()
	src, dst, proto, l4, _, _, _ := ipv6Parts(out)
	if proto != packet.ProtoICMP6 {
		tb.Fatalf("left as protocol %d, want ICMPv6", proto)
	}
	if got, want := binary.BigEndian.Uint16(l4[2:]), icmp6Checksum(src, dst, l4); got != want {
		tb.Errorf("ICMPv6 checksum %#04x, want %#04x", got, want)
	}
}

// echoOf6 is the flow of an ICMPv6 echo as the datapath keys it: its identifier as both ports.
func echoOf6(tb testing.TB, out []byte) flow {
	tb.Helper()
	src, dst, proto, l4, _, _, _ := ipv6Parts(out)
	id := binary.BigEndian.Uint16(l4[4:])
	return flow{proto, netip.AddrPortFrom(src, id), netip.AddrPortFrom(dst, id)}
}

// isPacket6: the IPv6 packet that left is exactly want (no Ethernet header).
func isPacket6(want []byte) outCheck {
	return func(tb testing.TB, out []byte) {
		tb.Helper()
		if len(out) < 14+len(want) || !bytes.Equal(out[14:14+len(want)], want) {
			tb.Errorf("left as\n  %x\nwant\n  %x", out[14:], want)
		}
	}
}

// fromUnderlayMAC: the frame leaves the underlay device (its source MAC).
func fromUnderlayMAC(tb testing.TB, out []byte) {
	tb.Helper()
	if !bytes.Equal(out[6:12], underlayMAC) {
		tb.Errorf("source MAC %s, want the underlay's %s", net.HardwareAddr(out[6:12]), underlayMAC)
	}
}

// fromNode6 checks that the IPv6 frame f left from nodeIP6 with a port of natPorts, to dst,
// and returns that source.
func fromNode6(tb testing.TB, f []byte, dst netip.AddrPort) netip.AddrPort {
	tb.Helper()
	fl := flowOf6(f)
	if fl.src.Addr() != nodeIP6 || fl.src.Port() < natPorts.Min || fl.src.Port() > natPorts.Max || fl.dst != dst {
		tb.Fatalf("left as %s, want %s:[%d-%d] -> %s", fl, nodeIP6, natPorts.Min, natPorts.Max, dst)
	}
	return fl.src
}

// IPv6 NodePorts from outside: a local backend sees the client, a remote one the node's IPv6
// address with a port of the NAT range (externalTrafficPolicy Cluster), unless the policy is
// Local; the replies go back to the client from the node port, straight out of the underlay.
func TestNodePort6(t *testing.T) {
	t.Parallel()
	n := loadNode6(t)
	toLocal, toRemote, toRemoteExtLocal := netip.AddrPortFrom(nodeIP6, 30080), netip.AddrPortFrom(nodeIP6, 30081), netip.AddrPortFrom(nodeIP6, 30082)
	n.frontend(t, maps.Frontend{Addr: toLocal, Protocol: packet.ProtoTCP, ServiceID: 10, Backends: []uint32{31}, NodePort: true}, 0)
	n.frontend(t, maps.Frontend{Addr: toRemote, Protocol: packet.ProtoTCP, ServiceID: 11, Backends: []uint32{beID6Vxlan}, NodePort: true}, 0)
	n.frontend(t, maps.Frontend{Addr: toRemoteExtLocal, Protocol: packet.ProtoTCP, ServiceID: 12, Backends: []uint32{beID6Vxlan},
		NodePort: true, ExternalLocal: true}, 0)
	c1, c2, c3 := netip.AddrPortFrom(outsider6, 50001), netip.AddrPortFrom(outsider6, 50002), netip.AddrPortFrom(outsider6, 50003)
	local, remote := netip.AddrPortFrom(backendPods6[0].ip, 8080), netip.AddrPortFrom(v6Vxlan, 8080)
	ssh := netip.AddrPortFrom(nodeIP6, 22)
	n.run6Steps(t, []step6{
		{name: "local backend: destination rewritten, source kept", at: fromUnderlay, in: tcpV6(c1, toLocal, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(c1, local)), sentTo(beMAC1)}},
		{name: "its reply leaves from the node port out of the underlay", at: fromPod, in: tcpV6(local, c1, tcpSYN|tcpACK), reason: maps.ReasonForwardUnder,
			checks: []outCheck{leaves6(tcpFlow(toLocal, c1)), sentTo(gatewayMAC), fromUnderlayMAC, hopsAre(63)}},
		{name: "remote backend under externalTrafficPolicy Local: source kept", at: fromUnderlay, in: tcpV6(c3, toRemoteExtLocal, tcpSYN),
			reason: maps.ReasonForwardTunnel, checks: []outCheck{inVXLAN(leaves6(tcpFlow(c3, remote)), hopsAre(63))}},
		{name: "the node's own port is the node's", at: fromUnderlay, in: tcpV6(c1, ssh, tcpSYN), reason: maps.ReasonForwardHost,
			checks: []outCheck{leaves6(tcpFlow(c1, ssh))}},
	})
	var node netip.AddrPort
	t.Run("remote backend: the source becomes the node", func(t *testing.T) {
		out := n.send6(t, step6{at: fromUnderlay, in: tcpV6(c2, toRemote, tcpSYN), reason: maps.ReasonForwardTunnel,
			checks: []outCheck{inVXLAN(hopsAre(63))}})
		node = fromNode6(t, out[50:], remote)
		reply := tcpV6(remote, node, tcpSYN|tcpACK)[14:]
		n.send6(t, step6{at: fromUnderlay, dir: maps.DirFromOverlay, in: vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherIPv6, reply),
			reason: maps.ReasonForwardUnder, checks: []outCheck{leaves6(tcpFlow(toRemote, c2)), sentTo(gatewayMAC), fromUnderlayMAC, hopsAre(63)}})
		n.send6(t, step6{at: fromUnderlay, in: tcpV6(c2, toRemote, tcpACK), reason: maps.ReasonForwardTunnel,
			checks: []outCheck{inVXLAN(leaves6(tcpFlow(node, remote)))}})
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, c1, toLocal, c1, local, 31, false),
		servicePair(packet.ProtoTCP, c2, toRemote, node, remote, beID6Vxlan, true),
		servicePair(packet.ProtoTCP, c3, toRemoteExtLocal, c3, remote, beID6Vxlan, false))
}

// A UDP NodePort whose backend is on another node, natively routed: the datagram takes the
// node's address and a port, its answer goes back from the node port; the checksums follow.
func TestNodePort6UDPNative(t *testing.T) {
	t.Parallel()
	n := loadNode6(t)
	fe, client, backend := netip.AddrPortFrom(nodeIP6, 30053), netip.AddrPortFrom(outsider6, 5353), netip.AddrPortFrom(v6Native, 8080)
	n.frontend(t, maps.Frontend{Addr: fe, Protocol: packet.ProtoUDP, ServiceID: 13, Backends: []uint32{beID6Native}, NodePort: true}, 0)
	out := n.send6(t, step6{at: fromUnderlay, in: udpV6(client, fe, []byte("query")), reason: maps.ReasonForwardUnder,
		checks: []outCheck{sentTo(peerMAC), hopsAre(63)}})
	node := fromNode6(t, out, backend)
	n.send6(t, step6{at: fromUnderlay, in: packet.Eth(underlayMAC, peerMAC, packet.EtherIPv6, udpV6(backend, node, []byte("answer"))[14:]),
		reason: maps.ReasonForwardUnder, checks: []outCheck{leaves6(udpFlow(fe, client)), sentTo(gatewayMAC)}})
	n.wantNAT(t, servicePair(packet.ProtoUDP, client, fe, node, backend, beID6Native, true))
}

// Without an IPv6 address the node keeps today's IPv6 behaviour: a NodePort frontend's remote
// backend sees the client, its reply is the node stack's to route, and nothing is
// masqueraded.
func TestNodePort6WithoutNodeIPv6(t *testing.T) {
	t.Parallel()
	n := loadSvc6(t)
	fe, client, backend := netip.AddrPortFrom(nodeIP6, 30081), netip.AddrPortFrom(outsider6, 50002), netip.AddrPortFrom(v6Vxlan, 8080)
	n.frontend(t, maps.Frontend{Addr: fe, Protocol: packet.ProtoTCP, ServiceID: 11, Backends: []uint32{beID6Vxlan}, NodePort: true}, 0)
	pod, world := netip.AddrPortFrom(v6Pod, 40100), netip.AddrPortFrom(v6World, 443)
	toWorld, ping := tcpV6(pod, world, tcpSYN), echoV6(macA, v6Pod, v6World, packet.ICMP6EchoRequest, 0x77)
	n.run6Steps(t, []step6{
		{name: "remote backend: source kept", at: fromUnderlay, in: tcpV6(client, fe, tcpSYN), reason: maps.ReasonForwardTunnel,
			checks: []outCheck{inVXLAN(leaves6(tcpFlow(client, backend)))}},
		{name: "its reply, translated back, is the node's to route", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherIPv6, tcpV6(backend, client, tcpSYN|tcpACK)[14:]), reason: maps.ReasonForwardHost,
			checks: []outCheck{leaves6(tcpFlow(fe, client))}},
		{name: "tcp leaving the cluster is not masqueraded", at: fromPod, in: toWorld, reason: maps.ReasonForwardHost,
			checks: []outCheck{isPacket6(toWorld[14:])}},
		{name: "nor is an echo request", at: fromPod, in: ping, reason: maps.ReasonForwardHost, checks: []outCheck{isPacket6(ping[14:])}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, client, fe, client, backend, beID6Vxlan, false))
}

// The node's own IPv6 traffic to an IPv6 ClusterIP, from its IPv6 address: not translated at
// the source, and the backends' replies (from a local pod, from another node) are handed to
// the node through the host device; so is a remote pod's tunnelled answer to the node.
func TestFromHost6(t *testing.T) {
	t.Parallel()
	n := loadNode6(t)
	n.configure(t, func(c *maps.NodeConfig) { c.Masquerade = true })
	toLocal, toRemote := netip.AddrPortFrom(clusterIP6, 80), netip.AddrPortFrom(clusterIP6, 81)
	n.frontend(t, maps.Frontend{Addr: toLocal, Protocol: packet.ProtoTCP, ServiceID: 1, Backends: []uint32{31}}, 0)
	n.frontend(t, maps.Frontend{Addr: toRemote, Protocol: packet.ProtoTCP, ServiceID: 2, Backends: []uint32{beID6Vxlan}}, 0)
	c1, c2, c3 := netip.AddrPortFrom(nodeIP6, 45001), netip.AddrPortFrom(nodeIP6, 45002), netip.AddrPortFrom(nodeIP6, 45003)
	local, remote, peer := netip.AddrPortFrom(backendPods6[0].ip, 8080), netip.AddrPortFrom(v6Vxlan, 8080), netip.AddrPortFrom(v6Vxlan, 22)
	n.run6Steps(t, []step6{
		{name: "to a local backend", at: fromHost, in: tcpV6(c1, toLocal, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(c1, local)), sentTo(beMAC1)}},
		{name: "its reply is handed to the node", at: fromPod, in: tcpV6(local, c1, tcpSYN|tcpACK), reason: maps.ReasonForwardNode,
			checks: []outCheck{leaves6(tcpFlow(toLocal, c1)), sentTo(hostMAC)}},
		{name: "to a backend on another node, the node's address kept", at: fromHost, in: tcpV6(c2, toRemote, tcpSYN), reason: maps.ReasonForwardTunnel,
			checks: []outCheck{inVXLAN(leaves6(tcpFlow(c2, remote)))}},
		{name: "its reply out of the tunnel is handed to the node", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherIPv6, tcpV6(remote, c2, tcpSYN|tcpACK)[14:]), reason: maps.ReasonForwardNode,
			checks: []outCheck{leaves6(tcpFlow(toRemote, c2)), sentTo(hostMAC)}},
		{name: "to a pod on another node", at: fromHost, in: tcpV6(c3, peer, tcpSYN), reason: maps.ReasonForwardTunnel,
			checks: []outCheck{inVXLAN(leaves6(tcpFlow(c3, peer)))}},
		{name: "the pod's answer out of the tunnel is handed to the node", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherIPv6, tcpV6(peer, c3, tcpSYN|tcpACK)[14:]), reason: maps.ReasonForwardNode,
			checks: []outCheck{leaves6(tcpFlow(peer, c3)), sentTo(hostMAC)}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, c1, toLocal, c1, local, 31, false),
		servicePair(packet.ProtoTCP, c2, toRemote, c2, remote, beID6Vxlan, false))
}
