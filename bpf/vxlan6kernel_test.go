package bpf_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// The kernel's own VXLAN over IPv6, with default settings (a UDP checksum sent and required:
// no udp6zerocsumrx), talks to a pod behind ebpfnet's programs: a node namespace with the
// datapath attached (from_pod on the pod's veth, from_underlay on the underlay, from_overlay
// on its collect-metadata VXLAN device), and a namespace on the same IPv6 link whose VXLAN
// device (VNI 42, remote the node's IPv6 address) holds 10.99.0.1 and knows the pod's address
// at the node's tunnel MAC. The pod's identity is 42, so the kernel's VNI is the pod's.
func TestVXLAN6WithTheKernel(t *testing.T) {
	const (
		vni      = 42
		port     = testVXLANPort
		podMTU   = 1500 - maps.VXLANOverheadIPv6
		bulkSize = 4 << 20
	)
	kernelHost := netip.MustParseAddr("10.99.0.1")
	node, kern, pod := nstest.New(t, "v6node"), nstest.New(t, "v6kern"), nstest.New(t, "v6pod")

	// The IPv6 link between the node and the kernel's namespace.
	under, _ := nstest.Veth(t, node, "underlay", kern, "eth0")
	for _, s := range []struct {
		ns   *nstest.NS
		dev  string
		addr netip.Addr
	}{{node, "underlay", nodeIP6}, {kern, "eth0", peerIP6}} {
		s.ns.Sysctl(t, "ipv6/conf/"+s.dev+"/disable_ipv6", "0")
		l, err := s.ns.NL.LinkByName(s.dev)
		must(t, err)
		must(t, s.ns.NL.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: s.addr.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}))
	}
	node.Sysctl(t, "ipv6/conf/underlay/forwarding", "1") // bpf_fib_lookup wants it

	// The pod: a /32 and a default route via a gateway that is only a neighbour entry.
	podEth, lxc := nstest.Veth(t, pod, "eth0", node, "lxc")
	pl, err := pod.NL.LinkByName("eth0")
	must(t, err)
	must(t, pod.NL.LinkSetMTU(pl, podMTU))
	must(t, pod.NL.AddrAdd(pl, &netlink.Addr{IPNet: &net.IPNet{IP: ipLocal.AsSlice(), Mask: net.CIDRMask(32, 32)}}))
	gw := net.ParseIP("169.254.1.1")
	must(t, pod.NL.NeighAdd(&netlink.Neigh{LinkIndex: pl.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: gw, HardwareAddr: lxc.Attrs().HardwareAddr}))
	must(t, pod.NL.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: gw, Flags: int(netlink.FLAG_ONLINK)}))

	// The node's collect-metadata VXLAN device, which BPF falls back to, and which takes VXLAN
	// when the node config names no port.
	node.Run(t, "ip", "link", "add", "vxn0", "mtu", strconv.Itoa(podMTU), "type", "vxlan", "external", "dstport", strconv.Itoa(port))
	node.Run(t, "ip", "link", "set", "vxn0", "up")
	vxn, err := node.NL.LinkByName("vxn0")
	must(t, err)

	// The kernel's side.
	kern.Run(t, "ip", "link", "add", "kvx0", "address", "0e:00:00:00:00:02", "mtu", strconv.Itoa(podMTU), "type", "vxlan",
		"id", strconv.Itoa(vni), "remote", nodeIP6.String(), "local", peerIP6.String(), "dstport", strconv.Itoa(port))
	kern.Sysctl(t, "ipv6/conf/kvx0/disable_ipv6", "1") // only the test's packets in its counters
	kern.Run(t, "ip", "link", "set", "kvx0", "up")
	kern.Run(t, "ip", "addr", "add", kernelHost.String()+"/24", "dev", "kvx0")
	kern.Run(t, "ip", "route", "add", "10.244.0.0/24", "dev", "kvx0")
	kern.Run(t, "ip", "neigh", "add", ipLocal.String(), "lladdr", "0e:00:00:00:00:01", "dev", "kvx0", "nud", "permanent")

	// The datapath, as an agent would fill it.
	dp, err := loader.Load(loader.Config{Unpinned: true})
	must(t, err)
	t.Cleanup(func() { dp.Close() })
	cfg := maps.NodeConfig{NodeIP: nodeIP, NodeIPv6: nodeIP6, UnderlayIfindex: uint32(under.Attrs().Index),
		TunnelIfindex: uint32(vxn.Attrs().Index), Mode: maps.ModeVXLAN, VXLANPort: port}
	must(t, dp.SetNodeConfig(cfg))
	must(t, dp.Endpoints().Upsert(maps.Endpoint{IP: ipLocal, Ifindex: uint32(lxc.Attrs().Index), ID: 9, Identity: vni, Local: true,
		MAC: podEth.Attrs().HardwareAddr, NodeMAC: lxc.Attrs().HardwareAddr}))
	for _, r := range []maps.Route{
		{Prefix: netip.MustParsePrefix("10.244.0.0/24"), NodeIP: nodeIP, Mode: maps.ModeVXLAN, Flags: maps.RouteLocal},
		{Prefix: netip.MustParsePrefix("10.99.0.0/24"), NodeIP: peerIP6, Mode: maps.ModeVXLAN},
	} {
		must(t, dp.Routes().Upsert(r))
	}
	must(t, dp.IPCache().Upsert(maps.IPCacheEntry{Prefix: netip.PrefixFrom(peerIP6, 128), Identity: maps.IdentityRemoteNode}))
	for _, a := range []struct {
		prog *ebpf.Program
		dev  netlink.Link
	}{{dp.FromPod, lxc}, {dp.FromUnderlay, under}, {dp.FromOverlay, vxn}} {
		node.Do(t, func() error {
			l, err := link.AttachTCX(link.TCXOptions{Interface: a.dev.Attrs().Index, Program: a.prog, Attach: ebpf.AttachTCXIngress})
			if err == nil {
				t.Cleanup(func() { l.Close() })
			}
			return err
		})
	}

	// The kernel's side serves TCP: it reads what a connection sends and answers with the
	// count.
	var ln net.Listener
	kern.Do(t, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(kernelHost, 5001).String())
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go countBytes(ln)
	// And the pod serves the same to the kernel's side.
	var podLn net.Listener
	pod.Do(t, func() (err error) {
		podLn, err = net.Listen("tcp4", netip.AddrPortFrom(ipLocal, 5002).String())
		return err
	})
	t.Cleanup(func() { podLn.Close() })
	go countBytes(podLn)
	// bulkTo sends bulkSize bytes from ns to to's byte counter (who names it) and checks its count.
	bulkTo := func(tb *testing.T, ns *nstest.NS, to netip.AddrPort, who string) {
		tb.Helper()
		var c net.Conn
		ns.Do(tb, func() (err error) {
			c, err = (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp4", to.String())
			return err
		})
		defer c.Close()
		must(tb, c.SetDeadline(time.Now().Add(30*time.Second)))
		if _, err := io.Copy(c, bytes.NewReader(make([]byte, bulkSize))); err != nil {
			tb.Fatalf("send %d bytes to %s: %v", bulkSize, who, err)
		}
		must(tb, c.(*net.TCPConn).CloseWrite())
		got, err := io.ReadAll(c)
		if err != nil || string(got) != strconv.Itoa(bulkSize) {
			tb.Fatalf("%s counted %q (%v), want %d bytes", who, got, err, bulkSize)
		}
	}
	bulk := func(tb *testing.T) { bulkTo(tb, pod, netip.AddrPortFrom(kernelHost, 5001), "the kernel's side") }
	bulkIn := func(tb *testing.T) { bulkTo(tb, kern, netip.AddrPortFrom(ipLocal, 5002), "the pod") }
	ping := func(tb *testing.T) {
		tb.Helper()
		nstest.Eventually(tb, 10*time.Second, "a ping from the pod to the kernel's VXLAN address", func() (bool, string) {
			out, err := pod.Command("ping", "-c", "1", "-W", "1", kernelHost.String()).CombinedOutput()
			return err == nil, string(out)
		})
	}
	check := func(tb testing.TB, want string) {
		tb.Helper()
		kv := linkStats(tb, kern, "kvx0")
		if kv.rx == 0 || kv.tx == 0 {
			tb.Errorf("kvx0 received %d and sent %d packets, want both", kv.rx, kv.tx)
		}
		if errs := snmp6(tb, kern, "Udp6InCsumErrors"); errs != 0 {
			tb.Errorf("the kernel's side counted %d UDP checksum errors", errs)
		}
		tb.Logf("%s: kvx0 rx %d tx %d; vxn0 (the node's device) rx %d tx %d", want, kv.rx, kv.tx,
			linkStats(tb, node, "vxn0").rx, linkStats(tb, node, "vxn0").tx)
	}

	t.Run("encapsulated and decapsulated in bpf", func(t *testing.T) {
		// (The node's device may have taken what kvx0 sent before the programs were attached.)
		before, kvBefore := linkStats(t, node, "vxn0"), linkStats(t, kern, "kvx0")
		ping(t)
		if after := linkStats(t, node, "vxn0"); after != before {
			t.Errorf("the node's device carried pings: %+v then %+v; BPF should have", before, after)
		}
		// Bulk TCP: GSO packets go through the device (BPF could not sum each segment), the
		// rest (the handshake, ACKs: CHECKSUM_PARTIAL from the pod's veth) BPF encapsulates;
		// all that comes back BPF decapsulates.
		before = linkStats(t, node, "vxn0")
		bulk(t)
		// The other way: the kernel's VXLAN device sends GSO packets, which the veth hands
		// over whole, and BPF decapsulates them whole (UDP_TUNNEL_CSUM superpackets).
		in0, err := dp.Metrics().Get(maps.ReasonForwardLocal, maps.DirFromOverlay)
		must(t, err)
		bulkIn(t)
		in1, err := dp.Metrics().Get(maps.ReasonForwardLocal, maps.DirFromOverlay)
		must(t, err)
		if n := in1.Packets - in0.Packets; n == 0 || (in1.Bytes-in0.Bytes)/n < 2*podMTU {
			t.Errorf("decapsulated to the pod: %d packets, %d bytes; want GSO packets", n, in1.Bytes-in0.Bytes)
		}
		after, kv := linkStats(t, node, "vxn0"), linkStats(t, kern, "kvx0")
		if after.rx != before.rx {
			t.Errorf("the node's device received %d packets, want BPF to decapsulate all", after.rx-before.rx)
		}
		if byBPF := (kv.rx - kvBefore.rx) - (after.tx - before.tx); byBPF == 0 {
			t.Errorf("kvx0 received %d packets, all through the node's device: none from BPF", kv.rx-kvBefore.rx)
		}
		check(t, "bpf")
	})
	t.Run("through the node's vxlan device", func(t *testing.T) {
		cfg.VXLANPort = 0
		must(t, dp.SetNodeConfig(cfg))
		before := linkStats(t, node, "vxn0")
		ping(t)
		bulk(t)
		bulkIn(t)
		after := linkStats(t, node, "vxn0")
		if after.tx == before.tx || after.rx == before.rx {
			t.Errorf("the node's device carried %+v then %+v: both ways should have gone through it", before, after)
		}
		check(t, "device")
	})
}

type counters struct{ rx, tx uint64 }

// linkStats reads a device's packet counters in a namespace.
func linkStats(tb testing.TB, ns *nstest.NS, dev string) counters {
	tb.Helper()
	var links []struct {
		Stats struct {
			RX struct{ Packets uint64 } `json:"rx"`
			TX struct{ Packets uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	out := ns.Run(tb, "ip", "-s", "-j", "link", "show", dev)
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		tb.Fatalf("ip -s -j link show %s: %v: %s", dev, err, out)
	}
	return counters{links[0].Stats.RX.Packets, links[0].Stats.TX.Packets}
}

// snmp6 reads one counter of /proc/net/snmp6 in a namespace.
func snmp6(tb testing.TB, ns *nstest.NS, name string) uint64 {
	tb.Helper()
	var b []byte
	ns.Do(tb, func() (err error) {
		b, err = os.ReadFile("/proc/thread-self/net/snmp6") // the namespace of this thread, not the process
		return err
	})
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseUint(f[1], 10, 64)
			return v
		}
	}
	tb.Fatalf("no %s in /proc/net/snmp6", name)
	return 0
}

// countBytes answers every connection on ln, until ln closes, with the number of bytes it
// sent before closing its side.
func countBytes(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			fmt.Fprint(c, n)
		}()
	}
}
