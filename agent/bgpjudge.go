package agent

import (
	"net/netip"

	"github.com/ebpfnet/ebpfnet/bgp"
	"github.com/ebpfnet/ebpfnet/store"
)

// Verdicts on a learned path.
const (
	pathInstalled = "installed" // the prefix's chosen path: in the routes map and the kernel
	pathStandby   = "standby"   // acceptable, but another path of the prefix was chosen
	pathRefused   = "refused"
)

// Reasons a learned path is refused (the reason label of ebpfnet_bgp_routes_refused_total).
const (
	refuseOutsideCluster = "outside-cluster-cidr" // not inside the cluster CIDR of its family
	refuseOwnCIDR        = "own-pod-cidr"         // overlaps this node's own pod CIDR
	refuseNotNodeCIDR    = "not-a-node-pod-cidr"  // inside the cluster, but no node's pod CIDR exactly
	refuseForeignOrigin  = "foreign-origin"       // originated outside the cluster's AS
	refuseWrongNode      = "wrong-node"           // announced for a CIDR by a node that does not own it
	refuseNoNextHop      = "no-next-hop"
)

// judgedPath is a learned path with what the agent made of it.
type judgedPath struct {
	bgp.Path
	Verdict string `json:"verdict"`
	Reason  string `json:"reason,omitempty"`
	// Node owns the prefix (installed and standby paths).
	Node string `json:"node,omitempty"`
	// Kernel is the kernel route an installed path became.
	Kernel string `json:"kernel,omitempty"`
}

// judgePaths decides which learned paths may route pod traffic. Only a path for exactly some
// other node's pod CIDR is accepted, and only if what it says of its origin fits that node:
// pod CIDRs are originated by the cluster's nodes (in the cluster's AS) and by nobody else.
// paths come best first per prefix; the first accepted one of each prefix is installed.
// clusters are the cluster CIDRs, one per family the cluster has.
func judgePaths(paths []bgp.Path, nodes []store.Node, self store.Node, clusters []netip.Prefix, asn uint32) []judgedPath {
	owner := map[netip.Prefix]store.Node{}
	byIP := map[netip.Addr]store.Node{}
	for _, n := range nodes {
		for _, p := range []netip.Prefix{n.PodCIDR, n.PodCIDRv6} {
			if n.Name != self.Name && p.IsValid() {
				owner[p] = n
			}
		}
		byIP[n.IP] = n
		if n.IPv6.IsValid() {
			byIP[n.IPv6] = n
		}
	}
	installed := map[netip.Prefix]bool{}
	out := make([]judgedPath, 0, len(paths))
	for _, p := range paths {
		j := judgedPath{Path: p, Verdict: pathRefused}
		n, reason := judgePath(p, owner, byIP, self, clusters, asn)
		switch {
		case reason != "":
			j.Reason = reason
		case installed[p.Prefix]:
			j.Verdict, j.Node = pathStandby, n.Name
		default:
			j.Verdict, j.Node = pathInstalled, n.Name
			installed[p.Prefix] = true
		}
		out = append(out, j)
	}
	return out
}

// judgePath returns the prefix's owner, or why the path is refused.
func judgePath(p bgp.Path, owner map[netip.Prefix]store.Node, byIP map[netip.Addr]store.Node, self store.Node,
	clusters []netip.Prefix, asn uint32) (store.Node, string) {
	inCluster := false
	for _, c := range clusters {
		inCluster = inCluster || p.Prefix.Bits() >= c.Bits() && c.Contains(p.Prefix.Addr())
	}
	switch {
	case !inCluster:
		return store.Node{}, refuseOutsideCluster
	case p.Prefix.Overlaps(self.PodCIDR) || self.PodCIDRv6.IsValid() && p.Prefix.Overlaps(self.PodCIDRv6):
		return store.Node{}, refuseOwnCIDR
	case !p.NextHop.IsValid() || p.NextHop.IsUnspecified():
		return store.Node{}, refuseNoNextHop
	}
	n, ok := owner[p.Prefix]
	if !ok {
		return store.Node{}, refuseNotNodeCIDR
	}
	if len(p.ASPath) > 0 && p.ASPath[len(p.ASPath)-1] != asn {
		return store.Node{}, refuseForeignOrigin
	}
	if _, fromNode := byIP[p.Peer]; len(p.ASPath) == 0 && !fromNode && !p.OriginatorID.IsValid() {
		// Within the AS from a router, not a node: only a reflected path (it names its
		// originator) can be a node's; one the router originates itself is not.
		return store.Node{}, refuseForeignOrigin
	}
	// Whatever names a node (the next hop, a route reflector's originator, a mesh peer
	// announcing without an AS path) must name the owner.
	for _, ip := range []netip.Addr{p.NextHop, p.OriginatorID} {
		if other, ok := byIP[ip]; ok && other.Name != n.Name {
			return store.Node{}, refuseWrongNode
		}
	}
	if other, ok := byIP[p.Peer]; ok && len(p.ASPath) == 0 && !p.OriginatorID.IsValid() && other.Name != n.Name {
		return store.Node{}, refuseWrongNode
	}
	return n, ""
}
