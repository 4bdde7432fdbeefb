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

// IPv6 pod traffic, the first slice of dual stack. The node is loadSvcNode's (underlay
// 10.250.0.1/24, masquerading on, VXLAN encapsulated in BPF) with what the control plane
// writes for IPv6: each pod's /128 beside its IPv4 address, the node's IPv6 pod CIDR
// fd00:244::/64 in the cluster's fd00:244::/48, and the other nodes' /64s, whose node is an
// IPv4 address of the underlay (the underlay stays IPv4). One remote CIDR per mode.

var (
	v6Pod    = netip.MustParseAddr("fd00:244::10") // ipLocal's pod: identity 77, macA
	v6Peer   = netip.MustParseAddr("fd00:244::11") // another pod here, macB
	v6Client = netip.MustParseAddr("fd00:244::20") // policy: egress to v6Server and v6Native only, ingress none
	v6Server = netip.MustParseAddr("fd00:244::21") // policy: ingress TCP/80, UDP/53, ICMPv6 from v6Client; egress none
	v6Guard  = netip.MustParseAddr("fd00:244::40") // policy: ingress TCP/80 from identity 300 only
	v6Behind = netip.MustParseAddr("fd00:244::12") // a pod with macA behind another veth

	v6Vxlan      = netip.MustParseAddr("fd00:244:0:1::5") // on the peer, in VXLAN
	v6Native     = netip.MustParseAddr("fd00:244:0:2::5") // on the peer, natively routed
	v6IPIP       = netip.MustParseAddr("fd00:244:0:3::5") // on the peer, in 6in4
	v6Unresolved = netip.MustParseAddr("fd00:244:0:4::5") // natively, on a node the underlay has no neighbour entry for
	v6Free       = netip.MustParseAddr("fd00:244::99")    // in this node's CIDR, nobody's
	v6World      = netip.MustParseAddr("2001:db8::1")     // outside the cluster
	v6NodeSrc    = netip.MustParseAddr("fd00:244::1")     // the node's own IPv6 source on the host device

	llPod, llGateway = netip.MustParseAddr("fe80::a"), netip.MustParseAddr("fe80::1")

	macClient, macServer, macGuard = packet.MAC("02:00:00:00:00:20"), packet.MAC("02:00:00:00:00:21"), packet.MAC("02:00:00:00:00:40")
	peerMAC                        = packet.MAC("02:00:00:00:fe:02") // the peer node's, on the underlay
	strangerIP                     = netip.MustParseAddr("10.250.0.3")
)

// Identities of the policy pods and of the peer's IPv6 pod CIDR.
const (
	idClient, idServer, idPeerCIDR = 301, 302, 3000
	idGuardPeer                    = 300
)

// loadV6 is loadSvcNode with the IPv6 endpoints, routes, ipcache and policy above, and the
// peer's neighbour entry on the underlay.
func loadV6(t *testing.T) *svcNode {
	t.Helper()
	n := loadSvcNode(t)
	n.configure(t, func(c *maps.NodeConfig) { c.VXLANPort = testVXLANPort })
	link, err := n.ns.NL.LinkByName("underlay")
	must(t, err)
	must(t, n.ns.NL.NeighAdd(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4,
		State: netlink.NUD_PERMANENT, IP: peerIP.AsSlice(), HardwareAddr: peerMAC}))
	for _, ep := range []maps.Endpoint{
		{IP: v6Pod, ID: 9, Identity: 77, MAC: macA, NodeMAC: nodeMacA},
		{IP: v6Peer, ID: 60, Identity: 78, MAC: macB, NodeMAC: nodeMacB},
		{IP: v6Client, ID: 61, Identity: idClient, MAC: macClient, NodeMAC: nodeMacA, IngressEnforced: true, EgressEnforced: true},
		{IP: v6Server, ID: 62, Identity: idServer, MAC: macServer, NodeMAC: nodeMacB, IngressEnforced: true, EgressEnforced: true},
		{IP: v6Guard, ID: 63, Identity: 600, MAC: macGuard, NodeMAC: nodeMacA, IngressEnforced: true},
		{IP: v6Behind, ID: 64, Identity: 79, MAC: macA, NodeMAC: nodeMacB},
	} {
		ep.Ifindex, ep.Local = testRunIfindex, true
		if ep.IP == v6Behind {
			ep.Ifindex = ifindexB
		}
		must(t, n.Endpoints().Upsert(ep))
		must(t, n.IPCache().Upsert(maps.IPCacheEntry{Prefix: netip.PrefixFrom(ep.IP, 128), Identity: ep.Identity}))
	}
	must(t, n.IPCache().Upsert(maps.IPCacheEntry{Prefix: netip.MustParsePrefix("fd00:244:0:2::/64"), Identity: idPeerCIDR}))
	for _, r := range []maps.Route{
		{Prefix: netip.MustParsePrefix("fd00:244::/48"), Flags: maps.RouteUnreachable},
		{Prefix: netip.MustParsePrefix("fd00:244::/64"), NodeIP: nodeIP, Mode: maps.ModeVXLAN, Flags: maps.RouteLocal},
		{Prefix: netip.MustParsePrefix("fd00:244:0:1::/64"), NodeIP: peerIP, Mode: maps.ModeVXLAN},
		{Prefix: netip.MustParsePrefix("fd00:244:0:2::/64"), NodeIP: peerIP, Mode: maps.ModeNative},
		{Prefix: netip.MustParsePrefix("fd00:244:0:3::/64"), NodeIP: peerIP, Mode: maps.ModeIPIP},
		{Prefix: netip.MustParsePrefix("fd00:244:0:4::/64"), NodeIP: strangerIP, Mode: maps.ModeNative},
	} {
		must(t, n.Routes().Upsert(r))
	}
	pol := n.Policy()
	for _, e := range []maps.PolicyEntry{
		{Endpoint: 61, Peer: idServer, Direction: maps.Egress},
		{Endpoint: 61, Peer: idPeerCIDR, Direction: maps.Egress},
		{Endpoint: 62, Peer: idClient, Direction: maps.Ingress, Protocol: packet.ProtoTCP, Port: 80, PortBits: 16},
		{Endpoint: 62, Peer: idClient, Direction: maps.Ingress, Protocol: packet.ProtoUDP, Port: 53, PortBits: 16},
		{Endpoint: 62, Peer: idClient, Direction: maps.Ingress, Protocol: packet.ProtoICMP6},
		{Endpoint: 63, Peer: idGuardPeer, Direction: maps.Ingress, Protocol: packet.ProtoTCP, Port: 80, PortBits: 16},
	} {
		must(t, pol.Put(e))
	}
	return n
}

// v6Frame is an IPv6 packet in an Ethernet frame from srcMAC to the host-side veth.
func v6Frame(srcMAC net.HardwareAddr, src, dst netip.Addr, next uint8, l4 []byte) []byte {
	return packet.Eth(nodeMacA, srcMAC, packet.EtherIPv6, packet.IPv6{Src: src, Dst: dst, Next: next}.Marshal(l4))
}

func tcp6(srcMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, flags byte) []byte {
	return v6Frame(srcMAC, src, dst, packet.ProtoTCP, tcpSeg(sport, dport, flags))
}

func echo6(srcMAC net.HardwareAddr, src, dst netip.Addr, typ uint8, id uint16) []byte {
	return v6Frame(srcMAC, src, dst, packet.ProtoICMP6, echo(typ, id, 1))
}

// ptb is an ICMPv6 Packet Too Big from src to dst quoting frame's IPv6 packet.
func ptb(srcMAC net.HardwareAddr, src, dst netip.Addr, frame []byte) []byte {
	body := binary.BigEndian.AppendUint32(nil, 1280) // the MTU
	return v6Frame(srcMAC, src, dst, packet.ProtoICMP6, packet.ICMP6(packet.ICMP6PacketTooBig, 0, append(body, frame[14:]...)))
}

// v6Case is one packet through one program: the reason it must be counted under (in dir, or
// the hook's own direction) and what it must leave as.
type v6Case struct {
	name   string
	at     hook
	dir    maps.Direction
	in     []byte
	reason maps.Reason
	check  func(tb testing.TB, in, out []byte)
}

// fromOverlay is the VXLAN device's hook, beside service_test.go's.
const fromOverlay hook = 100

func (n *svcNode) run6(t *testing.T, cases []v6Case) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			prog, dir := n.prog(c.at)
			if c.at == fromOverlay {
				prog, dir = n.FromOverlay, maps.DirFromOverlay
			}
			if c.dir != 0 {
				dir = c.dir
			}
			ret, out, counted := n.runIn(t, prog, dir, c.in)
			wantCounted(t, counted, c.reason)
			if ret != verdictOf(c.reason) {
				t.Fatalf("verdict %d, want %d", ret, verdictOf(c.reason))
			}
			if c.check != nil {
				c.check(t, c.in, out)
			}
		})
	}
}

// hopLess is in's IPv6 packet with its hop limit one lower.
func hopLess(in []byte, at int) []byte {
	p := append([]byte(nil), in[at:]...)
	p[7]--
	return p
}

// deliveredTo: the frame goes from nodeMAC to the pod's mac, its IPv6 packet unchanged but
// for the hop limit, lowered by hops.
func deliveredTo(mac, nodeMAC net.HardwareAddr, hops int) func(tb testing.TB, in, out []byte) {
	return func(tb testing.TB, in, out []byte) {
		tb.Helper()
		if !bytes.Equal(out[0:6], mac) || !bytes.Equal(out[6:12], nodeMAC) || binary.BigEndian.Uint16(out[12:]) != packet.EtherIPv6 {
			tb.Errorf("Ethernet %x, want %s <- %s, IPv6", out[:14], mac, nodeMAC)
		}
		want := append([]byte(nil), in[14:]...)
		want[7] -= byte(hops)
		if !bytes.Equal(out[14:len(in)], want) {
			tb.Errorf("IPv6 packet\n got %x\nwant %x", out[14:len(in)], want)
		}
	}
}

func untouched(tb testing.TB, in, out []byte) {
	tb.Helper()
	if !bytes.Equal(out[:len(in)], in) {
		tb.Errorf("left as\n  %x\nwant it unchanged:\n  %x", out[:len(in)], in)
	}
}

// Same node: forwarded into the pod with the hop limit lowered; policy by identity, and
// conntrack lets the replies of TCP, UDP and ICMPv6 echo back, and ICMPv6 errors about them.
func TestIPv6SameNode(t *testing.T) {
	n := loadV6(t)
	toServer, toClient := deliveredTo(macServer, nodeMacB, 1), deliveredTo(macClient, nodeMacA, 1)
	syn := tcp6(macClient, v6Client, v6Server, 40000, 80, tcpSYN)
	n.run6(t, []v6Case{
		{name: "udp between two pods", at: fromPod, in: v6Frame(macA, v6Pod, v6Peer, packet.ProtoUDP, packet.UDP(1000, 2000, []byte("hi"))),
			reason: maps.ReasonForwardLocal, check: deliveredTo(macB, nodeMacB, 1)},
		{name: "hop limit 1 is not forwarded", at: fromPod, in: packet.Eth(nodeMacA, macA, packet.EtherIPv6,
			packet.IPv6{Src: v6Pod, Dst: v6Peer, Next: packet.ProtoUDP, HopLimit: 1}.Marshal(packet.UDP(1, 2, nil))), reason: maps.ReasonTTLExceeded},

		{name: "tcp allowed by both policies", at: fromPod, in: syn, reason: maps.ReasonForwardLocal, check: toServer},
		{name: "its reply passes by conntrack", at: fromPod, in: tcp6(macServer, v6Server, v6Client, 80, 40000, tcpSYN|tcpACK),
			reason: maps.ReasonForwardLocal, check: toClient},
		{name: "a new flow the other way meets the server's egress policy", at: fromPod,
			in: tcp6(macServer, v6Server, v6Client, 80, 22, tcpSYN), reason: maps.ReasonPolicyEgress},
		{name: "a port the server's ingress policy does not allow", at: fromPod,
			in: tcp6(macClient, v6Client, v6Server, 40001, 81, tcpSYN), reason: maps.ReasonPolicyIngress},
		{name: "the ingress policy is the identity's: another pod may not", at: fromPod,
			in: tcp6(macA, v6Pod, v6Server, 40002, 80, tcpSYN), reason: maps.ReasonPolicyIngress},
		{name: "icmpv6 echo request", at: fromPod, in: echo6(macClient, v6Client, v6Server, packet.ICMP6EchoRequest, 7),
			reason: maps.ReasonForwardLocal, check: toServer},
		{name: "its echo reply passes by conntrack", at: fromPod, in: echo6(macServer, v6Server, v6Client, packet.ICMP6EchoReply, 7),
			reason: maps.ReasonForwardLocal, check: toClient},
		{name: "an echo reply of no request", at: fromPod, in: echo6(macServer, v6Server, v6Client, packet.ICMP6EchoReply, 8),
			reason: maps.ReasonPolicyEgress},
		{name: "udp request", at: fromPod, in: v6Frame(macClient, v6Client, v6Server, packet.ProtoUDP, packet.UDP(5353, 53, nil)),
			reason: maps.ReasonForwardLocal, check: toServer},
		{name: "its udp reply passes by conntrack", at: fromPod, in: v6Frame(macServer, v6Server, v6Client, packet.ProtoUDP, packet.UDP(53, 5353, nil)),
			reason: maps.ReasonForwardLocal, check: toClient},
		{name: "packet too big about the tcp flow is related", at: fromPod, in: ptb(macServer, v6Server, v6Client, syn),
			reason: maps.ReasonForwardLocal, check: toClient},
		{name: "packet too big about no flow meets policy", at: fromPod,
			in: ptb(macServer, v6Server, v6Client, tcp6(macClient, v6Client, v6Server, 40009, 80, tcpSYN)), reason: maps.ReasonPolicyEgress},
	})
}

// Anti-spoofing and the link's own traffic: a pod's IPv6 source and MAC must be its own, and
// a link-local or unspecified source may only do neighbour discovery and MLD with the node.
// A Neighbor Advertisement must advertise the sender's own address and MAC.
func TestIPv6AntiSpoofing(t *testing.T) {
	n := loadV6(t)
	allNodes, routers := netip.MustParseAddr("ff02::1"), netip.MustParseAddr("ff02::2")
	solicited := netip.MustParseAddr("ff02::1:ff00:1")
	tlla := func(mac net.HardwareAddr) []byte { return packet.NDOption(packet.NDOptTargetLLAddr, mac) }
	na := func(src netip.Addr, target netip.Addr, opts ...[]byte) []byte {
		return v6Frame(macA, src, allNodes, packet.ProtoICMP6, packet.NeighAdvert(target, opts...))
	}
	icmp6 := func(src, dst netip.Addr, l4 []byte) []byte { return v6Frame(macA, src, dst, packet.ProtoICMP6, l4) }
	// MLDv2 reports carry a hop-by-hop header with the router alert option.
	mld := append([]byte{packet.ProtoICMP6, 0, 5, 2, 0, 0, 1, 0}, packet.ICMP6(packet.ICMP6MLDv2Report, 0, make([]byte, 4))...)
	fragNS := append([]byte{packet.ProtoICMP6, 0, 0, 1, 0, 0, 0, 9}, packet.NeighSolicit(llGateway)...)
	zeroLenOpt := append(packet.NeighAdvert(v6Pod), packet.NDOptTargetLLAddr, 0, 0, 0, 0, 0, 0, 0)
	n.run6(t, []v6Case{
		{name: "an ipv6 source no endpoint has", at: fromPod, in: v6Frame(macA, v6Free, v6Peer, packet.ProtoUDP, packet.UDP(1, 2, nil)),
			reason: maps.ReasonSpoofedSource},
		{name: "another pod's ipv6 source", at: fromPod, in: v6Frame(macA, v6Peer, v6Pod, packet.ProtoUDP, packet.UDP(1, 2, nil)),
			reason: maps.ReasonSpoofedSource},
		{name: "its own ipv6 source from another mac", at: fromPod, in: v6Frame(macB, v6Pod, v6Peer, packet.ProtoUDP, packet.UDP(1, 2, nil)),
			reason: maps.ReasonSpoofedSource},

		{name: "neighbour solicitation from link-local goes to the node", at: fromPod,
			in:     icmp6(llPod, solicited, packet.NeighSolicit(llGateway, packet.NDOption(packet.NDOptSourceLLAddr, macA))),
			reason: maps.ReasonForwardHost, check: untouched},
		{name: "duplicate address detection from :: goes to the node", at: fromPod,
			in: icmp6(netip.IPv6Unspecified(), solicited, packet.NeighSolicit(llPod)), reason: maps.ReasonForwardHost, check: untouched},
		{name: "router solicitation goes to the node", at: fromPod, in: icmp6(llPod, routers, packet.ICMP6(packet.ICMP6RouterSolicit, 0, make([]byte, 4))),
			reason: maps.ReasonForwardHost, check: untouched},
		{name: "mldv2 report behind hop-by-hop goes to the node", at: fromPod,
			in: v6Frame(macA, llPod, netip.MustParseAddr("ff02::16"), packet.ProtoHopOpts, mld), reason: maps.ReasonForwardHost, check: untouched},
		{name: "neighbour advertisement of its own address and mac", at: fromPod, in: na(llPod, v6Pod, tlla(macA)),
			reason: maps.ReasonForwardHost, check: untouched},
		{name: "neighbour advertisement from its global address", at: fromPod, in: na(v6Pod, v6Pod, tlla(macA)),
			reason: maps.ReasonForwardHost, check: untouched},
		{name: "neighbour advertisement without a target link-layer option", at: fromPod, in: na(llPod, v6Pod),
			reason: maps.ReasonForwardHost},

		{name: "neighbour advertisement of another pod's address", at: fromPod, in: na(llPod, v6Peer, tlla(macA)),
			reason: maps.ReasonSpoofedSource},
		{name: "neighbour advertisement of another pod's address without options", at: fromPod, in: na(llPod, v6Peer),
			reason: maps.ReasonSpoofedSource},
		{name: "neighbour advertisement of the address of a pod behind another veth", at: fromPod, in: na(llPod, v6Behind, tlla(macA)),
			reason: maps.ReasonSpoofedSource},
		{name: "neighbour advertisement of another pod's address from its global one", at: fromPod, in: na(v6Pod, v6Peer, tlla(macA)),
			reason: maps.ReasonSpoofedSource},
		{name: "neighbour advertisement of an address nobody has", at: fromPod, in: na(llPod, v6Free, tlla(macA)),
			reason: maps.ReasonSpoofedSource},
		{name: "neighbour advertisement of its address with another mac", at: fromPod, in: na(llPod, v6Pod, tlla(macB)),
			reason: maps.ReasonSpoofedSource},
		{name: "neighbour advertisement whose target mac comes second", at: fromPod,
			in: na(llPod, v6Pod, packet.NDOption(packet.NDOptSourceLLAddr, macA), tlla(macB)), reason: maps.ReasonSpoofedSource},
		{name: "neighbour advertisement with an option of length 0", at: fromPod,
			in: icmp6(llPod, allNodes, zeroLenOpt), reason: maps.ReasonMalformed},

		{name: "a pod's router advertisement is dropped", at: fromPod, in: icmp6(llPod, allNodes, packet.ICMP6(134, 0, make([]byte, 12))),
			reason: maps.ReasonSpoofedSource},
		{name: "a pod's redirect is dropped", at: fromPod, in: icmp6(llPod, llGateway, packet.ICMP6(137, 0, make([]byte, 36))),
			reason: maps.ReasonSpoofedSource},
		{name: "udp from link-local is dropped", at: fromPod, in: v6Frame(macA, llPod, llGateway, packet.ProtoUDP, packet.UDP(546, 547, nil)),
			reason: maps.ReasonSpoofedSource},
		{name: "echo from link-local is dropped", at: fromPod, in: icmp6(llPod, llGateway, echo(packet.ICMP6EchoRequest, 1, 1)),
			reason: maps.ReasonSpoofedSource},
		{name: "tcp from :: is dropped", at: fromPod, in: tcp6(macA, netip.IPv6Unspecified(), v6Peer, 1, 2, tcpSYN),
			reason: maps.ReasonSpoofedSource},
		{name: "a fragmented neighbour solicitation is dropped (RFC 6980)", at: fromPod,
			in: v6Frame(macA, llPod, solicited, packet.ProtoFrag6, fragNS), reason: maps.ReasonSpoofedSource},

		{name: "ipv6 leaving the cluster is not masqueraded", at: fromPod, in: tcp6(macA, v6Pod, v6World, 40000, 443, tcpSYN),
			reason: maps.ReasonForwardHost, check: untouched},
	})
}

// To other nodes: IPv6 inside VXLAN (in BPF, and through the device), natively to the node's
// IPv4 address, and in 6in4; and the receiving side of each.
func TestIPv6CrossNodeSend(t *testing.T) {
	n := loadV6(t)
	n.run6(t, []v6Case{
		{name: "vxlan encapsulated in bpf, an ipv6 frame inside ipv4", at: fromPod, in: tcp6(macA, v6Pod, v6Vxlan, 1000, 80, tcpSYN),
			reason: maps.ReasonForwardTunnel, check: func(tb testing.TB, in, out []byte) {
				if len(out) != len(in)+50 {
					tb.Fatalf("%d bytes out, want %d", len(out), len(in)+50)
				}
				wantOuterIPv4(tb, out, packet.ProtoUDP)
				if binary.BigEndian.Uint16(out[36:]) != testVXLANPort || out[42] != 0x08 || binary.BigEndian.Uint32(out[46:])>>8 != 77 {
					tb.Errorf("UDP/VXLAN %x: want port %d, the I flag and VNI 77", out[34:50], testVXLANPort)
				}
				if !bytes.Equal(out[50:56], packet.MAC("0e:00:0a:fa:00:02")) || binary.BigEndian.Uint16(out[62:]) != packet.EtherIPv6 {
					tb.Errorf("inner Ethernet %x: want the peer's tunnel MAC and IPv6", out[50:64])
				}
				if want := hopLess(in, 14); !bytes.Equal(out[64:], want) {
					tb.Errorf("inner packet\n got %x\nwant %x", out[64:], want)
				}
			}},
		{name: "natively to the owning node's ipv4 address on the underlay", at: fromPod, in: tcp6(macA, v6Pod, v6Native, 1000, 80, tcpSYN),
			reason: maps.ReasonForwardUnder, check: func(tb testing.TB, in, out []byte) {
				if !bytes.Equal(out[0:6], peerMAC) || !bytes.Equal(out[6:12], underlayMAC) || binary.BigEndian.Uint16(out[12:]) != packet.EtherIPv6 {
					tb.Errorf("Ethernet %x, want %s <- %s, IPv6", out[:14], peerMAC, underlayMAC)
				}
				if want := hopLess(in, 14); !bytes.Equal(out[14:len(in)], want) {
					tb.Errorf("packet\n got %x\nwant %x", out[14:len(in)], want)
				}
			}},
		// bpf_redirect_neigh resolves in the packet's family; an IPv4 next hop cannot be.
		{name: "natively to a node with no neighbour entry", at: fromPod, in: tcp6(macA, v6Pod, v6Unresolved, 1000, 80, tcpSYN),
			reason: maps.ReasonNoRoute},
		{name: "6in4: an outer ipv4 header of protocol 41", at: fromPod, in: tcp6(macA, v6Pod, v6IPIP, 1000, 80, tcpSYN),
			reason: maps.ReasonForwardTunnel, check: func(tb testing.TB, in, out []byte) {
				if len(out) != len(in)+20 {
					tb.Fatalf("%d bytes out, want %d", len(out), len(in)+20)
				}
				wantOuterIPv4(tb, out, packet.ProtoIPv6)
				if want := hopLess(in, 14); !bytes.Equal(out[34:], want) {
					tb.Errorf("inner packet\n got %x\nwant %x", out[34:], want)
				}
			}},
		{name: "a free address of the cluster cidr", at: fromPod, in: tcp6(macA, v6Pod, netip.MustParseAddr("fd00:244:0:77::1"), 1, 2, tcpSYN),
			reason: maps.ReasonUnknownDest},
		{name: "a free address of this node's cidr", at: fromPod, in: tcp6(macA, v6Pod, v6Free, 1, 2, tcpSYN),
			reason: maps.ReasonUnknownDest},
	})
	// Without VXLAN's port the device encapsulates: a tunnel key, the frame as it is.
	n.configure(t, func(c *maps.NodeConfig) { c.VXLANPort = 0 })
	n.run6(t, []v6Case{{name: "vxlan through the device", at: fromPod, in: tcp6(macA, v6Pod, v6Vxlan, 1001, 80, tcpSYN),
		reason: maps.ReasonForwardTunnel, check: func(tb testing.TB, in, out []byte) {
			if len(out) != len(in) || !bytes.Equal(out[14:], hopLess(in, 14)) {
				tb.Errorf("left as %x, want the frame with its hop limit lowered", out)
			}
		}}})
}

// wantOuterIPv4 checks a tunnel's outer Ethernet and IPv4 headers: to the peer node from this
// one, DF, TTL 64, proto, a valid checksum.
func wantOuterIPv4(tb testing.TB, out []byte, proto uint8) {
	tb.Helper()
	if !bytes.Equal(out[0:6], peerMAC) || !bytes.Equal(out[6:12], underlayMAC) || binary.BigEndian.Uint16(out[12:]) != packet.EtherIPv4 {
		tb.Errorf("outer Ethernet %x: want %s <- %s, IPv4", out[:14], peerMAC, underlayMAC)
	}
	ip := out[14:34]
	if ip[0] != 0x45 || int(binary.BigEndian.Uint16(ip[2:])) != len(out)-14 || binary.BigEndian.Uint16(ip[6:])&0x4000 == 0 ||
		ip[8] != 64 || ip[9] != proto || packet.Checksum(ip) != 0 ||
		netip.AddrFrom4([4]byte(ip[12:16])) != nodeIP || netip.AddrFrom4([4]byte(ip[16:20])) != peerIP {
		tb.Errorf("outer IPv4 %x: want %s -> %s, length %d, DF, TTL 64, protocol %d, a valid checksum", ip, nodeIP, peerIP, len(out)-14, proto)
	}
}

func TestIPv6CrossNodeReceive(t *testing.T) {
	n := loadV6(t)
	inner := func(src, dst netip.Addr, sport uint16) []byte {
		return packet.IPv6{Src: src, Dst: dst, Next: packet.ProtoTCP, HopLimit: 63}.Marshal(tcpSeg(sport, 80, tcpSYN))
	}
	// decapsulated: the pod gets the inner packet as it was, in an IPv6 frame.
	decapsulated := func(mac net.HardwareAddr, ip []byte) func(tb testing.TB, in, out []byte) {
		return func(tb testing.TB, _, out []byte) {
			tb.Helper()
			if !bytes.Equal(out[0:6], mac) || binary.BigEndian.Uint16(out[12:]) != packet.EtherIPv6 {
				tb.Errorf("Ethernet %x, want to %s, IPv6", out[:14], mac)
			}
			if !bytes.Equal(out[14:14+len(ip)], ip) || len(out) != 14+len(ip) {
				tb.Errorf("inner packet changed or outer headers left:\n got %x\nwant %x", out[14:], ip)
			}
		}
	}
	sixInFour := func(dst netip.Addr, ip []byte) []byte {
		return packet.Eth(underlayMAC, gatewayMAC, packet.EtherIPv4, packet.IPv4{Src: peerIP, Dst: dst, Proto: packet.ProtoIPv6}.Marshal(ip))
	}
	toPod, toGuard := inner(v6Vxlan, v6Pod, 1), inner(v6Vxlan, v6Guard, 2)
	native := inner(v6Native, v6Pod, 3)
	flow := tcp6(macClient, v6Client, v6Native, 44000, 443, tcpSYN)
	n.run6(t, []v6Case{
		{name: "vxlan with ipv6 inside is decapsulated in bpf and delivered", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherIPv6, toPod), reason: maps.ReasonForwardLocal, check: decapsulated(macA, toPod)},
		{name: "the vni is the sender's identity: one policy allows", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: vxlanFrame(nodeIP, testVXLANPort, 0x08, idGuardPeer, packet.EtherIPv6, toGuard), reason: maps.ReasonForwardLocal, check: decapsulated(macGuard, toGuard)},
		{name: "the vni is the sender's identity: one policy does not allow", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: vxlanFrame(nodeIP, testVXLANPort, 0x08, idGuardPeer+1, packet.EtherIPv6, inner(v6Vxlan, v6Guard, 4)), reason: maps.ReasonPolicyIngress},
		{name: "vxlan with ipv6 for nobody here", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherIPv6, inner(v6Vxlan, v6Free, 5)), reason: maps.ReasonUnknownDest},
		{name: "vxlan saying ipv6 but carrying ipv4 is malformed", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherIPv6,
				packet.IPv4{Src: ipRemote, Dst: ipLocal, Proto: packet.ProtoUDP}.Marshal(packet.UDP(1, 2, make([]byte, 32)))),
			reason: maps.ReasonMalformed},
		{name: "the vxlan device's ipv6 frame for a local pod", at: fromOverlay,
			in: packet.Eth(nodeMacA, macB, packet.EtherIPv6, toPod), reason: maps.ReasonForwardLocal, check: decapsulated(macA, toPod)},
		{name: "native ipv6 from another node's pod cidr is delivered", at: fromUnderlay,
			in: packet.Eth(underlayMAC, peerMAC, packet.EtherIPv6, native), reason: maps.ReasonForwardLocal, check: decapsulated(macA, native)},
		{name: "native ipv6 for nobody here is the node's", at: fromUnderlay,
			in: packet.Eth(underlayMAC, peerMAC, packet.EtherIPv6, inner(v6Native, v6Free, 6)), reason: maps.ReasonForwardHost},
		{name: "6in4 for a local pod is decapsulated and delivered", at: fromUnderlay, in: sixInFour(nodeIP, native),
			reason: maps.ReasonForwardLocal, check: decapsulated(macA, native)},
		{name: "6in4 for another node is left to the stack", at: fromUnderlay, in: sixInFour(peerIP, native), reason: maps.ReasonForwardHost},
		{name: "6in4 carrying ipv4 is malformed", at: fromUnderlay,
			in:     sixInFour(nodeIP, packet.IPv4{Src: ipRemote, Dst: ipLocal, Proto: packet.ProtoUDP}.Marshal(packet.UDP(1, 2, make([]byte, 32)))),
			reason: maps.ReasonMalformed},

		// Path MTU discovery: a router's Packet Too Big about a tracked flow of a pod whose
		// ingress policy takes nothing.
		{name: "a pod's flow to a natively routed pod", at: fromPod, in: flow, reason: maps.ReasonForwardUnder},
		{name: "another pod's flow there", at: fromPod, in: tcp6(macA, v6Pod, v6Native, 44000, 443, tcpSYN), reason: maps.ReasonForwardUnder},
		{name: "packet too big about it from a router is related", at: fromUnderlay,
			in: ptb(gatewayMAC, v6World, v6Client, flow), reason: maps.ReasonForwardLocal},
		{name: "packet too big about a flow never seen meets policy", at: fromUnderlay,
			in: ptb(gatewayMAC, v6World, v6Client, tcp6(macClient, v6Client, v6Native, 44001, 443, tcpSYN)), reason: maps.ReasonPolicyIngress},
		{name: "packet too big quoting another pod's flow meets policy", at: fromUnderlay,
			in: ptb(gatewayMAC, v6World, v6Client, tcp6(macA, v6Pod, v6Native, 44000, 443, tcpSYN)), reason: maps.ReasonPolicyIngress},
	})
}

// The node's own IPv6: through its stack to a pod (to_pod), and out of the host device to
// other nodes' pods (from_host).
func TestIPv6FromNode(t *testing.T) {
	n := loadV6(t)
	node := func(dst netip.Addr, dport uint16) []byte { return tcp6(hostMAC, v6NodeSrc, dst, 45000, dport, tcpSYN) }
	n.run6(t, []v6Case{
		{name: "to_pod: a pod without ingress policy", at: toPod, in: tcp6(hostMAC, v6World, v6Pod, 1, 80, tcpSYN),
			reason: maps.ReasonDeliver, check: untouched},
		{name: "to_pod: its ingress policy allows no such peer", at: toPod, in: tcp6(hostMAC, v6World, v6Server, 1, 80, tcpSYN),
			reason: maps.ReasonPolicyIngress},
		{name: "to_pod: its ingress policy allows the peer", at: toPod, in: tcp6(hostMAC, v6Client, v6Server, 2, 80, tcpSYN),
			reason: maps.ReasonDeliver, check: untouched},
		{name: "to_pod: the node's neighbour solicitation passes any policy", at: toPod,
			in:     v6Frame(hostMAC, llGateway, v6Client, packet.ProtoICMP6, packet.NeighSolicit(v6Client, packet.NDOption(packet.NDOptSourceLLAddr, hostMAC))),
			reason: maps.ReasonDeliver, check: untouched},
		{name: "from_host: to a local pod through its veth", at: fromHost, in: node(v6Pod, 80),
			reason: maps.ReasonForwardLocal, check: deliveredTo(macA, nodeMacA, 0)},
		{name: "from_host: to another node's pod in vxlan", at: fromHost, in: node(v6Vxlan, 80),
			reason: maps.ReasonForwardTunnel, check: func(tb testing.TB, in, out []byte) {
				wantOuterIPv4(tb, out, packet.ProtoUDP)
				if binary.BigEndian.Uint32(out[46:])>>8 != maps.IdentityRemoteNode {
					tb.Errorf("VNI %d, want the remote-node identity", binary.BigEndian.Uint32(out[46:])>>8)
				}
			}},
		{name: "from_host: the device's own neighbour discovery", at: fromHost,
			in:     v6Frame(hostMAC, llGateway, netip.MustParseAddr("ff02::2"), packet.ProtoICMP6, packet.ICMP6(packet.ICMP6RouterSolicit, 0, make([]byte, 4))),
			reason: maps.ReasonForwardHost, check: untouched},
		{name: "from_host: nothing else is routed there", at: fromHost, in: node(v6World, 443), reason: maps.ReasonUnknownDest},
	})
}
