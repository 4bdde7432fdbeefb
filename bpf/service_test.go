package bpf_test

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// Service, NAT and masquerading tests. The node is loadCrossNode's (client pod ipLocal,
// pod CIDR 10.244.0.0/24, the VXLAN peer's 10.244.1.0/24) with three local backend pods,
// a backend on the peer and one on the node's own address.

var (
	be1, be2, be3          = netip.MustParseAddr("10.244.0.31"), netip.MustParseAddr("10.244.0.32"), netip.MustParseAddr("10.244.0.33")
	beMAC1, beMAC2, beMAC3 = packet.MAC("02:00:00:00:01:01"), packet.MAC("02:00:00:00:01:02"), packet.MAC("02:00:00:00:01:03")

	clusterIP = netip.MustParseAddr("10.96.0.10")
	world     = netip.MustParseAddr("198.51.100.7") // outside the cluster
	outsider  = netip.MustParseAddr("203.0.113.9")  // a NodePort client outside the cluster
	hairpinIP = netip.MustParseAddr("169.254.7.7")

	// The underlay in the test namespace: the node's address, and a default gateway with a
	// permanent neighbour entry, so that bpf_fib_lookup succeeds.
	underlayMAC = packet.MAC("02:00:00:00:fe:01")
	gatewayMAC  = packet.MAC("02:00:00:00:fe:fe")
	gatewayIP   = netip.MustParseAddr("10.250.0.254")

	natPorts = maps.PortRange{Min: 40000, Max: 40999}
	hostMAC  = packet.MAC("ee:00:00:00:00:01") // the host device's: what the node sends from_host from
)

// Backend ids.
const (
	beID1, beID2, beID3 = 1, 2, 3
	beIDRemote          = 4 // ipRemote:8080, a pod on the peer
	beIDNode            = 5 // nodeIP:10250, a host-network backend
)

var backendPods = []struct {
	ip  netip.Addr
	mac net.HardwareAddr
	id  uint32
}{{be1, beMAC1, beID1}, {be2, beMAC2, beID2}, {be3, beMAC3, beID3}}

// macOf is the MAC a frame from ip carries: the pod's own, else the underlay gateway's.
func macOf(ip netip.Addr) net.HardwareAddr {
	if ip == ipLocal {
		return macA
	}
	for _, b := range backendPods {
		if b.ip == ip {
			return b.mac
		}
	}
	return gatewayMAC
}

func tcp(src, dst netip.AddrPort, flags byte) []byte {
	return frame(macOf(src.Addr()), src.Addr(), dst.Addr(), packet.ProtoTCP, tcpSeg(src.Port(), dst.Port(), flags))
}

func udp(src, dst netip.AddrPort, payload []byte) []byte {
	return frame(macOf(src.Addr()), src.Addr(), dst.Addr(), packet.ProtoUDP, packet.UDP(src.Port(), dst.Port(), payload))
}

func ping(src, dst netip.Addr, typ uint8, id uint16) []byte {
	return frame(macOf(src), src, dst, packet.ProtoICMP, echo(typ, id, 1))
}

func tcpFlow(src, dst netip.AddrPort) flow { return flow{packet.ProtoTCP, src, dst} }
func udpFlow(src, dst netip.AddrPort) flow { return flow{packet.ProtoUDP, src, dst} }

// svcNode is a loaded datapath whose programs run in a network namespace of the test's own,
// where the underlay device routes everything to a gateway: bpf_fib_lookup and the socket
// lookups of port allocation then see only what the test made.
type svcNode struct {
	*loader.Datapath
	ns  *nstest.NS
	cfg maps.NodeConfig
}

func loadSvcNode(t *testing.T) *svcNode {
	t.Helper()
	n := &svcNode{Datapath: loadCrossNode(t, maps.ModeVXLAN), ns: nstest.New(t, "svc")}
	n.cfg = maps.NodeConfig{NodeIP: nodeIP, UnderlayIfindex: n.underlay(t), TunnelIfindex: testRunIfindex,
		HostIfindex: testRunIfindex, HostMAC: hostMAC, Mode: maps.ModeVXLAN,
		Masquerade: true, NATPorts: natPorts}
	n.configure(t, func(*maps.NodeConfig) {})
	svc := n.Services()
	for _, b := range backendPods {
		must(t, n.Endpoints().Upsert(maps.Endpoint{IP: b.ip, Ifindex: testRunIfindex, ID: 100 + b.id, Identity: 500,
			Local: true, MAC: b.mac, NodeMAC: nodeMacA}))
		must(t, svc.UpsertBackend(maps.Backend{ID: b.id, Addr: netip.AddrPortFrom(b.ip, 8080), Local: true}))
	}
	must(t, svc.UpsertBackend(maps.Backend{ID: beIDRemote, Addr: netip.AddrPortFrom(ipRemote, 8080)}))
	must(t, svc.UpsertBackend(maps.Backend{ID: beIDNode, Addr: netip.AddrPortFrom(nodeIP, 10250), Local: true}))
	return n
}

// underlay makes the namespace's underlay device: the node's address, a default route via
// the gateway and the gateway's MAC.
func (n *svcNode) underlay(t *testing.T) uint32 {
	t.Helper()
	nl := n.ns.NL
	// A veth pair rather than a dummy device, which not every kernel builds.
	must(t, nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "underlay", HardwareAddr: underlayMAC}, PeerName: "gateway"}))
	for _, name := range []string{"gateway", "underlay"} {
		l, err := nl.LinkByName(name)
		must(t, err)
		must(t, nl.LinkSetUp(l))
	}
	link, err := nl.LinkByName("underlay")
	must(t, err)
	// bpf_fib_lookup answers FWD_DISABLED on a device that does not forward, even for
	// BPF_FIB_LOOKUP_OUTPUT; the agent sets ip_forward=1.
	n.ns.Sysctl(t, "ipv4/conf/underlay/forwarding", "1")
	must(t, nl.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: nodeIP.AsSlice(), Mask: net.CIDRMask(24, 32)}}))
	must(t, nl.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gatewayIP.AsSlice()}))
	must(t, nl.NeighAdd(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4,
		State: netlink.NUD_PERMANENT, IP: gatewayIP.AsSlice(), HardwareAddr: gatewayMAC}))
	return uint32(link.Attrs().Index)
}

// configure changes the node config and writes it.
func (n *svcNode) configure(tb testing.TB, change func(*maps.NodeConfig)) {
	tb.Helper()
	change(&n.cfg)
	if err := n.SetNodeConfig(n.cfg); err != nil {
		tb.Fatal(err)
	}
}

func (n *svcNode) frontend(tb testing.TB, f maps.Frontend, prev int) {
	tb.Helper()
	if err := n.Services().Upsert(f, prev); err != nil {
		tb.Fatal(err)
	}
}

// hook is where a step's packet enters the datapath.
type hook int

const (
	fromPod hook = iota
	fromUnderlay
	toPod
	fromHost
)

func (n *svcNode) prog(h hook) (*ebpf.Program, maps.Direction) {
	switch h {
	case fromUnderlay:
		return n.FromUnderlay, maps.DirFromUnderlay
	case toPod:
		return n.ToPod, maps.DirToPod
	case fromHost:
		return n.FromHost, maps.DirFromHost
	}
	return n.FromPod, maps.DirFromPod
}

// step is one packet through one program: its verdict follows from the reason it must be
// counted under; its checksums are always checked, the rest by checks.
type step struct {
	name   string
	before func(tb testing.TB) // optional: change the maps first
	at     hook
	in     []byte
	reason maps.Reason
	checks []outCheck
}

// verdictOf is the tc action finish() gives a reason.
func verdictOf(r maps.Reason) uint32 {
	switch {
	case r >= maps.ReasonMalformed:
		return tcShot
	case r == maps.ReasonForwardHost || r == maps.ReasonDeliver:
		return tcOK
	}
	return tcRedirect
}

// send runs s inside the node's namespace and returns the packet as it left.
func (n *svcNode) send(tb testing.TB, s step) []byte {
	tb.Helper()
	if s.before != nil {
		s.before(tb)
	}
	prog, dir := n.prog(s.at)
	before := n.counts(tb, dir)
	opts := &ebpf.RunOptions{Data: s.in, DataOut: make([]byte, len(s.in)+256)}
	var ret uint32
	n.ns.Do(tb, func() (err error) {
		ret, err = prog.Run(opts)
		return err
	})
	out := opts.DataOut
	var got []string
	for r, c := range n.counts(tb, dir) {
		if d := c - before[r]; d != 0 {
			got = append(got, fmt.Sprintf("%d under %s", d, maps.ReasonName(r)))
		}
	}
	if want := "1 under " + maps.ReasonName(s.reason); ret != verdictOf(s.reason) || len(got) != 1 || got[0] != want {
		tb.Fatalf("verdict %d, counted %v, left as %s; want verdict %d, counted %s", ret, got, flowOf(out), verdictOf(s.reason), want)
	}
	checkChecksums(tb, s.in, out)
	for _, c := range s.checks {
		c(tb, out)
	}
	return out
}

// counts are the packets counted per reason in direction dir.
func (n *svcNode) counts(tb testing.TB, dir maps.Direction) map[maps.Reason]uint64 {
	tb.Helper()
	all, err := n.Metrics().All()
	if err != nil {
		tb.Fatal(err)
	}
	out := map[maps.Reason]uint64{}
	for _, c := range all {
		if c.Direction == dir {
			out[c.Reason] = c.Packets
		}
	}
	return out
}

// run sends steps in order, each a subtest.
func (n *svcNode) run(t *testing.T, steps []step) {
	t.Helper()
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) { n.send(t, s) })
	}
}

// natRow is an entry of the nat map as the tests compare it.
type natRow struct {
	proto                uint8
	from, to             [2]netip.AddrPort // source, destination
	reply, service, masq bool
	backend              uint32
}

func (r natRow) String() string {
	var flags []string
	for _, f := range []struct {
		on   bool
		name string
	}{{r.reply, "reply"}, {r.service, "service"}, {r.masq, "masquerade"}} {
		if f.on {
			flags = append(flags, f.name)
		}
	}
	return fmt.Sprintf("%d %s>%s => %s>%s [%s] backend %d", r.proto, r.from[0], r.from[1], r.to[0], r.to[1],
		strings.Join(flags, ","), r.backend)
}

// servicePair is what a Service flow writes: client -> frontend becomes source -> backend
// (source is the client, the hairpin address or the node), and backend -> source becomes
// frontend -> client.
func servicePair(proto uint8, client, frontend, source, backend netip.AddrPort, id uint32, masq bool) []natRow {
	return []natRow{
		{proto: proto, from: [2]netip.AddrPort{client, frontend}, to: [2]netip.AddrPort{source, backend}, service: true, masq: masq, backend: id},
		{proto: proto, from: [2]netip.AddrPort{backend, source}, to: [2]netip.AddrPort{frontend, client}, service: true, masq: masq, reply: true},
	}
}

// masqPair is what a masqueraded flow writes: pod -> remote becomes node -> remote, and
// remote -> node becomes remote -> pod.
func masqPair(proto uint8, pod, node, remote netip.AddrPort) []natRow {
	return []natRow{
		{proto: proto, from: [2]netip.AddrPort{pod, remote}, to: [2]netip.AddrPort{node, remote}, masq: true},
		{proto: proto, from: [2]netip.AddrPort{remote, node}, to: [2]netip.AddrPort{remote, pod}, masq: true, reply: true},
	}
}

// echoMasqPair is what a masqueraded ICMP echo writes: its identifier id is both "ports" of
// the pod's tuple, and the node's identifier is both ports of the translated one.
func echoMasqPair(pod netip.Addr, id uint16, node netip.AddrPort, remote netip.Addr) []natRow {
	p := node.Port()
	from := [2]netip.AddrPort{netip.AddrPortFrom(pod, id), netip.AddrPortFrom(remote, id)}
	to := [2]netip.AddrPort{node, netip.AddrPortFrom(remote, p)}
	return []natRow{
		{proto: packet.ProtoICMP, from: from, to: to, masq: true},
		{proto: packet.ProtoICMP, from: [2]netip.AddrPort{to[1], to[0]}, to: [2]netip.AddrPort{from[1], from[0]}, masq: true, reply: true},
	}
}

// wantNAT checks that the nat map holds exactly these entries.
func (n *svcNode) wantNAT(tb testing.TB, want ...[]natRow) {
	tb.Helper()
	all, err := n.NAT().List()
	if err != nil {
		tb.Fatal(err)
	}
	var got, exp []string
	for _, t := range all {
		got = append(got, natRow{proto: t.Protocol, from: t.From, to: t.To, reply: t.Reply, service: t.Service,
			masq: t.Masquerade, backend: t.BackendID}.String())
	}
	for _, rows := range want {
		for _, r := range rows {
			exp = append(exp, r.String())
		}
	}
	slices.Sort(got)
	slices.Sort(exp)
	if !slices.Equal(got, exp) {
		tb.Errorf("nat map:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(exp, "\n  "))
	}
}

// masqueradedTo checks that out left from the node's address with a port of lo..hi, to dst,
// and returns that source.
func masqueradedTo(tb testing.TB, out []byte, dst netip.AddrPort, lo, hi uint16) netip.AddrPort {
	tb.Helper()
	f := flowOf(out)
	if f.src.Addr() != nodeIP || f.src.Port() < lo || f.src.Port() > hi || f.dst != dst {
		tb.Fatalf("left as %s, want %s:[%d-%d] -> %s", f, nodeIP, lo, hi, dst)
	}
	return f.src
}

// A ClusterIP TCP flow from a local pod to a local backend, both ways.
func TestServiceClusterIPTCP(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	vip, client, backend := netip.AddrPortFrom(clusterIP, 80), netip.AddrPortFrom(ipLocal, 40000), netip.AddrPortFrom(be1, 8080)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 1, Backends: []uint32{beID1}}, 0)
	n.run(t, []step{
		{name: "SYN to the ClusterIP goes to the backend", at: fromPod, in: tcp(client, vip, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(client, backend)), sentTo(beMAC1), ttlIs(63)}},
		{name: "the backend's SYN-ACK comes from the ClusterIP", at: fromPod, in: tcp(backend, client, tcpSYN|tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(vip, client)), sentTo(macA), ttlIs(63)}},
		{name: "the client's ACK follows its translation", at: fromPod, in: tcp(client, vip, tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(client, backend))}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, client, vip, client, backend, beID1, false))
}

// A host-network backend answers through the node's stack; to_pod turns the reply's
// source back into the frontend.
func TestServiceReplyThroughStack(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	vip, client, backend := netip.AddrPortFrom(clusterIP, 443), netip.AddrPortFrom(ipLocal, 41000), netip.AddrPortFrom(nodeIP, 10250)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 2, Backends: []uint32{beIDNode}}, 0)
	n.run(t, []step{
		{name: "SYN to the frontend is handed to the node's stack", at: fromPod, in: tcp(client, vip, tcpSYN), reason: maps.ReasonForwardHost,
			checks: []outCheck{leaves(tcpFlow(client, backend)), ttlIs(64)}},
		{name: "the stack's reply reaches the pod from the frontend", at: toPod, in: tcp(backend, client, tcpSYN|tcpACK), reason: maps.ReasonDeliver,
			checks: []outCheck{leaves(tcpFlow(vip, client))}},
		{name: "a packet from the node outside the flow is left alone", at: toPod, in: tcp(backend, netip.AddrPortFrom(ipLocal, 41001), tcpSYN),
			reason: maps.ReasonDeliver, checks: []outCheck{leaves(tcpFlow(backend, netip.AddrPortFrom(ipLocal, 41001)))}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, client, vip, client, backend, beIDNode, false))
}

// A ClusterIP UDP flow, with and without a checksum.
func TestServiceClusterIPUDP(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	vip, backend := netip.AddrPortFrom(clusterIP, 53), netip.AddrPortFrom(be2, 8080)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoUDP, ServiceID: 3, Backends: []uint32{beID2}}, 0)
	c1, c2, c3 := netip.AddrPortFrom(ipLocal, 5001), netip.AddrPortFrom(ipLocal, 5002), netip.AddrPortFrom(ipLocal, 5003)
	n.run(t, []step{
		{name: "query with a checksum", at: fromPod, in: udp(c1, vip, []byte("query")), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(udpFlow(c1, backend)), sentTo(beMAC2)}},
		{name: "answer with a checksum", at: fromPod, in: udp(backend, c1, []byte("answer")), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(udpFlow(vip, c1)), sentTo(macA)}},
		{name: "query without a checksum keeps none", at: fromPod, in: withoutUDPChecksum(udp(c2, vip, []byte("query"))), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(udpFlow(c2, backend)), udpChecksumIs(0)}},
		{name: "answer without a checksum keeps none", at: fromPod, in: withoutUDPChecksum(udp(backend, c2, []byte("answer"))), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(udpFlow(vip, c2)), udpChecksumIs(0)}},
		{name: "a checksum that sums to zero after translation is sent as 0xffff", at: fromPod,
			in: udp(c3, vip, zeroSumPayload(udpFlow(c3, backend))), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(udpFlow(c3, backend)), udpChecksumIs(0xffff)}},
	})
	n.wantNAT(t, servicePair(packet.ProtoUDP, c1, vip, c1, backend, beID2, false),
		servicePair(packet.ProtoUDP, c2, vip, c2, backend, beID2, false),
		servicePair(packet.ProtoUDP, c3, vip, c3, backend, beID2, false))
}

// A frontend with nothing to send to.
func TestServiceNoBackend(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	empty, dangling := netip.AddrPortFrom(clusterIP, 80), netip.AddrPortFrom(clusterIP, 81)
	n.frontend(t, maps.Frontend{Addr: empty, Protocol: packet.ProtoTCP, ServiceID: 4}, 0)
	n.frontend(t, maps.Frontend{Addr: dangling, Protocol: packet.ProtoTCP, ServiceID: 5, Backends: []uint32{77}}, 0)
	client := netip.AddrPortFrom(ipLocal, 40000)
	n.run(t, []step{
		{name: "frontend without backends", at: fromPod, in: tcp(client, empty, tcpSYN), reason: maps.ReasonNoBackend},
		{name: "slot naming a backend id that is not in backends", at: fromPod, in: tcp(client, dangling, tcpSYN), reason: maps.ReasonNoBackend},
		{name: "the same from outside the cluster", at: fromUnderlay, in: tcp(netip.AddrPortFrom(outsider, 50000), empty, tcpSYN), reason: maps.ReasonNoBackend},
	})
	n.wantNAT(t)
}

// A pod reaching itself through its Service sees the hairpin address as the source.
func TestServiceHairpin(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	vip, self, backend := netip.AddrPortFrom(clusterIP, 80), netip.AddrPortFrom(be1, 45000), netip.AddrPortFrom(be1, 8080)
	hairpin := netip.AddrPortFrom(hairpinIP, 45000)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 6, Backends: []uint32{beID1}}, 0)
	n.run(t, []step{
		{name: "SYN to its own Service comes back from the hairpin address", at: fromPod, in: tcp(self, vip, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(hairpin, backend)), sentTo(beMAC1)}},
		{name: "its SYN-ACK to the hairpin address returns from the Service", at: fromPod, in: tcp(backend, hairpin, tcpSYN|tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(vip, self)), sentTo(beMAC1)}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, self, vip, hairpin, backend, beID1, false))
}

// ClientIP affinity keeps a client on one backend; without it, flows spread.
func TestServiceAffinity(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	sticky, spread := netip.AddrPortFrom(clusterIP, 80), netip.AddrPortFrom(clusterIP, 81)
	all := []uint32{beID1, beID2, beID3}
	n.frontend(t, maps.Frontend{Addr: sticky, Protocol: packet.ProtoTCP, ServiceID: 7, Backends: all, Affinity: time.Hour}, 0)
	n.frontend(t, maps.Frontend{Addr: spread, Protocol: packet.ProtoTCP, ServiceID: 8, Backends: all}, 0)
	backends := map[netip.AddrPort]uint32{}
	for _, b := range backendPods {
		backends[netip.AddrPortFrom(b.ip, 8080)] = b.id
	}
	// flows sends count new flows from the client and counts the backends they reached.
	const firstPort = 30001
	port := uint16(firstPort - 1)
	flows := func(t *testing.T, vip netip.AddrPort, count int) map[netip.AddrPort]int {
		hit := map[netip.AddrPort]int{}
		for range count {
			port++
			out := n.send(t, step{at: fromPod, in: tcp(netip.AddrPortFrom(ipLocal, port), vip, tcpSYN), reason: maps.ReasonForwardLocal})
			dst := flowOf(out).dst
			if _, ok := backends[dst]; !ok {
				t.Fatalf("flow went to %s, not a backend", dst)
			}
			hit[dst]++
		}
		return hit
	}
	var kept netip.AddrPort
	t.Run("20 flows with affinity reach one backend", func(t *testing.T) {
		hit := flows(t, sticky, 20)
		if len(hit) != 1 {
			t.Fatalf("backends reached: %v", hit)
		}
		for b := range hit {
			kept = b
		}
	})
	t.Run("60 flows without affinity reach more than one", func(t *testing.T) {
		if hit := flows(t, spread, 60); len(hit) < 2 {
			t.Fatalf("backends reached: %v", hit)
		}
	})
	t.Run("a terminating backend takes no new flow of its clients", func(t *testing.T) {
		if !kept.IsValid() {
			t.Fatal("no backend was kept by the earlier subtest")
		}
		var rest []uint32
		for _, id := range all {
			if id != backends[kept] {
				rest = append(rest, id)
			}
		}
		must(t, n.Services().UpsertBackend(maps.Backend{ID: backends[kept], Addr: kept, Local: true, Terminating: true}))
		n.frontend(t, maps.Frontend{Addr: sticky, Protocol: packet.ProtoTCP, ServiceID: 7, Backends: rest, Affinity: time.Hour}, 3)
		// The client's first flow keeps its backend.
		n.send(t, step{at: fromPod, in: tcp(netip.AddrPortFrom(ipLocal, firstPort), sticky, tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(netip.AddrPortFrom(ipLocal, firstPort), kept))}})
		hit := flows(t, sticky, 10)
		if len(hit) != 1 || hit[kept] != 0 {
			t.Fatalf("backends reached: %v; want one, not %s", hit, kept)
		}
	})
}

// A flow whose backend is gone chooses again on its next packet.
func TestServiceBackendGone(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	vip, client := netip.AddrPortFrom(clusterIP, 80), netip.AddrPortFrom(ipLocal, 40000)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 9, Backends: []uint32{beID1, beID2}}, 0)
	out := n.send(t, step{at: fromPod, in: tcp(client, vip, tcpSYN), reason: maps.ReasonForwardLocal})
	first := flowOf(out).dst
	gone, remaining := uint32(beID1), uint32(beID2)
	if first.Addr() == be2 {
		gone, remaining = beID2, beID1
	}
	left := netip.AddrPortFrom(backendPods[remaining-1].ip, 8080)
	n.wantNAT(t, servicePair(packet.ProtoTCP, client, vip, client, first, gone, false))
	// As the agent does it: the slots first, then the backend.
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 9, Backends: []uint32{remaining}}, 2)
	must(t, n.Services().DeleteBackend(gone))
	n.run(t, []step{
		{name: "next packet goes to the remaining backend", at: fromPod, in: tcp(client, vip, tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(client, left))}},
		{name: "and so do the ones after it", at: fromPod, in: tcp(client, vip, tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(client, left))}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, client, vip, client, left, remaining, false))
}

// A client reaches a backend directly from the port it reached it through a Service before
// (TCP_CRR does, within seconds): once that connection is closed, the new one's replies are
// not rewritten to the Service's address; while it is open, it keeps its own.
func TestServicePortReusedDirectly(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	vip, client, backend := netip.AddrPortFrom(clusterIP, 80), netip.AddrPortFrom(ipLocal, 40000), netip.AddrPortFrom(be1, 8080)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 1, Backends: []uint32{beID1}}, 0)
	open := []step{
		{name: "SYN through the Service", at: fromPod, in: tcp(client, vip, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(client, backend))}},
		{name: "its SYN-ACK from the Service", at: fromPod, in: tcp(backend, client, tcpSYN|tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(vip, client))}},
	}
	direct := []step{
		{name: "SYN to the backend from the same port", at: fromPod, in: tcp(client, backend, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(client, backend))}},
	}
	t.Run("open", func(t *testing.T) {
		n.run(t, append(open, direct...))
		n.wantNAT(t, servicePair(packet.ProtoTCP, client, vip, client, backend, beID1, false))
	})
	t.Run("closed", func(t *testing.T) {
		n.run(t, []step{{name: "the client resets the Service connection", at: fromPod, in: tcp(client, vip, tcpRST|tcpACK),
			reason: maps.ReasonForwardLocal, checks: []outCheck{leaves(tcpFlow(client, backend))}}})
		n.run(t, append(direct, step{name: "the direct SYN-ACK keeps the backend's address", at: fromPod,
			in: tcp(backend, client, tcpSYN|tcpACK), reason: maps.ReasonForwardLocal, checks: []outCheck{leaves(tcpFlow(backend, client))}}))
		n.wantNAT(t)
	})
}

// A connection opened on the tuple of a closed one through a Service chooses its backend
// again, as a new connection does: the one the closed connection had may no longer be a slot.
func TestServiceClosedTupleChoosesAgain(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	vip, client := netip.AddrPortFrom(clusterIP, 80), netip.AddrPortFrom(ipLocal, 40000)
	first, second := netip.AddrPortFrom(be1, 8080), netip.AddrPortFrom(be2, 8080)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 3, Backends: []uint32{beID1}}, 0)
	n.run(t, []step{
		{name: "SYN to the first backend", at: fromPod, in: tcp(client, vip, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(client, first))}},
		{name: "reset", at: fromPod, in: tcp(client, vip, tcpRST|tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(client, first))}},
	})
	// The first backend stays (not terminating, still a backend), but is no slot any more.
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 3, Backends: []uint32{beID2}}, 1)
	n.run(t, []step{
		{name: "a packet of the closed connection still follows it", at: fromPod, in: tcp(client, vip, tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(client, first))}},
		{name: "a new SYN on its tuple goes to the slot's backend", at: fromPod, in: tcp(client, vip, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(client, second))}},
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, client, vip, client, second, beID2, false))
}

// A pod's flow leaving the cluster takes the node's address, its replies come back.
func TestMasquerade(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	pod, remote := netip.AddrPortFrom(ipLocal, 40100), netip.AddrPortFrom(world, 443)
	out := n.send(t, step{at: fromPod, in: tcp(pod, remote, tcpSYN), reason: maps.ReasonForwardUnder,
		checks: []outCheck{sentTo(gatewayMAC), ttlIs(63)}})
	node := masqueradedTo(t, out, remote, natPorts.Min, natPorts.Max)

	podU, remoteU := netip.AddrPortFrom(ipLocal, 5353), netip.AddrPortFrom(world, 53)
	out = n.send(t, step{at: fromPod, in: withoutUDPChecksum(udp(podU, remoteU, []byte("q"))), reason: maps.ReasonForwardUnder,
		checks: []outCheck{udpChecksumIs(0)}})
	nodeU := masqueradedTo(t, out, remoteU, natPorts.Min, natPorts.Max)

	// An echo's identifier is its port on both sides.
	const id = 0x1234
	out = n.send(t, step{at: fromPod, in: ping(ipLocal, world, 8, id), reason: maps.ReasonForwardUnder})
	echoID := flowOf(out).src.Port()
	masqueradedTo(t, out, netip.AddrPortFrom(world, echoID), natPorts.Min, natPorts.Max)
	n.run(t, []step{
		{name: "tcp reply from outside returns to the pod", at: fromUnderlay, in: tcp(remote, node, tcpSYN|tcpACK), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(remote, pod)), sentTo(macA)}},
		{name: "the pod's next packet keeps its port", at: fromPod, in: tcp(pod, remote, tcpACK), reason: maps.ReasonForwardUnder,
			checks: []outCheck{leaves(tcpFlow(node, remote))}},
		{name: "udp reply without a checksum returns to the pod", at: fromUnderlay, in: withoutUDPChecksum(udp(remoteU, nodeU, []byte("a"))),
			reason: maps.ReasonForwardLocal, checks: []outCheck{leaves(udpFlow(remoteU, podU)), udpChecksumIs(0)}},
		{name: "echo reply returns to the pod with its identifier", at: fromUnderlay, in: ping(world, nodeIP, 0, echoID),
			reason: maps.ReasonForwardLocal, checks: []outCheck{leaves(flow{packet.ProtoICMP, netip.AddrPortFrom(world, id), netip.AddrPortFrom(ipLocal, id)})}},
	})
	n.wantNAT(t, masqPair(packet.ProtoTCP, pod, node, remote), masqPair(packet.ProtoUDP, podU, nodeU, remoteU),
		echoMasqPair(ipLocal, id, netip.AddrPortFrom(nodeIP, echoID), world))
}

// What is not masqueraded leaves as the pod sent it.
func TestMasqueradeExemptions(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	masquerade := func(on bool) func(testing.TB) {
		return func(tb testing.TB) { n.configure(tb, func(c *maps.NodeConfig) { c.Masquerade = on }) }
	}
	pod := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(ipLocal, port) }
	remote := netip.AddrPortFrom(world, 443)
	n.run(t, []step{
		{name: "masquerading off", before: masquerade(false), at: fromPod, in: tcp(pod(1001), remote, tcpSYN), reason: maps.ReasonForwardHost,
			checks: []outCheck{leaves(tcpFlow(pod(1001), remote)), ttlIs(64)}},
		{name: "echo with masquerading off", at: fromPod, in: ping(ipLocal, world, 8, 77), reason: maps.ReasonForwardHost,
			checks: []outCheck{leaves(flow{packet.ProtoICMP, pod(77), netip.AddrPortFrom(world, 77)})}},
		{name: "destination in no_masquerade", at: fromPod, in: tcp(pod(1002), remote, tcpSYN), reason: maps.ReasonForwardHost,
			before: func(tb testing.TB) {
				masquerade(true)(tb)
				if err := n.NoMasquerade().Add(netip.MustParsePrefix("198.51.100.0/24")); err != nil {
					tb.Fatal(err)
				}
			},
			checks: []outCheck{leaves(tcpFlow(pod(1002), remote)), ttlIs(64)}},
		{name: "a pod on another node", at: fromPod, in: tcp(pod(1003), netip.AddrPortFrom(ipRemote, 80), tcpSYN), reason: maps.ReasonForwardTunnel,
			checks: []outCheck{leaves(tcpFlow(pod(1003), netip.AddrPortFrom(ipRemote, 80))), ttlIs(63)}},
		{name: "the node itself", at: fromPod, in: tcp(pod(1004), netip.AddrPortFrom(nodeIP, 22), tcpSYN), reason: maps.ReasonForwardHost,
			checks: []outCheck{leaves(tcpFlow(pod(1004), netip.AddrPortFrom(nodeIP, 22)))}},
	})
	n.wantNAT(t)
}

// A destination ip:port lends each of the node's ports to one flow at a time.
func TestMasqueradePortExhaustion(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	const lo, hi = 20000, 20001
	n.configure(t, func(c *maps.NodeConfig) { c.NATPorts = maps.PortRange{Min: lo, Max: hi} })
	remote, otherPort := netip.AddrPortFrom(world, 443), netip.AddrPortFrom(world, 80)
	pod := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(ipLocal, port) }
	leave := func(from, to netip.AddrPort) netip.AddrPort {
		t.Helper()
		out := n.send(t, step{at: fromPod, in: tcp(from, to, tcpSYN), reason: maps.ReasonForwardUnder})
		return masqueradedTo(t, out, to, lo, hi)
	}
	p1, p2 := leave(pod(1001), remote), leave(pod(1002), remote)
	if p1 == p2 {
		t.Fatalf("two flows to %s share %s", remote, p1)
	}
	n.send(t, step{at: fromPod, in: tcp(pod(1003), remote, tcpSYN), reason: maps.ReasonNATNoPort})
	p4 := leave(pod(1004), otherPort)
	n.wantNAT(t, masqPair(packet.ProtoTCP, pod(1001), p1, remote), masqPair(packet.ProtoTCP, pod(1002), p2, remote),
		masqPair(packet.ProtoTCP, pod(1004), p4, otherPort))
}

// A flow refused for want of a port must not leave unmasqueraded when the pod retries:
// admit recorded it in conntrack before a port was sought, so its retry is not new, yet it
// still has no translation.
func TestMasqueradeRetryAfterNoPort(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	const port = 20000
	n.configure(t, func(c *maps.NodeConfig) { c.NATPorts = maps.PortRange{Min: port, Max: port} })
	remote := netip.AddrPortFrom(world, 443)
	first, second := netip.AddrPortFrom(ipLocal, 1001), netip.AddrPortFrom(ipLocal, 1002)
	n.send(t, step{at: fromPod, in: tcp(first, remote, tcpSYN), reason: maps.ReasonForwardUnder})
	n.run(t, []step{
		{name: "second flow finds no port", at: fromPod, in: tcp(second, remote, tcpSYN), reason: maps.ReasonNATNoPort},
		{name: "its retransmitted SYN finds none either", at: fromPod, in: tcp(second, remote, tcpSYN), reason: maps.ReasonNATNoPort},
		{name: "once the port is free the retry takes it", at: fromPod, in: tcp(second, remote, tcpSYN), reason: maps.ReasonForwardUnder,
			before: func(tb testing.TB) {
				// What GC does once the first flow has expired.
				var k bpf.DatapathCtKey
				var v bpf.DatapathNatEntry
				for it := n.Nat.Iterate(); it.Next(&k, &v); {
					if err := n.Nat.Delete(&k); err != nil {
						tb.Fatal(err)
					}
				}
			},
			checks: []outCheck{leaves(tcpFlow(netip.AddrPortFrom(nodeIP, port), remote))}},
	})
}

// The node's own listening ports are never lent to a translated flow.
func TestMasqueradeSkipsPortsTheNodeUses(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	const lo, hi = 20000, 20001
	n.configure(t, func(c *maps.NodeConfig) { c.NATPorts = maps.PortRange{Min: lo, Max: hi} })
	n.ns.Do(t, func() error {
		l, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", lo))
		if err == nil {
			t.Cleanup(func() { l.Close() })
		}
		return err
	})
	remote := netip.AddrPortFrom(world, 443)
	n.run(t, []step{
		{name: "the free port is taken", at: fromPod, in: tcp(netip.AddrPortFrom(ipLocal, 1001), remote, tcpSYN), reason: maps.ReasonForwardUnder,
			checks: []outCheck{leaves(tcpFlow(netip.AddrPortFrom(nodeIP, hi), remote))}},
		{name: "the listening one is not", at: fromPod, in: tcp(netip.AddrPortFrom(ipLocal, 1002), remote, tcpSYN), reason: maps.ReasonNATNoPort},
	})
}

// NodePort from outside: local backends see the client, remote ones the node (unless
// externalTrafficPolicy Local).
func TestServiceNodePort(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	toLocal, toRemote, toRemoteExtLocal := netip.AddrPortFrom(nodeIP, 30080), netip.AddrPortFrom(nodeIP, 30081), netip.AddrPortFrom(nodeIP, 30082)
	n.frontend(t, maps.Frontend{Addr: toLocal, Protocol: packet.ProtoTCP, ServiceID: 10, Backends: []uint32{beID1}, NodePort: true}, 0)
	n.frontend(t, maps.Frontend{Addr: toRemote, Protocol: packet.ProtoTCP, ServiceID: 11, Backends: []uint32{beIDRemote}, NodePort: true}, 0)
	n.frontend(t, maps.Frontend{Addr: toRemoteExtLocal, Protocol: packet.ProtoTCP, ServiceID: 12, Backends: []uint32{beIDRemote},
		NodePort: true, ExternalLocal: true}, 0)
	c1, c2, c3 := netip.AddrPortFrom(outsider, 50001), netip.AddrPortFrom(outsider, 50002), netip.AddrPortFrom(outsider, 50003)
	local, remote := netip.AddrPortFrom(be1, 8080), netip.AddrPortFrom(ipRemote, 8080)
	n.run(t, []step{
		{name: "local backend: destination rewritten, source kept", at: fromUnderlay, in: tcp(c1, toLocal, tcpSYN), reason: maps.ReasonForwardLocal,
			checks: []outCheck{leaves(tcpFlow(c1, local)), sentTo(beMAC1)}},
		{name: "its reply leaves from the node port", at: fromPod, in: tcp(local, c1, tcpSYN|tcpACK), reason: maps.ReasonForwardUnder,
			checks: []outCheck{leaves(tcpFlow(toLocal, c1)), sentTo(gatewayMAC), ttlIs(63)}},
		{name: "remote backend under externalTrafficPolicy Local: source kept", at: fromUnderlay, in: tcp(c3, toRemoteExtLocal, tcpSYN),
			reason: maps.ReasonForwardTunnel, checks: []outCheck{leaves(tcpFlow(c3, remote)), ttlIs(63)}},
	})
	var node netip.AddrPort
	t.Run("remote backend: the source becomes the node", func(t *testing.T) {
		out := n.send(t, step{at: fromUnderlay, in: tcp(c2, toRemote, tcpSYN), reason: maps.ReasonForwardTunnel})
		node = masqueradedTo(t, out, remote, natPorts.Min, natPorts.Max)
		n.send(t, step{at: fromUnderlay, in: tcp(remote, node, tcpSYN|tcpACK), reason: maps.ReasonForwardUnder,
			checks: []outCheck{leaves(tcpFlow(toRemote, c2)), sentTo(gatewayMAC)}})
	})
	n.wantNAT(t, servicePair(packet.ProtoTCP, c1, toLocal, c1, local, beID1, false),
		servicePair(packet.ProtoTCP, c2, toRemote, node, remote, beIDRemote, true),
		servicePair(packet.ProtoTCP, c3, toRemoteExtLocal, c3, remote, beIDRemote, false))
}

// GC removes a flow's entries once both directions have expired.
func TestNATGC(t *testing.T) {
	t.Parallel()
	n := loadSvcNode(t)
	vip, backend := netip.AddrPortFrom(clusterIP, 80), netip.AddrPortFrom(be1, 8080)
	n.frontend(t, maps.Frontend{Addr: vip, Protocol: packet.ProtoTCP, ServiceID: 13, Backends: []uint32{beID1}}, 0)
	client := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(ipLocal, port) }
	pair := func(port uint16) []natRow {
		return servicePair(packet.ProtoTCP, client(port), vip, client(port), backend, beID1, false)
	}
	// A flow of the datapath's making: its expiry is on the clock GC reads.
	n.send(t, step{at: fromPod, in: tcp(client(40000), vip, tcpSYN), reason: maps.ReasonForwardLocal})
	const dead, live = 1, 1 << 62
	put := func(r natRow, expires uint64) {
		k, v := natKV(r, expires)
		must(t, n.Nat.Put(&k, &v))
	}
	bothDead, replyLive, origLive, orphan := pair(1), pair(2), pair(3), pair(4)[0]
	put(bothDead[0], dead)
	put(bothDead[1], dead)
	put(replyLive[0], dead)
	put(replyLive[1], live)
	put(origLive[0], live)
	put(origLive[1], dead)
	put(orphan, dead)
	removed, left, err := n.NAT().GC()
	if err != nil || removed != 3 || left != 6 {
		t.Fatalf("GC removed %d, left %d (%v); want 3 and 6", removed, left, err)
	}
	n.wantNAT(t, pair(40000), replyLive, origLive)
}

// natKV is the nat map key and value of r.
func natKV(r natRow, expires uint64) (bpf.DatapathCtKey, bpf.DatapathNatEntry) {
	be16 := func(p uint16) uint16 { return p<<8 | p>>8 } // __be16 as a little-endian Go uint16
	k := bpf.DatapathCtKey{Saddr: maps.EndpointKey(r.from[0].Addr()).Ip, Daddr: maps.EndpointKey(r.from[1].Addr()).Ip,
		Sport: be16(r.from[0].Port()), Dport: be16(r.from[1].Port()), Protocol: r.proto, Family: 2}
	v := bpf.DatapathNatEntry{Saddr: maps.EndpointKey(r.to[0].Addr()).Ip, Daddr: maps.EndpointKey(r.to[1].Addr()).Ip,
		Sport: be16(r.to[0].Port()), Dport: be16(r.to[1].Port()), BackendId: r.backend, Expires: expires}
	for _, f := range []struct {
		on   bool
		flag bpf.DatapathNatFlags
	}{{r.reply, bpf.DatapathNatFlagsNAT_F_REPLY}, {r.service, bpf.DatapathNatFlagsNAT_F_SERVICE}, {r.masq, bpf.DatapathNatFlagsNAT_F_MASQUERADE}} {
		if f.on {
			v.Flags |= uint32(f.flag)
		}
	}
	return k, v
}
