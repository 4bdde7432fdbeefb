package test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
)

// Issue 20: VXLAN over an IPv6 underlay. In an IPv4 vxlan lab with underlayFamily IPv6, every
// node's routes lead to the other nodes' IPv6 addresses, the pods' IPv4 crosses the underlay
// inside VXLAN over IPv6 between those addresses, every pair reaches every other, pods leave
// room for the larger headers in their MTU, and a bulk transfer (full-size segments, GSO)
// arrives whole. TestIPv6Only's vxlan lab carries IPv6 pods over an IPv6 underlay the same way.
func TestVXLANOverIPv6(t *testing.T) {
	t.Parallel()
	spec := threeNodeLab("vxlan")
	spec.UnderlayFamily = lab.FamilyIPv6
	st := upLab(t, "v6u", spec)
	checkVXLANOverIPv6(t, st)
}

// checkVXLANOverIPv6 runs the checks of a vxlan lab with underlayFamily IPv6 (of any pod
// families).
func checkVXLANOverIPv6(t *testing.T, st *lab.State) {
	t.Run("routes lead to IPv6 addresses", func(t *testing.T) { checkRoutesViaIPv6(t, st) })
	t.Run("all pairs", func(t *testing.T) { checkAllPairsEveryFamily(t, st) })
	t.Run("VXLAN over IPv6 on the underlay", func(t *testing.T) {
		node1, _ := st.Node("node1")
		node2, _ := st.Node("node2")
		filter := fmt.Sprintf("ip6 and udp dst port %d and src host %s and dst host %s", st.VXLANPort, node1.IPv6, node2.IPv6)
		for _, family := range st.Families() {
			probe := func() { _ = st.ProbeFamily("x/p11", "x/p21", 80, "TCP", family) }
			if !seen(t, node1.Netns, filter, probe) {
				t.Errorf("%s pod traffic: no packet matching %q on node1's underlay", family, filter)
			}
		}
	})
	t.Run("pod MTU leaves room for VXLAN over IPv6", func(t *testing.T) { checkMTUForIPv6Underlay(t, st) })
	t.Run("bulk transfer", func(t *testing.T) {
		for _, family := range st.Families() {
			transferFamily(t, st, "x/p11", "x/p21", family, 8<<20)
		}
	})
}

// checkRoutesViaIPv6: node1's routes to the other nodes' pod CIDRs lead to their IPv6
// underlay addresses.
func checkRoutesViaIPv6(t *testing.T, st *lab.State) {
	node1, _ := st.Node("node1")
	var routes []maps.Route
	if err := agentapi.NewClient(node1.Socket).Get(t.Context(), "/v1/routes", &routes); err != nil {
		t.Fatal(err)
	}
	via := map[netip.Prefix]netip.Addr{}
	for _, r := range routes {
		via[r.Prefix] = r.NodeIP
	}
	for _, n := range st.Nodes {
		for _, p := range []netip.Prefix{n.PodCIDR, n.PodCIDRv6} {
			if n.Name != "node1" && p.IsValid() && (!n.IPv6.IsValid() || via[p] != n.IPv6) {
				t.Errorf("node1 routes %s via %v, want %s's IPv6 address %v", p, via[p], n.Name, n.IPv6)
			}
		}
	}
}

// checkMTUForIPv6Underlay: a pod's MTU is its node's underlay's less VXLAN over IPv6's 70 bytes.
func checkMTUForIPv6Underlay(t *testing.T, st *lab.State) {
	p, _ := st.Pod("x/p11")
	node1, _ := st.Node("node1")
	var underlay, pod int
	err := namespace.Do(node1.Netns, func() error {
		l, err := netlink.LinkByName(lab.UnderlayIf)
		if err == nil {
			underlay = l.Attrs().MTU
		}
		return err
	})
	if err == nil {
		err = namespace.Do(p.Netns, func() error {
			l, err := netlink.LinkByName("eth0")
			if err == nil {
				pod = l.Attrs().MTU
			}
			return err
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	if pod != underlay-maps.VXLANOverheadIPv6 {
		t.Fatalf("x/p11's MTU is %d on an underlay of %d, want %d (VXLAN over IPv6 adds %d)", pod, underlay, underlay-maps.VXLANOverheadIPv6, maps.VXLANOverheadIPv6)
	}
}
