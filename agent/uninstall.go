package agent

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/netlinksafe"
	"github.com/ebpfnet/ebpfnet/podnet"
)

// RemoveFromNode removes, from the node's network namespace, what agents and the CNI plugin
// made there that no pin holds: the kernel routes the agent keeps (protocol 0xeb), its devices
// (the VXLAN device, the host device pair) and the node side of every pod's veth, which takes
// the pod's routes and the datapath's tc filters on it with it. It returns what it removed, and
// goes on past what it cannot remove. The datapath's programs, links and maps (and the filters
// of veths that stay) are loader.Uninstall's.
func RemoveFromNode() ([]string, error) {
	var removed []string
	var errs []error
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlinksafe.RouteListFiltered(family, &netlink.Route{Protocol: routeProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			errs = append(errs, fmt.Errorf("list routes: %w", err))
		}
		for _, r := range routes {
			if err := netlink.RouteDel(&r); err != nil {
				errs = append(errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
				continue
			}
			removed = append(removed, "route "+r.Dst.String())
		}
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		return removed, errors.Join(append(errs, fmt.Errorf("list links: %w", err))...)
	}
	for _, l := range links {
		name := l.Attrs().Name
		_, veth := l.(*netlink.Veth)
		// Deleting one end of a veth pair deletes the other: the host device's peer goes with it.
		if name != VXLANDevice && name != HostDevice && !(veth && podnet.IsHostIfName(name)) {
			continue
		}
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete link %s: %w", name, err))
			continue
		}
		removed = append(removed, "link "+name)
	}
	return removed, errors.Join(errs...)
}
