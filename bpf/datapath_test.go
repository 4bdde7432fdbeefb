package bpf_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"sort"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
	"github.com/ebpfnet/ebpfnet/testkit/progtest"
)

// tc and XDP return codes.
const (
	tcOK       = 0
	tcShot     = 2
	tcRedirect = 7
	xdpDrop    = 1
	xdpPass    = 2
)

// testRunIfindex is the device BPF_PROG_TEST_RUN gives an skb: the namespace's loopback.
const testRunIfindex = 1

var (
	macA, macB         = packet.MAC("02:00:00:00:00:0a"), packet.MAC("02:00:00:00:00:0b")
	nodeMacA, nodeMacB = packet.MAC("ee:00:00:00:00:0a"), packet.MAC("ee:00:00:00:00:0b")
	ipA, ipB           = netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("10.0.0.11")
	ip6A, ip6B         = netip.MustParseAddr("fd00::a"), netip.MustParseAddr("fd00::b")
	ipUnknown          = netip.MustParseAddr("10.9.9.9")
	ifindexB           = uint32(42)
)

func loadUnpinned(t *testing.T) *loader.Datapath {
	t.Helper()
	nstest.RequireRoot(t)
	dp, err := loader.Load(loader.Config{Unpinned: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	eps := dp.Endpoints()
	for _, ep := range []maps.Endpoint{
		{IP: ipA, Ifindex: testRunIfindex, ID: 1, Local: true, MAC: macA, NodeMAC: nodeMacA},
		{IP: ipB, Ifindex: ifindexB, ID: 2, Local: true, MAC: macB, NodeMAC: nodeMacB},
		{IP: ip6A, Ifindex: testRunIfindex, ID: 3, Local: true, MAC: macA, NodeMAC: nodeMacA},
		{IP: ip6B, Ifindex: ifindexB, ID: 4, Local: true, MAC: macB, NodeMAC: nodeMacB},
	} {
		if err := eps.Upsert(ep); err != nil {
			t.Fatal(err)
		}
	}
	return dp
}

// v4 builds an Ethernet+IPv4 frame from pod A (unless src says otherwise).
func v4(h packet.IPv4, l4 []byte) []byte {
	if !h.Src.IsValid() {
		h.Src = ipA
	}
	if !h.Dst.IsValid() {
		h.Dst = ipB
	}
	return packet.Eth(nodeMacA, macA, packet.EtherIPv4, h.Marshal(l4))
}

func v6(h packet.IPv6, l4 []byte) []byte {
	if !h.Src.IsValid() {
		h.Src = ip6A
	}
	if !h.Dst.IsValid() {
		h.Dst = ip6B
	}
	return packet.Eth(nodeMacA, macA, packet.EtherIPv6, h.Marshal(l4))
}

// fromPodCase is one frame sent by pod A, its verdict and the reason it must be counted under.
type fromPodCase struct {
	name   string
	in     []byte
	want   uint32
	reason maps.Reason
	check  func(t testing.TB, out []byte)
}

func TestFromPodVerdicts(t *testing.T) {
	dp := loadUnpinned(t)
	fragHdr := func(next uint8, offset uint16, more bool) []byte {
		b := make([]byte, 8)
		b[0] = next
		v := offset << 3
		if more {
			v |= 1
		}
		binary.BigEndian.PutUint16(b[2:], v)
		return b
	}
	cases := []fromPodCase{
		{name: "tcp to local pod", in: v4(packet.IPv4{Proto: packet.ProtoTCP}, packet.TCP(40000, 80)),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(63)},
		{name: "udp to local pod", in: v4(packet.IPv4{Proto: packet.ProtoUDP}, packet.UDP(40000, 53, []byte("hi"))),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(63)},
		{name: "icmp to local pod", in: v4(packet.IPv4{Proto: packet.ProtoICMP, TTL: 2}, packet.ICMPEcho(8)),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(1)},
		{name: "sctp to local pod", in: v4(packet.IPv4{Proto: packet.ProtoSCTP}, packet.SCTP(5000, 5001)),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(63)},
		{name: "ip options", in: v4(packet.IPv4{Proto: packet.ProtoTCP, Options: []byte{1, 1, 1, 0}}, packet.TCP(1, 2)),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(63)},
		{name: "first fragment", in: v4(packet.IPv4{Proto: packet.ProtoUDP, MoreFrags: true}, packet.UDP(1, 2, make([]byte, 32))),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(63)},
		{name: "later fragment without l4 header", in: v4(packet.IPv4{Proto: packet.ProtoUDP, FragOff: 5}, []byte{1, 2, 3}),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(63)},
		{name: "ttl 1", in: v4(packet.IPv4{Proto: packet.ProtoUDP, TTL: 1}, packet.UDP(1, 2, nil)),
			want: tcShot, reason: maps.ReasonTTLExceeded},
		{name: "unknown destination goes to the stack", in: v4(packet.IPv4{Proto: packet.ProtoTCP, Dst: ipUnknown}, packet.TCP(1, 2)),
			want: tcOK, reason: maps.ReasonForwardHost},
		{name: "ipv6 udp", in: v6(packet.IPv6{Next: packet.ProtoUDP}, packet.UDP(1, 2, nil)),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(63)},
		{name: "ipv6 icmp", in: v6(packet.IPv6{Next: packet.ProtoICMP6}, packet.ICMPEcho(128)),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(63)},
		{name: "ipv6 fragment header then tcp", in: v6(packet.IPv6{Next: packet.ProtoFrag6},
			append(fragHdr(packet.ProtoTCP, 0, true), packet.TCP(1, 2)...)),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(63)},
		{name: "ipv6 hop limit 1", in: v6(packet.IPv6{Next: packet.ProtoUDP, HopLimit: 1}, packet.UDP(1, 2, nil)),
			want: tcShot, reason: maps.ReasonTTLExceeded},
		{name: "ipv6 link-local neighbour discovery goes to the stack",
			in:   v6(packet.IPv6{Src: netip.MustParseAddr("fe80::1"), Dst: netip.MustParseAddr("ff02::2"), Next: packet.ProtoICMP6}, packet.ICMPEcho(133)),
			want: tcOK, reason: maps.ReasonForwardHost},
		{name: "arp from its owner", in: packet.Eth(packet.MAC("ff:ff:ff:ff:ff:ff"), macA, packet.EtherARP,
			packet.ARP(1, macA, ipA, make(net.HardwareAddr, 6), ipB)), want: tcOK, reason: maps.ReasonForwardHost},
		{name: "arp claiming another pod's ip", in: packet.Eth(packet.MAC("ff:ff:ff:ff:ff:ff"), macA, packet.EtherARP,
			packet.ARP(2, macA, ipB, make(net.HardwareAddr, 6), ipA)), want: tcShot, reason: maps.ReasonSpoofedSource},
		{name: "arp sender mac differs from frame", in: packet.Eth(packet.MAC("ff:ff:ff:ff:ff:ff"), macA, packet.EtherARP,
			packet.ARP(2, macB, ipA, make(net.HardwareAddr, 6), ipB)), want: tcShot, reason: maps.ReasonSpoofedSource},
		{name: "spoofed source ip", in: v4(packet.IPv4{Proto: packet.ProtoUDP, Src: netip.MustParseAddr("10.0.0.99")}, packet.UDP(1, 2, nil)),
			want: tcShot, reason: maps.ReasonSpoofedSource},
		{name: "another pod's source ip", in: v4(packet.IPv4{Proto: packet.ProtoUDP, Src: ipB, Dst: ipA}, packet.UDP(1, 2, nil)),
			want: tcShot, reason: maps.ReasonSpoofedSource},
		{name: "spoofed source mac", in: packet.Eth(nodeMacA, macB, packet.EtherIPv4,
			packet.IPv4{Src: ipA, Dst: ipB, Proto: packet.ProtoUDP}.Marshal(packet.UDP(1, 2, nil))),
			want: tcShot, reason: maps.ReasonSpoofedSource},
		{name: "ethernet padding after the datagram", in: append(v4(packet.IPv4{Proto: packet.ProtoUDP}, packet.UDP(1, 2, nil)), make([]byte, 18)...),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(63)},
		{name: "ipv6 padding after the datagram", in: append(v6(packet.IPv6{Next: packet.ProtoUDP}, packet.UDP(1, 2, nil)), make([]byte, 8)...),
			want: tcRedirect, reason: maps.ReasonForwardLocal, check: deliveredToB(63)},
		{name: "non-ip ethertype (lldp)", in: packet.Eth(nodeMacA, macA, 0x88cc, make([]byte, 46)),
			want: tcShot, reason: maps.ReasonUnsupportedL3},
	}
	cases = append(cases, truncations()...)
	runFromPod(t, dp, cases)
}

// truncations cut a valid frame at every layer, and corrupt length fields.
func truncations() []fromPodCase {
	tcp := v4(packet.IPv4{Proto: packet.ProtoTCP}, packet.TCP(1, 2))
	udp := v4(packet.IPv4{Proto: packet.ProtoUDP}, packet.UDP(1, 2, nil))
	icmp := v4(packet.IPv4{Proto: packet.ProtoICMP}, packet.ICMPEcho(8))
	sctp := v4(packet.IPv4{Proto: packet.ProtoSCTP}, packet.SCTP(1, 2))
	udp6 := v6(packet.IPv6{Next: packet.ProtoUDP}, packet.UDP(1, 2, nil))
	arp := packet.Eth(packet.MAC("ff:ff:ff:ff:ff:ff"), macA, packet.EtherARP, packet.ARP(1, macA, ipA, make(net.HardwareAddr, 6), ipB))
	// cut returns frame shortened to n bytes with the IP length fields made to agree, so that
	// only the L4 header is short.
	cut := func(frame []byte, n int) []byte {
		b := append([]byte(nil), frame[:n]...)
		switch binary.BigEndian.Uint16(b[12:14]) {
		case packet.EtherIPv4:
			if n >= 14+20 {
				binary.BigEndian.PutUint16(b[16:18], uint16(n-14))
				b[24], b[25] = 0, 0
				binary.BigEndian.PutUint16(b[24:26], packet.Checksum(b[14:34]))
			}
		case packet.EtherIPv6:
			if n >= 14+40 {
				binary.BigEndian.PutUint16(b[18:20], uint16(n-54))
			}
		}
		return b
	}
	mod := func(frame []byte, off int, val byte) []byte {
		b := append([]byte(nil), frame...)
		b[off] = val
		return b
	}
	drop := func(name string, in []byte) fromPodCase {
		return fromPodCase{name: "malformed: " + name, in: in, want: tcShot, reason: maps.ReasonMalformed}
	}
	// claim makes the IP length fields end the datagram at n while the frame goes on, as
	// Ethernet padding does: what lies past the datagram is no part of the packet, and an L4
	// header there is as good as cut (found by the fuzzer, which compares with package model).
	claim := func(frame []byte, n int) []byte {
		return append(cut(frame, n), frame[n:]...)
	}
	hbh := v6(packet.IPv6{Next: 0}, append([]byte{packet.ProtoUDP, 0, 1, 4, 0, 0, 0, 0}, packet.UDP(1, 2, nil)...))
	// BPF_PROG_TEST_RUN refuses frames whose L3 header is cut short, so those cases are
	// covered by the length-field corruptions below instead.
	return []fromPodCase{
		drop("ipv4 ihl below 5", mod(tcp, 14, 0x44)),
		drop("ipv4 ihl beyond packet", mod(cut(tcp, 14+20), 14, 0x4f)),
		drop("ipv4 total length beyond packet", mod(tcp, 16, 0x05)),
		drop("ipv4 version 6 in ipv4 frame", mod(tcp, 14, 0x65)),
		drop("tcp header cut", cut(tcp, 14+20+12)),
		drop("tcp data offset beyond packet", mod(tcp, 14+20+12, 0xf0)),
		drop("tcp data offset below 5", mod(tcp, 14+20+12, 0x30)),
		drop("udp header cut", cut(udp, 14+20+4)),
		drop("icmp header cut", cut(icmp, 14+20+4)),
		drop("sctp header cut", cut(sctp, 14+20+8)),
		drop("ipv6 payload length beyond packet", mod(udp6, 14+4, 0x10)),
		drop("ipv6 udp header cut", cut(udp6, 14+40+4)),
		drop("arp body cut", arp[:14+20]),
		drop("udp header past the ipv4 total length", claim(udp, 14+20+4)),
		drop("tcp header past the ipv4 total length", claim(tcp, 14+20+12)),
		drop("tcp data offset past the ipv4 total length", append(mod(tcp, 14+20+12, 0x60), 0, 0, 0, 0)),
		drop("icmp header past the ipv4 total length", claim(icmp, 14+20+4)),
		drop("sctp header past the ipv4 total length", claim(sctp, 14+20+8)),
		drop("ipv6 udp header past the payload length", claim(udp6, 14+40+4)),
		drop("ipv6 extension header past the payload length", claim(hbh, 14+40+4)),
	}
}

func runFromPod(t *testing.T, dp *loader.Datapath, cases []fromPodCase) {
	t.Helper()
	mt := dp.Metrics()
	var table []progtest.Case
	for _, c := range cases {
		var before uint64
		table = append(table, progtest.Case{
			Name: c.name, In: c.in, Want: c.want,
			Before: func(tb testing.TB) { before = counted(tb, mt, c.reason, maps.DirFromPod) },
			Check: func(tb testing.TB, out []byte) {
				if got := counted(tb, mt, c.reason, maps.DirFromPod) - before; got != 1 {
					tb.Errorf("counted %d under %s, want 1", got, maps.ReasonName(c.reason))
				}
				if c.check != nil {
					c.check(tb, out)
				}
			},
		})
	}
	progtest.RunTable(t, dp.FromPod, table)
}

func counted(tb testing.TB, mt *maps.Metrics, r maps.Reason, d maps.Direction) uint64 {
	tb.Helper()
	c, err := mt.Get(r, d)
	if err != nil {
		tb.Fatal(err)
	}
	return c.Packets
}

// deliveredToB checks the L2 rewrite towards pod B, the decremented TTL and the IPv4 checksum.
func deliveredToB(wantTTL uint8) func(t testing.TB, out []byte) {
	return func(t testing.TB, out []byte) {
		if !bytes.Equal(out[0:6], macB) || !bytes.Equal(out[6:12], nodeMacB) {
			t.Errorf("L2 %s <- %s, want %s <- %s", net.HardwareAddr(out[0:6]), net.HardwareAddr(out[6:12]), macB, nodeMacB)
		}
		switch binary.BigEndian.Uint16(out[12:14]) {
		case packet.EtherIPv4:
			ihl := int(out[14]&0x0f) * 4
			if out[14+8] != wantTTL {
				t.Errorf("TTL %d, want %d", out[14+8], wantTTL)
			}
			if packet.Checksum(out[14:14+ihl]) != 0 {
				t.Errorf("IPv4 header checksum invalid after TTL decrement")
			}
		case packet.EtherIPv6:
			if out[14+7] != wantTTL {
				t.Errorf("hop limit %d, want %d", out[14+7], wantTTL)
			}
		}
	}
}

func TestToPodDeliversAndCounts(t *testing.T) {
	dp := loadUnpinned(t)
	mt := dp.Metrics()
	before := counted(t, mt, maps.ReasonDeliver, maps.DirToPod)
	pkt := v4(packet.IPv4{Proto: packet.ProtoTCP, Src: ipUnknown, Dst: ipA}, packet.TCP(1, 80))
	if got, _ := progtest.MustRun(t, dp.ToPod, pkt); got != tcOK {
		t.Fatalf("verdict %d, want %d", got, tcOK)
	}
	if got := counted(t, mt, maps.ReasonDeliver, maps.DirToPod) - before; got != 1 {
		t.Fatalf("counted %d, want 1", got)
	}
}

func TestPrefilterDropsDeniedSources(t *testing.T) {
	dp := loadUnpinned(t)
	if err := maps.NewPrefilter(dp.DatapathMaps.Prefilter).Add(netip.MustParsePrefix("10.66.0.0/24")); err != nil {
		t.Fatal(err)
	}
	mt := dp.Metrics()
	denied := v4(packet.IPv4{Proto: packet.ProtoUDP, Src: netip.MustParseAddr("10.66.0.7")}, packet.UDP(1, 2, nil))
	allowed := v4(packet.IPv4{Proto: packet.ProtoUDP, Src: netip.MustParseAddr("10.66.1.7")}, packet.UDP(1, 2, nil))
	progtest.RunTable(t, dp.XdpPrefilter, []progtest.Case{
		{Name: "denied source", In: denied, Want: xdpDrop, Check: func(tb testing.TB, _ []byte) {
			if counted(tb, mt, maps.ReasonPrefilter, maps.DirPrefilter) != 1 {
				tb.Error("prefilter drop not counted")
			}
		}},
		{Name: "other source", In: allowed, Want: xdpPass},
		{Name: "ipv6", In: v6(packet.IPv6{Next: packet.ProtoUDP}, packet.UDP(1, 2, nil)), Want: xdpPass},
	})
}

// The Go mirrors must not drift from the C definitions.
func TestGoMirrorsMatchC(t *testing.T) {
	spec, err := bpf.LoadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	var cMaps []string
	for name, m := range spec.Maps {
		if m.Pinning == ebpf.PinByName {
			cMaps = append(cMaps, name)
		}
	}
	goMaps := append([]string(nil), maps.Names...)
	sort.Strings(cMaps)
	sort.Strings(goMaps)
	if !equal(cMaps, goMaps) {
		t.Errorf("C pins maps %v, Go knows %v", cMaps, goMaps)
	}
	var reason *btf.Enum
	if err := spec.Types.TypeByName("reason", &reason); err != nil {
		t.Fatal(err)
	}
	for _, v := range reason.Values {
		if v.Name == "REASON_UNSPEC" || v.Name == "REASON_DROP_FIRST" {
			continue
		}
		if _, ok := maps.ReasonNames[maps.Reason(v.Value)]; !ok {
			t.Errorf("C reason %s (%d) has no name in Go", v.Name, v.Value)
		}
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
