package bpf_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// IPv6 Services: a ClusterIP of the service CIDR's IPv6 half with IPv6 pod backends, on
// loadV6's node. Every packet that leaves has its full L4 checksum recomputed and compared.

var (
	clusterIP6 = netip.MustParseAddr("fd00:96::a")
	hairpinIP6 = netip.MustParseAddr("100::7:7") // HAIRPIN_ADDR6_HI/_LO: RFC 6666's discard-only prefix

	// Local IPv6 backend pods without policy, beside loadV6's endpoints.
	backendPods6 = []struct {
		ip  netip.Addr
		mac net.HardwareAddr
		id  uint32
	}{
		{netip.MustParseAddr("fd00:244::31"), beMAC1, 31},
		{netip.MustParseAddr("fd00:244::32"), beMAC2, 32},
		{netip.MustParseAddr("fd00:244::33"), beMAC3, 33},
	}
)

// IPv6 backend ids, beside backendPods6's.
const (
	beID6Pod    = 21 // v6Pod:8080, the client itself (hairpin)
	beID6Vxlan  = 22 // v6Vxlan:8080, on the peer in VXLAN
	beID6Native = 23 // v6Native:8080, on the peer, natively routed
	beID6Guard  = 24 // v6Guard:80, whose ingress policy takes only identity 300
)

// loadSvc6 is loadV6 with the IPv6 backends above.
func loadSvc6(t *testing.T) *svcNode {
	t.Helper()
	n := loadV6(t)
	svc := n.Services()
	for _, b := range backendPods6 {
		must(t, n.Endpoints().Upsert(maps.Endpoint{IP: b.ip, Ifindex: testRunIfindex, ID: 100 + b.id, Identity: 500,
			Local: true, MAC: b.mac, NodeMAC: nodeMacA}))
		must(t, svc.UpsertBackend(maps.Backend{ID: b.id, Addr: netip.AddrPortFrom(b.ip, 8080), Local: true}))
	}
	for _, b := range []maps.Backend{
		{ID: beID6Pod, Addr: netip.AddrPortFrom(v6Pod, 8080), Local: true},
		{ID: beID6Vxlan, Addr: netip.AddrPortFrom(v6Vxlan, 8080)},
		{ID: beID6Native, Addr: netip.AddrPortFrom(v6Native, 8080)},
		{ID: beID6Guard, Addr: netip.AddrPortFrom(v6Guard, 80), Local: true},
	} {
		must(t, svc.UpsertBackend(b))
	}
	return n
}

// macOf6 is the MAC a frame from ip carries: the pod's own, else the underlay gateway's.
func macOf6(ip netip.Addr) net.HardwareAddr {
	switch ip {
	case v6Pod:
		return macA
	case v6Peer:
		return macB
	}
	for _, b := range backendPods6 {
		if b.ip == ip {
			return b.mac
		}
	}
	return gatewayMAC
}

// l4Checksum6 is the TCP or UDP checksum of seg (its checksum field taken as zero) under
// IPv6's pseudo-header; UDP sends a computed 0 as all ones.
func l4Checksum6(src, dst netip.Addr, proto uint8, seg []byte) uint16 {
	s, d := src.As16(), dst.As16()
	b := append(append([]byte(nil), s[:]...), d[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(seg)))
	b = append(b, 0, 0, 0, proto)
	b = append(b, seg...)
	off := 40 + l4CsumOffset(proto)
	b[off], b[off+1] = 0, 0
	if sum := packet.Checksum(b); sum != 0 || proto != packet.ProtoUDP {
		return sum
	}
	return 0xffff
}

// withChecksum6 is seg with its TCP or UDP checksum set for src -> dst.
func withChecksum6(src, dst netip.Addr, proto uint8, seg []byte) []byte {
	seg = append([]byte(nil), seg...)
	binary.BigEndian.PutUint16(seg[l4CsumOffset(proto):], l4Checksum6(src, dst, proto, seg))
	return seg
}

func tcpV6(src, dst netip.AddrPort, flags byte) []byte {
	return v6Frame(macOf6(src.Addr()), src.Addr(), dst.Addr(), packet.ProtoTCP,
		withChecksum6(src.Addr(), dst.Addr(), packet.ProtoTCP, tcpSeg(src.Port(), dst.Port(), flags)))
}

func udpV6(src, dst netip.AddrPort, payload []byte) []byte {
	return v6Frame(macOf6(src.Addr()), src.Addr(), dst.Addr(), packet.ProtoUDP,
		withChecksum6(src.Addr(), dst.Addr(), packet.ProtoUDP, packet.UDP(src.Port(), dst.Port(), payload)))
}

// ipv6Parts reads an Ethernet + IPv6 frame: its addresses, the L4 protocol, and the L4 bytes
// the payload length covers, past a fragment header (whose offset and M flag it returns).
func ipv6Parts(f []byte) (src, dst netip.Addr, proto uint8, l4 []byte, fragOff int, more, fragment bool) {
	ip := f[14:]
	src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
	proto, l4 = ip[6], ip[40:40+int(binary.BigEndian.Uint16(ip[4:6]))]
	if proto == 44 {
		fo := binary.BigEndian.Uint16(l4[2:4])
		proto, fragOff, more, fragment, l4 = l4[0], int(fo&0xfff8), fo&1 != 0, true, l4[8:]
	}
	return src, dst, proto, l4, fragOff, more, fragment
}

// flowOf6 reads the tuple of an Ethernet + IPv6 frame; a later fragment's ports are 0.
func flowOf6(f []byte) flow {
	src, dst, proto, l4, off, _, _ := ipv6Parts(f)
	var sport, dport uint16
	if off == 0 {
		sport, dport = binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	}
	return flow{proto, netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)}
}

// checkChecksum6 recomputes the full TCP or UDP checksum of the IPv6 packet that left and
// compares: UDP's must never be 0 (illegal over IPv6). A fragment's is checked reassembled.
func checkChecksum6(tb testing.TB, out []byte) {
	tb.Helper()
	src, dst, proto, l4, _, _, fragment := ipv6Parts(out)
	if fragment || l4CsumOffset(proto) < 0 {
		return
	}
	got := binary.BigEndian.Uint16(l4[l4CsumOffset(proto):])
	if want := l4Checksum6(src, dst, proto, l4); got != want || got == 0 {
		tb.Errorf("%s: L4 checksum %#04x, want %#04x", flowOf6(out), got, want)
	}
}

// leaves6: the IPv6 packet left with exactly this tuple.
func leaves6(want flow) outCheck {
	return func(tb testing.TB, out []byte) {
		tb.Helper()
		if got := flowOf6(out); got != want {
			tb.Errorf("left as %s\n            want %s", got, want)
		}
	}
}

// hopsAre: the IPv6 hop limit.
func hopsAre(h uint8) outCheck {
	return func(tb testing.TB, out []byte) {
		tb.Helper()
		if out[14+7] != h {
			tb.Errorf("hop limit %d, want %d", out[14+7], h)
		}
	}
}

// inVXLAN runs checks on the inner frame of a VXLAN packet, and its checksum.
func inVXLAN(checks ...outCheck) outCheck {
	return func(tb testing.TB, out []byte) {
		tb.Helper()
		wantOuterIPv4(tb, out, packet.ProtoUDP)
		inner := out[50:]
		checkChecksum6(tb, inner)
		for _, c := range checks {
			c(tb, inner)
		}
	}
}

// step6 is one IPv6 packet through one program; dir overrides the hook's direction.
type step6 struct {
	name   string
	at     hook
	dir    maps.Direction
	in     []byte
	reason maps.Reason
	checks []outCheck
}

// send6 runs s: its verdict and count, the L4 checksum of what left, then its checks.
func (n *svcNode) send6(tb testing.TB, s step6) []byte {
	tb.Helper()
	prog, dir := n.prog(s.at)
	if s.at == fromOverlay {
		prog, dir = n.FromOverlay, maps.DirFromOverlay
	}
	if s.dir != 0 {
		dir = s.dir
	}
	ret, out, counted := n.runIn(tb, prog, dir, s.in)
	wantCounted(tb, counted, s.reason)
	if ret != verdictOf(s.reason) {
		tb.Fatalf("verdict %d, want %d", ret, verdictOf(s.reason))
	}
	if binary.BigEndian.Uint16(out[12:14]) == packet.EtherIPv6 {
		checkChecksum6(tb, out)
	}
	for _, c := range s.checks {
		c(tb, out)
	}
	return out
}

func (n *svcNode) run6Steps(t *testing.T, steps []step6) {
	t.Helper()
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) { n.send6(t, s) })
	}
}

// A ClusterIP TCP flow from a pod to a local backend, both ways.
func TestService6ClusterIPTCP(t *testing.T) {
	t.Parallel()
	n := loadSvc6(t)
	vip, client := netip.AddrPortFrom(clusterIP6, 80), netip.AddrPortFrom(v6Pod, 40000)
	backend := netip.AddrPortFrom(backendPods6[0].ip, 8080)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 1, Backends: []uint32{31}}, 0)
	n.run6Steps(t, []step6{
		{name: "SYN to the ClusterIP goes to the backend", at: fromPod, in: tcpV6(client, vip, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(client, backend)), sentTo(beMAC1), hopsAre(63)}},
		{name: "the backend's SYN-ACK comes from the ClusterIP", at: fromPod, in: tcpV6(backend, client, tcpSYN|tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(vip, client)), sentTo(macA), hopsAre(63)}},
		{name: "the client's ACK follows its translation", at: fromPod, in: tcpV6(client, vip, tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(client, backend))}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, client, vip, client, backend, 31, false))
}

// A ClusterIP UDP flow; a checksum that sums to zero after translation leaves as 0xffff.
func TestService6ClusterIPUDP(t *testing.T) {
	t.Parallel()
	n := loadSvc6(t)
	vip, backend := netip.AddrPortFrom(clusterIP6, 53), netip.AddrPortFrom(backendPods6[1].ip, 8080)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoUDP, ServiceID: 2, Backends: []uint32{32}}, 0)
	// samePort's backend listens on the frontend's port: only the address changes the checksum.
	samePort, sameBackend := netip.AddrPortFrom(clusterIP6, 8080), netip.AddrPortFrom(backendPods6[2].ip, 8080)
	n.frontend(t, maps.Frontend{Addr: samePort, Protocol: packet.ProtoUDP, ServiceID: 13, Backends: []uint32{33}}, 0)
	c1, c2 := netip.AddrPortFrom(v6Pod, 5001), netip.AddrPortFrom(v6Pod, 5002)
	// zero: a payload word that makes the translated datagram's checksum sum to zero.
	zero := binary.BigEndian.AppendUint16(nil, l4Checksum6(c2.Addr(), sameBackend.Addr(), packet.ProtoUDP,
		packet.UDP(c2.Port(), sameBackend.Port(), []byte{0, 0})))
	n.run6Steps(t, []step6{
		{name: "query", at: fromPod, in: udpV6(c1, vip, []byte("query")), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(udpFlow(c1, backend)), sentTo(beMAC2)}},
		{name: "answer from the ClusterIP", at: fromPod, in: udpV6(backend, c1, []byte("answer")), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(udpFlow(vip, c1)), sentTo(macA)}},
		{name: "a checksum that sums to zero after translation is sent as 0xffff", at: fromPod, in: udpV6(c2, samePort, zero),
			reason: maps.ReasonForwardLocal, checks: []outCheck{leaves6(udpFlow(c2, sameBackend)), func(tb testing.TB, out []byte) {
				tb.Helper()
				if _, _, _, l4, _, _, _ := ipv6Parts(out); binary.BigEndian.Uint16(l4[6:]) != 0xffff {
					tb.Errorf("UDP checksum %#04x, want 0xffff", binary.BigEndian.Uint16(l4[6:]))
				}
			}}},
	})
	n.wantNAT(t, servicePair(packet.ProtoUDP, c1, vip, c1, backend, 32, false),
		servicePair(packet.ProtoUDP, c2, samePort, c2, sameBackend, 33, false))
}

// Backends on another node: in VXLAN and natively routed; their replies are translated back
// where they arrive (from_underlay, decapsulated or native, and from_overlay).
func TestService6RemoteBackends(t *testing.T) {
	t.Parallel()
	n := loadSvc6(t)
	viaVXLAN, native := netip.AddrPortFrom(clusterIP6, 80), netip.AddrPortFrom(clusterIP6, 81)
	n.frontend(t, maps.Frontend{Addr: viaVXLAN, Protocol: packet.ProtoTCP, ServiceID: 3, Backends: []uint32{beID6Vxlan}}, 0)
	n.frontend(t, maps.Frontend{Addr: native, Protocol: packet.ProtoTCP, ServiceID: 4, Backends: []uint32{beID6Native}}, 0)
	c1, c2, c3 := netip.AddrPortFrom(v6Pod, 40001), netip.AddrPortFrom(v6Pod, 40002), netip.AddrPortFrom(v6Pod, 40003)
	beVXLAN, beNative := netip.AddrPortFrom(v6Vxlan, 8080), netip.AddrPortFrom(v6Native, 8080)
	// reply is the backend's answer as an IPv6 packet (no Ethernet header).
	reply := func(from, to netip.AddrPort) []byte { return tcpV6(from, to, tcpSYN|tcpACK)[14:] }
	n.run6Steps(t, []step6{
		{name: "SYN to a backend in VXLAN", at: fromPod, in: tcpV6(c1, viaVXLAN, tcpSYN), reason: maps.ReasonForwardTunnel,
			checks: []outCheck{inVXLAN(leaves6(tcpFlow(c1, beVXLAN)), hopsAre(63))}},
		{name: "its reply decapsulated in BPF comes from the ClusterIP", at: fromUnderlay, dir: maps.DirFromOverlay,
			in: vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherIPv6, reply(beVXLAN, c1)), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(viaVXLAN, c1)), sentTo(macA)}},
		{name: "another flow's reply through the VXLAN device", at: fromPod, in: tcpV6(c3, viaVXLAN, tcpSYN), reason: maps.ReasonForwardTunnel,
			checks: []outCheck{inVXLAN(leaves6(tcpFlow(c3, beVXLAN)))}},
		{name: "comes from the ClusterIP too", at: fromOverlay, in: packet.Eth(nodeMacA, macB, packet.EtherIPv6, reply(beVXLAN, c3)),
			reason: maps.ReasonForwardLocal, checks: []outCheck{leaves6(tcpFlow(viaVXLAN, c3)), sentTo(macA)}},
		{name: "SYN to a natively routed backend", at: fromPod, in: tcpV6(c2, native, tcpSYN), reason: maps.ReasonForwardUnder,
			checks: []outCheck{leaves6(tcpFlow(c2, beNative)), sentTo(peerMAC), hopsAre(63)}},
		{name: "its native reply comes from the ClusterIP", at: fromUnderlay, in: packet.Eth(underlayMAC, peerMAC, packet.EtherIPv6, reply(beNative, c2)),
			reason: maps.ReasonForwardLocal, checks: []outCheck{leaves6(tcpFlow(native, c2)), sentTo(macA)}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, c1, viaVXLAN, c1, beVXLAN, beID6Vxlan, false),
		servicePair(packet.ProtoTCP, c3, viaVXLAN, c3, beVXLAN, beID6Vxlan, false),
		servicePair(packet.ProtoTCP, c2, native, c2, beNative, beID6Native, false))
}

// A pod reaching itself through its Service sees the IPv6 hairpin address as the source.
func TestService6Hairpin(t *testing.T) {
	t.Parallel()
	n := loadSvc6(t)
	vip, self, backend := netip.AddrPortFrom(clusterIP6, 80), netip.AddrPortFrom(v6Pod, 45000), netip.AddrPortFrom(v6Pod, 8080)
	hairpin := netip.AddrPortFrom(hairpinIP6, 45000)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 5, Backends: []uint32{beID6Pod}}, 0)
	n.run6Steps(t, []step6{
		{name: "SYN to its own Service comes back from the hairpin address", at: fromPod, in: tcpV6(self, vip, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(hairpin, backend)), sentTo(macA)}},
		{name: "its SYN-ACK to the hairpin address returns from the Service", at: fromPod, in: tcpV6(backend, hairpin, tcpSYN|tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(vip, self)), sentTo(macA)}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, self, vip, hairpin, backend, beID6Pod, false))
}

// ClientIP affinity keeps an IPv6 client on one backend, under an IPv6 affinity key;
// without it, flows spread.
func TestService6Affinity(t *testing.T) {
	t.Parallel()
	n := loadSvc6(t)
	sticky, spread := netip.AddrPortFrom(clusterIP6, 80), netip.AddrPortFrom(clusterIP6, 81)
	all := []uint32{31, 32, 33}
	n.frontend(t, maps.Frontend{Addr: sticky, Protocol: packet.ProtoTCP, ServiceID: 6, Backends: all, Affinity: time.Hour}, 0)
	n.frontend(t, maps.Frontend{Addr: spread, Protocol: packet.ProtoTCP, ServiceID: 7, Backends: all}, 0)
	port := uint16(30000)
	flows := func(t *testing.T, vip netip.AddrPort, count int) map[netip.AddrPort]int {
		hit := map[netip.AddrPort]int{}
		for range count {
			port++
			out := n.send6(t, step6{at: fromPod, in: tcpV6(netip.AddrPortFrom(v6Pod, port), vip, tcpSYN), reason: maps.ReasonForwardLocal})
			hit[flowOf6(out).dst]++
		}
		return hit
	}
	if hit := flows(t, sticky, 20); len(hit) != 1 {
		t.Errorf("20 flows with affinity reached %v", hit)
	}
	if hit := flows(t, spread, 60); len(hit) < 2 {
		t.Errorf("60 flows without affinity reached %v", hit)
	}
	var (
		k    bpf.DatapathAffinityKey
		v    bpf.DatapathAffinityValue
		keys []bpf.DatapathAffinityKey
	)
	for it := n.Affinity.Iterate(); it.Next(&k, &v); {
		keys = append(keys, k)
	}
	if client := v6Pod.As16(); len(keys) != 1 || keys[0].Family != 10 || keys[0].Client != client || keys[0].ServiceId != 6 {
		t.Errorf("affinity keys %+v, want the one of %s (family 10) for Service 6", keys, v6Pod)
	}
}

// No backend to take the flow: none at all, or only one of the other family. Nor does IPv6
// leaving the cluster get masqueraded: this node has no IPv6 address (loadNode6's has;
// masquerade6_test.go).
func TestService6NoBackendNoMasquerade(t *testing.T) {
	t.Parallel()
	n := loadSvc6(t)
	empty, v4Only := netip.AddrPortFrom(clusterIP6, 80), netip.AddrPortFrom(clusterIP6, 81)
	n.frontend(t, maps.Frontend{Addr: empty, Protocol: packet.ProtoTCP, ServiceID: 8}, 0)
	n.frontend(t, maps.Frontend{Addr: v4Only, Protocol: packet.ProtoTCP, ServiceID: 9, Backends: []uint32{beID1}}, 0)
	client, world := netip.AddrPortFrom(v6Pod, 40000), netip.AddrPortFrom(v6World, 443)
	out := tcpV6(client, world, tcpSYN)
	n.run6Steps(t, []step6{
		{name: "frontend without backends", at: fromPod, in: tcpV6(client, empty, tcpSYN), reason: maps.ReasonNoBackend},
		{name: "frontend whose backend is IPv4", at: fromPod, in: tcpV6(client, v4Only, tcpSYN), reason: maps.ReasonNoBackend},
		{name: "leaving the cluster untranslated, to the node's stack", at: fromPod, in: out, reason: maps.ReasonForwardHost,
			checks: []outCheck{func(tb testing.TB, got []byte) { tb.Helper(); untouched(tb, out, got) }}},
	})
	n.wantNAT(t)
}

// NetworkPolicy judges the backend, not the Service: the guard's ingress takes only
// identity 300.
func TestService6PolicyJudgesBackend(t *testing.T) {
	t.Parallel()
	n := loadSvc6(t)
	vip := netip.AddrPortFrom(clusterIP6, 80)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 10, Backends: []uint32{beID6Guard}}, 0)
	n.run6Steps(t, []step6{
		{name: "the guard's policy refuses the client", at: fromPod, in: tcpV6(netip.AddrPortFrom(v6Pod, 40000), vip, tcpSYN), reason: maps.ReasonPolicyIngress},
	})
	n.wantNAT(t)
}

// A connection opened on the tuple of a closed one chooses its backend again.
func TestService6ClosedTupleChoosesAgain(t *testing.T) {
	t.Parallel()
	n := loadSvc6(t)
	vip, client := netip.AddrPortFrom(clusterIP6, 80), netip.AddrPortFrom(v6Pod, 40000)
	first, second := netip.AddrPortFrom(backendPods6[0].ip, 8080), netip.AddrPortFrom(backendPods6[1].ip, 8080)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 11, Backends: []uint32{31}}, 0)
	n.run6Steps(t, []step6{
		{name: "SYN to the first backend", at: fromPod, in: tcpV6(client, vip, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(client, first))}},
		{name: "reset", at: fromPod, in: tcpV6(client, vip, tcpRST|tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(client, first))}},
	})
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 11, Backends: []uint32{32}}, 1)
	n.run6Steps(t, []step6{
		{name: "a new SYN on its tuple goes to the slot's backend", at: fromPod, in: tcpV6(client, vip, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves6(tcpFlow(client, second))}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, client, vip, client, second, 32, false))
}

// fragments6 cuts an Ethernet + IPv6 frame (no extension headers) into two fragments of
// datagram id: the first carries the first cut bytes of the payload (a multiple of 8).
func fragments6(f []byte, id uint32, cut int) (first, later []byte) {
	ip := f[14:]
	next, payload := ip[6], ip[40:]
	frag := func(off int, more bool, body []byte) []byte {
		h := []byte{next, 0, 0, 0, 0, 0, 0, 0}
		fo := uint16(off)
		if more {
			fo |= 1
		}
		binary.BigEndian.PutUint16(h[2:], fo)
		binary.BigEndian.PutUint32(h[4:], id)
		hdr := append([]byte(nil), ip[:40]...)
		hdr[6] = 44
		binary.BigEndian.PutUint16(hdr[4:], uint16(8+len(body)))
		return append(append(append(append([]byte(nil), f[:14]...), hdr...), h...), body...)
	}
	return frag(0, true, payload[:cut]), frag(cut, false, payload[cut:])
}

// reassembled6 joins two IPv6 fragments as they left, as the receiver would: one datagram
// (addresses and identification), its whole L4 checksum right. It returns its flow.
func reassembled6(tb testing.TB, first, later []byte) flow {
	tb.Helper()
	s1, d1, p1, a, _, _, _ := ipv6Parts(first)
	s2, d2, p2, b, off, _, _ := ipv6Parts(later)
	if s1 != s2 || d1 != d2 || p1 != p2 || !bytes.Equal(first[14+44:14+48], later[14+44:14+48]) {
		tb.Fatalf("the fragments left as two datagrams: %s and %s", flowOf6(first), flowOf6(later))
	}
	if off != len(a) {
		tb.Fatalf("the later fragment sits at offset %d, the first carries %d bytes", off, len(a))
	}
	seg := append(append([]byte(nil), a...), b...)
	if got, want := binary.BigEndian.Uint16(seg[l4CsumOffset(p1):]), l4Checksum6(s1, d1, p1, seg); got != want {
		tb.Errorf("reassembled: L4 checksum %#04x, want %#04x", got, want)
	}
	return flow{p1, netip.AddrPortFrom(s1, binary.BigEndian.Uint16(seg[0:])), netip.AddrPortFrom(d1, binary.BigEndian.Uint16(seg[2:]))}
}

// A UDP datagram in two IPv6 fragments to a ClusterIP reaches the backend whole, and the
// backend's fragmented answer comes back whole from the ClusterIP.
func TestService6Fragments(t *testing.T) {
	t.Parallel()
	n := loadSvc6(t)
	vip, backend := netip.AddrPortFrom(clusterIP6, 53), netip.AddrPortFrom(backendPods6[1].ip, 8080)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoUDP, ServiceID: 12, Backends: []uint32{32}}, 0)
	client := netip.AddrPortFrom(v6Pod, 5300)
	datagram := func(from, to netip.AddrPort, fill string, id uint32, cut int, mac net.HardwareAddr, want flow) {
		t.Helper()
		first, later := fragments6(udpV6(from, to, bytes.Repeat([]byte(fill), 64)), id, cut)
		outFirst := n.send6(t, step6{at: fromPod, in: first, reason: maps.ReasonForwardLocal, checks: []outCheck{sentTo(mac)}})
		outLater := n.send6(t, step6{at: fromPod, in: later, reason: maps.ReasonForwardLocal, checks: []outCheck{sentTo(mac),
			leaves6(flow{want.proto, netip.AddrPortFrom(want.src.Addr(), 0), netip.AddrPortFrom(want.dst.Addr(), 0)})}})
		if got := reassembled6(t, outFirst, outLater); got != want {
			t.Errorf("the datagram arrived as %s, want %s", got, want)
		}
	}
	datagram(client, vip, "q", 0x4242, 32, beMAC2, udpFlow(client, backend))
	datagram(backend, client, "a", 0x4343, 48, macA, udpFlow(vip, client))
	n.wantNAT(t, servicePair(packet.ProtoUDP, client, vip, client, backend, 32, false))
}
