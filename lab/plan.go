package lab

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
)

// underlayCIDR numbers the nodes' underlay addresses: node i gets .i+1.
var underlayCIDR = netip.MustParsePrefix("10.250.0.0/24")

// plan decides every name and address of the lab before anything is made.
func plan(name string, spec *Spec) (*State, error) {
	mode, _ := maps.ParseMode(spec.Mode)
	cluster := netip.MustParsePrefix(spec.ClusterCIDR)
	st := &State{Name: name, Mode: spec.Mode, ClusterCIDR: cluster.String(), VXLANPort: spec.VXLANPort,
		Underlay: namespace.Path(name + "-underlay"), Namespaces: spec.Namespaces}
	taken := []netip.Prefix{}
	for _, n := range spec.Nodes {
		if n.PodCIDR != "" {
			taken = append(taken, netip.MustParsePrefix(n.PodCIDR))
		}
	}
	next := cluster.Addr()
	ip := underlayCIDR.Addr().Next()
	for _, n := range spec.Nodes {
		cidr := netip.Prefix{}
		if n.PodCIDR != "" {
			cidr = netip.MustParsePrefix(n.PodCIDR)
		} else {
			// The next free /24 of the cluster CIDR.
			for cidr = netip.PrefixFrom(next, 24); overlapsAny(cidr, taken); cidr = nextPrefix(cidr) {
			}
			if !cluster.Contains(cidr.Addr()) {
				return nil, fmt.Errorf("clusterCIDR %s has no /24 left for node %s", cluster, n.Name)
			}
			taken = append(taken, cidr)
			next = nextPrefix(cidr).Addr()
		}
		st.Nodes = append(st.Nodes, Node{Name: n.Name, IP: ip, PodCIDR: cidr,
			Netns: namespace.Path(name + "-" + n.Name), PinDir: filepath.Join(PinRoot, name, n.Name),
			MTU: underlayMTU - mode.Overhead()})
		ip = ip.Next()
	}
	nextIP := map[string]netip.Addr{}
	for _, n := range st.Nodes {
		nextIP[n.Name] = n.PodCIDR.Addr().Next().Next() // .1 is left for a future gateway
	}
	for i, p := range spec.Pods {
		podIP := nextIP[p.Node]
		node, _ := st.Node(p.Node)
		if !node.PodCIDR.Contains(podIP) {
			return nil, fmt.Errorf("pods[%d]: node %s's podCIDR %s is full", i, p.Node, node.PodCIDR)
		}
		nextIP[p.Node] = podIP.Next()
		st.Pods = append(st.Pods, Pod{Namespace: p.Namespace, Name: p.Name, Node: p.Node, IP: podIP,
			Labels: p.Labels, Ports: p.Ports, Netns: namespace.Path(name + "." + p.Namespace + "." + p.Name),
			ContainerID: fmt.Sprintf("lab-%s-%s-%s", name, p.Namespace, p.Name), EndpointID: uint32(i + 1)})
	}
	return st, nil
}

func overlapsAny(p netip.Prefix, ps []netip.Prefix) bool {
	for _, q := range ps {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}

// nextPrefix is the prefix of the same size right after p.
func nextPrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += 1 << (32 - p.Bits())
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), p.Bits())
}
