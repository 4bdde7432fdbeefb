package bpf_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// VXLAN in BPF: the node config names VXLAN's port, so from_pod adds the headers itself and
// from_underlay strips them. The expected bytes are RFC 7348's, written out here.

const testVXLANPort = 8472

// vxlanFrame is what the peer sends over the underlay: outer Ethernet, IPv4 and UDP to
// dport, VXLAN with flags and vni, and the inner Ethernet frame carrying inner.
func vxlanFrame(dst netip.Addr, dport uint16, flags byte, vni uint32, innerType uint16, inner []byte) []byte {
	return vxlanFrameFrom(peerIP, dst, dport, flags, vni, innerType, inner)
}

// vxlanFrameFrom is vxlanFrame sent from src.
func vxlanFrameFrom(src, dst netip.Addr, dport uint16, flags byte, vni uint32, innerType uint16, inner []byte) []byte {
	hdr := make([]byte, 8)
	hdr[0] = flags
	binary.BigEndian.PutUint32(hdr[4:], vni<<8)
	payload := append(hdr, packet.Eth(packet.MAC("0e:00:0a:fa:00:01"), packet.MAC("0e:00:0a:fa:00:02"), innerType, inner)...)
	outer := packet.IPv4{Src: src, Dst: dst, Proto: packet.ProtoUDP}.Marshal(packet.UDP(51234, dport, payload))
	return packet.Eth(underlayMAC, gatewayMAC, packet.EtherIPv4, outer)
}

// runIn runs prog on in inside the node's namespace and returns its verdict, the packet as it
// left, and what was counted in dir.
func (n *svcNode) runIn(tb testing.TB, prog *ebpf.Program, dir maps.Direction, in []byte) (uint32, []byte, map[maps.Reason]uint64) {
	tb.Helper()
	before := n.counts(tb, dir)
	opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
	var ret uint32
	n.ns.Do(tb, func() (err error) {
		ret, err = prog.Run(opts)
		return err
	})
	counted := map[maps.Reason]uint64{}
	for r, c := range n.counts(tb, dir) {
		if d := c - before[r]; d != 0 {
			counted[r] = d
		}
	}
	return ret, opts.DataOut, counted
}

func wantCounted(tb testing.TB, got map[maps.Reason]uint64, r maps.Reason) {
	tb.Helper()
	if len(got) != 1 || got[r] != 1 {
		tb.Fatalf("counted %v, want 1 under %s", got, maps.ReasonName(r))
	}
}

func TestVXLANEncapsulatedInBPF(t *testing.T) {
	n := loadSvcNode(t)
	n.configure(t, func(c *maps.NodeConfig) { c.VXLANPort = testVXLANPort })
	// The peer is on the underlay's subnet; its neighbour entry gives the outer MACs.
	peerMAC := packet.MAC("02:00:00:00:fe:02")
	link, err := n.ns.NL.LinkByName("underlay")
	must(t, err)
	must(t, n.ns.NL.NeighAdd(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: netlink.FAMILY_V4,
		State: netlink.NUD_PERMANENT, IP: peerIP.AsSlice(), HardwareAddr: peerMAC}))
	innerIn := packet.IPv4{Src: ipLocal, Dst: ipRemote, Proto: packet.ProtoTCP}.Marshal(packet.TCP(1000, 80))
	in := packet.Eth(nodeMacA, macA, packet.EtherIPv4, innerIn)
	ret, out, counted := n.runIn(t, n.FromPod, maps.DirFromPod, in)
	if ret != tcRedirect {
		t.Fatalf("verdict %d, want redirect", ret)
	}
	wantCounted(t, counted, maps.ReasonForwardTunnel)
	if len(out) != len(in)+50 {
		t.Fatalf("%d bytes out, want %d (50 of VXLAN)", len(out), len(in)+50)
	}
	// Outer Ethernet: to the peer, from the underlay device.
	if !bytes.Equal(out[0:6], peerMAC) || !bytes.Equal(out[6:12], underlayMAC) || binary.BigEndian.Uint16(out[12:]) != packet.EtherIPv4 {
		t.Errorf("outer Ethernet %x", out[:14])
	}
	ip := out[14:34]
	if ip[0] != 0x45 || int(binary.BigEndian.Uint16(ip[2:])) != len(out)-14 || binary.BigEndian.Uint16(ip[6:])&0x4000 == 0 ||
		ip[8] != 64 || ip[9] != packet.ProtoUDP || packet.Checksum(ip) != 0 {
		t.Errorf("outer IPv4 header %x: want version 4, length %d, DF, TTL 64, UDP, a valid checksum", ip, len(out)-14)
	}
	if netip.AddrFrom4([4]byte(ip[12:16])) != nodeIP || netip.AddrFrom4([4]byte(ip[16:20])) != peerIP {
		t.Errorf("outer addresses %v -> %v, want %s -> %s", ip[12:16], ip[16:20], nodeIP, peerIP)
	}
	udp := out[34:42]
	if sport := binary.BigEndian.Uint16(udp[0:]); sport < 0xc000 {
		t.Errorf("UDP source port %d, want one of the ephemeral range", sport)
	}
	if binary.BigEndian.Uint16(udp[2:]) != testVXLANPort || int(binary.BigEndian.Uint16(udp[4:])) != len(out)-34 {
		t.Errorf("UDP header %x: want port %d, length %d", udp, testVXLANPort, len(out)-34)
	}
	vx := out[42:50]
	if vx[0] != 0x08 || binary.BigEndian.Uint32(vx[4:])>>8 != 77 || vx[7] != 0 {
		t.Errorf("VXLAN header %x: want the I flag and VNI 77, the sender's identity", vx)
	}
	if !bytes.Equal(out[50:56], packet.MAC("0e:00:0a:fa:00:02")) || !bytes.Equal(out[56:62], packet.MAC("0e:00:0a:fa:00:01")) ||
		binary.BigEndian.Uint16(out[62:]) != packet.EtherIPv4 {
		t.Errorf("inner Ethernet %x: want 0e:00 and the peer's address, from 0e:00 and the node's", out[50:64])
	}
	innerOut := out[64:]
	want := append([]byte(nil), innerIn...)
	want[8]-- // the TTL, and with it the checksum
	binary.BigEndian.PutUint16(want[10:], 0)
	binary.BigEndian.PutUint16(want[10:], packet.Checksum(want[:20]))
	if !bytes.Equal(innerOut, want) {
		t.Errorf("inner packet\n got %x\nwant %x", innerOut, want)
	}

	// The same packet with no VXLAN port configured takes the device, with a tunnel key.
	n.configure(t, func(c *maps.NodeConfig) { c.VXLANPort = 0 })
	ret, out, counted = n.runIn(t, n.FromPod, maps.DirFromPod, in)
	wantCounted(t, counted, maps.ReasonForwardTunnel)
	if ret != tcRedirect || len(out) != len(in) {
		t.Errorf("device path: verdict %d, %d bytes; want redirect, %d bytes (no headers added)", ret, len(out), len(in))
	}
}

func TestVXLANDecapsulatedInBPF(t *testing.T) {
	n := loadSvcNode(t)
	n.configure(t, func(c *maps.NodeConfig) { c.VXLANPort = testVXLANPort })
	// A pod taking TCP/80 only from identity 300.
	guarded, guardedMAC := netip.MustParseAddr("10.244.0.40"), packet.MAC("02:00:00:00:02:40")
	must(t, n.Endpoints().Upsert(maps.Endpoint{IP: guarded, Ifindex: testRunIfindex, ID: 40, Identity: 600, Local: true,
		IngressEnforced: true, MAC: guardedMAC, NodeMAC: nodeMacA}))
	must(t, n.Policy().Put(maps.PolicyEntry{Endpoint: 40, Peer: 300, Direction: maps.Ingress, Protocol: packet.ProtoTCP, Port: 80, PortBits: 16}))
	sport := uint16(1000) // each packet a flow of its own: conntrack must not answer for policy
	inner := func(dst netip.Addr) []byte {
		sport++
		return packet.IPv4{Src: ipRemote, Dst: dst, Proto: packet.ProtoTCP, TTL: 63}.Marshal(packet.TCP(sport, 80))
	}
	delivered := func(mac []byte, ip []byte) func(tb testing.TB, out []byte) {
		return func(tb testing.TB, out []byte) {
			if !bytes.Equal(out[14:], ip) {
				tb.Errorf("inner packet changed or outer headers left:\n got %x\nwant %x", out[14:], ip)
			}
			if !bytes.Equal(out[0:6], mac) || binary.BigEndian.Uint16(out[12:]) != packet.EtherIPv4 {
				tb.Errorf("Ethernet %x, want the pod's MAC and IPv4", out[:14])
			}
		}
	}
	toLocal, toGuarded := inner(ipLocal), inner(guarded)
	for _, c := range []struct {
		name   string
		in     []byte
		dir    maps.Direction
		want   uint32
		reason maps.Reason
		check  func(tb testing.TB, out []byte)
	}{
		{"vxlan for a local pod is decapsulated and delivered", vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherIPv4, toLocal),
			maps.DirFromOverlay, tcRedirect, maps.ReasonForwardLocal, delivered(macA, toLocal)},
		{"the vni is the sender's identity: one policy allows", vxlanFrame(nodeIP, testVXLANPort, 0x08, 300, packet.EtherIPv4, toGuarded),
			maps.DirFromOverlay, tcRedirect, maps.ReasonForwardLocal, delivered(guardedMAC, toGuarded)},
		{"the vni is the sender's identity: one policy does not allow", vxlanFrame(nodeIP, testVXLANPort, 0x08, 301, packet.EtherIPv4, inner(guarded)),
			maps.DirFromOverlay, tcShot, maps.ReasonPolicyIngress, nil},
		{"vxlan for a pod that is not here is dropped", vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherIPv4, inner(netip.MustParseAddr("10.244.0.99"))),
			maps.DirFromOverlay, tcShot, maps.ReasonUnknownDest, nil},
		{"vxlan without the I flag is left to the device", vxlanFrame(nodeIP, testVXLANPort, 0, 9, packet.EtherIPv4, inner(ipLocal)),
			maps.DirFromUnderlay, tcOK, maps.ReasonForwardHost, nil},
		{"vxlan carrying ARP is left to the device", vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherARP,
			packet.ARP(1, macB, ipRemote, make([]byte, 6), ipLocal)), maps.DirFromUnderlay, tcOK, maps.ReasonForwardHost, nil},
		{"vxlan for another node is not ours", vxlanFrame(netip.MustParseAddr("10.250.0.9"), testVXLANPort, 0x08, 9, packet.EtherIPv4, inner(ipLocal)),
			maps.DirFromUnderlay, tcOK, maps.ReasonForwardHost, nil},
		{"udp to the node on another port is the node's", vxlanFrame(nodeIP, 4789, 0x08, 9, packet.EtherIPv4, inner(ipLocal)),
			maps.DirFromUnderlay, tcOK, maps.ReasonForwardHost, nil},
		// Only nodes may claim an identity in the VNI: from anyone else VXLAN is spoofed, and
		// not left to the device either, which would trust its VNI.
		{"vxlan from an address that is no node is dropped", vxlanFrameFrom(netip.MustParseAddr("10.250.0.77"), nodeIP, testVXLANPort, 0x08, 300,
			packet.EtherIPv4, inner(guarded)), maps.DirFromUnderlay, tcShot, maps.ReasonSpoofedSource, nil},
		{"vxlan from a pod's address is dropped", vxlanFrameFrom(ipLocal, nodeIP, testVXLANPort, 0x08, 300,
			packet.EtherIPv4, inner(guarded)), maps.DirFromUnderlay, tcShot, maps.ReasonSpoofedSource, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			ret, out, counted := n.runIn(t, n.FromUnderlay, c.dir, c.in)
			if ret != c.want {
				t.Fatalf("verdict %d, want %d", ret, c.want)
			}
			wantCounted(t, counted, c.reason)
			if c.check != nil {
				c.check(t, out[:len(c.in)-50])
			}
		})
	}
	// A fragment of VXLAN is left to the stack, which reassembles it for the device.
	first := vxlanFrame(nodeIP, testVXLANPort, 0x08, 9, packet.EtherIPv4, inner(ipLocal))
	binary.BigEndian.PutUint16(first[14+6:], 0x2000) // more fragments
	binary.BigEndian.PutUint16(first[14+10:], 0)
	binary.BigEndian.PutUint16(first[14+10:], packet.Checksum(first[14:34]))
	ret, _, counted := n.runIn(t, n.FromUnderlay, maps.DirFromUnderlay, first)
	if ret != tcOK {
		t.Errorf("first fragment of vxlan: verdict %d, want to the stack", ret)
	}
	wantCounted(t, counted, maps.ReasonForwardHost)
}
