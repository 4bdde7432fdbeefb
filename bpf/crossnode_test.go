package bpf_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
	"github.com/ebpfnet/ebpfnet/testkit/progtest"
)

var (
	nodeIP   = netip.MustParseAddr("10.250.0.1")
	peerIP   = netip.MustParseAddr("10.250.0.2")
	ipLocal  = netip.MustParseAddr("10.244.0.10") // a pod on this node
	ipRemote = netip.MustParseAddr("10.244.1.5")  // a pod on the VXLAN peer
)

// loadCrossNode is a node with pod CIDR 10.244.0.0/24 in cluster 10.244.0.0/16 whose peer
// owns 10.244.1.0/24.
func loadCrossNode(t *testing.T, mode maps.Mode) *loader.Datapath {
	dp := loadUnpinned(t)
	if err := dp.Endpoints().Upsert(maps.Endpoint{IP: ipLocal, Ifindex: testRunIfindex, ID: 9, Identity: 77, Local: true,
		MAC: macA, NodeMAC: nodeMacA}); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetNodeConfig(maps.NodeConfig{NodeIP: nodeIP, UnderlayIfindex: testRunIfindex, TunnelIfindex: testRunIfindex, Mode: mode}); err != nil {
		t.Fatal(err)
	}
	// The peer node is a node, as the agent's ipcache says: only nodes' VXLAN is decapsulated.
	if err := dp.IPCache().Upsert(maps.IPCacheEntry{Prefix: netip.PrefixFrom(peerIP, 32), Identity: maps.IdentityRemoteNode}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []maps.Route{
		{Prefix: netip.MustParsePrefix("10.244.0.0/16"), Flags: maps.RouteUnreachable},
		{Prefix: netip.MustParsePrefix("10.244.0.0/24"), NodeIP: nodeIP, Mode: mode, Flags: maps.RouteLocal},
		{Prefix: netip.MustParsePrefix("10.244.1.0/24"), NodeIP: peerIP, Mode: mode},
	} {
		if err := dp.Routes().Upsert(r); err != nil {
			t.Fatal(err)
		}
	}
	return dp
}

func TestFromPodCrossNode(t *testing.T) {
	dp := loadCrossNode(t, maps.ModeVXLAN)
	from := func(dst string) []byte {
		return v4(packet.IPv4{Src: ipLocal, Dst: netip.MustParseAddr(dst), Proto: packet.ProtoTCP}, packet.TCP(1000, 80))
	}
	runFromPod(t, dp, []fromPodCase{
		{name: "pod on the vxlan peer is tunnelled", in: from(ipRemote.String()), want: tcRedirect, reason: maps.ReasonForwardTunnel,
			check: func(t testing.TB, out []byte) {
				if out[14+8] != 63 {
					t.Errorf("TTL %d, want 63", out[14+8])
				}
			}},
		{name: "free address in this node's pod cidr", in: from("10.244.0.99"), want: tcShot, reason: maps.ReasonUnknownDest},
		{name: "cluster cidr without an owner", in: from("10.244.77.1"), want: tcShot, reason: maps.ReasonUnknownDest},
		{name: "outside the cluster goes to the stack", in: from("192.0.2.1"), want: tcOK, reason: maps.ReasonForwardHost},
		{name: "ttl 1 to a remote pod", in: v4(packet.IPv4{Src: ipLocal, Dst: ipRemote, Proto: packet.ProtoUDP, TTL: 1}, packet.UDP(1, 2, nil)),
			want: tcShot, reason: maps.ReasonTTLExceeded},
	})
}

// ipipFrame is eth + outer IPv4 (proto 4) + inner, as the peer sends it.
func ipipFrame(outerDst netip.Addr, inner []byte) []byte {
	outer := packet.IPv4{Src: peerIP, Dst: outerDst, Proto: 4}.Marshal(inner)
	return packet.Eth(nodeMacA, macB, packet.EtherIPv4, outer)
}

func TestFromUnderlay(t *testing.T) {
	dp := loadCrossNode(t, maps.ModeIPIP)
	inner := packet.IPv4{Src: ipRemote, Dst: ipLocal, Proto: packet.ProtoTCP, TTL: 63}.Marshal(packet.TCP(1000, 80))
	mt := dp.Metrics()
	cases := []struct {
		name   string
		in     []byte
		want   uint32
		reason maps.Reason
		check  func(t testing.TB, out []byte)
	}{
		{"ip-in-ip for a local pod is decapsulated and delivered", ipipFrame(nodeIP, inner), tcRedirect, maps.ReasonForwardLocal,
			func(t testing.TB, out []byte) {
				if !bytes.Equal(out[14:], inner) {
					t.Errorf("inner packet changed or outer header left:\n got %x\nwant %x", out[14:], inner)
				}
				if !bytes.Equal(out[0:6], macA) || !bytes.Equal(out[6:12], nodeMacA) {
					t.Errorf("L2 not rewritten for the pod")
				}
			}},
		{"ip-in-ip for another node is left to the stack", ipipFrame(netip.MustParseAddr("10.250.0.9"), inner), tcOK, maps.ReasonForwardHost, nil},
		{"native pod traffic is delivered", packet.Eth(nodeMacA, macB, packet.EtherIPv4, inner), tcRedirect, maps.ReasonForwardLocal, nil},
		{"traffic for the node itself is left to the stack",
			packet.Eth(nodeMacA, macB, packet.EtherIPv4, packet.IPv4{Src: peerIP, Dst: nodeIP, Proto: packet.ProtoUDP}.Marshal(packet.UDP(1, 2, nil))),
			tcOK, maps.ReasonForwardHost, nil},
		// Found by the fuzzer (package fuzz): the outer header used to be taken as 20 bytes, and
		// fragments decapsulated one by one.
		{"ip-in-ip with outer options is decapsulated whole", packet.Eth(nodeMacA, macB, packet.EtherIPv4,
			packet.IPv4{Src: peerIP, Dst: nodeIP, Proto: 4, Options: []byte{1, 1, 1, 0}}.Marshal(inner)), tcRedirect, maps.ReasonForwardLocal,
			func(t testing.TB, out []byte) {
				if !bytes.Equal(out[14:], inner) {
					t.Errorf("inner packet changed or outer header left:\n got %x\nwant %x", out[14:], inner)
				}
			}},
		{"first fragment of ip-in-ip is left to the stack", packet.Eth(nodeMacA, macB, packet.EtherIPv4,
			packet.IPv4{Src: peerIP, Dst: nodeIP, Proto: 4, MoreFrags: true}.Marshal(inner[:24])), tcOK, maps.ReasonForwardHost, nil},
		{"later fragment of ip-in-ip is left to the stack", packet.Eth(nodeMacA, macB, packet.EtherIPv4,
			packet.IPv4{Src: peerIP, Dst: nodeIP, Proto: 4, FragOff: 3}.Marshal(inner[24:])), tcOK, maps.ReasonForwardHost, nil},
		{"ip-in-ip for a pod that is not here is dropped",
			ipipFrame(nodeIP, packet.IPv4{Src: ipRemote, Dst: netip.MustParseAddr("10.244.0.99"), Proto: packet.ProtoUDP}.Marshal(packet.UDP(1, 2, nil))),
			tcShot, maps.ReasonUnknownDest, nil},
	}
	var table []progtest.Case
	for _, c := range cases {
		var before uint64
		table = append(table, progtest.Case{Name: c.name, In: c.in, Want: c.want,
			Before: func(tb testing.TB) { before = counted(tb, mt, c.reason, maps.DirFromUnderlay) },
			Check: func(tb testing.TB, out []byte) {
				if got := counted(tb, mt, c.reason, maps.DirFromUnderlay) - before; got != 1 {
					tb.Errorf("counted %d under %s, want 1", got, maps.ReasonName(c.reason))
				}
				if c.check != nil {
					c.check(tb, out)
				}
			}})
	}
	progtest.RunTable(t, dp.FromUnderlay, table)
}

func TestFromOverlay(t *testing.T) {
	dp := loadCrossNode(t, maps.ModeVXLAN)
	frame := func(dst netip.Addr) []byte {
		return packet.Eth(packet.MAC("02:99:99:99:99:99"), macB, packet.EtherIPv4,
			packet.IPv4{Src: ipRemote, Dst: dst, Proto: packet.ProtoUDP, TTL: 63}.Marshal(packet.UDP(1, 2, nil)))
	}
	progtest.RunTable(t, dp.FromOverlay, []progtest.Case{
		{Name: "decapsulated frame for a local pod", In: frame(ipLocal), Want: tcRedirect, Check: func(tb testing.TB, out []byte) {
			if !bytes.Equal(out[0:6], macA) {
				tb.Errorf("dst MAC %x, want the pod's", out[0:6])
			}
			if out[14+8] != 63 {
				tb.Errorf("TTL changed on receive: %d", out[14+8])
			}
		}},
		{Name: "frame for no local pod", In: frame(netip.MustParseAddr("10.244.0.99")), Want: tcShot},
		{Name: "arp on the overlay goes to the stack", In: packet.Eth(packet.MAC("ff:ff:ff:ff:ff:ff"), macB, packet.EtherARP,
			packet.ARP(1, macB, ipRemote, make([]byte, 6), ipLocal)), Want: tcOK},
	})
}
