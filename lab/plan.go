package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
)

// plan decides every name and underlay address of the lab before anything is made (see
// segments.go for the addressing). Pod CIDRs and pod addresses come later, from the agents'
// store and IPAM.
func plan(name string, spec *Spec) (*State, error) {
	if spec.BGP != nil && spec.Kubernetes {
		return nil, errors.New("bgp: not in a kubernetes lab yet")
	}
	st := &State{Name: name, Mode: spec.Mode, ClusterCIDR: spec.ClusterCIDR,
		ClusterCIDRv6: spec.ClusterCIDRv6, VXLANPort: spec.VXLANPort, UnderlayFamily: spec.UnderlayFamily,
		Underlay: namespace.Path(name + "-underlay"),
		EtcdURL:  "http://" + etcdIP.String() + ":2379", Kubernetes: spec.Kubernetes, CNI: spec.CNI,
		Masquerade: spec.Masquerade, NoMasqueradeCIDRs: append([]string(nil), spec.NoMasqueradeCIDRs...),
		MapSizes: spec.MapSizes}
	if spec.BGP != nil {
		b := *spec.BGP
		st.BGP = &b
	}
	if st.BGP.HasRouter() {
		st.Router = planRouter(name, st.UnderlayIPv6())
	}
	for _, ns := range spec.Namespaces {
		st.Namespaces = append(st.Namespaces, Namespace{Name: ns.Name, Labels: copyLabels(ns.Labels)})
	}
	for _, n := range spec.Nodes {
		node, err := st.placeNode(n)
		if err != nil {
			return nil, err
		}
		if st.Kubernetes {
			// The DaemonSet's agent pins and serves at the usual paths, in the node's own mounts.
			dir := st.kubeNodeDir(n.Name)
			node.PinDir, node.Socket = kube.NodeHostPath(dir, maps.DefaultPinDir), kube.NodeHostPath(dir, agentapi.DefaultSocket)
		}
		st.Nodes = append(st.Nodes, node)
	}
	for i, p := range spec.Pods {
		st.Pods = append(st.Pods, Pod{Namespace: p.Namespace, Name: p.Name, Node: p.Node,
			Labels: copyLabels(p.Labels), Ports: append([]Port(nil), p.Ports...), Netns: nsPath(name, p.Namespace, p.Name),
			ContainerID: fmt.Sprintf("lab-%s-%s-%s", name, p.Namespace, p.Name), EndpointID: uint32(i + 1)})
	}
	return st, nil
}

func planNode(lab string, n NodeSpec, ip netip.Addr) Node {
	return Node{Name: n.Name, IP: ip, WantCIDR: n.PodCIDR, Rack: n.Rack, Netns: namespace.Path(lab + "-" + n.Name),
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
