package test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/netlinksafe"
)

// dualStackLab is threeNodeLab with an IPv6 address for every pod, node3's pods serving a
// dual-stack Service.
func dualStackLab(mode string) *lab.Spec {
	s := threeNodeLab(mode)
	s.IPFamilies = []string{lab.FamilyIPv4, lab.FamilyIPv6}
	for i := range s.Pods {
		if s.Pods[i].Node == "node3" {
			s.Pods[i].Labels["role"] = "web"
		}
	}
	return s
}

// Acceptance (issue 20, first part): in vxlan, native and ipip mode a 3-node dual-stack lab gives every
// pod an address of each family, every pair reaches each other over both, IPv6 crosses the
// underlay the mode's way, and a pod can neither send from an IPv6 address it does not own nor
// answer neighbour discovery for one.
func TestDualStack(t *testing.T) {
	for _, mode := range []string{"vxlan", "native", "ipip"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			st := upLab(t, "d"+mode[:2], dualStackLab(mode))
			t.Run("addresses", func(t *testing.T) { checkDualStackAddresses(t, st) })
			t.Run("all pairs in both families", func(t *testing.T) { checkAllPairsEveryFamily(t, st) })
			t.Run("explain knows pods by their IPv6 addresses", func(t *testing.T) {
				dst, _ := st.Pod("x/p21")
				out, code := ebpfnet(t, "policy", "explain", "--lab", st.Name, "x/p11", dst.IPv6.String(), "--port", "80", "--protocol", "TCP")
				// A pod's side says which policies select it; a bare address's says it is not a pod.
				if want := "ingress of " + dst.IPv6.String() + ": no policy selects it"; code != 0 || !strings.Contains(out, want) {
					t.Fatalf("policy explain x/p11 %s (exit %d) does not take it for pod x/p21 (%q):\n%s", dst.IPv6, code, want, out)
				}
			})
			t.Run("IPv6 on the underlay", func(t *testing.T) { checkIPv6Underlay(t, st, mode) })
			if mode == "native" {
				t.Run("next hops kept resolved", func(t *testing.T) { checkManagedNeighbours(t, st) })
				t.Run("IPv6 prefilter", func(t *testing.T) { checkIPv6Prefilter(t, st) })
			}
			t.Run("dual-stack service", func(t *testing.T) { checkDualStackService(t, st) })
			t.Run("node ports in both families", func(t *testing.T) { checkDualStackNodePorts(t, st) })
			t.Run("masquerade in both families", func(t *testing.T) { checkDualStackMasquerade(t, st) })
			t.Run("the node over IPv6", func(t *testing.T) { checkNodeOverIPv6(t, st) })
			t.Run("spoofed IPv6 source", func(t *testing.T) { checkSpoofedIPv6(t, st) })
			t.Run("forged neighbour advertisement", func(t *testing.T) { checkForgedNA(t, st) })
		})
	}
}

// checkDualStackAddresses: each pod's addresses lie in its node's pod CIDRs, none is given
// twice, and the pod's eth0 holds its IPv6 address.
func checkDualStackAddresses(t *testing.T, st *lab.State) {
	cluster6 := netip.MustParsePrefix(st.ClusterCIDRv6)
	cidrs := map[netip.Prefix]string{}
	for _, n := range st.Nodes {
		if !n.PodCIDRv6.IsValid() || !cluster6.Contains(n.PodCIDRv6.Addr()) || n.PodCIDRv6.Bits() != 64 {
			t.Errorf("node %s has IPv6 pod CIDR %v, want a /64 of %s", n.Name, n.PodCIDRv6, cluster6)
		}
		if other, dup := cidrs[n.PodCIDRv6]; dup {
			t.Errorf("nodes %s and %s share the IPv6 pod CIDR %s", other, n.Name, n.PodCIDRv6)
		}
		cidrs[n.PodCIDRv6] = n.Name
	}
	seenIP := map[netip.Addr]string{}
	for _, p := range st.Pods {
		n, _ := st.Node(p.Node)
		if !n.PodCIDR.Contains(p.IP) || !p.IPv6.Is6() || !n.PodCIDRv6.Contains(p.IPv6) {
			t.Errorf("pod %s has %s and %s, want addresses in %s and %s", p.Key(), p.IP, p.IPv6, n.PodCIDR, n.PodCIDRv6)
		}
		for _, ip := range []netip.Addr{p.IP, p.IPv6} {
			if other, dup := seenIP[ip]; dup {
				t.Errorf("pods %s and %s share %s", other, p.Key(), ip)
			}
			seenIP[ip] = p.Key()
		}
		var have []netip.Addr
		err := namespace.Do(p.Netns, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V6)
			for _, a := range addrs {
				ip, _ := netip.AddrFromSlice(a.IP)
				have = append(have, ip)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, ip := range have {
			found = found || ip == p.IPv6
		}
		if !found {
			t.Errorf("pod %s's eth0 has %v, not its IPv6 address %s", p.Key(), have, p.IPv6)
		}
	}
	out, code := ebpfnet(t, "lab", "pods", "--name", st.Name, "-o", "json")
	var pods []struct {
		Namespace, Name string
		IPs             []string
	}
	if code != 0 || jsonUnmarshal(out, &pods) != nil || len(pods) != len(st.Pods) {
		t.Fatalf("lab pods -o json (exit %d): %s", code, out)
	}
	for _, p := range pods {
		want, _ := st.Pod(p.Namespace + "/" + p.Name)
		if fmt.Sprint(p.IPs) != fmt.Sprint([]string{want.IP.String(), want.IPv6.String()}) {
			t.Errorf("lab pods lists %s/%s with ips %v, want [%s %s]", p.Namespace, p.Name, p.IPs, want.IP, want.IPv6)
		}
	}
}

// checkIPv6Underlay captures on node1's underlay while node1's pod talks to node2's pod over
// IPv6: in VXLAN an IPv6 frame inside the VXLAN port's datagrams, in native mode the pods' own
// IPv6 packets, in ipip mode IPv6 inside IPv4 (protocol 41).
func checkIPv6Underlay(t *testing.T, st *lab.State, mode string) {
	src, _ := st.Pod("x/p11")
	dst, _ := st.Pod("x/p21")
	node, _ := st.Node("node1")
	// UDP header 8, VXLAN header 8, then the inner Ethernet type at 12.
	filter := fmt.Sprintf("udp port %d and udp[28:2] = 0x86dd", st.VXLANPort)
	switch mode {
	case "native":
		filter = fmt.Sprintf("ip6 and src host %s and dst host %s and tcp port 80", src.IPv6, dst.IPv6)
	case "ipip":
		filter = "ip proto 41" // 6in4
	}
	probe := func() { _ = st.ProbeFamily(src.Key(), dst.Key(), 80, "TCP", lab.FamilyIPv6) }
	if !seen(t, node.Netns, filter, probe) {
		t.Fatalf("no packet matching %q on node1's underlay", filter)
	}
}

// checkSpoofedIPv6: p11 sends from an IPv6 address it does not own to p21; every datagram is
// counted as spoofed on node1 and none arrives, while the same from p11's own address does.
func checkSpoofedIPv6(t *testing.T, st *lab.State) {
	src, _ := st.Pod("x/p11")
	dst, _ := st.Pod("x/p21")
	node, _ := st.Node("node1")
	spoofed := netip.MustParseAddr("fd00:99::99")
	err := namespace.Do(src.Netns, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: spoofed.AsSlice(), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD})
	})
	if err != nil {
		t.Fatal(err)
	}
	var rx *net.UDPConn
	err = namespace.Do(dst.Netns, func() (err error) {
		rx, err = net.ListenUDP("udp6", &net.UDPAddr{IP: dst.IPv6.AsSlice(), Port: 9100})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	send := func(from netip.Addr, n int) {
		err := namespace.Do(src.Netns, func() error {
			c, err := net.DialUDP("udp6", &net.UDPAddr{IP: from.AsSlice()}, &net.UDPAddr{IP: dst.IPv6.AsSlice(), Port: 9100})
			if err != nil {
				return err
			}
			defer c.Close()
			for i := 0; i < n; i++ {
				if _, err := c.Write([]byte("spoof")); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	spoofKey := key(maps.ReasonSpoofedSource, maps.DirFromPod)
	before := nodeCounters(t, node)[spoofKey]
	const sent = 50
	send(spoofed, sent)
	if got := nodeCounters(t, node)[spoofKey] - before; got != sent {
		t.Fatalf("node1's spoofed-source counter rose by %d, sent %d", got, sent)
	}
	// The same from p11's own address arrives: the reader sees what reaches it.
	send(src.IPv6, 1)
	if err := rx.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, from, err := rx.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("p21 got nothing from p11's own address: %v", err)
	}
	if got, _ := netip.AddrFromSlice(from.IP); got != src.IPv6 {
		t.Fatalf("p21's first datagram (%q) came from %s, want p11's %s: a spoofed one arrived", buf[:n], from.IP, src.IPv6)
	}
}

// checkForgedNA: p11 advertises neighbours to all nodes (ff02::1). For its own address the
// advertisement goes to the node, counted as such; for p12's address every one is counted as
// spoofed and dropped.
func checkForgedNA(t *testing.T, st *lab.State) {
	src, _ := st.Pod("x/p11")
	victim, _ := st.Pod("x/p12")
	node, _ := st.Node("node1")
	const sent = 20
	hostKey, spoofKey := key(maps.ReasonForwardHost, maps.DirFromPod), key(maps.ReasonSpoofedSource, maps.DirFromPod)
	before := nodeCounters(t, node)
	sendNA(t, src, src.IPv6, sent)
	after := nodeCounters(t, node)
	if got := after[hostKey] - before[hostKey]; got < sent {
		t.Fatalf("p11's %d advertisements of its own address: node1 passed %d to the host", sent, got)
	}
	if got := after[spoofKey] - before[spoofKey]; got != 0 {
		t.Fatalf("p11's advertisements of its own address: %d counted as spoofed", got)
	}
	sendNA(t, src, victim.IPv6, sent)
	if got := nodeCounters(t, node)[spoofKey] - after[spoofKey]; got != sent {
		t.Fatalf("p11's %d advertisements of p12's %s: %d counted as spoofed", sent, victim.IPv6, got)
	}
}

// sendNA sends n unsolicited Neighbor Advertisements (RFC 4861 4.4) for target from pod p's
// eth0 to all nodes, with p's MAC as the target link-layer address.
func sendNA(t *testing.T, p *lab.Pod, target netip.Addr, n int) {
	t.Helper()
	err := namespace.Do(p.Netns, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		// The kernel fills in the ICMPv6 checksum; neighbour discovery needs hop limit 255.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, l.Attrs().Index); err != nil {
			return err
		}
		msg := make([]byte, 32)
		msg[0] = 136                                    // Neighbor Advertisement
		binary.BigEndian.PutUint32(msg[4:], 0x20000000) // Override
		copy(msg[8:24], target.AsSlice())
		msg[24], msg[25] = 2, 1 // target link-layer address option, 8 bytes
		copy(msg[26:32], l.Attrs().HardwareAddr)
		to := &unix.SockaddrInet6{Addr: netip.MustParseAddr("ff02::1").As16(), ZoneId: uint32(l.Attrs().Index)}
		for i := 0; i < n; i++ {
			if err := unix.Sendto(fd, msg, 0, to); err != nil {
				return fmt.Errorf("send NA: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// checkDualStackService: a RequireDualStack NodePort Service of node3's pods gets a cluster IP
// of each family, and answers on both, over TCP and UDP, from a pod on every node.
func checkDualStackService(t *testing.T, st *lab.State) {
	ctx := context.Background()
	spec := lab.ServiceSpec{Namespace: "x", Name: "web", Type: "NodePort", Selector: map[string]string{"role": "web"},
		IPFamilyPolicy: "RequireDualStack", Ports: []lab.ServicePortSpec{
			{Name: "tcp", Port: 8080, TargetPort: intstr.FromInt32(80), Protocol: "TCP", NodePort: 30080},
			{Name: "udp", Port: 8080, TargetPort: intstr.FromInt32(80), Protocol: "UDP", NodePort: 30080}}}
	stored, err := st.ApplyServices(ctx, []lab.ServiceSpec{spec})
	if err != nil {
		t.Fatal(err)
	}
	if ips := stored[0].Spec.ClusterIPs; len(ips) != 2 || !netip.MustParseAddr(ips[0]).Is4() || !netip.MustParseAddr(ips[1]).Is6() {
		t.Fatalf("service x/web has cluster IPs %v, want an IPv4 one then an IPv6 one", ips)
	}
	for _, family := range []string{lab.FamilyIPv4, lab.FamilyIPv6} {
		for _, from := range []string{"x/p11", "x/p21", "x/p32"} {
			for _, proto := range []string{"TCP", "UDP"} {
				ip, err := st.ServiceIPFamily(ctx, "x/web", 8080, proto, family)
				if err != nil {
					t.Fatal(err)
				}
				src, _ := st.Pod(from)
				if err := probeAgain(src.Netns, netip.AddrPortFrom(ip, 8080), proto); err != nil {
					t.Errorf("%s -> x/web at %s 8080/%s: %v", from, ip, proto, err)
				}
			}
		}
	}
}

// checkDualStackNodePorts: every node has its IPv6 underlay address, and x/web's node port
// answers a client outside the cluster (the underlay namespace) on each node's address of each
// family, over TCP and UDP. node3's own backends see the client; node1's answer comes from
// node3's backends, which see node1 (externalTrafficPolicy Cluster): the same as for IPv4.
func checkDualStackNodePorts(t *testing.T, st *lab.State) {
	out, code := ebpfnet(t, "lab", "nodes", "--name", st.Name, "-o", "json")
	var nodes []struct{ Name, IP, IPv6 string }
	if code != 0 || jsonUnmarshal(out, &nodes) != nil || len(nodes) != len(st.Nodes) {
		t.Fatalf("lab nodes -o json (exit %d): %s", code, out)
	}
	for _, n := range nodes {
		if ip, err := netip.ParseAddr(n.IPv6); err != nil || !ip.Is6() || !ip.IsGlobalUnicast() {
			t.Errorf("lab nodes lists %s with IPv6 underlay address %q", n.Name, n.IPv6)
		}
	}
	outside := map[string]netip.Addr{lab.FamilyIPv4: underlayAddr(t, st), lab.FamilyIPv6: lab.UnderlayIPv6}
	backends := map[netip.Addr]bool{}
	for _, p := range st.Pods {
		if p.Node == "node3" {
			backends[p.IP], backends[p.IPv6] = true, true
		}
	}
	for _, family := range st.Families() {
		for _, name := range []string{"node1", "node3"} {
			n, _ := st.Node(name)
			ip, err := n.Addr(family)
			if err != nil {
				t.Fatal(err)
			}
			for _, proto := range []string{"TCP", "UDP"} {
				w := whoAgain(t, st.Underlay, netip.AddrPortFrom(ip, 30080), proto)
				want := outside[family]
				if name == "node1" {
					want = ip
				}
				if !backends[w.Server] || w.Client.Addr() != want {
					t.Errorf("%s node port %s/%s: %s answered seeing %s, want a backend of node3 seeing %s", family, netip.AddrPortFrom(ip, 30080), proto, w.Server, w.Client, want)
				}
			}
		}
	}
}

// checkDualStackMasquerade: a pod reaching outside the cluster takes its node's address of the
// family it speaks, with a port of the masquerading range, over TCP, UDP and ICMP.
func checkDualStackMasquerade(t *testing.T, st *lab.State) {
	src, _ := st.Pod("x/p11")
	node, _ := st.Node("node1")
	outside := map[string]netip.Addr{lab.FamilyIPv4: underlayAddr(t, st), lab.FamilyIPv6: lab.UnderlayIPv6}
	for _, family := range st.Families() {
		serveOutsideFamily(t, st, family, 7001)
		want, _ := node.Addr(family)
		for _, proto := range []string{"TCP", "UDP"} {
			w := whoAgain(t, src.Netns, netip.AddrPortFrom(outside[family], 7001), proto)
			if w.Client.Addr() != want || w.Client.Port() < 20000 || w.Client.Port() > 29999 {
				t.Errorf("%s %s: outside saw %s, want %s with a port in 20000-29999", family, proto, w.Client, want)
			}
		}
		if err := pingFrom(src.Netns, outside[family]); err != nil {
			t.Errorf("%s: ping outside: %v", family, err)
		}
	}
}

// checkNodeOverIPv6: node1 itself, from its IPv6 underlay address, reaches x/web's IPv6
// cluster IP (whose backends are all on node3, and see node1's address), its own pod and
// another node's pod at their IPv6 addresses. Under a policy denying x/p11 and x/p21 all
// ingress, node1 still reaches its own pod (that address is the host's, as its IPv4 one),
// and no longer the other node's.
func checkNodeOverIPv6(t *testing.T, st *lab.State) {
	node, _ := st.Node("node1")
	ip, err := st.ServiceIPFamily(context.Background(), "x/web", 8080, "TCP", lab.FamilyIPv6)
	if err != nil {
		t.Fatal(err)
	}
	for _, proto := range []string{"TCP", "UDP"} {
		if w := whoAgain(t, node.Netns, netip.AddrPortFrom(ip, 8080), proto); w.Client.Addr() != node.IPv6 {
			t.Errorf("node1 -> x/web at %s 8080/%s: %s saw %s, want node1's %s", ip, proto, w.Server, w.Client, node.IPv6)
		}
	}
	for _, key := range []string{"x/p11", "x/p21"} {
		p, _ := st.Pod(key)
		for _, proto := range []string{"TCP", "UDP"} {
			if err := probeAgain(node.Netns, netip.AddrPortFrom(p.IPv6, 80), proto); err != nil {
				t.Errorf("node1 -> %s at %s 80/%s: %v", key, p.IPv6, proto, err)
			}
		}
	}
	ctx := context.Background()
	deny := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-in, namespace: x}\n" +
		"spec:\n  podSelector: {matchExpressions: [{key: pod, operator: In, values: [p11, p21]}]}\n  policyTypes: [Ingress]\n"
	if _, err := st.Client().ApplyPolicies(ctx, []byte(deny)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Client().DeletePolicy(ctx, "x", "deny-in"); err != nil {
			t.Errorf("delete policy x/deny-in: %v", err)
		}
	})
	p11, _ := st.Pod("x/p11")
	p21, _ := st.Pod("x/p21")
	eventually(t, 10*time.Second, "node1 to reach x/p11, and not x/p21, over IPv6", func() (bool, string) {
		own := lab.ProbeFrom(node.Netns, netip.AddrPortFrom(p11.IPv6, 80), "TCP")
		other := lab.ProbeFrom(node.Netns, netip.AddrPortFrom(p21.IPv6, 80), "TCP")
		return own == nil && other != nil, fmt.Sprintf("x/p11: %v; x/p21: %v", own, other)
	})
}

// whoAgain is who, asked again for up to 10 s while the answer does not come: the agents
// program a new Service's node ports a moment after it is stored.
func whoAgain(t *testing.T, netns string, addr netip.AddrPort, proto string) lab.Who {
	t.Helper()
	var w lab.Who
	eventually(t, 10*time.Second, fmt.Sprintf("%s/%s answers", addr, proto), func() (bool, string) {
		var err error
		w, err = lab.AskWho(netns, addr, proto)
		return err == nil, fmt.Sprint(err)
	})
	return w
}

// checkManagedNeighbours: in native mode node1 keeps a managed neighbour entry for each other
// node, the next hop of its IPv6 pod CIDR, and the kernel has resolved it: the datapath sends
// IPv6 there by the entry's MAC and cannot resolve one itself.
func checkManagedNeighbours(t *testing.T, st *lab.State) {
	node, _ := st.Node("node1")
	eventually(t, 10*time.Second, "managed, resolved neighbour entries for node2 and node3 on node1", func() (bool, string) {
		var have []string
		err := namespace.Do(node.Netns, func() error {
			l, err := netlink.LinkByName(lab.UnderlayIf)
			if err != nil {
				return err
			}
			ns, err := netlinksafe.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
			for _, n := range ns {
				if n.FlagsExt&1 != 0 && n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0 { // NTF_EXT_MANAGED, resolved
					have = append(have, n.IP.String())
				}
			}
			return err
		})
		if err != nil {
			return false, err.Error()
		}
		found := 0
		for _, name := range []string{"node2", "node3"} {
			n, _ := st.Node(name)
			for _, ip := range have {
				if ip == n.IP.String() {
					found++
				}
			}
		}
		return found == 2, fmt.Sprintf("managed and resolved: %v", have)
	})
}

// checkIPv6Prefilter: in native mode a pod's IPv6 packets cross the underlay as they are, so
// the XDP prefilter takes an IPv6 CIDR: p21's address denied, p21 no longer reaches p11 over
// IPv6 (dropped at XDP on node1 and counted there) while IPv4 still does; deleted, it does again.
func checkIPv6Prefilter(t *testing.T, st *lab.State) {
	src, _ := st.Pod("x/p21")
	node1, _ := st.Node("node1")
	if err := st.ProbeFamily("x/p21", "x/p11", 80, "TCP", lab.FamilyIPv6); err != nil {
		t.Fatal(err)
	}
	cidr := src.IPv6.String() + "/128"
	if out, code := ebpfnet(t, "prefilter", "add", cidr, "--lab", st.Name); code != 0 {
		t.Fatalf("prefilter add %s: %s", cidr, out)
	}
	deleted := false
	defer func() { // a failing check still leaves the lab's prefilter empty
		if !deleted {
			ebpfnet(t, "prefilter", "delete", cidr, "--lab", st.Name)
		}
	}()
	xdpDrops := map[string]string{"direction": "prefilter", "reason": "prefilter"}
	before := scrape(t, node1)
	eventually(t, 10*time.Second, "p21 denied over IPv6", func() (bool, string) {
		err := st.ProbeFamily("x/p21", "x/p11", 80, "TCP", lab.FamilyIPv6)
		return err != nil, "p21 still reaches p11 over IPv6"
	})
	if d := counterDelta(t, before, scrape(t, node1), "ebpfnet_drop_packets_total", xdpDrops); d == 0 {
		t.Fatal("no XDP prefilter drop was counted on node1")
	}
	if err := st.Probe("x/p21", "x/p11", 80, "TCP"); err != nil {
		t.Fatalf("IPv4 from p21 is denied too: %v", err)
	}
	out, code := ebpfnet(t, "prefilter", "delete", cidr, "--lab", st.Name)
	deleted = code == 0
	if !deleted {
		t.Fatalf("prefilter delete %s: %s", cidr, out)
	}
	eventually(t, 10*time.Second, "p21 reaching p11 over IPv6 again", func() (bool, string) {
		err := st.ProbeFamily("x/p21", "x/p11", 80, "TCP", lab.FamilyIPv6)
		return err == nil, fmt.Sprint(err)
	})
}
