package bench

import (
	"bytes"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/lab"
)

// The scale suite's labs and policies, made here as plain values so that a test can check
// them without bringing anything up.

const (
	// scaleNS holds the pods the scale suite measures with; the filler pods are in ns0, ns1, ….
	scaleNS = "scale"
	// scaleProbePort is where the policy probes' servers (`lab serve`) listen.
	scaleProbePort = 80
	// scaleFillerApps is how many app labels the filler pods share out.
	scaleFillerApps = 20
)

// scaleRole is a pod the suite measures with: by name in scaleNS, on the node of that index.
type scaleRole struct {
	name  string
	node  int
	serve bool // runs an echo server on scaleProbePort (the lab's servers are per pod: only these)
}

// scaleRoles are the same in the small lab and the large one: the pod-to-pod client and its
// servers on its node and on another, and the policy probes' client and the servers it is
// allowed to and denied.
var scaleRoles = []scaleRole{
	{name: "perf-client", node: 0}, {name: "perf-same", node: 0}, {name: "perf-cross", node: 1},
	{name: "allowed", node: 1, serve: true}, {name: "denied", node: 2, serve: true}, {name: "client", node: 3},
}

// ScaleSpec is a vxlan lab of nodes nodes and pods pods, pods/nodes on each: the scaleRoles
// first, then filler pods spread over namespaces namespaces (labelled app, tier; their
// namespaces team), added to the nodes in turn. Only the probes' servers serve.
func ScaleSpec(nodes, pods, namespaces int) (*lab.Spec, error) {
	if nodes < 4 || pods%nodes != 0 || namespaces < 1 {
		return nil, fmt.Errorf("a scale lab needs at least 4 nodes, pods a multiple of them and a namespace (have %d nodes, %d pods, %d namespaces)",
			nodes, pods, namespaces)
	}
	perNode := pods / nodes
	spec := &lab.Spec{Mode: "vxlan", Namespaces: []lab.Namespace{{Name: scaleNS, Labels: map[string]string{"team": "probe"}}}}
	for i := range nodes {
		spec.Nodes = append(spec.Nodes, lab.NodeSpec{Name: scaleNode(i)})
	}
	for i := range namespaces {
		spec.Namespaces = append(spec.Namespaces, lab.Namespace{Name: fmt.Sprintf("ns%d", i), Labels: map[string]string{"team": fmt.Sprintf("t%d", i%4)}})
	}
	used := make([]int, nodes)
	for _, r := range scaleRoles {
		p := lab.PodSpec{Namespace: scaleNS, Name: r.name, Node: scaleNode(r.node), Labels: map[string]string{"role": r.name}}
		if r.serve {
			p.Ports = []lab.Port{{Name: "http", Port: scaleProbePort, Protocol: "TCP"}}
		}
		spec.Pods = append(spec.Pods, p)
		used[r.node]++
	}
	for _, u := range used {
		if u > perNode {
			return nil, fmt.Errorf("%d pods a node leave no room for the suite's own %d on one node", perNode, u)
		}
	}
	for i, node := 0, 0; len(spec.Pods) < pods; node = (node + 1) % nodes {
		if used[node] == perNode {
			continue
		}
		used[node]++
		spec.Pods = append(spec.Pods, lab.PodSpec{Namespace: fmt.Sprintf("ns%d", i%namespaces), Name: fmt.Sprintf("p%d", i),
			Node: scaleNode(node), Labels: map[string]string{"app": fmt.Sprintf("app%d", i%scaleFillerApps), "tier": fmt.Sprintf("t%d", i%3)}})
		i++
	}
	return spec, spec.Validate()
}

func scaleNode(i int) string { return fmt.Sprintf("n%d", i+1) }

// scalePolicies are n NetworkPolicies (n >= 2) as one YAML stream: the probes' denied server
// refuses all ingress, their allowed server lets the client in on scaleProbePort, and the
// rest each select one app's filler pods in one namespace and let in a tier of the pods of a
// team's namespaces. It returns their "ns/name"s too.
func scalePolicies(n, namespaces int) ([]byte, []string, error) {
	ingress := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	tcp := corev1.ProtocolTCP
	port := func(p int) []networkingv1.NetworkPolicyPort {
		v := intstrPort(p)
		return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &v}}
	}
	labels := func(kv ...string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{kv[0]: kv[1]}}
	}
	pols := []*networkingv1.NetworkPolicy{
		{ObjectMeta: metav1.ObjectMeta{Namespace: scaleNS, Name: "deny-denied"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: *labels("role", "denied"), PolicyTypes: ingress}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: scaleNS, Name: "allow-client"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: *labels("role", "allowed"), PolicyTypes: ingress,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: labels("role", "client")}},
					Ports: port(scaleProbePort)}}}},
	}
	for i := 0; len(pols) < n; i++ {
		pols = append(pols, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns%d", i%namespaces), Name: fmt.Sprintf("fill%d", i)},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: *labels("app", fmt.Sprintf("app%d", (3*i)%scaleFillerApps)), PolicyTypes: ingress,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: labels("team", fmt.Sprintf("t%d", i%4)),
						PodSelector: labels("tier", fmt.Sprintf("t%d", i%3))}},
					Ports: port(8080)}}}})
	}
	var b bytes.Buffer
	var names []string
	for _, p := range pols {
		p.TypeMeta = metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"}
		doc, err := yaml.Marshal(p)
		if err != nil {
			return nil, nil, err
		}
		b.WriteString("---\n")
		b.Write(doc)
		names = append(names, p.Namespace+"/"+p.Name)
	}
	return b.Bytes(), names, nil
}
