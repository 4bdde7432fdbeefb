package lab

import (
	"fmt"
	"net/netip"
	"strings"
)

// birdConfig is the router's bird.conf: one BGP session per node, on the router's leg in the
// node's segment.
//
// The router's kernel forwards pod traffic by the routes BGP taught it, and only those: there is
// no `protocol direct` and no `learn`, so `birdc show route` lists what the nodes announced
// (and the router's own announcements, which stay out of its kernel: they are for the nodes).
//
// Dual stack: the nodes announce their IPv6 pod CIDRs with their IPv4 addresses as next hops,
// IPv4-mapped (RFC 4798), which BIRD takes with `extended next hop`, learns and passes on. It
// does not forward by them: BIRD 2.0 cannot install an IPv6 route via an IPv4 gateway in the
// kernel (that needs RTA_VIA), so IPv6 pod traffic does not cross racks yet.
//
// Next hops. A node learns a route with a next hop in its own segment, or the router's address
// there: a next hop in another rack would be unreachable. With eBGP (routerASN ≠ asn) BIRD does
// just that by itself (it keeps a next hop only when both sessions share an interface). An iBGP
// route reflector keeps next hops whatever the segment, so its export filter sets them: kept
// inside the node's segment, the router's own address otherwise (next hop self only where
// needed, so nodes of one rack still talk directly).
//
// AS paths go out as BIRD makes them: with eBGP a node sees [routerASN, asn] and, accepting its
// own AS once from a peer of another AS, knows the path began at a node of the cluster.
func (s *State) birdConfig() string {
	b, r := s.BGP, s.Router
	var w strings.Builder
	fmt.Fprintf(&w, "# The BGP router of lab %s, written by `ebpfnet lab` (lab/birdconf.go): do not edit.\n", s.Name)
	fmt.Fprintf(&w, "log stderr all;\nrouter id %s;\n\nprotocol device {}\n\n", routerIP)
	w.WriteString("# Forward by what BGP taught; the router's own announcements are for the nodes only.\n")
	w.WriteString("protocol kernel {\n\tipv4 { import none; export where source = RTS_BGP; };\n}\n\n")
	if s.UnderlayIPv6() {
		w.WriteString("protocol kernel {\n\tipv6 { import none; export where source = RTS_BGP; };\n}\n\n")
	}
	if len(r.Announced) > 0 {
		w.WriteString("# Announced by the router itself (State.AnnounceFromRouter).\nprotocol static announced {\n\tipv4;\n")
		for _, p := range r.Announced {
			fmt.Fprintf(&w, "\troute %s blackhole;\n", p)
		}
		w.WriteString("}\n\n")
	}
	hold := seconds(b.HoldTime)
	w.WriteString("# Every node's session: the lab's short timers, and quick retries after a failure.\ntemplate bgp lab_node {\n")
	fmt.Fprintf(&w, "\tdirect;\n\thold time %d;\n\tkeepalive time %d;\n\tconnect retry time 2;\n\terror wait time 1, 5;\n", hold, max(hold/3, 1))
	fmt.Fprintf(&w, "\tgraceful restart on;\n\tgraceful restart time %d;\n", seconds(b.RestartTime))
	if b.Password != "" {
		fmt.Fprintf(&w, "\tpassword %q;\n", b.Password)
	}
	w.WriteString("}\n")
	reflector := b.RouterASN == b.ASN
	for i := range s.Nodes {
		n := &s.Nodes[i]
		bridge, local := s.segment(n)
		fmt.Fprintf(&w, "\n# Node %s, on %s.\nprotocol bgp %s from lab_node {\n", n.Name, bridge, birdProtocol(n.Name))
		fmt.Fprintf(&w, "\tlocal %s as %d;\n\tneighbor %s as %d;\n", local, b.RouterASN, n.IP, b.ASN)
		if reflector {
			w.WriteString("\trr client;\n")
		}
		if leg := s.Router.leg(bridge); s.UnderlayIPv6() && leg != nil && leg.AddressV6.IsValid() {
			// Nodes announce their IPv6 pod CIDRs with their IPv6 addresses as next hops
			// (or IPv4 ones, IPv4-mapped as RFC 4798 has them, from a node without one);
			// the router gives them its own IPv6 address on the segment as next hop.
			fmt.Fprintf(&w, "\tipv6 { import all; export all; extended next hop on; next hop address %s; };\n", leg.AddressV6.Addr())
		}
		if !reflector {
			w.WriteString("\tipv4 { import all; export all; };\n}\n")
			continue
		}
		w.WriteString("\tipv4 {\n\t\timport all;\n\t\texport filter {\n")
		fmt.Fprintf(&w, "\t\t\tif defined(bgp_next_hop) && bgp_next_hop ~ %s then accept;\n", netip.PrefixFrom(local, 24).Masked())
		fmt.Fprintf(&w, "\t\t\tbgp_next_hop = %s;\n\t\t\taccept;\n\t\t};\n\t};\n}\n", local)
	}
	return w.String()
}

// birdProtocol is node's BGP protocol in bird.conf (and `birdc show protocols`): node names are
// DNS labels, and '-' is no symbol character of BIRD's.
func birdProtocol(node string) string { return "node_" + strings.ReplaceAll(node, "-", "_") }
