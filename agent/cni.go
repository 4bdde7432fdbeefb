package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/fdpass"
	"github.com/ebpfnet/ebpfnet/ipam"
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/netlinksafe"
	"github.com/ebpfnet/ebpfnet/netnsfile"
	"github.com/ebpfnet/ebpfnet/podnet"
	"github.com/ebpfnet/ebpfnet/store"
)

// owner is the key of the attachment r names in IPAM and the store.
func owner(r agentapi.AttachRequest) string { return r.ContainerID + "/" + r.IfName }

// checkAttach refuses a request that names no attachment.
func checkAttach(r agentapi.AttachRequest) error {
	switch {
	case r.ContainerID == "":
		return &agentapi.APIError{Code: agentapi.CodeInvalidEnv, Message: "container id is empty"}
	case r.IfName == "":
		return &agentapi.APIError{Code: agentapi.CodeInvalidEnv, Message: "interface name is empty"}
	}
	return nil
}

// podNetns takes the pod's netns the plugin passed (the caller closes it); req.Netns is never opened.
func podNetns(ctx context.Context, req agentapi.AttachRequest) (netns.NsHandle, error) {
	fd := fdpass.FDFrom(ctx)
	if fd < 0 {
		return netns.None(), &agentapi.APIError{Code: agentapi.CodeInvalidEnv, Message: fmt.Sprintf("netns %s: no namespace descriptor came with the request", req.Netns)}
	}
	if err := usablePodNetns(fd); err != nil {
		unix.Close(fd)
		return netns.None(), &agentapi.APIError{Code: agentapi.CodeInvalidEnv, Message: fmt.Sprintf("netns %s: %v", req.Netns, err)}
	}
	return netns.NsHandle(fd), nil
}

// usablePodNetns says why fd cannot be a pod's namespace: not a network namespace, or the node's.
func usablePodNetns(fd int) error {
	if err := netnsfile.Check(fd); err != nil {
		return err
	}
	own, err := netnsfile.Same(fd, "/proc/self/ns/net")
	if err != nil {
		return err
	}
	if own {
		return errors.New("it is the node's own network namespace")
	}
	return nil
}

// AddPhases are the phases of a CNI ADD that ebpfnet_cni_add_phase_seconds times, in order.
var AddPhases = []string{"pod", "queue", "room", "ipam", "plumb", "record"}

const addPhaseHelp = "pod (waiting for the Pod from the API server), queue (for the CNI operations ahead), " +
	"room (the map capacity check), ipam (the address lease), " +
	"plumb (veth, addresses, routes, BPF hooks), record (the endpoint in the store)"

// phaseTimer observes the time since its last mark under a phase of ebpfnet_cni_add_phase_seconds.
type phaseTimer struct {
	h    *prometheus.HistogramVec
	last time.Time
}

func (p *phaseTimer) mark(phase string) {
	now := time.Now()
	if p.h != nil {
		p.h.WithLabelValues(phase).Observe(now.Sub(p.last).Seconds())
	}
	p.last = now
}

// cniAdd gives a pod its interface, address and endpoint; on any failure it undoes all of it.
func (a *Agent) cniAdd(ctx context.Context, req agentapi.AttachRequest) (res agentapi.AttachResult, err error) {
	timer := &phaseTimer{last: time.Now()}
	if a.metrics != nil {
		timer.h = a.metrics.cniAddPhases
	}
	ns, err := podNetns(ctx, req)
	if err != nil {
		return res, err
	}
	defer ns.Close()
	if err := checkAttach(req); err != nil {
		return res, err
	}
	// Where pods are made by an API server, their labels and ports come from it: wait for the
	// Pod rather than guess.
	if err := a.cluster.WaitPod(ctx, req.Namespace, req.Pod); err != nil {
		return res, &agentapi.APIError{Code: agentapi.CodeTryAgainLater, Message: err.Error()}
	}
	timer.mark("pod")
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	timer.mark("queue")
	if err := a.roomFor(ctx, req); err != nil {
		return res, err
	}
	timer.mark("room")
	ip, err := a.ipam.Allocate(ctx, owner(req))
	if err != nil {
		if errors.Is(err, ipam.ErrExhausted) {
			return res, &agentapi.APIError{Code: agentapi.CodeTryAgainLater, Message: err.Error()}
		}
		return res, err
	}
	timer.mark("ipam")
	pod := podnet.Pod{Netns: req.Netns, ContainerID: req.ContainerID, IfName: req.IfName, IP: ip,
		IPv6: ipam.Paired(ip, a.node.PodCIDR, a.node.PodCIDRv6), MTU: a.PodMTU(), EndpointID: endpointID(ip, a.node.PodCIDR)}
	defer func() {
		if err != nil {
			undo := errors.Join(podnet.Unplumb(pod, a.dp), a.ipam.Release(ctx, owner(req)),
				a.cluster.DeleteEndpoint(ctx, a.node.Name, owner(req)))
			if undo != nil {
				slog.Warn("cni add: undoing a failed add", "container", req.ContainerID, "err", undo)
			}
		}
	}()
	plumbed, err := podnet.PlumbNetns(pod, ns, a.dp)
	if err != nil {
		return res, err
	}
	timer.mark("plumb")
	ep := store.Endpoint{ContainerID: req.ContainerID, IfName: req.IfName, Node: a.node.Name, Namespace: req.Namespace,
		Pod: req.Pod, IP: ip, IPv6: pod.IPv6, MAC: plumbed.PodMAC.String(), HostIf: plumbed.HostIf, Netns: req.Netns,
		Labels: req.Labels, ID: pod.EndpointID, MTU: pod.MTU}
	if err := a.cluster.PutEndpoint(ctx, ep); err != nil {
		return res, fmt.Errorf("record endpoint: %w", err)
	}
	timer.mark("record")
	res = agentapi.AttachResult{IP: ip, Gateway: podnet.GatewayIP, IPv6: pod.IPv6, GatewayV6: podnet.GatewayIPv6, MAC: ep.MAC, HostIf: plumbed.HostIf,
		HostMAC: plumbed.HostMAC.String(), MTU: pod.MTU}
	if ip.Is6() { // an IPv6-only cluster: the one address is IPv6
		res.Gateway, res.IPv6, res.GatewayV6 = podnet.GatewayIPv6, netip.Addr{}, netip.Addr{}
	}
	return res, nil
}

// endpointID numbers an endpoint by its address within the node's pod CIDR: unique per node.
func endpointID(ip netip.Addr, cidr netip.Prefix) uint32 { return ipam.Offset(ip, cidr) }

// cniDel removes a pod's attachment from the node's side; whatever is already gone is fine.
func (a *Agent) cniDel(ctx context.Context, req agentapi.AttachRequest) error {
	if fd := fdpass.FDFrom(ctx); fd >= 0 {
		unix.Close(fd) // not needed: deleting the host veth takes the pod's end along
	}
	if err := checkAttach(req); err != nil {
		return err
	}
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	ep, ok, err := a.cluster.Endpoint(ctx, a.node.Name, owner(req))
	if err != nil {
		return err
	}
	if !ok {
		ep = store.Endpoint{ContainerID: req.ContainerID, IfName: req.IfName, Netns: req.Netns}
		if ip, found, _ := a.leaseOf(ctx, owner(req)); found {
			ep.IP = ip
		}
	}
	return a.forget(ctx, ep)
}

func (a *Agent) leaseOf(ctx context.Context, owner string) (netip.Addr, bool, error) {
	leases, err := a.ipam.Leases(ctx)
	if err != nil {
		return netip.Addr{}, false, err
	}
	ip, ok := leases[owner]
	return ip, ok, nil
}

// cniCheck verifies that the attachment is as ADD made it.
func (a *Agent) cniCheck(ctx context.Context, req agentapi.AttachRequest) error {
	ns, err := podNetns(ctx, req)
	if err != nil {
		return err
	}
	defer ns.Close()
	if err := checkAttach(req); err != nil {
		return err
	}
	ep, ok, err := a.cluster.Endpoint(ctx, a.node.Name, owner(req))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no endpoint for %s", owner(req))
	}
	host, err := netlink.LinkByName(ep.HostIf)
	if err != nil {
		return fmt.Errorf("host interface %s: %w", ep.HostIf, err)
	}
	m, ok, err := a.dp.Endpoints().Lookup(ep.IP)
	if err != nil || !ok {
		return fmt.Errorf("no datapath entry for %s (%w)", ep.IP, err)
	}
	if m.Ifindex != uint32(host.Attrs().Index) || m.MAC.String() != ep.MAC {
		return fmt.Errorf("datapath entry for %s points at ifindex %d MAC %s, want %d %s", ep.IP, m.Ifindex, m.MAC, host.Attrs().Index, ep.MAC)
	}
	for _, h := range loader.PodHooks {
		if err := a.dp.CheckAttached(ep.HostIf, h); err != nil {
			return err
		}
	}
	return checkPod(ns, req.IfName, ep)
}

// checkPod looks inside the pod: the interface, its MAC, and for each of the endpoint's
// addresses the address and the default route.
func checkPod(ns netns.NsHandle, ifName string, ep store.Endpoint) error {
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in pod netns: %w", err)
	}
	defer nh.Close()
	h := netlinksafe.NewHandle(nh)
	l, err := h.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("pod interface %s: %w", ifName, err)
	}
	if l.Attrs().HardwareAddr.String() != ep.MAC {
		return fmt.Errorf("pod interface %s has MAC %s, want %s", ifName, l.Attrs().HardwareAddr, ep.MAC)
	}
	for _, ip := range ep.Addrs() {
		if err := checkPodAddr(h, l, ip); err != nil {
			return err
		}
	}
	return nil
}

// checkPodAddr checks that the pod's interface l holds ip alone (/32, /128) and that the pod
// routes that family through the gateway.
func checkPodAddr(h netlinksafe.Handle, l netlink.Link, ip netip.Addr) error {
	family, gw, dflt := netlink.FAMILY_V4, podnet.GatewayIP, "0.0.0.0/0"
	if ip.Is6() {
		family, gw, dflt = netlink.FAMILY_V6, podnet.GatewayIPv6, "::/0"
	}
	addrs, err := h.AddrList(l, family)
	if err != nil {
		return err
	}
	found := false
	for _, ad := range addrs {
		ones, _ := ad.Mask.Size()
		if ad.IP.Equal(ip.AsSlice()) && ones == ip.BitLen() {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("pod interface %s lacks %s/%d", l.Attrs().Name, ip, ip.BitLen())
	}
	routes, err := h.RouteList(l, family)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.String() == dflt) && r.Gw.Equal(net.IP(gw.AsSlice())) {
			return nil
		}
	}
	return fmt.Errorf("pod has no default route via %s", gw)
}

// cniGC removes every attachment of this node that is not in req.Valid.
func (a *Agent) cniGC(ctx context.Context, req agentapi.GCRequest) (agentapi.GCResult, error) {
	valid := map[string]bool{}
	for _, v := range req.Valid {
		valid[v.ContainerID+"/"+v.IfName] = true
	}
	a.cniMu.Lock()
	defer a.cniMu.Unlock()
	eps, err := a.cluster.Endpoints(ctx, a.node.Name)
	if err != nil {
		return agentapi.GCResult{}, err
	}
	res := agentapi.GCResult{Removed: []agentapi.Attachment{}}
	var errs []error
	for _, e := range eps {
		if valid[e.Owner()] {
			continue
		}
		errs = append(errs, a.forget(ctx, e))
		res.Removed = append(res.Removed, agentapi.Attachment{ContainerID: e.ContainerID, IfName: e.IfName})
	}
	// Leases whose endpoint record never got written (a crash mid-ADD) go too.
	leases, err := a.ipam.Leases(ctx)
	if err != nil {
		return res, err
	}
	for owner := range leases {
		if !valid[owner] {
			errs = append(errs, a.ipam.Release(ctx, owner))
		}
	}
	return res, errors.Join(errs...)
}
