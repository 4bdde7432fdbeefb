package model_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/model"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

var (
	macA, macB         = packet.MAC("02:00:00:00:00:0a"), packet.MAC("02:00:00:00:00:0b")
	nodeMacA, nodeMacB = packet.MAC("ee:00:00:00:00:0a"), packet.MAC("ee:00:00:00:00:0b")
	gwMAC, ulMAC       = packet.MAC("02:00:00:00:fe:fe"), packet.MAC("02:00:00:00:fe:01")
	ipA, ipB           = netip.MustParseAddr("10.244.0.10"), netip.MustParseAddr("10.244.0.11")
	ipRemote           = netip.MustParseAddr("10.244.1.5")
	ipLost             = netip.MustParseAddr("10.244.2.5")
	nodeIP, peerIP     = netip.MustParseAddr("10.250.0.1"), netip.MustParseAddr("10.250.0.2")
)

// world: pods A and B; B takes TCP/80 from A's identity only; 10.244.1.0/24 is a native
// peer's behind a gateway with a neighbour entry, 10.244.2.0/24 one the kernel cannot reach.
func world() model.World {
	return model.World{
		Node: maps.NodeConfig{NodeIP: nodeIP},
		Endpoints: []maps.Endpoint{
			{IP: ipA, Ifindex: 1, ID: 1, Identity: 300, Local: true, MAC: macA, NodeMAC: nodeMacA},
			{IP: ipB, Ifindex: 1, ID: 2, Identity: 400, Local: true, IngressEnforced: true, MAC: macB, NodeMAC: nodeMacB},
		},
		Routes: []maps.Route{
			{Prefix: netip.MustParsePrefix("10.244.0.0/24"), Flags: maps.RouteLocal},
			{Prefix: netip.MustParsePrefix("10.244.1.0/24"), NodeIP: peerIP, Mode: maps.ModeNative},
			{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NodeIP: peerIP, Mode: maps.ModeNative},
		},
		Policy: []maps.PolicyEntry{{Endpoint: 2, Peer: 300, Direction: maps.Ingress, Protocol: packet.ProtoTCP, Port: 80, PortBits: 16}},
		FIB: []model.FIBRoute{
			{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Type: model.FIBUnicast, Via: netip.MustParseAddr("10.250.0.254")},
			{Prefix: netip.MustParsePrefix("10.244.2.0/24"), Type: model.FIBUnreachable},
		},
		Neighbours:  map[netip.Addr]net.HardwareAddr{netip.MustParseAddr("10.250.0.254"): gwMAC},
		UnderlayMAC: ulMAC, UnderlayMTU: 1500, Ifindex: 1,
	}
}

func frame(srcMAC net.HardwareAddr, h packet.IPv4, l4 []byte) []byte {
	return packet.Eth(nodeMacA, srcMAC, packet.EtherIPv4, h.Marshal(l4))
}

func tcpAB(sport, dport uint16) []byte {
	return frame(macA, packet.IPv4{Src: ipA, Dst: ipB, Proto: packet.ProtoTCP}, packet.TCP(sport, dport))
}

// setTotalLength makes the IPv4 total length n, the frame unchanged.
func setTotalLength(b []byte, n int) []byte {
	b = append([]byte(nil), b...)
	binary.BigEndian.PutUint16(b[16:], uint16(n))
	return b
}

func icmpError(quoted []byte) []byte {
	b := append(make([]byte, 8), quoted[:28]...)
	b[0] = 3
	return b
}

func TestModel(t *testing.T) {
	m := model.New(world())
	inner := packet.IPv4{Src: ipRemote, Dst: ipA, Proto: packet.ProtoUDP}.Marshal(packet.UDP(1, 2, nil))
	steps := []struct {
		name   string
		hook   model.Hook
		in     []byte
		reason maps.Reason
		ct     model.Conntrack
		check  func(t *testing.T, out []byte)
	}{
		{name: "allowed flow to a local pod", hook: model.FromPod, in: tcpAB(40000, 80), reason: maps.ReasonForwardLocal, ct: model.CTNew,
			check: func(t *testing.T, out []byte) {
				if !bytes.Equal(out[0:6], macB) || !bytes.Equal(out[6:12], nodeMacB) || out[22] != 63 || packet.Checksum(out[14:34]) != 0 {
					t.Errorf("left as %x: want B's MACs, TTL 63 and a valid checksum", out)
				}
			}},
		{name: "its next packet", hook: model.FromPod, in: tcpAB(40000, 80), reason: maps.ReasonForwardLocal, ct: model.CTEstablished},
		{name: "its reply", hook: model.FromPod, in: frame(macB, packet.IPv4{Src: ipB, Dst: ipA, Proto: packet.ProtoTCP}, packet.TCP(80, 40000)),
			reason: maps.ReasonForwardLocal, ct: model.CTReply},
		{name: "a port B's rule does not name", hook: model.FromPod, in: tcpAB(40000, 81), reason: maps.ReasonPolicyIngress, ct: model.CTNew},
		{name: "an icmp error about A's flow back to A", hook: model.FromPod, ct: model.CTRelated, reason: maps.ReasonForwardLocal,
			in: frame(macB, packet.IPv4{Src: ipB, Dst: ipA, Proto: packet.ProtoICMP}, icmpError(tcpAB(40000, 80)[14:]))},
		{name: "an icmp error about A's flow sent to B", hook: model.FromPod, ct: model.CTNew, reason: maps.ReasonPolicyIngress,
			in: frame(macA, packet.IPv4{Src: ipA, Dst: ipB, Proto: packet.ProtoICMP}, icmpError(tcpAB(40000, 80)[14:]))},
		{name: "ttl 1 leaves a flow behind", hook: model.FromPod, in: frame(macA, packet.IPv4{Src: ipA, Dst: ipRemote, Proto: packet.ProtoUDP, TTL: 1}, packet.UDP(1, 2, nil)),
			reason: maps.ReasonTTLExceeded, ct: model.CTNew},
		{name: "another pod's mac", hook: model.FromPod, in: frame(macB, packet.IPv4{Src: ipA, Dst: ipB, Proto: packet.ProtoTCP}, packet.TCP(1, 80)),
			reason: maps.ReasonSpoofedSource},
		{name: "udp header past the total length", hook: model.FromPod,
			in: setTotalLength(frame(macA, packet.IPv4{Src: ipA, Dst: ipRemote, Proto: packet.ProtoUDP}, packet.UDP(1, 2, nil)), 24), reason: maps.ReasonMalformed},
		{name: "native peer behind the gateway", hook: model.FromPod, in: frame(macA, packet.IPv4{Src: ipA, Dst: ipRemote, Proto: packet.ProtoUDP}, packet.UDP(3, 4, nil)),
			reason: maps.ReasonForwardUnder, ct: model.CTNew, check: func(t *testing.T, out []byte) {
				if !bytes.Equal(out[0:6], gwMAC) || !bytes.Equal(out[6:12], ulMAC) {
					t.Errorf("MACs %x, want the gateway's from the underlay's", out[0:12])
				}
			}},
		{name: "native peer the kernel cannot reach", hook: model.FromPod, in: frame(macA, packet.IPv4{Src: ipA, Dst: ipLost, Proto: packet.ProtoUDP}, packet.UDP(1, 2, nil)),
			reason: maps.ReasonNoRoute, ct: model.CTNew},
		{name: "ip-in-ip with outer options", hook: model.FromUnderlay, reason: maps.ReasonForwardLocal, ct: model.CTNew,
			in: packet.Eth(nodeMacA, gwMAC, packet.EtherIPv4, packet.IPv4{Src: peerIP, Dst: nodeIP, Proto: 4, Options: []byte{1, 1, 1, 0}}.Marshal(inner)),
			check: func(t *testing.T, out []byte) {
				if !bytes.Equal(out[14:], inner) {
					t.Errorf("left as %x, want the inner packet %x", out[14:], inner)
				}
			}},
		{name: "a fragment of ip-in-ip", hook: model.FromUnderlay, reason: maps.ReasonForwardHost,
			in: packet.Eth(nodeMacA, gwMAC, packet.EtherIPv4, packet.IPv4{Src: peerIP, Dst: nodeIP, Proto: 4, MoreFrags: true}.Marshal(inner))},
		{name: "to_pod does not judge form", hook: model.ToPod, in: setTotalLength(tcpAB(1, 80), 10), reason: maps.ReasonDeliver},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			o := m.Run(s.hook, s.in)
			if o.Reason != s.reason || o.Conntrack != s.ct {
				t.Fatalf("%s (conntrack %s), want %s (%s)", maps.ReasonName(o.Reason), o.Conntrack, maps.ReasonName(s.reason), s.ct)
			}
			if s.check != nil {
				s.check(t, o.Out)
			}
		})
	}
}
