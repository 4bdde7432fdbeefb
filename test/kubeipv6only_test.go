package test

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// TestKubernetesIPv6Only brings up a real Kubernetes of ipFamilies [IPv6]: the API server's
// Service range and the controller manager's cluster CIDR are IPv6, and so is the API server's
// address. Each Node's spec.podCIDRs is one IPv6 /64, kubelet reports one IPv6 address per
// pod, every pair reaches every other, pods resolve Services by name through the cluster DNS
// (an IPv6 cluster IP, answering AAAA records) and reach the API server as
// kubernetes.default, and `lab down` leaves nothing.
func TestKubernetesIPv6Only(t *testing.T) {
	t.Parallel()
	nstest.RequireRoot(t)
	name := "k6" + nstest.Suffix(4)
	downed := false
	t.Cleanup(func() {
		if !downed {
			downLab(t, name)
		}
	})
	spec := ipv6OnlyLab("vxlan")
	spec.Kubernetes = true
	spec.Nodes, spec.Pods = spec.Nodes[:2], spec.Pods[:4] // node1's and node2's pods
	if out, code := ebpfnet(t, "lab", "up", "--name", name, "-f", writeSpec(t, spec)); code != 0 {
		t.Fatalf("lab up: exit %d: %s", code, out)
	}
	st, err := lab.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("nodes have one IPv6 pod CIDR", func(t *testing.T) {
		for _, n := range st.Nodes {
			out := kubectl(t, st, "", "get", "node", n.Name, "-o", "jsonpath={.spec.podCIDRs}")
			var cidrs []string
			if err := json.Unmarshal([]byte(out), &cidrs); err != nil || len(cidrs) != 1 || cidrs[0] != n.PodCIDR.String() || !n.PodCIDR.Addr().Is6() {
				t.Errorf("node %s: spec.podCIDRs %s (%v), want [%s], an IPv6 /64", n.Name, out, err, n.PodCIDR)
			}
		}
	})
	t.Run("pods are kubelet's, with one IPv6 address", func(t *testing.T) {
		checkKubeletPods(t, st)
		for _, p := range st.Pods {
			out := kubectl(t, st, "", "get", "pod", "-n", p.Namespace, p.Name, "-o", "jsonpath={.status.podIPs[*].ip}")
			if want := p.IP.String(); out != want || !p.IP.Is6() {
				t.Errorf("%s: podIPs %q, want %s alone, an IPv6 address", p.Key(), out, want)
			}
		}
	})
	t.Run("all pairs reachable", func(t *testing.T) { checkAllPairs(t, st) })
	if t.Failed() {
		return
	}
	t.Run("cluster DNS, exec, logs and port-forward", func(t *testing.T) {
		if dns := st.ClusterDNS(); !dns.Is6() || !netip.MustParsePrefix(lab.ServiceCIDRv6).Contains(dns) {
			t.Fatalf("the lab hands pods nameserver %s, want one of %s", dns, lab.ServiceCIDRv6)
		}
		checkClusterDNS(t, st)
	})
	t.Run("a Service answers on its IPv6 cluster IP", func(t *testing.T) {
		kubectl(t, st, `apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  selector: {pod: p21}
  ports: [{name: tcp, port: 8080, targetPort: 80, protocol: TCP}, {name: udp, port: 8080, targetPort: 80, protocol: UDP}]
`, "apply", "-f", "-")
		t.Cleanup(func() { kubectl(t, st, "", "delete", "service", "-n", "x", "web", "--ignore-not-found") })
		ip, err := netip.ParseAddr(kubectl(t, st, "", "get", "service", "-n", "x", "web", "-o", "jsonpath={.spec.clusterIP}"))
		if err != nil || !netip.MustParsePrefix(lab.ServiceCIDRv6).Contains(ip) {
			t.Fatalf("x/web has cluster IP %v (%v), want one of %s", ip, err, lab.ServiceCIDRv6)
		}
		src, _ := st.Pod("x/p11")
		for _, proto := range []string{"TCP", "UDP"} {
			if err := probeAgain(src.Netns, netip.AddrPortFrom(ip, 8080), proto); err != nil {
				t.Errorf("x/p11 -> x/web at %s 8080/%s: %v", ip, proto, err)
			}
		}
	})
	downed = true
	downKubeLabLeavingNothing(t, st)
}
