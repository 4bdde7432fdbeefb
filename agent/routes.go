package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/netlinksafe"
	"github.com/ebpfnet/ebpfnet/store"
)

// routeProtocol tags the kernel routes the agent owns, so it never touches others.
const routeProtocol = netlink.RouteProtocol(0xeb)

// remoteRoute is a route to another node's pod CIDR: from the store, or learned by BGP.
type remoteRoute struct {
	Prefix netip.Prefix
	Node   store.Node // the CIDR's owner
	// Via is the kernel route's gateway in native mode: the owner itself, or a BGP next hop.
	Via netip.Addr
}

// routeSource says which remote routes this node should have. complete is false while the
// source is still learning (BGP after a restart): routes it does not name yet stay.
type routeSource interface {
	remoteRoutes(ctx context.Context, nodes []store.Node) (routes []remoteRoute, complete bool, err error)
}

// storeRoutes is routing: store: every other node's pod CIDR, via that node.
type storeRoutes struct{ self string }

func (s storeRoutes) remoteRoutes(_ context.Context, nodes []store.Node) ([]remoteRoute, bool, error) {
	var out []remoteRoute
	for _, n := range nodes {
		if n.Name != s.self {
			out = append(out, remoteRoute{Prefix: n.PodCIDR, Node: n, Via: n.IP})
			if n.PodCIDRv6.IsValid() {
				out = append(out, remoteRoute{Prefix: n.PodCIDRv6, Node: n, Via: n.IP})
			}
		}
	}
	return out, true, nil
}

// routeReconciler owns the routes map and the node's kernel routes (tagged routeProtocol).
type routeReconciler struct {
	cfg    *settled
	node   store.Node
	routes *maps.Routes
	source routeSource
	log    *slog.Logger
}

// reconcile makes the routes map and the kernel routes match the node list and the source.
func (rr *routeReconciler) reconcile(ctx context.Context, p *pass) error {
	nodes := p.nodes
	remote, complete, err := rr.source.remoteRoutes(ctx, nodes)
	if err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	return errors.Join(rr.reconcileMap(nodes, remote, complete), rr.reconcileKernel(remote, complete))
}

// tunnelAddr is the address n's pod CIDRs are tunnelled to: its IPv6 one with underlayFamily
// IPv6, unless it has none (a node not yet upgraded to an IPv6 underlay stays reachable over
// IPv4), else its IPv4 one.
func (rr *routeReconciler) tunnelAddr(n store.Node) netip.Addr {
	if rr.cfg.underlayV6 && n.IPv6.IsValid() {
		return n.IPv6
	}
	return n.IP
}

func (rr *routeReconciler) reconcileMap(nodes []store.Node, remote []remoteRoute, complete bool) error {
	want := map[netip.Prefix]maps.Route{rr.cfg.cluster: {Prefix: rr.cfg.cluster, Flags: maps.RouteUnreachable}}
	// NodeID is the owner's position in the node list: informational, it may shift.
	ids := map[string]uint32{}
	for i, n := range nodes {
		ids[n.Name] = uint32(i + 1)
	}
	want[rr.node.PodCIDR] = maps.Route{Prefix: rr.node.PodCIDR, NodeIP: rr.tunnelAddr(rr.node), NodeID: ids[rr.node.Name], Mode: rr.cfg.mode, Flags: maps.RouteLocal}
	if c := rr.cfg.clusterV6; c.IsValid() {
		// IPv6 pod CIDRs are reached as the IPv4 ones are: by their owners' tunnelAddr.
		want[c] = maps.Route{Prefix: c, Flags: maps.RouteUnreachable}
		want[rr.node.PodCIDRv6] = maps.Route{Prefix: rr.node.PodCIDRv6, NodeIP: rr.tunnelAddr(rr.node), NodeID: ids[rr.node.Name], Mode: rr.cfg.mode, Flags: maps.RouteLocal}
	}
	for _, r := range remote {
		want[r.Prefix] = maps.Route{Prefix: r.Prefix, NodeIP: rr.tunnelAddr(r.Node), NodeID: ids[r.Node.Name], Mode: rr.cfg.mode}
	}
	have, err := rr.routes.List()
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range have {
		w, ok := want[r.Prefix]
		if !ok {
			if !complete && r.Flags == 0 {
				continue // a remote route the source has not confirmed or withdrawn yet
			}
			rr.log.Info("remove route", "prefix", r.Prefix, "node", r.NodeIP)
			errs = append(errs, rr.routes.Delete(r.Prefix))
			continue
		}
		// List leaves NodeIP out of local and unreachable entries.
		if (w.NodeIP == r.NodeIP || w.Flags != 0) && w.Mode == r.Mode && w.Flags == r.Flags {
			delete(want, r.Prefix)
		}
	}
	for _, r := range want {
		if r.Flags == 0 {
			rr.log.Info("add route", "prefix", r.Prefix, "node", r.NodeIP, "mode", r.Mode)
		}
		errs = append(errs, rr.routes.Upsert(r))
	}
	return errors.Join(errs...)
}

// reconcileKernel keeps the node's own kernel routes: the service CIDR, and in VXLAN and
// IP-in-IP mode the cluster CIDR, through the host device, where from_host translates and
// encapsulates; in native mode one route per remote pod CIDR via its gateway.
func (rr *routeReconciler) reconcileKernel(remote []remoteRoute, complete bool) error {
	underlay, err := netlink.LinkByName(rr.cfg.UnderlayInterface)
	if err != nil {
		return err
	}
	host, err := netlink.LinkByName(HostDevice)
	if err != nil {
		return err
	}
	want := map[string]netlink.Route{}
	// viaHost routes p through the host device from the node's address of p's family; a node
	// without one (no IPv6 address) has no source for that traffic, and no route.
	viaHost := func(p netip.Prefix) {
		src := rr.node.IP
		if p.Addr().Is6() {
			src = rr.node.IPv6
		}
		if src.IsValid() {
			want[p.String()] = netlink.Route{LinkIndex: host.Attrs().Index, Dst: prefixNet(p), Src: src.AsSlice(),
				Scope: netlink.SCOPE_LINK, Protocol: routeProtocol}
		}
	}
	viaHost(rr.cfg.serviceCIDR)
	// The node reaches IPv6 cluster IPs and other nodes' IPv6 pods the same way, in every
	// mode: from_host routes IPv6 pod traffic itself.
	if rr.cfg.clusterV6.IsValid() {
		viaHost(rr.cfg.serviceCIDRv6)
		viaHost(rr.cfg.clusterV6)
	}
	var errs []error
	if rr.cfg.mode == maps.ModeNative {
		errs = append(errs, rr.reconcileNeighbours(underlay, remote))
		for _, r := range remote {
			if r.Prefix.Addr().Is6() {
				continue // the datapath routes IPv6 pod traffic itself, to the owner's MAC
			}
			gw, err := gateway(r.Via)
			if err != nil {
				rr.log.Warn("no way to a pod CIDR's next hop", "prefix", r.Prefix, "nextHop", r.Via, "err", err)
				continue
			}
			want[r.Prefix.String()] = netlink.Route{LinkIndex: underlay.Attrs().Index, Dst: prefixNet(r.Prefix),
				Gw: gw.AsSlice(), Protocol: routeProtocol}
		}
	} else {
		viaHost(rr.cfg.cluster)
	}
	have, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: routeProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list kernel routes: %w", err))...)
	}
	for _, r := range have {
		if r.Dst == nil {
			continue
		}
		w, ok := want[r.Dst.String()]
		if ok && r.Gw.Equal(w.Gw) && r.LinkIndex == w.LinkIndex && r.Src.Equal(w.Src) {
			delete(want, r.Dst.String())
			continue
		}
		if !ok && (complete || r.Gw == nil) {
			errs = append(errs, netlink.RouteDel(&r))
		}
	}
	for _, r := range want {
		if err := netlink.RouteReplace(&r); err != nil {
			errs = append(errs, fmt.Errorf("route %s: %w", r.Dst, err))
		}
	}
	return errors.Join(errs...)
}

// ntfExtManaged is NTF_EXT_MANAGED: the kernel keeps such a neighbour entry resolved.
const ntfExtManaged = 1

// reconcileNeighbours keeps a managed neighbour entry on the underlay for the way to the owner
// of every remote IPv6 pod CIDR in native mode (the owner's IPv4 address, or the gateway to
// it): the datapath sends IPv6 pod traffic to that address's MAC, and drops it while the
// kernel has not resolved one. Entries of next hops no
// longer used go.
func (rr *routeReconciler) reconcileNeighbours(underlay netlink.Link, remote []remoteRoute) error {
	want := map[netip.Addr]bool{}
	for _, r := range remote {
		if !r.Prefix.Addr().Is6() {
			continue
		}
		// The datapath looks up the owner's IPv4 address, not the route's next hop.
		if gw, err := gateway(r.Node.IP); err == nil {
			want[gw] = true
		}
	}
	have, err := netlinksafe.NeighList(underlay.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list neighbours: %w", err)
	}
	var errs []error
	for _, n := range have {
		ip, _ := netip.AddrFromSlice(n.IP.To4())
		switch {
		case n.FlagsExt&ntfExtManaged == 0:
		case want[ip]:
			delete(want, ip)
		default:
			errs = append(errs, netlink.NeighDel(&n))
		}
	}
	for ip := range want {
		n := &netlink.Neigh{LinkIndex: underlay.Attrs().Index, Family: netlink.FAMILY_V4, IP: ip.AsSlice(),
			State: netlink.NUD_NONE, FlagsExt: ntfExtManaged}
		if err := netlink.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("managed neighbour %s: %w", ip, err))
		}
	}
	return errors.Join(errs...)
}

// gateway is the on-link address that leads to nextHop: nextHop itself when it is on a
// connected network, else the gateway of the kernel's route to it (a route reflector may
// pass on a next hop in another rack).
func gateway(nextHop netip.Addr) (netip.Addr, error) {
	rs, err := netlink.RouteGet(nextHop.AsSlice())
	if err != nil {
		return netip.Addr{}, err
	}
	if len(rs) == 0 || rs[0].Gw == nil {
		return nextHop, nil
	}
	gw, ok := netip.AddrFromSlice(rs[0].Gw.To4())
	if !ok {
		return netip.Addr{}, fmt.Errorf("gateway %s is not IPv4", rs[0].Gw)
	}
	return gw, nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
