package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
)

// The checks of a dual-stack kubernetes cluster, run on TestKubernetesLab's native lab (the
// standard lab in ipFamilies [IPv4, IPv6]: three nodes, pods a, b and c in x, y and z).

// checkKubeDualStackNodes: each Node's spec.podCIDRs is the lab's pod CIDRs of the node, IPv4
// then IPv6, the IPv6 one a /64 of the cluster's, no two nodes sharing one.
func checkKubeDualStackNodes(t *testing.T, st *lab.State) {
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
			Spec     struct{ PodCIDRs []string }
		}
	}
	if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "nodes", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != len(st.Nodes) {
		t.Fatalf("the API server holds %d nodes, the lab %d", len(list.Items), len(st.Nodes))
	}
	cluster6 := netip.MustParsePrefix(st.ClusterCIDRv6)
	seen := map[netip.Prefix]string{}
	for _, it := range list.Items {
		n, err := st.Node(it.Metadata.Name)
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{n.PodCIDR.String(), n.PodCIDRv6.String()}; fmt.Sprint(it.Spec.PodCIDRs) != fmt.Sprint(want) {
			t.Errorf("node %s: spec.podCIDRs %v, want %v", n.Name, it.Spec.PodCIDRs, want)
		}
		if !cluster6.Contains(n.PodCIDRv6.Addr()) || n.PodCIDRv6.Bits() != 64 {
			t.Errorf("node %s: IPv6 pod CIDR %s is not a /64 of %s", n.Name, n.PodCIDRv6, cluster6)
		}
		for _, p := range []netip.Prefix{n.PodCIDR, n.PodCIDRv6} {
			if other, dup := seen[p]; dup {
				t.Errorf("nodes %s and %s share %s", other, n.Name, p)
			}
			seen[p] = n.Name
		}
	}
}

// checkKubeDualStackPods: every lab pod is Running and Ready in the API server with
// status.podIPs its IPv4 and IPv6 addresses, each inside its node's pod CIDR of that family.
func checkKubeDualStackPods(t *testing.T, st *lab.State) {
	var list struct {
		Items []struct {
			Metadata struct{ Namespace, Name string }
			Status   struct {
				Phase      string
				PodIPs     []struct{ IP string }
				Conditions []struct{ Type, Status string }
			}
		}
	}
	if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "pods", "-A", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, it := range list.Items {
		p, err := st.Pod(it.Metadata.Namespace + "/" + it.Metadata.Name)
		if err != nil {
			continue // CoreDNS, the agents
		}
		seen++
		ready := false
		for _, c := range it.Status.Conditions {
			ready = ready || c.Type == "Ready" && c.Status == "True"
		}
		var ips []string
		for _, ip := range it.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		if want := []string{p.IP.String(), p.IPv6.String()}; it.Status.Phase != "Running" || !ready || fmt.Sprint(ips) != fmt.Sprint(want) {
			t.Errorf("%s: phase %s, ready %t, podIPs %v; want Running, ready, %v", p.Key(), it.Status.Phase, ready, ips, want)
		}
		n, _ := st.Node(p.Node)
		if !n.PodCIDR.Contains(p.IP) || !n.PodCIDRv6.Contains(p.IPv6) {
			t.Errorf("%s has %s and %s, outside %s's pod CIDRs %s and %s", p.Key(), p.IP, p.IPv6, n.Name, n.PodCIDR, n.PodCIDRv6)
		}
	}
	if seen != len(st.Pods) {
		t.Errorf("the API server holds %d of the lab's %d pods", seen, len(st.Pods))
	}
}

// checkAllPairsEveryFamily: every pod reaches every other at its address of each of the
// lab's families, over TCP and UDP. A pair that did not connect is asked again, as
// checkAllPairs does.
func checkAllPairsEveryFamily(t *testing.T, st *lab.State) {
	for _, family := range st.Families() {
		for _, proto := range []string{"TCP", "UDP"} {
			m, err := st.MatrixFamily(80, proto, family)
			if err != nil {
				t.Fatal(err)
			}
			if len(m) != len(st.Pods) {
				t.Fatalf("%s %s matrix has %d rows, want %d", family, proto, len(m), len(st.Pods))
			}
			for from, row := range m {
				for to, ok := range row {
					if ok {
						continue
					}
					src, dst := mustPod(t, st, from), mustPod(t, st, to)
					ip, err := dst.Addr(family)
					if err != nil {
						t.Fatal(err)
					}
					err = probeAgain(src.Netns, netip.AddrPortFrom(ip, 80), proto)
					t.Logf("%s %s %s->%s asked again: %v", family, proto, from, to, err)
					if err != nil {
						t.Errorf("%s %s: %s does not reach %s: %v", family, proto, from, to, err)
					}
				}
			}
		}
	}
}

// checkKubeDualStackPolicy applies, with kubectl, a policy denying all ingress to x/c: x/a and
// x/b no longer reach it over either family, while x/a still reaches x/b; then one that lets in
// only x/a's addresses as ipBlocks (an IPv4 /32 and an IPv6 /128): x/a reaches x/c over both
// families, x/b over neither. Once both are deleted, x/a and x/b reach x/c again over both. The
// three pods are on three nodes.
func checkKubeDualStackPolicy(t *testing.T, st *lab.State) {
	a, _ := st.Pod("x/a")
	deny := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-to-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Ingress]
`
	fromA := fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-to-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Ingress]
  ingress:
  - from: [{ipBlock: {cidr: %s/32}}, {ipBlock: {cidr: %s/128}}]
`, a.IP, a.IPv6)
	t.Cleanup(func() {
		kubectl(t, st, "", "delete", "networkpolicy", "-n", "x", "deny-to-c", "a-to-c", "--ignore-not-found")
		policyWait(t, st)
	})
	kubectl(t, st, deny, "apply", "-f", "-")
	policyWait(t, st)
	expectReach(t, st, "deny-to-c", map[string]bool{"x/a->x/c": false, "x/b->x/c": false, "x/a->x/b": true})
	kubectl(t, st, fromA, "apply", "-f", "-")
	policyWait(t, st)
	expectReach(t, st, "deny-to-c and a-to-c", map[string]bool{"x/a->x/c": true, "x/b->x/c": false})
	kubectl(t, st, "", "delete", "networkpolicy", "-n", "x", "deny-to-c", "a-to-c")
	policyWait(t, st)
	expectReach(t, st, "no policy", map[string]bool{"x/a->x/c": true, "x/b->x/c": true})
}

// expectReach probes each pair ("from->to", TCP 80) over every family of the lab until each
// connects or not as wanted, for at most 30 s.
func expectReach(t *testing.T, st *lab.State, what string, want map[string]bool) {
	t.Helper()
	eventually(t, 30*time.Second, what+" enforced in both families", func() (bool, string) {
		var wrong []string
		for pair, reach := range want {
			from, to, _ := strings.Cut(pair, "->")
			for _, family := range st.Families() {
				if err := st.ProbeFamily(from, to, 80, "TCP", family); (err == nil) != reach {
					wrong = append(wrong, fmt.Sprintf("%s %s: %v, want reachable %t", family, pair, err, reach))
				}
			}
		}
		return len(wrong) == 0, strings.Join(wrong, "; ")
	})
}

// checkKubeDualStackService: a RequireDualStack Service gets a cluster IP of each family from
// the API server's ranges, the agents hold both, and both answer from every pod (x/c, its
// backend, by hairpin).
func checkKubeDualStackService(t *testing.T, st *lab.State) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec := lab.ServiceSpec{Namespace: "x", Name: "web", Selector: map[string]string{"pod": "c"},
		IPFamilyPolicy: "RequireDualStack", Ports: []lab.ServicePortSpec{
			{Name: "tcp", Port: 8080, TargetPort: intstr.FromInt32(80), Protocol: "TCP"}}}
	stored, err := st.ApplyServices(ctx, []lab.ServiceSpec{spec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kubectl(t, st, "", "delete", "service", "-n", "x", "web") })
	ips := stored[0].Spec.ClusterIPs
	if len(ips) != 2 || !netip.MustParsePrefix(lab.ServiceCIDR).Contains(netip.MustParseAddr(ips[0])) ||
		!netip.MustParsePrefix(lab.ServiceCIDRv6).Contains(netip.MustParseAddr(ips[1])) {
		t.Fatalf("service x/web has cluster IPs %v, want one of %s then one of %s", ips, lab.ServiceCIDR, lab.ServiceCIDRv6)
	}
	for i, family := range []string{lab.FamilyIPv4, lab.FamilyIPv6} {
		var ip netip.Addr
		eventually(t, time.Minute, "the agents to hold x/web's "+family+" cluster IP", func() (bool, string) {
			ip, err = st.ServiceIPFamily(ctx, "x/web", 8080, "TCP", family)
			return err == nil && ip.String() == ips[i], fmt.Sprint(ip, err)
		})
		for _, src := range st.Pods {
			if err := probeAgain(src.Netns, netip.AddrPortFrom(ip, 8080), "TCP"); err != nil {
				t.Errorf("%s -> x/web at %s 8080/TCP: %v", src.Key(), ip, err)
			}
		}
	}
}

// checkKubeDualStackAgentKill SIGKILLs node2's agent: the one kubelet starts again takes both
// pod CIDRs from its Node (spec.podCIDRs), and every pair still connects over both families.
func checkKubeDualStackAgentKill(t *testing.T, st *lab.State) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n, err := st.Node("node2")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.KillAgent(ctx, n.Name); err != nil {
		t.Fatal(err)
	}
	status, err := agentapi.NewClient(n.Socket).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status.PodCIDR != n.PodCIDR.String() || status.PodCIDRv6 != n.PodCIDRv6.String() {
		t.Errorf("node2's new agent has pod CIDRs %s and %s, its Node %s and %s", status.PodCIDR, status.PodCIDRv6, n.PodCIDR, n.PodCIDRv6)
	}
	checkAllPairsEveryFamily(t, st)
}
