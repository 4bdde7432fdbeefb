package bench

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/podnet"
)

// Builder makes one topology; prefix keeps its names apart from every other's.
type Builder struct {
	Name  string
	Build func(prefix string) (*Topology, error)
}

// SameNode are the same-node setups, the limit first.
func SameNode() []Builder { return sameNode(IPv4) }

// SameNodeIPv6 are the same setups in dual stack, measured over IPv6.
func SameNodeIPv6() []Builder { return sameNode(IPv6) }

func sameNode(f Family) []Builder {
	return []Builder{
		{"direct", func(p string) (*Topology, error) { return buildDirect(p, f) }},
		{"kernel-route", func(p string) (*Topology, error) { return buildRouted(p, "kernel-route", false, f) }},
		{"bridge", func(p string) (*Topology, error) { return buildBridge(p, f) }},
		{"ebpfnet", func(p string) (*Topology, error) { return buildRouted(p, "ebpfnet", true, f) }},
	}
}

func newTopology(name, prefix string) *Topology {
	return &Topology{Name: name, Client: prefix + "-c", Server: prefix + "-s"}
}

// buildDirect: one veth pair straight between the two pods.
func buildDirect(prefix string, f Family) (t *Topology, err error) {
	t = newTopology("direct", prefix)
	defer closeOnError(t, &err)
	for _, ns := range []string{t.Client, t.Server} {
		if _, err := t.netns(ns); err != nil {
			return nil, err
		}
	}
	lc, ls, err := vethPair(t.Client, "eth0", t.Server, "eth0", 1500)
	if err != nil {
		return nil, err
	}
	if err := addAddrs(t.Client, lc, netip.MustParseAddr("10.100.0.1"), f); err != nil {
		return nil, err
	}
	if err := addAddrs(t.Server, ls, netip.MustParseAddr("10.100.0.2"), f); err != nil {
		return nil, err
	}
	t.ServerIP = f.of(netip.MustParseAddr("10.100.0.2"))
	return t, nil
}

// buildRouted: both pods plumbed by podnet into a node; through the node's routing table
// (kernel-route) or redirected by ebpfnet's BPF.
func buildRouted(prefix, name string, withBPF bool, f Family) (t *Topology, err error) {
	t = newTopology(name, prefix)
	defer closeOnError(t, &err)
	nodeNS := prefix + "-n"
	nodePath, err := t.netns(nodeNS)
	if err != nil {
		return nil, err
	}
	t.Nodes = []string{nodeNS}
	var dp *loader.Datapath
	if withBPF {
		pinDir := "/sys/fs/bpf/ebpfnet-bench-" + prefix
		t.undo = append(t.undo, func() error { return loader.Uninstall(pinDir) })
		if dp, err = loader.Load(loader.Config{PinDir: pinDir}); err != nil {
			return nil, err
		}
		t.undo = append(t.undo, dp.Close)
	} else if err := forward(nodePath, f); err != nil {
		return nil, err
	}
	ips := map[string]netip.Addr{t.Client: netip.MustParseAddr("10.100.1.1"), t.Server: netip.MustParseAddr("10.100.1.2")}
	for _, ns := range []string{t.Client, t.Server} {
		path, err := t.netns(ns)
		if err != nil {
			return nil, err
		}
		pod := podnet.Pod{NodeNetns: nodePath, Netns: path, ContainerID: ns, IP: ips[ns], IPv6: f.only6(ips[ns]),
			EndpointID: uint32(len(t.undo))}
		if _, err := podnet.Plumb(pod, dp); err != nil {
			return nil, fmt.Errorf("plumb %s: %w", ns, err)
		}
		t.undo = append(t.undo, func() error { return podnet.Unplumb(pod, dp) })
	}
	t.ServerIP = f.of(ips[t.Server])
	return t, nil
}

// buildBridge: a Linux bridge with br_netfilter and a few iptables FORWARD rules, the way
// docker0 and flannel's cni0 carry same-node traffic (in dual stack, ip6tables too).
func buildBridge(prefix string, f Family) (t *Topology, err error) {
	t = newTopology("bridge", prefix)
	defer closeOnError(t, &err)
	nodeNS := prefix + "-n"
	nodePath, err := t.netns(nodeNS)
	if err != nil {
		return nil, err
	}
	t.Nodes = []string{nodeNS}
	h, err := handle(nodeNS)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("add bridge: %w", err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return nil, err
	}
	for i, ns := range []string{t.Client, t.Server} {
		if _, err := t.netns(ns); err != nil {
			return nil, err
		}
		hostIf := fmt.Sprintf("veth%d", i)
		_, podIf, err := vethPair(nodeNS, hostIf, ns, "eth0", 1500)
		if err != nil {
			return nil, err
		}
		l, err := h.LinkByName(hostIf)
		if err == nil {
			err = h.LinkSetMaster(l, br)
		}
		if err != nil {
			return nil, fmt.Errorf("enslave %s: %w", hostIf, err)
		}
		if err := addAddrs(ns, podIf, netip.AddrFrom4([4]byte{10, 100, 2, byte(i + 1)}), f); err != nil {
			return nil, err
		}
	}
	// The same rules in each family, the documentation prefixes dropped.
	tables := []struct{ cmd, sysctl, drop1, drop2 string }{
		{"iptables", "bridge-nf-call-iptables", "192.0.2.0/24", "198.51.100.0/24"},
		{"ip6tables", "bridge-nf-call-ip6tables", "2001:db8:1::/64", "2001:db8:2::/64"},
	}
	if f == IPv4 {
		tables = tables[:1]
	}
	for _, tb := range tables {
		if err := sysctl(nodePath, "bridge/"+tb.sysctl, "1"); err != nil {
			return nil, fmt.Errorf("enable br_netfilter: %w", err)
		}
		for _, rule := range [][]string{
			{"-A", "FORWARD", "-s", tb.drop1, "-j", "DROP"},
			{"-A", "FORWARD", "-d", tb.drop2, "-j", "DROP"},
			{"-A", "FORWARD", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
			{"-A", "FORWARD", "-i", "br0", "-o", "br0", "-j", "ACCEPT"},
			{"-P", "FORWARD", "DROP"},
		} {
			if err := execIn(nodeNS, tb.cmd, append([]string{"-w"}, rule...)...); err != nil {
				return nil, err
			}
		}
	}
	t.ServerIP = f.of(netip.MustParseAddr("10.100.2.2"))
	return t, nil
}

func closeOnError(t *Topology, err *error) {
	if *err != nil {
		t.Close()
	}
}

// serverPath is the server namespace's path.
func (t *Topology) serverPath() string { return namespace.Path(t.Server) }
