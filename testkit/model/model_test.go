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

// The IPv6 side of a node with an IPv6 underlay address, masquerading with two ports.
var (
	pod6, node6, gw6 = netip.MustParseAddr("fd00:244::a"), netip.MustParseAddr("fd00:250::1"), netip.MustParseAddr("fd00:250::fe")
	world6, router6  = netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8:1::fe")
)

// node6World is world with pod A's IPv6 address, a node IPv6 address, masquerading on with ports
// 40000-40001 (IPv4 exempt, and 2001:db8:77::/48), and an IPv6 default route via gw6.
func node6World() model.World {
	w := world()
	w.Node.NodeIPv6, w.Node.Masquerade, w.Node.NATPorts = node6, true, maps.PortRange{Min: 40000, Max: 40001}
	w.Endpoints = append(w.Endpoints, maps.Endpoint{IP: pod6, Ifindex: 1, ID: 3, Identity: 300, Local: true, MAC: macA, NodeMAC: nodeMacA})
	w.Routes = append(w.Routes, maps.Route{Prefix: netip.MustParsePrefix("fd00:244::/64"), Flags: maps.RouteLocal})
	w.NoMasquerade = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("2001:db8:77::/48")}
	w.FIB = append(w.FIB, model.FIBRoute{Prefix: netip.MustParsePrefix("::/0"), Type: model.FIBUnicast, Via: gw6})
	w.Neighbours[gw6] = gwMAC
	return w
}

// sum6 is the Internet checksum of an L4 segment under IPv6's pseudo-header: 0 when the
// segment's own checksum is right.
func sum6(src, dst netip.Addr, proto uint8, seg []byte) uint16 {
	s, d := src.As16(), dst.As16()
	b := append(append([]byte(nil), s[:]...), d[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(seg)))
	return packet.Checksum(append(append(b, 0, 0, 0, proto), seg...))
}

// ip6 is an Ethernet + IPv6 frame from mac whose L4 segment's checksum (at csum) is right.
func ip6(mac net.HardwareAddr, src, dst netip.Addr, proto uint8, seg []byte, csum int) []byte {
	seg = append([]byte(nil), seg...)
	binary.BigEndian.PutUint16(seg[csum:], sum6(src, dst, proto, seg))
	return packet.Eth(nodeMacA, mac, packet.EtherIPv6, packet.IPv6{Src: src, Dst: dst, Next: proto}.Marshal(seg))
}

// flow6 reads an Ethernet + IPv6 frame's addresses and first two L4 words, and says whether
// its L4 checksum is right.
func flow6(b []byte) (src, dst netip.AddrPort, ok bool) {
	ip := b[14:]
	s, d := netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	seg := ip[40 : 40+int(binary.BigEndian.Uint16(ip[4:]))]
	return netip.AddrPortFrom(s, binary.BigEndian.Uint16(seg)), netip.AddrPortFrom(d, binary.BigEndian.Uint16(seg[2:])),
		sum6(s, d, ip[6], seg) == 0
}

// A node with an IPv6 address masquerades pods' IPv6 flows leaving the cluster with ports
// of its range, in order (no ChoosePort), until a destination has them all; replies and a
// Packet Too Big come back to the pod; no_masquerade and the node itself are exempt.
func TestModelMasquerade6(t *testing.T) {
	m := model.New(node6World())
	syn := func(sport uint16, dst netip.Addr) []byte {
		return ip6(macA, pod6, dst, packet.ProtoTCP, packet.TCP(sport, 443), 16)
	}
	run := func(name string, h model.Hook, in []byte, reason maps.Reason, src, dst netip.AddrPort) []byte {
		t.Helper()
		o := m.Run(h, in)
		if o.Reason != reason {
			t.Fatalf("%s: %s, want %s", name, maps.ReasonName(o.Reason), maps.ReasonName(reason))
		}
		if s, d, ok := flow6(o.Out); src.IsValid() && (s != src || d != dst || !ok) {
			t.Errorf("%s: left as %s -> %s (checksum right: %v), want %s -> %s", name, s, d, ok, src, dst)
		}
		return o.Out
	}
	remote := netip.AddrPortFrom(world6, 443)
	first := run("a pod's first flow out", model.FromPod, syn(1000, world6), maps.ReasonForwardUnder, netip.AddrPortFrom(node6, 40000), remote)
	if !bytes.Equal(first[0:6], gwMAC) || !bytes.Equal(first[6:12], ulMAC) || first[14+7] != 63 {
		t.Errorf("left as %x: want the gateway's MAC from the underlay's, hop limit 63", first[:22])
	}
	run("its second flow there", model.FromPod, syn(1001, world6), maps.ReasonForwardUnder, netip.AddrPortFrom(node6, 40001), remote)
	run("a third finds no port", model.FromPod, syn(1002, world6), maps.ReasonNATNoPort, netip.AddrPort{}, netip.AddrPort{})
	run("the reply to the first comes back", model.FromUnderlay, ip6(gwMAC, world6, node6, packet.ProtoTCP, packet.TCP(443, 40000), 16),
		maps.ReasonForwardLocal, remote, netip.AddrPortFrom(pod6, 1000))

	// A router's Packet Too Big about the first flow as it left: the pod gets it, from the
	// router, quoting its own source and port, as related to its flow.
	quoted := first[14 : 14+40+20]
	tooBig := append(binary.BigEndian.AppendUint32([]byte{packet.ICMP6PacketTooBig, 0, 0, 0}, 1280), quoted...)
	o := m.Run(model.FromUnderlay, ip6(gwMAC, router6, node6, packet.ProtoICMP6, tooBig, 2))
	if o.Reason != maps.ReasonForwardLocal || o.Conntrack != model.CTRelated || o.SNAT != model.SNATError {
		t.Fatalf("packet too big: %s (conntrack %s, snat %d), want forward-local, related", maps.ReasonName(o.Reason), o.Conntrack, o.SNAT)
	}
	ip := o.Out[14:]
	q := ip[40+8:]
	if netip.AddrFrom16([16]byte(ip[24:40])) != pod6 || netip.AddrFrom16([16]byte(q[8:24])) != pod6 || binary.BigEndian.Uint16(q[40:]) != 1000 ||
		sum6(router6, pod6, packet.ProtoICMP6, ip[40:]) != 0 {
		t.Errorf("packet too big left as %x: want it to and quoting %s port 1000, its checksum right", ip, pod6)
	}

	run("a destination in no_masquerade", model.FromPod, syn(1003, netip.MustParseAddr("2001:db8:77::1")), maps.ReasonForwardHost,
		netip.AddrPortFrom(pod6, 1003), netip.AddrPortFrom(netip.MustParseAddr("2001:db8:77::1"), 443))
	run("the node itself", model.FromPod, syn(1004, node6), maps.ReasonForwardHost, netip.AddrPortFrom(pod6, 1004), netip.AddrPortFrom(node6, 443))
}
