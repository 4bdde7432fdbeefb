package test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/netlinksafe"
)

// ipv6OnlyLab is threeNodeLab with IPv6 addresses alone (ipFamilies: [IPv6]), node3's pods
// serving x/web.
func ipv6OnlyLab(mode string) *lab.Spec {
	s := threeNodeLab(mode)
	s.IPFamilies = []string{lab.FamilyIPv6}
	for i := range s.Pods {
		if s.Pods[i].Node == "node3" {
			s.Pods[i].Labels["role"] = "web"
		}
	}
	return s
}

// Issue 20: an IPv6-only cluster. In vxlan (over an IPv6 underlay: nothing but IPv6 between
// pods and nodes), native and ipip mode, a 3-node lab of ipFamilies [IPv6] gives every pod one
// address, an IPv6 one; every pair reaches each other; a Service gets an
// IPv6 cluster IP and node port; pods reach outside from their node's IPv6 address; and a
// NetworkPolicy applies to IPv6 peers.
func TestIPv6Only(t *testing.T) {
	for _, mode := range []string{"vxlan", "native", "ipip"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			spec := ipv6OnlyLab(mode)
			if mode == "vxlan" {
				spec.UnderlayFamily = lab.FamilyIPv6 // IPv6 only, underlay included
			}
			st := upLab(t, "o"+mode[:2], spec)
			t.Run("addresses", func(t *testing.T) { checkIPv6OnlyAddresses(t, st) })
			t.Run("all pairs", func(t *testing.T) {
				if err := st.CheckFamily(lab.FamilyIPv4); err == nil {
					t.Fatal("an IPv6-only lab takes --family ipv4")
				}
				checkAllPairsEveryFamily(t, st)
			})
			if mode == "vxlan" {
				t.Run("over an IPv6 underlay", func(t *testing.T) { checkVXLANOverIPv6(t, st) })
			} else {
				t.Run("IPv6 on the underlay", func(t *testing.T) { checkIPv6OnlyUnderlay(t, st, mode) })
			}
			t.Run("service", func(t *testing.T) { checkIPv6OnlyService(t, st) })
			t.Run("node ports", func(t *testing.T) { checkDualStackNodePorts(t, st) })
			t.Run("masquerade", func(t *testing.T) { checkDualStackMasquerade(t, st) })
			t.Run("policy", func(t *testing.T) { checkIPv6OnlyPolicy(t, st) })
		})
	}
}

// checkIPv6OnlyAddresses: each node's pod CIDR is a /64 of the lab's IPv6 cluster CIDR, each
// pod's one address lies in its node's, none is given twice, `lab pods -o json` lists that
// address alone, and the pod's eth0 has no IPv4 address.
func checkIPv6OnlyAddresses(t *testing.T, st *lab.State) {
	cluster := netip.MustParsePrefix(st.ClusterCIDR)
	if !cluster.Addr().Is6() || st.ClusterCIDRv6 != "" {
		t.Fatalf("lab has clusterCIDR %s and clusterCIDRv6 %q, want an IPv6 one alone", cluster, st.ClusterCIDRv6)
	}
	for _, n := range st.Nodes {
		if !cluster.Contains(n.PodCIDR.Addr()) || n.PodCIDR.Bits() != 64 || n.PodCIDRv6.IsValid() {
			t.Errorf("node %s has pod CIDRs %v and %v, want a /64 of %s alone", n.Name, n.PodCIDR, n.PodCIDRv6, cluster)
		}
	}
	seen := map[netip.Addr]string{}
	for _, p := range st.Pods {
		n, _ := st.Node(p.Node)
		if !p.IP.Is6() || !n.PodCIDR.Contains(p.IP) || p.IPv6.IsValid() {
			t.Errorf("pod %s has %v and %v, want one IPv6 address in %s", p.Key(), p.IP, p.IPv6, n.PodCIDR)
		}
		if other, dup := seen[p.IP]; dup {
			t.Errorf("pods %s and %s share %s", other, p.Key(), p.IP)
		}
		seen[p.IP] = p.Key()
		var v4, v6 []netlink.Addr
		err := namespace.Do(p.Netns, func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			if v4, err = netlinksafe.AddrList(l, netlink.FAMILY_V4); err != nil {
				return err
			}
			v6, err = netlinksafe.AddrList(l, netlink.FAMILY_V6)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, a := range v6 {
			found = found || a.IP.Equal(p.IP.AsSlice())
		}
		if len(v4) != 0 || !found {
			t.Errorf("pod %s's eth0 has IPv4 %v and IPv6 %v, want none and %s", p.Key(), v4, v6, p.IP)
		}
	}
	out, code := ebpfnet(t, "lab", "pods", "--name", st.Name, "-o", "json")
	var pods []struct {
		Name string   `json:"name"`
		IP   string   `json:"ip"`
		IPs  []string `json:"ips"`
	}
	if code != 0 || jsonUnmarshal(out, &pods) != nil || len(pods) != len(st.Pods) {
		t.Fatalf("lab pods -o json (exit %d): %s", code, out)
	}
	for _, p := range pods {
		if ip, err := netip.ParseAddr(p.IP); err != nil || !ip.Is6() || len(p.IPs) != 1 || p.IPs[0] != p.IP {
			t.Errorf("lab pods lists %s with ip %q and ips %v, want one IPv6 address", p.Name, p.IP, p.IPs)
		}
	}
}

// checkIPv6OnlyUnderlay: pod traffic crosses the underlay as IPv6: as it is (native) or as
// 6in4 (ipip).
func checkIPv6OnlyUnderlay(t *testing.T, st *lab.State, mode string) {
	src, _ := st.Pod("x/p11")
	dst, _ := st.Pod("x/p21")
	node, _ := st.Node("node1")
	filter := fmt.Sprintf("ip6 and src host %s and dst host %s and tcp port 80", src.IP, dst.IP)
	if mode == "ipip" {
		filter = "ip proto 41" // 6in4
	}
	probe := func() { _ = st.Probe(src.Key(), dst.Key(), 80, "TCP") }
	if !seen(t, node.Netns, filter, probe) {
		t.Fatalf("no packet matching %q on node1's underlay", filter)
	}
}

// checkIPv6OnlyService: a NodePort Service that names no family gets one IPv6 cluster IP, from
// the lab's IPv6 service CIDR, and answers on it over TCP and UDP from a pod on every node.
func checkIPv6OnlyService(t *testing.T, st *lab.State) {
	ctx := context.Background()
	spec := lab.ServiceSpec{Namespace: "x", Name: "web", Type: "NodePort", Selector: map[string]string{"role": "web"},
		Ports: []lab.ServicePortSpec{
			{Name: "tcp", Port: 8080, TargetPort: intstr.FromInt32(80), Protocol: "TCP", NodePort: 30080},
			{Name: "udp", Port: 8080, TargetPort: intstr.FromInt32(80), Protocol: "UDP", NodePort: 30080}}}
	stored, err := st.ApplyServices(ctx, []lab.ServiceSpec{spec})
	if err != nil {
		t.Fatal(err)
	}
	cidr := netip.MustParsePrefix(lab.ServiceCIDRv6)
	if ips := stored[0].Spec.ClusterIPs; len(ips) != 1 || !cidr.Contains(netip.MustParseAddr(ips[0])) {
		t.Fatalf("service x/web has cluster IPs %v, want one of %s", ips, cidr)
	}
	for _, from := range []string{"x/p11", "x/p21", "x/p32"} {
		for _, proto := range []string{"TCP", "UDP"} {
			ip, err := st.ServiceIP(ctx, "x/web", 8080, proto)
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

// checkIPv6OnlyPolicy: under a policy letting only x/p11's address (an ipBlock /128) into
// x/p21, x/p11 reaches it and x/p12 no longer does; both did before.
func checkIPv6OnlyPolicy(t *testing.T, st *lab.State) {
	ctx := context.Background()
	p11, _ := st.Pod("x/p11")
	for _, from := range []string{"x/p11", "x/p12"} {
		if err := st.Probe(from, "x/p21", 80, "TCP"); err != nil {
			t.Fatalf("before the policy: %s -> x/p21: %v", from, err)
		}
	}
	np := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-p11, namespace: x}\n" +
		"spec:\n  podSelector: {matchLabels: {pod: p21}}\n  policyTypes: [Ingress]\n" +
		"  ingress: [{from: [{ipBlock: {cidr: \"" + netip.PrefixFrom(p11.IP, 128).String() + "\"}}]}]\n"
	if _, err := st.Client().ApplyPolicies(ctx, []byte(np)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Client().DeletePolicy(ctx, "x", "only-p11"); err != nil {
			t.Errorf("delete policy x/only-p11: %v", err)
		}
	})
	eventually(t, 10*time.Second, "x/p11, and not x/p12, to reach x/p21", func() (bool, string) {
		allowed := st.Probe("x/p11", "x/p21", 80, "TCP")
		denied := st.Probe("x/p12", "x/p21", 80, "TCP")
		return allowed == nil && denied != nil, fmt.Sprintf("x/p11: %v; x/p12: %v", allowed, denied)
	})
	out, code := ebpfnet(t, "policy", "explain", "--lab", st.Name, "x/p12", "x/p21", "--port", "80", "--protocol", "TCP")
	if want := "x/p12 -> x/p21 TCP/80: DENIED"; code != 0 || !strings.Contains(out, want) {
		t.Errorf("policy explain x/p12 x/p21 (exit %d) does not say %q:\n%s", code, want, out)
	}
}
