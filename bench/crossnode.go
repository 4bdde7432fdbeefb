package bench

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/podnet"
)

// CrossNode are the cross-node setups, the limit first.
func CrossNode() []Builder {
	return []Builder{
		{"node-to-node", func(p string) (*Topology, error) { return buildNodeToNode(p, IPv4) }},
		{"kernel-vxlan", func(p string) (*Topology, error) { return buildKernelVXLAN(p, IPv4) }},
		{"ebpfnet-vxlan", func(p string) (*Topology, error) { return buildLab(p, "vxlan", IPv4) }},
		{"ebpfnet-native", func(p string) (*Topology, error) { return buildLab(p, "native", IPv4) }},
		{"ebpfnet-ipip", func(p string) (*Topology, error) { return buildLab(p, "ipip", IPv4) }},
	}
}

// CrossNodeIPv6 are the VXLAN setups in dual stack, measured over IPv6: the pods' IPv6
// packets inside VXLAN over the nodes' IPv4 underlay; node to node over IPv6 on the same
// underlay.
func CrossNodeIPv6() []Builder {
	return []Builder{
		{"node-to-node", func(p string) (*Topology, error) { return buildNodeToNode(p, IPv6) }},
		{"kernel-vxlan", func(p string) (*Topology, error) { return buildKernelVXLAN(p, IPv6) }},
		{"ebpfnet-vxlan", func(p string) (*Topology, error) { return buildLab(p, "vxlan", IPv6) }},
	}
}

// underlay makes two node namespaces whose eth0s meet on a bridge, with no BPF anywhere; in
// an IPv6 topology the nodes have IPv6 addresses too. ips are their IPv4 addresses.
func (t *Topology) underlay(prefix string, f Family) (nodes [2]string, ips [2]netip.Addr, err error) {
	sw := prefix + "-u"
	if _, err := t.netns(sw); err != nil {
		return nodes, ips, err
	}
	h, err := handle(sw)
	if err != nil {
		return nodes, ips, err
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		return nodes, ips, err
	}
	if err := h.LinkSetUp(br); err != nil {
		return nodes, ips, err
	}
	for i := range nodes {
		nodes[i] = fmt.Sprintf("%s-n%d", prefix, i)
		ips[i] = netip.AddrFrom4([4]byte{10, 251, 0, byte(i + 1)})
		if _, err := t.netns(nodes[i]); err != nil {
			return nodes, ips, err
		}
		t.Nodes = append(t.Nodes, nodes[i])
		port := fmt.Sprintf("p%d", i)
		_, eth0, err := vethPair(sw, port, nodes[i], "eth0", 1500)
		if err != nil {
			return nodes, ips, err
		}
		if l, err := h.LinkByName(port); err != nil || h.LinkSetMaster(l, br) != nil {
			return nodes, ips, fmt.Errorf("plug %s into the underlay: %w", port, err)
		}
		if err := addAddrs(nodes[i], eth0, ips[i], f); err != nil {
			return nodes, ips, err
		}
	}
	return nodes, ips, nil
}

// buildNodeToNode measures the underlay itself: node namespace to node namespace.
func buildNodeToNode(prefix string, f Family) (t *Topology, err error) {
	t = &Topology{Name: "node-to-node"}
	defer closeOnError(t, &err)
	nodes, ips, err := t.underlay(prefix, f)
	if err != nil {
		return nil, err
	}
	t.Client, t.Server, t.ServerIP = nodes[0], nodes[1], f.of(ips[1])
	return t, nil
}

// buildKernelVXLAN is flannel's vxlan backend: a kernel VXLAN device per node with static
// FDB and neighbour entries, routes to the other node's pod CIDR, the node forwarding. In an
// IPv6 topology the device carries the pods' IPv6 too (flannel's dual stack), over the same
// IPv4 underlay.
func buildKernelVXLAN(prefix string, f Family) (t *Topology, err error) {
	t = &Topology{Name: "kernel-vxlan"}
	defer closeOnError(t, &err)
	nodes, ips, err := t.underlay(prefix, IPv4)
	if err != nil {
		return nil, err
	}
	cidrs := [2]netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("10.244.1.0/24")}
	var macs [2]net.HardwareAddr
	var idx [2]int
	for i, n := range nodes {
		if err := forward(namespace.Path(n), f); err != nil {
			return nil, err
		}
		err := inNS(n, func(h *netlink.Handle) error {
			eth0, err := h.LinkByName("eth0")
			if err != nil {
				return err
			}
			v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "flannel.1", MTU: 1450}, VxlanId: 1,
				VtepDevIndex: eth0.Attrs().Index, SrcAddr: ips[i].AsSlice(), Port: 8472, Learning: false}
			if err := h.LinkAdd(v); err != nil {
				return fmt.Errorf("add flannel.1: %w", err)
			}
			l, err := h.LinkByName("flannel.1")
			if err != nil {
				return err
			}
			macs[i], idx[i] = l.Attrs().HardwareAddr, l.Attrs().Index
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: cidrs[i].Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}}
			if err := h.AddrAdd(l, addr); err != nil {
				return err
			}
			if f == IPv6 {
				own := sixOf(cidrs[i].Addr()).AsSlice()
				addr := &netlink.Addr{IPNet: &net.IPNet{IP: own, Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}
				if err := h.AddrAdd(l, addr); err != nil {
					return err
				}
			}
			return h.LinkSetUp(l)
		})
		if err != nil {
			return nil, err
		}
	}
	for i, n := range nodes {
		o := 1 - i
		err := inNS(n, func(h *netlink.Handle) error {
			if err := h.NeighAppend(&netlink.Neigh{LinkIndex: idx[i], Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
				State: netlink.NUD_PERMANENT, IP: ips[o].AsSlice(), HardwareAddr: macs[o]}); err != nil {
				return fmt.Errorf("fdb: %w", err)
			}
			if err := vxlanRoute(h, idx[i], cidrs[o], macs[o]); err != nil || f == IPv4 {
				return err
			}
			// The IPv6 pod CIDR of a.b.c.0/24 is fd00:a:b:c::/64, its gateway the address at ::.
			return vxlanRoute(h, idx[i], netip.PrefixFrom(sixOf(cidrs[o].Addr()), 64), macs[o])
		})
		if err != nil {
			return nil, err
		}
	}
	pods := [2]string{prefix + "-c", prefix + "-s"}
	for i, p := range pods {
		path, err := t.netns(p)
		if err != nil {
			return nil, err
		}
		ip := cidrs[i].Addr().Next().Next()
		pod := podnet.Pod{NodeNetns: namespace.Path(nodes[i]), Netns: path, ContainerID: p, IP: ip, IPv6: f.only6(ip), MTU: 1450}
		if _, err := podnet.Plumb(pod, nil); err != nil {
			return nil, err
		}
	}
	t.Client, t.Server, t.ServerIP = pods[0], pods[1], f.of(cidrs[1].Addr().Next().Next())
	return t, nil
}

func inNS(ns string, fn func(h *netlink.Handle) error) error {
	h, err := handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	return namespace.Do(namespace.Path(ns), func() error { return fn(h) })
}

// vxlanRoute routes the other node's pod CIDR through its VXLAN device (MAC mac), the CIDR's
// first address the gateway.
func vxlanRoute(h *netlink.Handle, dev int, cidr netip.Prefix, mac net.HardwareAddr) error {
	gw := cidr.Addr().AsSlice()
	family := unix.AF_INET
	if cidr.Addr().Is6() {
		family = unix.AF_INET6
	}
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: dev, Family: family, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: mac}); err != nil {
		return fmt.Errorf("neighbour %s: %w", cidr.Addr(), err)
	}
	return h.RouteAdd(&netlink.Route{LinkIndex: dev, Dst: prefixNet(cidr), Gw: gw, Flags: int(netlink.FLAG_ONLINK)})
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// buildLab is ebpfnet itself: a two-node lab in the given mode, one pod per node; in an IPv6
// topology the lab is dual stack.
func buildLab(prefix, mode string, f Family) (t *Topology, err error) {
	t = &Topology{Name: "ebpfnet-" + mode}
	defer closeOnError(t, &err)
	spec := &lab.Spec{Mode: mode, Nodes: []lab.NodeSpec{{Name: "n1"}, {Name: "n2"}},
		Namespaces: []lab.Namespace{{Name: "b"}},
		Pods:       []lab.PodSpec{{Namespace: "b", Name: "c", Node: "n1"}, {Namespace: "b", Name: "s", Node: "n2"}}}
	if f == IPv6 {
		spec.IPFamilies = []string{lab.FamilyIPv4, lab.FamilyIPv6}
	}
	st, err := upBenchLab(t, prefix, spec)
	if err != nil {
		return nil, err
	}
	c, _ := st.Pod("b/c")
	s, _ := st.Pod("b/s")
	t.Client, t.Server, t.ServerIP = nsName(c.Netns), nsName(s.Netns), s.IP
	for _, n := range st.Nodes {
		t.Nodes = append(t.Nodes, nsName(n.Netns))
	}
	if f == IPv6 {
		t.ServerIP = s.IPv6
	}
	return t, nil
}

// downLab takes down a lab a measurement brought up; a failure is logged, the measurement kept.
func downLab(name string) {
	if err := lab.Down(name); err != nil {
		slog.Warn("lab down", "lab", name, "err", err)
	}
}
