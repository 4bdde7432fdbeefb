// Package fuzz holds the datapath to its reference model (package model): it generates
// worlds (map contents) and packets from a seed, mutates every header length, fragment and
// extension-header field, runs each packet through a BPF program with BPF_PROG_TEST_RUN and
// through the model, and reports every disagreement as a Go literal for a table test.
package fuzz

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/model"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// The node and its neighbourhood. The addresses are fixed; which maps hold them, with what
// flags, identities and rules, is the world's seed's choice.
var (
	nodeIP     = netip.MustParseAddr("10.250.0.1")
	peerIP     = netip.MustParseAddr("10.250.0.2") // on the underlay, neighbour known
	strangerIP = netip.MustParseAddr("10.250.0.3") // on the underlay, no neighbour entry
	lostIP     = netip.MustParseAddr("10.250.9.1") // behind an unreachable route
	farIP      = netip.MustParseAddr("10.251.0.1") // behind the default gateway
	gatewayIP  = netip.MustParseAddr("10.250.0.254")
	bcastIP    = netip.MustParseAddr("10.250.0.255") // the underlay's broadcast: not forwarded

	underlayMAC = mac("02:00:00:00:fe:01")
	gatewayMAC  = mac("02:00:00:00:fe:fe")
	peerMAC     = mac("02:00:00:00:fe:02")
	hostMAC     = mac("ee:00:00:00:00:01")

	podCIDR      = netip.MustParsePrefix("10.244.0.0/24")
	clusterCIDR  = netip.MustParsePrefix("10.244.0.0/16")
	podCIDR6     = netip.MustParsePrefix("fd00:244::/64")
	clusterCIDR6 = netip.MustParsePrefix("fd00:244::/48")

	// The underlay's IPv6 side, which the namespace always has and the worlds that give the
	// node an IPv6 address use: the node, a default gateway and a peer with neighbour
	// entries, a stranger without, and a network behind an unreachable route.
	underlayPrefix6 = netip.MustParsePrefix("fd00:250::1/64")
	nodeIP6         = underlayPrefix6.Addr()
	gatewayIP6      = netip.MustParseAddr("fd00:250::fe")
	peerIP6         = netip.MustParseAddr("fd00:250::2")
	strangerIP6     = netip.MustParseAddr("fd00:250::3")
	lostNet6        = netip.MustParsePrefix("2001:db8:dead::/48")

	// outsiders6 are IPv6 addresses outside the cluster: NodePort clients, and what pods
	// reach masqueraded (one in each way the underlay routes).
	outsiders6 = []netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8:feed::9"),
		peerIP6, strangerIP6, netip.MustParseAddr("2001:db8:dead::1"), netip.MustParseAddr("fe80::1")}
	// router6 is a router on the way out that sends ICMPv6 errors.
	router6 = netip.MustParseAddr("2001:db8:1::fe")
)

// natPortMin is where the NAT port range of the worlds with a node IPv6 address begins: one to
// four ports, so that flows run out of them and the datapath's search from a random start
// tries them all.
const natPortMin = 40000

// testRunIfindex is the device a test run gives the skb: the namespace's loopback.
const testRunIfindex = 1

// otherIfindex is a veth the packets never arrive on (an endpoint there is spoofed).
const otherIfindex = 42

// Pod identities and CIDR identities the worlds draw from.
const (
	idPodA = maps.IdentityFirstPod + iota
	idPodB
	idPodC
	idRemote
)

var cidrIDs = []uint32{maps.IdentityCIDRFirst + 1, maps.IdentityCIDRFirst + 2, maps.IdentityCIDRFirst + 3}

// A remote pod CIDR and the node that owns it; the kernel's routes make each node's way
// through the underlay different.
type remote struct {
	cidr netip.Prefix
	node netip.Addr
	pod  netip.Addr // an address in it the packets use
}

var remotes = []remote{
	{netip.MustParsePrefix("10.244.1.0/24"), peerIP, netip.MustParseAddr("10.244.1.5")},
	{netip.MustParsePrefix("10.244.2.0/24"), strangerIP, netip.MustParseAddr("10.244.2.7")},
	{netip.MustParsePrefix("10.244.3.0/24"), lostIP, netip.MustParseAddr("10.244.3.9")},
	{netip.MustParsePrefix("10.244.4.0/24"), farIP, netip.MustParseAddr("10.244.4.4")},
	{netip.MustParsePrefix("10.244.5.0/24"), nodeIP, netip.MustParseAddr("10.244.5.5")},
	{netip.MustParsePrefix("10.244.6.0/24"), bcastIP, netip.MustParseAddr("10.244.6.6")},
	{netip.MustParsePrefix("fd00:244:0:1::/64"), peerIP, netip.MustParseAddr("fd00:244:0:1::5")},
}

// remotes6 are more IPv6 pod CIDRs, owned by nodes the underlay reaches each its own way (no
// neighbour entry, unreachable, via the gateway, the node itself, the broadcast address):
// IPv6 is sent to the owning node's IPv4 address.
var remotes6 = []remote{
	{netip.MustParsePrefix("fd00:244:0:2::/64"), strangerIP, netip.MustParseAddr("fd00:244:0:2::7")},
	{netip.MustParsePrefix("fd00:244:0:3::/64"), lostIP, netip.MustParseAddr("fd00:244:0:3::9")},
	{netip.MustParsePrefix("fd00:244:0:4::/64"), farIP, netip.MustParseAddr("fd00:244:0:4::4")},
	{netip.MustParsePrefix("fd00:244:0:5::/64"), nodeIP, netip.MustParseAddr("fd00:244:0:5::5")},
	{netip.MustParsePrefix("fd00:244:0:6::/64"), bcastIP, netip.MustParseAddr("fd00:244:0:6::6")},
}

// remotesOverIPv6 are pod CIDRs (of both families) of nodes known by their IPv6 underlay
// address, whom VXLAN reaches over IPv6: the peer (neighbour known), the stranger (none), one
// behind an unreachable route and one behind the gateway.
var remotesOverIPv6 = []remote{
	{netip.MustParsePrefix("10.244.7.0/24"), peerIP6, netip.MustParseAddr("10.244.7.7")},
	{netip.MustParsePrefix("fd00:244:0:7::/64"), peerIP6, netip.MustParseAddr("fd00:244:0:7::7")},
	{netip.MustParsePrefix("10.244.8.0/24"), strangerIP6, netip.MustParseAddr("10.244.8.8")},
	{netip.MustParsePrefix("fd00:244:0:8::/64"), netip.MustParseAddr("2001:db8:dead::8"), netip.MustParseAddr("fd00:244:0:8::8")},
	{netip.MustParsePrefix("10.244.9.0/24"), netip.MustParseAddr("2001:db8:feed::9"), netip.MustParseAddr("10.244.9.9")},
}

// kernelRoutes are the routes the harness adds to the namespace; fib() adds what the
// kernel derives from the underlay's address.
var kernelRoutes = []model.FIBRoute{
	{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Type: model.FIBUnicast, Via: gatewayIP},
	{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Type: model.FIBUnicast, Via: peerIP},
	{Prefix: netip.MustParsePrefix("10.244.2.0/24"), Type: model.FIBUnicast, Via: strangerIP},
	{Prefix: netip.MustParsePrefix("10.244.3.0/24"), Type: model.FIBUnreachable},
	{Prefix: netip.MustParsePrefix("10.250.9.0/24"), Type: model.FIBUnreachable},
}

// underlayPrefix is the underlay device's address.
var underlayPrefix = netip.MustParsePrefix("10.250.0.1/24")

const underlayMTU = 1500

// vxlanPort is the VXLAN port of the worlds that encapsulate in BPF.
const vxlanPort = 8472

// kernelRoutes6 are the IPv6 routes the harness adds to the namespace.
var kernelRoutes6 = []model.FIBRoute{
	{Prefix: netip.MustParsePrefix("::/0"), Type: model.FIBUnicast, Via: gatewayIP6},
	{Prefix: lostNet6, Type: model.FIBUnreachable},
}

// fib is the namespace's routing table as bpf_fib_lookup sees it: with what the kernel
// derives from the underlay's addresses (IPv6 forwarding adds the subnet-router anycast).
func fib() []model.FIBRoute {
	return append(append(append([]model.FIBRoute(nil), kernelRoutes...), kernelRoutes6...),
		model.FIBRoute{Prefix: underlayPrefix.Masked(), Type: model.FIBUnicast},
		model.FIBRoute{Prefix: netip.PrefixFrom(nodeIP, 32), Type: model.FIBLocal},
		model.FIBRoute{Prefix: netip.PrefixFrom(bcastIP, 32), Type: model.FIBLocal},
		model.FIBRoute{Prefix: underlayPrefix6.Masked(), Type: model.FIBUnicast},
		model.FIBRoute{Prefix: netip.PrefixFrom(nodeIP6, 128), Type: model.FIBLocal},
		model.FIBRoute{Prefix: netip.PrefixFrom(underlayPrefix6.Masked().Addr(), 128), Type: model.FIBLocal})
}

// neighbours are the namespace's permanent neighbour entries on the underlay.
func neighbours() map[netip.Addr]net.HardwareAddr {
	return map[netip.Addr]net.HardwareAddr{gatewayIP: gatewayMAC, peerIP: peerMAC, gatewayIP6: gatewayMAC, peerIP6: peerMAC}
}

// pod is a local pod slot: its addresses and MAC.
type pod struct {
	ip4, ip6 netip.Addr
	mac      net.HardwareAddr
	nodeMAC  net.HardwareAddr
}

var pods = func() []pod {
	out := make([]pod, 6)
	for i := range out {
		out[i] = pod{
			ip4:     netip.AddrFrom4([4]byte{10, 244, 0, byte(10 + i)}),
			ip6:     netip.AddrFrom16([16]byte{0xfd, 0x00, 0x02, 0x44, 15: byte(0x0a + i)}),
			mac:     net.HardwareAddr{2, 0, 0, 0, 0, byte(0x0a + i)},
			nodeMAC: net.HardwareAddr{0xee, 0, 0, 0, 0, byte(0x0a + i)},
		}
	}
	return out
}()

// World is a seeded world and the seed it grew from.
type World struct {
	Seed uint64
	model.World
}

// NewWorld grows the world of a seed: which pods exist and where, their identities and
// enforcement, the ipcache, the policy rules, and each remote CIDR's mode.
func NewWorld(seed uint64) World {
	rng := rand.New(rand.NewPCG(seed, 0x77a11d))
	w := model.World{
		Node: maps.NodeConfig{NodeIP: nodeIP, TunnelIfindex: 5, Mode: maps.ModeVXLAN, HostMAC: hostMAC},
		FIB:  fib(), UnderlayMAC: underlayMAC, UnderlayMTU: underlayMTU, Ifindex: testRunIfindex,
		Neighbours: neighbours(),
	}
	if rng.IntN(3) > 0 {
		w.Node.HostIfindex = 9
	}
	// VXLAN in BPF in two worlds of three, from a stream of its own: the worlds of earlier
	// seeds (and the regression cases made in them) keep everything else.
	if rand.New(rand.NewPCG(seed, 0xb7a1)).IntN(3) > 0 {
		w.Node.VXLANPort = vxlanPort
	}
	w.Routes = []maps.Route{
		{Prefix: clusterCIDR, Flags: maps.RouteUnreachable},
		{Prefix: podCIDR, NodeIP: nodeIP, Mode: maps.ModeVXLAN, Flags: maps.RouteLocal},
		{Prefix: clusterCIDR6, Flags: maps.RouteUnreachable},
		{Prefix: podCIDR6, Flags: maps.RouteLocal},
	}
	modes := []maps.Mode{maps.ModeVXLAN, maps.ModeNative, maps.ModeIPIP}
	for _, r := range remotes {
		if rng.IntN(8) == 0 {
			continue // a node the world does not know (yet)
		}
		mode := modes[rng.IntN(len(modes))]
		if rng.IntN(16) == 0 {
			mode = maps.Mode(rng.IntN(8)) // a mode no node has
		}
		w.Routes = append(w.Routes, maps.Route{Prefix: r.cidr, NodeIP: r.node, Mode: mode})
	}
	identities := []uint32{0, idPodA, idPodB, idPodC}
	for _, p := range pods {
		for _, ip := range []netip.Addr{p.ip4, p.ip6} {
			if rng.IntN(6) == 0 {
				continue // not an endpoint: a free address
			}
			ep := maps.Endpoint{IP: ip, Ifindex: testRunIfindex, ID: uint32(len(w.Endpoints) + 1),
				Identity: identities[rng.IntN(len(identities))], Local: rng.IntN(10) > 0,
				IngressEnforced: rng.IntN(2) == 0, EgressEnforced: rng.IntN(3) == 0,
				MAC: p.mac, NodeMAC: p.nodeMAC}
			if rng.IntN(10) == 0 {
				ep.Ifindex = otherIfindex
			}
			w.Endpoints = append(w.Endpoints, ep)
			if ep.Identity != 0 && rng.IntN(8) > 0 {
				w.IPCache = append(w.IPCache, maps.IPCacheEntry{Prefix: netip.PrefixFrom(ip, ip.BitLen()), Identity: ep.Identity})
			}
		}
	}
	w.IPCache = append(w.IPCache, ipcache(rng)...)
	w.Policy = rules(rng, w.Endpoints)
	// The IPv6 remotes from a stream of their own: the worlds of earlier seeds keep the rest.
	rng6 := rand.New(rand.NewPCG(seed, 0x6a6))
	for _, r := range remotes6 {
		if rng6.IntN(8) > 0 {
			w.Routes = append(w.Routes, maps.Route{Prefix: r.cidr, NodeIP: r.node, Mode: modes[rng6.IntN(len(modes))]})
		}
	}
	w.Backends, w.Frontends = services(rand.New(rand.NewPCG(seed, 0x5e7)))
	nodeIPv6(rand.New(rand.NewPCG(seed, 0x6e0de)), &w)
	overIPv6(rand.New(rand.NewPCG(seed, 0x6bde)), &w)
	return World{Seed: seed, World: w}
}

// overIPv6 gives most worlds routes to nodes known by their IPv6 address (VXLAN over IPv6;
// now and then another mode, which the datapath refuses), and the ipcache mostly knows the
// peer's and now and then the stranger's address as a node's: only a node may send VXLAN.
func overIPv6(rng *rand.Rand, w *model.World) {
	for _, r := range remotesOverIPv6 {
		if rng.IntN(4) == 0 {
			continue
		}
		mode := maps.ModeVXLAN
		if rng.IntN(8) == 0 {
			mode = []maps.Mode{maps.ModeNative, maps.ModeIPIP}[rng.IntN(2)]
		}
		w.Routes = append(w.Routes, maps.Route{Prefix: r.cidr, NodeIP: r.node, Mode: mode})
	}
	for _, ip := range []netip.Addr{peerIP6, strangerIP6} {
		if rng.IntN(4) > 0 == (ip == peerIP6) {
			w.IPCache = append(w.IPCache, maps.IPCacheEntry{Prefix: netip.PrefixFrom(ip, 128), Identity: maps.IdentityRemoteNode})
		}
	}
}

// nodeIPv6 gives half the worlds a node IPv6 address, masquerading mostly on, and a NAT range
// of a few ports (now and then none); some of the others masquerading without one. Every world
// gets IPv6 NodePort frontends on the node's IPv6 address, which translate without one too. The
// model knows no IPv4 masquerading: no_masquerade then holds all of IPv4.
func nodeIPv6(rng *rand.Rand, w *model.World) {
	switch {
	case rng.IntN(2) == 0:
		w.Node.NodeIPv6 = nodeIP6
		w.Node.Masquerade = rng.IntN(4) > 0
		w.Node.NATPorts = maps.PortRange{Min: natPortMin, Max: natPortMin + []uint16{0, 0, 1, 3}[rng.IntN(4)]}
		if rng.IntN(16) == 0 {
			w.Node.NATPorts.Max = natPortMin - 1
		}
		if rng.IntN(4) > 0 {
			w.IPCache = append(w.IPCache, maps.IPCacheEntry{Prefix: netip.PrefixFrom(nodeIP6, 128), Identity: maps.IdentityHost})
		}
	case rng.IntN(3) == 0:
		w.Node.Masquerade = true
	}
	if w.Node.Masquerade {
		w.NoMasquerade = append(w.NoMasquerade, netip.MustParsePrefix("0.0.0.0/0"))
		if rng.IntN(3) == 0 {
			w.NoMasquerade = append(w.NoMasquerade, netip.MustParsePrefix("2001:db8::/64"))
		}
	}
	for _, port := range nodePorts {
		for _, proto := range []uint8{packet.ProtoTCP, packet.ProtoUDP} {
			if rng.IntN(3) == 0 {
				continue
			}
			f := maps.Frontend{Addr: netip.AddrPortFrom(nodeIP6, port), Protocol: proto, ServiceID: uint32(len(w.Frontends) + 1),
				NodePort: true, ExternalLocal: rng.IntN(3) == 0}
			id := uint32(danglingBackend)
			if len(w.Backends) > 0 && rng.IntN(8) > 0 {
				id = w.Backends[rng.IntN(len(w.Backends))].ID
			}
			for range 1 + rng.IntN(2) {
				f.Backends = append(f.Backends, id)
			}
			w.Frontends = append(w.Frontends, f)
		}
	}
}

// nodePorts are the ports of the worlds' IPv6 NodePort frontends.
var nodePorts = []uint16{30053, 30080}

// clusterIPs6 are the IPv6 ClusterIPs the worlds' Services take, and servicePorts their ports.
var (
	clusterIPs6  = []netip.Addr{netip.MustParseAddr("fd00:96::a"), netip.MustParseAddr("fd00:96::b")}
	servicePorts = []uint16{53, 80, 8080}
)

// danglingBackend is a backend id no world's backends map holds.
const danglingBackend = 99

// services is a world's IPv6 Services: backends among the local pods (endpoints or not),
// remote pods, outside the cluster, and one IPv4 address (of the wrong family), some
// terminating; frontends on the ClusterIPs with no slot, or slots that all name one backend
// (the datapath's pick among slots is random), some with ClientIP affinity.
func services(rng *rand.Rand) ([]maps.Backend, []maps.Frontend) {
	candidates := []netip.Addr{pods[0].ip4, netip.MustParseAddr("fd00:244:0:1::5"), netip.MustParseAddr("2001:db8::1")}
	for _, p := range pods {
		candidates = append(candidates, p.ip6)
	}
	for _, r := range remotes6 {
		candidates = append(candidates, r.pod)
	}
	var (
		backends  []maps.Backend
		frontends []maps.Frontend
	)
	for i, a := range candidates {
		if rng.IntN(3) == 0 {
			continue
		}
		backends = append(backends, maps.Backend{ID: uint32(i + 1), Addr: netip.AddrPortFrom(a, ports[rng.IntN(len(ports))]),
			Local: podCIDR6.Contains(a), Terminating: rng.IntN(6) == 0})
	}
	for _, ip := range clusterIPs6 {
		for _, port := range servicePorts {
			for _, proto := range []uint8{packet.ProtoTCP, packet.ProtoUDP} {
				if rng.IntN(3) == 0 {
					continue
				}
				f := maps.Frontend{Addr: netip.AddrPortFrom(ip, port), Protocol: proto, ServiceID: uint32(len(frontends) + 1)}
				id := uint32(danglingBackend)
				if len(backends) > 0 && rng.IntN(8) > 0 {
					id = backends[rng.IntN(len(backends))].ID
				}
				for range rng.IntN(4) {
					f.Backends = append(f.Backends, id)
				}
				if rng.IntN(3) == 0 {
					f.Affinity = 3 * time.Hour
				}
				frontends = append(frontends, f)
			}
		}
	}
	return backends, frontends
}

// ipcache is a random part of what the agent writes for nodes, remote pods and policy CIDRs.
func ipcache(rng *rand.Rand) []maps.IPCacheEntry {
	all := []maps.IPCacheEntry{
		{Prefix: netip.PrefixFrom(nodeIP, 32), Identity: maps.IdentityHost},
		{Prefix: netip.PrefixFrom(peerIP, 32), Identity: maps.IdentityRemoteNode},
		{Prefix: netip.PrefixFrom(strangerIP, 32), Identity: maps.IdentityRemoteNode},
		{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Identity: idRemote},
		{Prefix: netip.MustParsePrefix("10.244.1.5/32"), Identity: idPodA},
		{Prefix: netip.MustParsePrefix("10.244.2.0/24"), Identity: idPodB, CIDRIdentity: cidrIDs[0]},
		{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Identity: maps.IdentityWorld, CIDRIdentity: cidrIDs[0]},
		{Prefix: netip.MustParsePrefix("192.0.2.128/25"), Identity: maps.IdentityWorld, CIDRIdentity: cidrIDs[1]},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Identity: maps.IdentityWorld, CIDRIdentity: cidrIDs[2]},
		{Prefix: netip.MustParsePrefix("fd00:244:0:1::/64"), Identity: idRemote},
		{Prefix: netip.MustParsePrefix("2001:db8::/32"), Identity: maps.IdentityWorld, CIDRIdentity: cidrIDs[1]},
	}
	var out []maps.IPCacheEntry
	for _, e := range all {
		if rng.IntN(5) > 0 {
			out = append(out, e)
		}
	}
	return out
}

// ports are the ports rules and packets use, so that they meet often.
var ports = []uint16{0, 1, 53, 80, 81, 443, 5000, 5001, 5002, 5003, 5004, 8080, 32767, 32768, 65535}

// rules gives enforced endpoints a few rules each: by identity, CIDR identity or any peer; for
// every protocol, one, a port or a port range.
func rules(rng *rand.Rand, eps []maps.Endpoint) []maps.PolicyEntry {
	peers := append([]uint32{maps.IdentityAny, maps.IdentityAny, idPodA, idPodB, idPodC, idRemote,
		maps.IdentityWorld, maps.IdentityRemoteNode, maps.IdentityHost}, cidrIDs...)
	protos := []uint8{0, packet.ProtoTCP, packet.ProtoTCP, packet.ProtoUDP, packet.ProtoUDP, packet.ProtoSCTP, packet.ProtoICMP, packet.ProtoICMP6, 47}
	var out []maps.PolicyEntry
	for _, ep := range eps {
		if !ep.IngressEnforced && !ep.EgressEnforced {
			continue
		}
		for range rng.IntN(5) {
			e := maps.PolicyEntry{Endpoint: ep.ID, Peer: peers[rng.IntN(len(peers))], Direction: maps.Ingress,
				Protocol: protos[rng.IntN(len(protos))], Rule: uint32(len(out) + 1)}
			if rng.IntN(2) == 0 {
				e.Direction = maps.Egress
			}
			if e.Protocol == 0 || rng.IntN(4) == 0 {
				out = append(out, e) // every protocol, or every port of one
				continue
			}
			lo := ports[rng.IntN(len(ports))]
			hi := lo
			if rng.IntN(3) == 0 {
				hi = ports[rng.IntN(len(ports))]
				lo, hi = min(lo, hi), max(lo, hi)
			}
			for _, b := range maps.PortBlocks(lo, hi) {
				e.Port, e.PortBits = b[0], uint8(b[1])
				out = append(out, e)
			}
		}
	}
	return out
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}
