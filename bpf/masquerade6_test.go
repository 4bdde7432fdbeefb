package bpf_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// IPv6 masquerading, on loadNode6's node with masquerading on: a pod's IPv6 flow leaving the
// cluster takes nodeIP6 and a port of natPorts, its replies come back to the pod, and so do
// ICMPv6 errors about it.

// router6 is a router between the node and the world: it sends Packet Too Big.
var router6 = netip.MustParseAddr("2001:db8:1::fe")

// echoMasqPair6 is echoMasqPair for ICMPv6.
func echoMasqPair6(pod netip.Addr, id uint16, node netip.AddrPort, remote netip.Addr) []natRow {
	rows := echoMasqPair(pod, id, node, remote)
	for i := range rows {
		rows[i].proto = packet.ProtoICMP6
	}
	return rows
}

// loadMasq6 is loadNode6 with masquerading on.
func loadMasq6(t *testing.T) *svcNode {
	t.Helper()
	n := loadNode6(t)
	n.configure(t, func(c *maps.NodeConfig) { c.Masquerade = true })
	return n
}

// mtu1280 is the body of a Packet Too Big before the packet it quotes.
var mtu1280 = binary.BigEndian.AppendUint32(nil, 1280)

// TCP, UDP and ICMPv6 echo from pods leave from the node's IPv6 address; their replies come
// back, and a router's Packet Too Big about the TCP flow reaches the pod as related to it
// (the pod's ingress policy takes nothing from the router).
func TestMasquerade6(t *testing.T) {
	t.Parallel()
	n := loadMasq6(t)
	pod, remote := netip.AddrPortFrom(v6Guard, 40100), netip.AddrPortFrom(v6World, 443)
	syn := n.send6(t, step6{at: fromPod, in: tcpV6From(macGuard, pod, remote, tcpSYN), reason: maps.ReasonForwardUnder,
		checks: []outCheck{sentTo(gatewayMAC), fromUnderlayMAC, hopsAre(63)}})
	node := fromNode6(t, syn, remote)

	podU, remoteU := netip.AddrPortFrom(v6Pod, 5353), netip.AddrPortFrom(v6World, 53)
	out := n.send6(t, step6{at: fromPod, in: udpV6(podU, remoteU, []byte("q")), reason: maps.ReasonForwardUnder,
		checks: []outCheck{sentTo(gatewayMAC), hopsAre(63)}})
	nodeU := fromNode6(t, out, remoteU)

	// An echo's identifier is its port on both sides.
	const id = 0x1234
	out = n.send6(t, step6{at: fromPod, in: echoV6(macA, v6Pod, v6World, packet.ICMP6EchoRequest, id), reason: maps.ReasonForwardUnder,
		checks: []outCheck{icmp6Sum, sentTo(gatewayMAC), hopsAre(63)}})
	echoed := echoOf6(t, out)
	if p := echoed.src.Port(); echoed.src.Addr() != nodeIP6 || echoed.dst != netip.AddrPortFrom(v6World, p) || p < natPorts.Min || p > natPorts.Max {
		t.Fatalf("echo left as %s, want from %s with an identifier of [%d-%d]", echoed, nodeIP6, natPorts.Min, natPorts.Max)
	}
	echoID := echoed.src.Port()

	// What a router sends back about the SYN as it left, and what the pod must get: the
	// destination, the quoted source and its port the pod's; the quoted TCP checksum as it
	// was; the ICMPv6 checksum right.
	quoted := append([]byte(nil), syn[14:14+40+20]...)
	tooBig := packet.Eth(nodeMacA, gatewayMAC, packet.EtherIPv6,
		icmp6Packet(router6, nodeIP6, 64, packet.ICMP6PacketTooBig, append(append([]byte(nil), mtu1280...), quoted...)))
	podQuoted := append([]byte(nil), quoted...)
	podAddr := v6Guard.As16()
	copy(podQuoted[8:24], podAddr[:])
	binary.BigEndian.PutUint16(podQuoted[40:], pod.Port())
	wantTooBig := icmp6Packet(router6, v6Guard, 64, packet.ICMP6PacketTooBig, append(append([]byte(nil), mtu1280...), podQuoted...))
	// A flow of no pod: a port the node never lent.
	stray := append([]byte(nil), quoted...)
	binary.BigEndian.PutUint16(stray[40:], natPorts.Max+1)
	strayTooBig := packet.Eth(nodeMacA, gatewayMAC, packet.EtherIPv6,
		icmp6Packet(router6, nodeIP6, 64, packet.ICMP6PacketTooBig, append(append([]byte(nil), mtu1280...), stray...)))

	n.run6Steps(t, []step6{
		{name: "tcp reply from outside returns to the pod", at: fromUnderlay, in: tcpV6(remote, node, tcpSYN|tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(remote, pod)), sentTo(macGuard)}},
		{name: "the pod's next packet keeps its port", at: fromPod, in: tcpV6From(macGuard, pod, remote, tcpACK), reason: maps.ReasonForwardUnder,
			checks: []outCheck{leaves6(tcpFlow(node, remote))}},
		{name: "udp reply returns to the pod", at: fromUnderlay, in: udpV6(remoteU, nodeU, []byte("a")), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(udpFlow(remoteU, podU)), sentTo(macA)}},
		{name: "echo reply returns to the pod with its identifier", at: fromUnderlay,
			in: echoV6(gatewayMAC, v6World, nodeIP6, packet.ICMP6EchoReply, echoID), reason: maps.ReasonForwardLocal,
			checks: []outCheck{sentTo(macA), icmp6Sum, isPacket6(icmp6Packet(v6World, v6Pod, 64, packet.ICMP6EchoReply, echo(packet.ICMP6EchoReply, id, 1)[4:]))}},
		{name: "packet too big about the tcp flow reaches the pod as related", at: fromUnderlay, in: tooBig, reason: maps.ReasonForwardLocal,
			checks: []outCheck{sentTo(macGuard), icmp6Sum, isPacket6(wantTooBig)}},
		{name: "packet too big about no flow is the node's", at: fromUnderlay, in: strayTooBig, reason: maps.ReasonForwardHost,
			checks: []outCheck{isPacket6(strayTooBig[14:])}},
	})
	n.wantNAT(t, masqPair(packet.ProtoTCP, pod, node, remote), masqPair(packet.ProtoUDP, podU, nodeU, remoteU),
		echoMasqPair6(v6Pod, id, netip.AddrPortFrom(nodeIP6, echoID), v6World))
}

// What is not masqueraded leaves as the pod sent it: a destination in no_masquerade (an IPv6
// prefix), the node's own address, a pod on another node; and nothing with masquerading off.
func TestMasquerade6Exemptions(t *testing.T) {
	t.Parallel()
	n := loadMasq6(t)
	must(t, n.NoMasquerade().Add(netip.MustParsePrefix("2001:db8:77::/48")))
	pod := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(v6Pod, port) }
	exempt, outside := netip.AddrPortFrom(netip.MustParseAddr("2001:db8:77::5"), 443), netip.AddrPortFrom(netip.MustParseAddr("2001:db8:78::5"), 443)
	ssh, peer := netip.AddrPortFrom(nodeIP6, 22), netip.AddrPortFrom(v6Vxlan, 80)
	unchanged := func(in []byte) []outCheck { return []outCheck{isPacket6(in[14:])} }
	toExempt, toNode, offWorld := tcpV6(pod(1001), exempt, tcpSYN), tcpV6(pod(1002), ssh, tcpSYN), tcpV6(pod(1004), outside, tcpSYN)
	n.run6Steps(t, []step6{
		{name: "destination in an ipv6 no_masquerade prefix", at: fromPod, in: toExempt, reason: maps.ReasonForwardHost, checks: unchanged(toExempt)},
		{name: "the node's own ipv6 address", at: fromPod, in: toNode, reason: maps.ReasonForwardHost, checks: unchanged(toNode)},
		{name: "a pod on another node", at: fromPod, in: tcpV6(pod(1003), peer, tcpSYN), reason: maps.ReasonForwardTunnel,
			checks: []outCheck{inVXLAN(leaves6(tcpFlow(pod(1003), peer)))}},
	})
	var node netip.AddrPort
	t.Run("just outside the prefix", func(t *testing.T) {
		out := n.send6(t, step6{at: fromPod, in: tcpV6(pod(1005), outside, tcpSYN), reason: maps.ReasonForwardUnder})
		node = fromNode6(t, out, outside)
	})
	n.configure(t, func(c *maps.NodeConfig) { c.Masquerade = false })
	n.run6Steps(t, []step6{
		{name: "masquerading off", at: fromPod, in: offWorld, reason: maps.ReasonForwardHost, checks: unchanged(offWorld)},
	})
	n.wantNAT(t, masqPair(packet.ProtoTCP, pod(1005), node, outside))
}

// The node's own listening IPv6 ports are never lent to a translated flow.
func TestMasquerade6SkipsPortsTheNodeUses(t *testing.T) {
	t.Parallel()
	n := loadMasq6(t)
	const lo, hi = 20000, 20001
	n.configure(t, func(c *maps.NodeConfig) { c.NATPorts = maps.PortRange{Min: lo, Max: hi} })
	n.ns.Do(t, func() error {
		l, err := net.Listen("tcp6", fmt.Sprintf("[%s]:%d", nodeIP6, lo))
		if err == nil {
			t.Cleanup(func() { l.Close() })
		}
		return err
	})
	remote := netip.AddrPortFrom(v6World, 443)
	n.run6Steps(t, []step6{
		{name: "the free port is taken", at: fromPod, in: tcpV6(netip.AddrPortFrom(v6Pod, 1001), remote, tcpSYN), reason: maps.ReasonForwardUnder,
			checks: []outCheck{leaves6(tcpFlow(netip.AddrPortFrom(nodeIP6, hi), remote))}},
		{name: "the listening one is not", at: fromPod, in: tcpV6(netip.AddrPortFrom(v6Pod, 1002), remote, tcpSYN), reason: maps.ReasonNATNoPort},
	})
}

// An IPv6 ClusterIP whose backend is outside the cluster: under masquerading the flow takes the
// node's IPv6 address, and the backend's reply comes back from the ClusterIP.
func TestService6BackendOutside(t *testing.T) {
	t.Parallel()
	n := loadMasq6(t)
	const beIDWorld = 25
	vip, client, backend := netip.AddrPortFrom(clusterIP6, 443), netip.AddrPortFrom(v6Pod, 40200), netip.AddrPortFrom(v6World, 443)
	must(t, n.Services().UpsertBackend(maps.Backend{ID: beIDWorld, Addr: backend}))
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 20, Backends: []uint32{beIDWorld}}, 0)
	out := n.send6(t, step6{at: fromPod, in: tcpV6(client, vip, tcpSYN), reason: maps.ReasonForwardUnder,
		checks: []outCheck{sentTo(gatewayMAC), hopsAre(63)}})
	node := fromNode6(t, out, backend)
	n.send6(t, step6{at: fromUnderlay, in: tcpV6(backend, node, tcpSYN|tcpACK), reason: maps.ReasonForwardLocal,
		checks: []outCheck{leaves6(tcpFlow(vip, client)), sentTo(macA)}})
	n.wantNAT(t, servicePair(packet.ProtoTCP, client, vip, node, backend, beIDWorld, true))
}
