package bpf_test

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// from_host is tc egress of the host device: the node's own packets that its routes send
// there (Services, and pods reached that way). Each case below is a packet the node sends,
// or a pod's answer to it, on loadSvcNode's node (address nodeIP, backends be1..be3 on port
// 8080, the host device's MAC hostMAC).

// fromNode is a TCP segment the node's stack sends: from the node's address, out of the host
// device (whatever its destination MAC: the device resolves no neighbours).
func fromNode(sport uint16, dst netip.AddrPort, flags byte) []byte {
	src := netip.AddrPortFrom(nodeIP, sport)
	return frame(hostMAC, src.Addr(), dst.Addr(), packet.ProtoTCP, tcpSeg(src.Port(), dst.Port(), flags))
}

// sentFrom: the frame's source MAC.
func sentFrom(mac net.HardwareAddr) outCheck {
	return func(tb testing.TB, out []byte) {
		tb.Helper()
		if !bytes.Equal(out[6:12], mac) {
			tb.Errorf("source MAC %s, want %s", net.HardwareAddr(out[6:12]), mac)
		}
	}
}

// unchanged: the frame left exactly as it came.
func unchanged(in []byte) outCheck {
	return func(tb testing.TB, out []byte) {
		tb.Helper()
		if !bytes.Equal(out[:len(in)], in) {
			tb.Errorf("left as\n  %x\nwant it unchanged:\n  %x", out[:len(in)], in)
		}
	}
}

func TestFromHost(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	node := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(nodeIP, port) }
	pod := netip.AddrPortFrom(be1, 8080)
	vip, vipBackend := netip.AddrPortFrom(clusterIP, 80), netip.AddrPortFrom(be2, 8080)
	nodePort, nodePortBackend := netip.AddrPortFrom(nodeIP, 30090), netip.AddrPortFrom(be3, 8080)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 20, Backends: []uint32{beID2}}, 0)
	n.frontend(t, maps.Frontend{Addr: nodePort, Protocol: packet.ProtoTCP, ServiceID: 21, Backends: []uint32{beID3}, NodePort: true}, 0)

	toPodSYN := fromNode(45000, pod, tcpSYN)
	podReply := tcp(pod, node(45000), tcpSYN|tcpACK)
	n.run(t, []step{
		{name: "node to a local pod: handed to the pod's veth, not translated", at: fromHost, in: toPodSYN,
			reason: maps.ReasonForwardLocal, checks: []outCheck{leaves(tcpFlow(node(45000), pod)), sentTo(beMAC1), sentFrom(nodeMacA), ttlIs(64)}},
		{name: "the pod's reply to the node goes to the node's stack untouched", at: fromPod, in: podReply,
			reason: maps.ReasonForwardHost, checks: []outCheck{unchanged(podReply)}},

		{name: "node to a ClusterIP: the destination becomes the backend, the source stays the node", at: fromHost,
			in: fromNode(45001, vip, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(node(45001), vipBackend)), sentTo(beMAC2), sentFrom(nodeMacA), ttlIs(64)}},
		{name: "the backend's reply comes from the ClusterIP, into the host device", at: fromPod,
			in: tcp(vipBackend, node(45001), tcpSYN|tcpACK), reason: maps.ReasonForwardNode,
			checks: []outCheck{leaves(tcpFlow(vip, node(45001))), sentTo(hostMAC), sentFrom(hostMAC)}},
		{name: "the node's next segment follows the same translation", at: fromHost, in: fromNode(45001, vip, tcpACK),
			reason: maps.ReasonForwardLocal, checks: []outCheck{leaves(tcpFlow(node(45001), vipBackend)), sentTo(beMAC2)}},

		{name: "node to its own NodePort: the destination becomes the backend", at: fromHost,
			in: fromNode(45002, nodePort, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(node(45002), nodePortBackend)), sentTo(beMAC3), sentFrom(nodeMacA)}},
		{name: "the backend's reply comes from the NodePort, into the host device", at: fromPod,
			in: tcp(nodePortBackend, node(45002), tcpSYN|tcpACK), reason: maps.ReasonForwardNode,
			checks: []outCheck{leaves(tcpFlow(nodePort, node(45002))), sentTo(hostMAC)}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, node(45001), vip, node(45001), vipBackend, beID2, false),
		servicePair(packet.ProtoTCP, node(45002), nodePort, node(45002), nodePortBackend, beID3, false))
}
