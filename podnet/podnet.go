// Package podnet plumbs a pod's network namespace into the node: a veth pair, the pod's
// address and routes, the node's route and neighbour entry, the datapath hooks and the
// endpoint entry. Plumbing and unplumbing are idempotent and undo themselves on failure.
package podnet

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/netnsfile"
)

// GatewayIP is the link-local next hop every pod routes through; the node answers for it
// with a permanent neighbour entry in the pod, so it never needs an address anywhere.
var GatewayIP = netip.MustParseAddr("169.254.1.1")

// GatewayIPv6 is GatewayIP's IPv6 counterpart, a link-local address in the pod's neighbour table.
var GatewayIPv6 = netip.MustParseAddr("fe80::1")

// Pod says what to plumb.
type Pod struct {
	// NodeNetns is the node's network namespace path; empty means the caller's.
	NodeNetns string
	// Netns is the pod's network namespace path; PlumbNetns only names it in messages.
	Netns string
	// ContainerID and IfName name the attachment; the host-side veth name derives from them.
	ContainerID string
	IfName      string
	IP          netip.Addr
	// IPv6 is the pod's IPv6 address in a dual-stack cluster; zero leaves the pod IPv4 only.
	IPv6       netip.Addr
	MTU        int
	EndpointID uint32
	Identity   uint32
}

// Result is what the plumbing made.
type Result struct {
	HostIf      string           `json:"hostInterface"`
	HostIfindex int              `json:"hostIfindex"`
	HostMAC     net.HardwareAddr `json:"hostMAC"`
	PodMAC      net.HardwareAddr `json:"podMAC"`
}

// HostIfName is the node-side veth name of an attachment: "eb" and 12 hex digits of a hash.
func HostIfName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "eb" + hex.EncodeToString(sum[:])[:12]
}

// hostIfNameRE matches the names HostIfName gives.
var hostIfNameRE = regexp.MustCompile(`^eb[0-9a-f]{12}$`)

// IsHostIfName says whether name is one HostIfName gives: the node side of a pod's veth.
func IsHostIfName(name string) bool { return hostIfNameRE.MatchString(name) }

func (p *Pod) validate() error {
	switch {
	case p.Netns == "":
		return errors.New("pod netns is empty")
	case p.ContainerID == "":
		return errors.New("container id is empty")
	case !p.IP.IsValid() || p.IP.Is4In6():
		return fmt.Errorf("pod ip %q is not an IPv4 or IPv6 address", p.IP)
	case p.IPv6.IsValid() && (!p.IP.Is4() || !p.IPv6.Is6() || p.IPv6.Is4In6()):
		return fmt.Errorf("pod ipv6 %q is not an IPv6 address", p.IPv6)
	}
	if p.IfName == "" {
		p.IfName = "eth0"
	}
	if p.MTU == 0 {
		p.MTU = 1500
	}
	if p.MTU < 576 || p.MTU > 65535 {
		return fmt.Errorf("mtu %d is out of range 576-65535", p.MTU)
	}
	return nil
}

// handles opens netlink in the node and pod namespaces.
type handles struct {
	node, pod *netlink.Handle
	podNs     netns.NsHandle
}

// open opens netlink in the node's namespace and in podNs, which it takes over.
func open(p Pod, podNs netns.NsHandle) (*handles, error) {
	h := &handles{podNs: podNs}
	var err error
	if h.pod, err = netlink.NewHandleAt(podNs); err != nil {
		podNs.Close()
		return nil, fmt.Errorf("netlink in pod netns: %w", err)
	}
	nodeNs := netns.None()
	if p.NodeNetns != "" {
		if nodeNs, err = netns.GetFromPath(p.NodeNetns); err != nil {
			h.close()
			return nil, fmt.Errorf("node netns %s: %w", p.NodeNetns, err)
		}
	}
	if nodeNs.IsOpen() {
		h.node, err = netlink.NewHandleAt(nodeNs)
		nodeNs.Close()
	} else {
		h.node, err = netlink.NewHandle()
	}
	if err != nil {
		h.close()
		return nil, fmt.Errorf("netlink in node netns: %w", err)
	}
	return h, nil
}

func (h *handles) close() {
	if h.node != nil {
		h.node.Close()
	}
	if h.pod != nil {
		h.pod.Close()
	}
	h.podNs.Close()
}

// Plumb connects the pod to the node and registers it with the datapath dp. With a nil dp it
// plumbs the kernel path only (the benchmark's no-BPF baseline).
func Plumb(p Pod, dp *loader.Datapath) (Result, error) {
	if err := p.validate(); err != nil {
		return Result{}, err
	}
	ns, err := netns.GetFromPath(p.Netns)
	if err != nil {
		return Result{}, fmt.Errorf("pod netns %s: %w", p.Netns, err)
	}
	defer ns.Close()
	return PlumbNetns(p, ns, dp)
}

// PlumbNetns is Plumb into the open namespace ns, which the caller keeps; p.Netns only names it.
func PlumbNetns(p Pod, ns netns.NsHandle, dp *loader.Datapath) (res Result, err error) {
	if err := p.validate(); err != nil {
		return Result{}, err
	}
	if err := netnsfile.Check(int(ns)); err != nil {
		return Result{}, fmt.Errorf("pod netns %s: %w", p.Netns, err)
	}
	dup, err := unix.FcntlInt(uintptr(ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return Result{}, fmt.Errorf("pod netns %s: %w", p.Netns, err)
	}
	h, err := open(p, netns.NsHandle(dup))
	if err != nil {
		return Result{}, err
	}
	defer h.close()
	hostIf := HostIfName(p.ContainerID, p.IfName)
	created := false
	defer func() {
		if err != nil && created {
			// Leave nothing half-made: the veth (and with it routes and links) goes.
			_ = unplumb(p, h, hostIf, dp)
		}
	}()
	host, podLink, made, err := ensureVeth(h, hostIf, p)
	created = made
	if err != nil {
		return Result{}, err
	}
	res = Result{HostIf: hostIf, HostIfindex: host.Attrs().Index, HostMAC: host.Attrs().HardwareAddr,
		PodMAC: podLink.Attrs().HardwareAddr}
	if err := configurePod(h, p, podLink, res.HostMAC); err != nil {
		return Result{}, err
	}
	if err := configureNode(h.node, p, host, res.PodMAC); err != nil {
		return Result{}, err
	}
	if dp == nil {
		return res, nil
	}
	// The endpoint goes in before the hooks, so the pod's first packet is not taken for spoofed.
	for _, ip := range p.addrs() {
		if err := dp.Endpoints().Upsert(maps.Endpoint{IP: ip, Ifindex: uint32(res.HostIfindex), ID: p.EndpointID,
			Identity: p.Identity, Local: true, MAC: res.PodMAC, NodeMAC: res.HostMAC}); err != nil {
			return Result{}, err
		}
	}
	// tc filters through the node's handle: no namespace switch, no lookup by name.
	if err := dp.AttachPod(h.node, hostIf, res.HostIfindex); err != nil {
		return Result{}, err
	}
	return res, nil
}

// ensureVeth makes the pair, or finds the one an earlier Plumb made.
func ensureVeth(h *handles, hostIf string, p Pod) (netlink.Link, netlink.Link, bool, error) {
	host, err := h.node.LinkByName(hostIf)
	made := false
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if !errors.As(err, &notFound) {
			return nil, nil, false, fmt.Errorf("look up %s: %w", hostIf, err)
		}
		if _, err := h.pod.LinkByName(p.IfName); err == nil {
			return nil, nil, false, fmt.Errorf("pod netns %s already has an interface %s", p.Netns, p.IfName)
		}
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf, MTU: p.MTU}, PeerName: p.IfName,
			PeerMTU: uint32(p.MTU), PeerNamespace: netlink.NsFd(int(h.podNs))}
		if err := h.node.LinkAdd(v); err != nil {
			return nil, nil, false, fmt.Errorf("create veth %s: %w", hostIf, err)
		}
		made = true
		if host, err = h.node.LinkByName(hostIf); err != nil {
			return nil, nil, made, fmt.Errorf("look up %s: %w", hostIf, err)
		}
	}
	podLink, err := h.pod.LinkByName(p.IfName)
	if err != nil {
		return nil, nil, made, fmt.Errorf("look up %s in pod: %w", p.IfName, err)
	}
	return host, podLink, made, nil
}

// hasIPv6 says the pod has an IPv6 address: it is dual stack, or its one address is IPv6.
func (p Pod) hasIPv6() bool { return p.IP.Is6() || p.IPv6.IsValid() }

// addrs are the pod's addresses: its IPv4 one, and its IPv6 one in a dual-stack cluster; its
// IPv6 one alone in an IPv6-only cluster.
func (p Pod) addrs() []netip.Addr {
	if p.IPv6.IsValid() {
		return []netip.Addr{p.IP, p.IPv6}
	}
	return []netip.Addr{p.IP}
}

func configurePod(h *handles, p Pod, l netlink.Link, hostMAC net.HardwareAddr) error {
	if err := namespace.DoHandle(h.podNs, func() error { return SetIPv6(p.IfName, p.hasIPv6()) }); err != nil {
		return err
	}
	nl := h.pod
	if p.IP.Is6() {
		if err := nl.LinkSetUp(l); err != nil {
			return fmt.Errorf("bring up %s in pod: %w", p.IfName, err)
		}
		return configurePodIPv6(nl, p.IP, l, hostMAC)
	}
	if err := nl.AddrReplace(l, &netlink.Addr{IPNet: hostRoute(p.IP)}); err != nil {
		return fmt.Errorf("add %s to pod: %w", p.IP, err)
	}
	if err := nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s in pod: %w", p.IfName, err)
	}
	gw := GatewayIP.AsSlice()
	idx := l.Attrs().Index
	if err := nl.NeighSet(&netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC}); err != nil {
		return fmt.Errorf("add gateway neighbour in pod: %w", err)
	}
	if err := nl.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: hostRoute(GatewayIP), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("add gateway route in pod: %w", err)
	}
	if err := nl.RouteReplace(&netlink.Route{LinkIndex: idx, Gw: gw, Dst: defaultRoute}); err != nil {
		return fmt.Errorf("add default route in pod: %w", err)
	}
	if p.IPv6.IsValid() {
		return configurePodIPv6(nl, p.IPv6, l, hostMAC)
	}
	return nil
}

// configurePodIPv6 gives the pod its IPv6 address (no duplicate detection: the address is the
// pod's alone) and a default route via GatewayIPv6, the node's veth MAC in a permanent entry.
func configurePodIPv6(nl *netlink.Handle, ip netip.Addr, l netlink.Link, hostMAC net.HardwareAddr) error {
	idx := l.Attrs().Index
	if err := nl.AddrReplace(l, &netlink.Addr{IPNet: hostRoute(ip), Flags: unix.IFA_F_NODAD}); err != nil {
		return fmt.Errorf("add %s to pod: %w", ip, err)
	}
	gw := GatewayIPv6.AsSlice()
	if err := nl.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET6, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC}); err != nil {
		return fmt.Errorf("add IPv6 gateway neighbour in pod: %w", err)
	}
	if err := nl.RouteReplace(&netlink.Route{LinkIndex: idx, Gw: gw, Dst: defaultRouteV6}); err != nil {
		return fmt.Errorf("add IPv6 default route in pod: %w", err)
	}
	return nil
}

var (
	defaultRoute   = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	defaultRouteV6 = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
)

func configureNode(nl *netlink.Handle, p Pod, host netlink.Link, podMAC net.HardwareAddr) error {
	if err := namespace.Do(p.NodeNetns, func() error { return SetIPv6(host.Attrs().Name, p.hasIPv6()) }); err != nil {
		return err
	}
	if err := nl.LinkSetUp(host); err != nil {
		return fmt.Errorf("bring up %s: %w", host.Attrs().Name, err)
	}
	idx := host.Attrs().Index
	for _, ip := range p.addrs() {
		family := unix.AF_INET
		if ip.Is6() {
			family = unix.AF_INET6
		}
		if err := nl.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: family, State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: podMAC}); err != nil {
			return fmt.Errorf("add pod neighbour %s on node: %w", ip, err)
		}
		if err := nl.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: hostRoute(ip), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("add route to pod %s on node: %w", ip, err)
		}
	}
	return nil
}

func hostRoute(ip netip.Addr) *net.IPNet {
	return &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}
}

// SetIPv6 turns IPv6 off on an IPv4-only interface (no router solicitations, no DAD), or on
// for a dual-stack one, where addresses and routes are static: no duplicate address detection,
// no router advertisements taken. It writes the sysctls of the calling thread's namespace.
func SetIPv6(ifname string, on bool) error {
	dir := filepath.Join("/proc/sys/net/ipv6/conf", ifname)
	settings := [][2]string{{"disable_ipv6", "1"}}
	if on {
		settings = [][2]string{{"accept_ra", "0"}, {"accept_dad", "0"}, {"disable_ipv6", "0"}}
	}
	for _, kv := range settings {
		if err := os.WriteFile(filepath.Join(dir, kv[0]), []byte(kv[1]), 0o644); err != nil {
			if !on && errors.Is(err, os.ErrNotExist) {
				return nil // a kernel without IPv6: nothing to turn off
			}
			return fmt.Errorf("set %s on %s: %w", kv[0], ifname, err)
		}
	}
	return nil
}

// Unplumb removes what Plumb made: endpoint entry, hooks, veth (and with it the routes).
// It works from the node's side only and never opens the pod's namespace, which may be gone
// or invisible from here. Parts already gone are not an error.
func Unplumb(p Pod, dp *loader.Datapath) error {
	if p.IfName == "" {
		p.IfName = "eth0"
	}
	hostIf := HostIfName(p.ContainerID, p.IfName)
	node, err := nodeHandle(p.NodeNetns)
	if err != nil {
		return err
	}
	defer node.Close()
	return unplumb(p, &handles{node: node}, hostIf, dp)
}

func nodeHandle(path string) (*netlink.Handle, error) {
	if path == "" {
		return netlink.NewHandle()
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("node netns %s: %w", path, err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}

func unplumb(p Pod, h *handles, hostIf string, dp *loader.Datapath) error {
	var errs []error
	for _, ip := range []netip.Addr{p.IP, p.IPv6} {
		if dp != nil && ip.IsValid() {
			errs = append(errs, dp.Endpoints().Delete(ip))
		}
	}
	// The veth goes first, its tc filters with it: removing the hooks before would let the
	// pod's packets reach the node unchecked meanwhile.
	if l, err := h.node.LinkByName(hostIf); err == nil {
		if err := h.node.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete %s: %w", hostIf, err))
		}
	}
	if dp != nil { // pinned links of an older version, and filters of a veth that would not go
		errs = append(errs, loader.DetachPod(h.node, dp.PinDir, hostIf))
	}
	return errors.Join(errs...)
}
