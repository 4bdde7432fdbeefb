package bpf_test

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
	"github.com/ebpfnet/ebpfnet/testkit/progtest"
)

const (
	idA, idB = 300, 400
	cidrID   = maps.IdentityCIDRFirst + 1
)

var (
	polA, polB = netip.MustParseAddr("10.1.0.10"), netip.MustParseAddr("10.1.0.11")
	worldNet   = netip.MustParsePrefix("192.0.2.0/24")
)

// loadPolicy: A (egress and ingress enforced) and B (ingress enforced) on this node; B takes
// TCP/80 from A and SCTP 5000-5003 from anyone; A may send anything to B and UDP/53 into
// 192.0.2.0/24.
func loadPolicy(t *testing.T) *loader.Datapath {
	dp := loadUnpinned(t)
	eps := dp.Endpoints()
	for _, ep := range []maps.Endpoint{
		{IP: polA, Ifindex: testRunIfindex, ID: 11, Identity: idA, Local: true, IngressEnforced: true, EgressEnforced: true, MAC: macA, NodeMAC: nodeMacA},
		{IP: polB, Ifindex: testRunIfindex, ID: 12, Identity: idB, Local: true, IngressEnforced: true, MAC: macB, NodeMAC: nodeMacB},
	} {
		if err := eps.Upsert(ep); err != nil {
			t.Fatal(err)
		}
	}
	ic := dp.IPCache()
	must(t, ic.Upsert(maps.IPCacheEntry{Prefix: netip.PrefixFrom(polA, 32), Identity: idA}))
	must(t, ic.Upsert(maps.IPCacheEntry{Prefix: netip.PrefixFrom(polB, 32), Identity: idB}))
	must(t, ic.Upsert(maps.IPCacheEntry{Prefix: worldNet, Identity: maps.IdentityWorld, CIDRIdentity: cidrID}))
	pol := dp.Policy()
	must(t, pol.Put(maps.PolicyEntry{Endpoint: 12, Peer: idA, Direction: maps.Ingress, Protocol: packet.ProtoTCP, Port: 80, PortBits: 16}))
	for _, b := range maps.PortBlocks(5000, 5003) {
		must(t, pol.Put(maps.PolicyEntry{Endpoint: 12, Peer: maps.IdentityAny, Direction: maps.Ingress, Protocol: packet.ProtoSCTP, Port: b[0], PortBits: uint8(b[1])}))
	}
	must(t, pol.Put(maps.PolicyEntry{Endpoint: 11, Peer: idB, Direction: maps.Egress}))
	must(t, pol.Put(maps.PolicyEntry{Endpoint: 11, Peer: cidrID, Direction: maps.Egress, Protocol: packet.ProtoUDP, Port: 53, PortBits: 16}))
	return dp
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func pod(src, dst netip.Addr, srcMAC []byte, proto uint8, l4 []byte) []byte {
	return packet.Eth(nodeMacA, srcMAC, packet.EtherIPv4, packet.IPv4{Src: src, Dst: dst, Proto: proto}.Marshal(l4))
}

func TestPolicyVerdicts(t *testing.T) {
	dp := loadPolicy(t)
	world := netip.MustParseAddr("192.0.2.5")
	runFromPod(t, dp, []fromPodCase{
		{name: "ingress rule by identity and port", in: pod(polA, polB, macA, packet.ProtoTCP, packet.TCP(40000, 80)), want: tcRedirect, reason: maps.ReasonForwardLocal},
		// Found by the fuzzer (package fuzz): an ICMP error quoting a live flow was related to
		// it whoever it went to, so any peer of a flow could reach every pod past its policy.
		{name: "icmp error about A's flow, back to A, is related to it", in: pod(polB, polA, macB, packet.ProtoICMP,
			icmpError(packet.IPv4{Src: polA, Dst: polB, Proto: packet.ProtoTCP}.Marshal(packet.TCP(40000, 80)))), want: tcRedirect, reason: maps.ReasonForwardLocal},
		{name: "icmp error about A's flow, to B, is judged by B's policy", in: pod(polA, polB, macA, packet.ProtoICMP,
			icmpError(packet.IPv4{Src: polA, Dst: polB, Proto: packet.ProtoTCP}.Marshal(packet.TCP(40000, 80)))), want: tcShot, reason: maps.ReasonPolicyIngress},
		{name: "same peer, port the rule does not name", in: pod(polA, polB, macA, packet.ProtoTCP, packet.TCP(40000, 81)), want: tcShot, reason: maps.ReasonPolicyIngress},
		{name: "sctp inside the port range", in: pod(polA, polB, macA, packet.ProtoSCTP, packet.SCTP(7000, 5002)), want: tcRedirect, reason: maps.ReasonForwardLocal},
		{name: "sctp at the end of the range", in: pod(polA, polB, macA, packet.ProtoSCTP, packet.SCTP(7000, 5003)), want: tcRedirect, reason: maps.ReasonForwardLocal},
		{name: "sctp just past the range", in: pod(polA, polB, macA, packet.ProtoSCTP, packet.SCTP(7000, 5004)), want: tcShot, reason: maps.ReasonPolicyIngress},
		{name: "udp is not sctp", in: pod(polA, polB, macA, packet.ProtoUDP, packet.UDP(7000, 5002, nil)), want: tcShot, reason: maps.ReasonPolicyIngress},
		{name: "egress by cidr identity and port", in: pod(polA, world, macA, packet.ProtoUDP, packet.UDP(4444, 53, nil)), want: tcOK, reason: maps.ReasonForwardHost},
		{name: "egress to the cidr on another port", in: pod(polA, world, macA, packet.ProtoUDP, packet.UDP(4444, 54, nil)), want: tcShot, reason: maps.ReasonPolicyEgress},
		{name: "egress outside every rule", in: pod(polA, netip.MustParseAddr("198.51.100.1"), macA, packet.ProtoTCP, packet.TCP(1, 80)), want: tcShot, reason: maps.ReasonPolicyEgress},
		{name: "unsolicited flow into A", in: pod(polB, polA, macB, packet.ProtoTCP, packet.TCP(80, 41000)), want: tcShot, reason: maps.ReasonPolicyIngress},
		{name: "reply of the allowed flow passes A's ingress", in: pod(polB, polA, macB, packet.ProtoTCP, packet.TCP(80, 40000)), want: tcRedirect, reason: maps.ReasonForwardLocal},
		{name: "reply of the allowed sctp flow", in: pod(polB, polA, macB, packet.ProtoSCTP, packet.SCTP(5002, 7000)), want: tcRedirect, reason: maps.ReasonForwardLocal},
		{name: "icmp echo to B: no rule without ports", in: pod(polA, polB, macA, packet.ProtoICMP, packet.ICMPEcho(8)), want: tcShot, reason: maps.ReasonPolicyIngress},
	})
}

// icmpError is an ICMP destination unreachable quoting the first 28 bytes of an IPv4 packet.
func icmpError(quoted []byte) []byte {
	b := append(make([]byte, 8), quoted[:28]...)
	b[0], b[1] = 3, 1
	binary.BigEndian.PutUint16(b[2:], packet.Checksum(b))
	return b
}

func TestPortBlocksCoverExactly(t *testing.T) {
	for _, r := range [][2]uint16{{80, 80}, {5000, 5003}, {1, 65535}, {0, 65535}, {1024, 2047}, {33, 1000}, {65535, 65535}} {
		covered := map[uint32]bool{}
		blocks := maps.PortBlocks(r[0], r[1])
		for _, b := range blocks {
			size := uint32(1) << (16 - b[1])
			for p := uint32(b[0]); p < uint32(b[0])+size; p++ {
				if covered[p] {
					t.Errorf("%v: port %d covered twice", r, p)
				}
				covered[p] = true
			}
		}
		for p := uint32(0); p < 65536; p++ {
			if covered[p] != (p >= uint32(r[0]) && p <= uint32(r[1])) {
				t.Fatalf("%v: port %d covered=%v", r, p, covered[p])
			}
		}
		if len(blocks) > 30 {
			t.Errorf("%v: %d blocks", r, len(blocks))
		}
	}
}

// A flow's entry counts both directions in packets and bytes, and the replies apart: two
// requests and one reply make 3 packets, 1 of them a reply with the reply's length.
func TestConntrackCountsReplies(t *testing.T) {
	dp := loadPolicy(t)
	request := pod(polA, polB, macA, packet.ProtoTCP, packet.TCP(40001, 80))
	reply := pod(polB, polA, macB, packet.ProtoTCP, packet.TCP(80, 40001))
	for _, in := range [][]byte{request, reply, request} {
		if got, _ := progtest.MustRun(t, dp.FromPod, in); got != tcRedirect {
			t.Fatalf("verdict %d", got)
		}
	}
	flows, err := dp.Conntrack().List()
	if err != nil || len(flows) != 1 {
		t.Fatalf("flows %+v (%v), want one", flows, err)
	}
	f := flows[0]
	total := uint64(2*len(request) + len(reply))
	if f.Packets != 3 || f.Bytes != total || f.ReplyPackets != 1 || f.ReplyBytes != uint64(len(reply)) {
		t.Errorf("flow counts %d packets, %d bytes, replies %d packets, %d bytes; want 3, %d, 1, %d",
			f.Packets, f.Bytes, f.ReplyPackets, f.ReplyBytes, total, len(reply))
	}
}

// A new connection (SYN without ACK) on the tuple of a closing one is judged by policy as
// new: after the rule that allowed the first is gone, the second is denied, while the first's
// last packets still pass.
func TestConntrackClosedTupleReusedIsNew(t *testing.T) {
	dp := loadPolicy(t)
	const syn, ack, fin = 0x02, 0x10, 0x01
	seg := func(flags byte) []byte { return pod(polA, polB, macA, packet.ProtoTCP, tcpSeg(40002, 80, flags)) }
	rule := maps.PolicyEntry{Endpoint: 12, Peer: idA, Direction: maps.Ingress, Protocol: packet.ProtoTCP, Port: 80, PortBits: 16}
	runFromPod(t, dp, []fromPodCase{
		{name: "the first connection's SYN is allowed", in: seg(syn), want: tcRedirect, reason: maps.ReasonForwardLocal},
		{name: "it closes", in: seg(fin | ack), want: tcRedirect, reason: maps.ReasonForwardLocal},
	})
	must(t, dp.Policy().Delete(rule))
	runFromPod(t, dp, []fromPodCase{
		{name: "the closing connection's last ACK still passes", in: seg(ack), want: tcRedirect, reason: maps.ReasonForwardLocal},
		{name: "a new SYN on the same tuple is judged anew, and denied", in: seg(syn), want: tcShot, reason: maps.ReasonPolicyIngress},
	})
	must(t, dp.Policy().Put(rule))
	runFromPod(t, dp, []fromPodCase{
		{name: "allowed again, it is a new flow", in: seg(syn), want: tcRedirect, reason: maps.ReasonForwardLocal},
	})
	flows, err := dp.Conntrack().List()
	if err != nil || len(flows) != 1 || flows[0].Packets != 1 {
		t.Fatalf("flows %+v (%v), want the new flow alone, 1 packet", flows, err)
	}
}

// The agent's conntrack GC removes expired flows and keeps live ones.
func TestConntrackGC(t *testing.T) {
	dp := loadPolicy(t)
	pkt := pod(polA, polB, macA, packet.ProtoTCP, packet.TCP(40000, 80))
	if got, _ := progtest.MustRun(t, dp.FromPod, pkt); got != tcRedirect {
		t.Fatalf("verdict %d", got)
	}
	flows, err := dp.Conntrack().List()
	if err != nil || len(flows) != 1 || flows[0].Dst.Port() != 80 || flows[0].ExpiresIn <= 0 {
		t.Fatalf("flows %+v (%v), want one live flow to :80", flows, err)
	}
	// Age an entry of our own making past its expiry.
	var k bpf.DatapathCtKey
	var v bpf.DatapathCtEntry
	it := dp.DatapathMaps.Conntrack.Iterate()
	for it.Next(&k, &v) {
	}
	k.Dport = 0x5100 // another flow, already expired
	v.Expires = 1
	must(t, dp.DatapathMaps.Conntrack.Put(&k, &v))
	removed, left, err := dp.Conntrack().GC()
	if err != nil || removed != 1 || left != 1 {
		t.Fatalf("GC removed %d, left %d (%v); want 1 and 1", removed, left, err)
	}
}
