package lab

import (
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/ebpfnet/ebpfnet/namespace"
)

// underlayCIDR numbers the nodes' underlay addresses: node i gets .i+1; etcd listens on .254.
var underlayCIDR = netip.MustParsePrefix("10.250.0.0/24")

var etcdIP = netip.MustParseAddr("10.250.0.254")

// plan decides every name and underlay address of the lab before anything is made. Pod CIDRs
// and pod addresses come later, from the agents' store and IPAM.
func plan(name string, spec *Spec) (*State, error) {
	st := &State{Name: name, Mode: spec.Mode, ClusterCIDR: spec.ClusterCIDR, VXLANPort: spec.VXLANPort,
		Underlay: namespace.Path(name + "-underlay"),
		EtcdURL:  "http://" + etcdIP.String() + ":2379", Kubernetes: spec.Kubernetes,
		Masquerade: spec.Masquerade, NoMasqueradeCIDRs: append([]string(nil), spec.NoMasqueradeCIDRs...)}
	for _, ns := range spec.Namespaces {
		st.Namespaces = append(st.Namespaces, Namespace{Name: ns.Name, Labels: copyLabels(ns.Labels)})
	}
	if len(spec.Nodes) > 250 {
		return nil, fmt.Errorf("at most 250 nodes fit the underlay %s", underlayCIDR)
	}
	ip := underlayCIDR.Addr().Next()
	for _, n := range spec.Nodes {
		st.Nodes = append(st.Nodes, planNode(name, n, ip))
		ip = ip.Next()
	}
	for i, p := range spec.Pods {
		st.Pods = append(st.Pods, Pod{Namespace: p.Namespace, Name: p.Name, Node: p.Node,
			Labels: copyLabels(p.Labels), Ports: append([]Port(nil), p.Ports...), Netns: nsPath(name, p.Namespace, p.Name),
			ContainerID: fmt.Sprintf("lab-%s-%s-%s", name, p.Namespace, p.Name), EndpointID: uint32(i + 1)})
	}
	return st, nil
}

func planNode(lab string, n NodeSpec, ip netip.Addr) Node {
	return Node{Name: n.Name, IP: ip, WantCIDR: n.PodCIDR, Netns: namespace.Path(lab + "-" + n.Name),
		PinDir: filepath.Join(PinRoot, lab, n.Name), Socket: filepath.Join(Dir(lab), "nodes", n.Name, "agent.sock")}
}

// nsPath is a pod's namespace: the dots keep it apart from node namespaces ("lab-node").
func nsPath(lab, namespace_, pod string) string {
	return namespace.Path(lab + "." + namespace_ + "." + pod)
}

// copyLabels keeps the lab's state apart from the spec it came from: a label change on one lab
// must never reach another made from the same spec.
func copyLabels(l map[string]string) map[string]string {
	out := make(map[string]string, len(l))
	for k, v := range l {
		out[k] = v
	}
	return out
}
