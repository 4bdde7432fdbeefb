package lab

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/podnet"
)

// Names of the devices the lab makes inside node namespaces.
const (
	UnderlayIf = "eth0"
	VXLANIf    = "ebpfnet_vxlan"
	bridgeIf   = "br0"
)

// Options tune how a lab is made.
type Options struct {
	// Exe is the ebpfnet binary that runs the pods' servers (`ebpfnet lab serve`);
	// empty means this process's own executable.
	Exe string
}

// Up makes the lab described by spec and returns when every pod serves its ports. On any
// error it removes whatever it made.
func Up(ctx context.Context, name string, spec *Spec, opts Options) (st *State, err error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if _, err := os.Stat(statePath(name)); err == nil {
		return nil, fmt.Errorf("lab %q is already up (ebpfnet lab down --name %s)", name, name)
	}
	if opts.Exe == "" {
		if opts.Exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find own executable: %w", err)
		}
	}
	if st, err = plan(name, spec); err != nil {
		return nil, err
	}
	// The plan is saved first, so that `lab down` can undo a lab that failed half-way.
	if err := st.save(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if derr := Down(name); derr != nil {
				slog.Warn("clean up failed lab", "lab", name, "err", derr)
			}
		}
	}()
	b := &builder{st: st, mode: mustMode(st.Mode), dps: map[string]*loader.Datapath{}}
	defer b.close()
	if err := b.underlay(); err != nil {
		return nil, err
	}
	for i := range st.Nodes {
		if err := b.node(&st.Nodes[i]); err != nil {
			return nil, fmt.Errorf("node %s: %w", st.Nodes[i].Name, err)
		}
	}
	for i := range st.Pods {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := b.pod(&st.Pods[i]); err != nil {
			return nil, fmt.Errorf("pod %s: %w", st.Pods[i].Key(), err)
		}
	}
	if err := startServers(ctx, st, opts.Exe); err != nil {
		return nil, err
	}
	return st, st.save()
}

func mustMode(s string) maps.Mode {
	m, err := maps.ParseMode(s)
	if err != nil {
		panic(err)
	}
	return m
}

// builder carries what making one lab needs across its steps.
type builder struct {
	st   *State
	mode maps.Mode
	dps  map[string]*loader.Datapath
}

func (b *builder) close() {
	for _, dp := range b.dps {
		dp.Close()
	}
}

// underlay makes the switch every node's eth0 plugs into: a bridge in its own namespace.
func (b *builder) underlay() error {
	if _, err := namespace.Create(filepath.Base(b.st.Underlay)); err != nil {
		return err
	}
	return inNetns(b.st.Underlay, func(h *netlink.Handle) error {
		off := false
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeIf, MTU: underlayMTU}, MulticastSnooping: &off}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("add underlay bridge: %w", err)
		}
		if err := disableIPv6(bridgeIf); err != nil {
			return err
		}
		return h.LinkSetUp(br)
	})
}

// inNetns runs fn with a netlink handle (and the thread) inside the namespace at path.
func inNetns(path string, fn func(h *netlink.Handle) error) error {
	return namespace.Do(path, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		return fn(h)
	})
}

func (b *builder) node(n *Node) error {
	if _, err := namespace.Create(filepath.Base(n.Netns)); err != nil {
		return err
	}
	if err := b.plugIntoUnderlay(n); err != nil {
		return err
	}
	dp, err := loader.Load(loader.Config{PinDir: n.PinDir})
	if err != nil {
		return err
	}
	b.dps[n.Name] = dp
	return inNetns(n.Netns, func(h *netlink.Handle) error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable forwarding: %w", err)
		}
		eth0, err := h.LinkByName(UnderlayIf)
		if err != nil {
			return err
		}
		cfg := maps.NodeConfig{NodeIP: n.IP, UnderlayIfindex: uint32(eth0.Attrs().Index), Mode: b.mode}
		switch b.mode {
		case maps.ModeVXLAN:
			idx, err := b.vxlanDevice(h, dp)
			if err != nil {
				return err
			}
			cfg.TunnelIfindex = uint32(idx)
		case maps.ModeNative:
			if err := b.nativeRoutes(h, n, eth0); err != nil {
				return err
			}
		}
		if err := dp.SetNodeConfig(cfg); err != nil {
			return err
		}
		if err := b.routes(dp, n); err != nil {
			return err
		}
		_, err = dp.Attach(UnderlayIf, loader.HookFromUnderlay)
		return err
	})
}

// plugIntoUnderlay gives the node its eth0 on the underlay bridge.
func (b *builder) plugIntoUnderlay(n *Node) error {
	idx := 0
	for i := range b.st.Nodes {
		if b.st.Nodes[i].Name == n.Name {
			idx = i
		}
	}
	port := fmt.Sprintf("n%d", idx)
	nodeNs, err := os.Open(n.Netns)
	if err != nil {
		return err
	}
	defer nodeNs.Close()
	err = inNetns(b.st.Underlay, func(h *netlink.Handle) error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port, MTU: underlayMTU}, PeerName: UnderlayIf,
			PeerMTU: underlayMTU, PeerNamespace: netlink.NsFd(int(nodeNs.Fd()))}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("add underlay port: %w", err)
		}
		l, err := h.LinkByName(port)
		if err != nil {
			return err
		}
		br, err := h.LinkByName(bridgeIf)
		if err != nil {
			return err
		}
		if err := disableIPv6(port); err != nil {
			return err
		}
		if err := h.LinkSetMaster(l, br); err != nil {
			return err
		}
		return h.LinkSetUp(l)
	})
	if err != nil {
		return err
	}
	return inNetns(n.Netns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(UnderlayIf)
		if err != nil {
			return err
		}
		if err := disableIPv6(UnderlayIf); err != nil {
			return err
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.IP.AsSlice(), Mask: net.CIDRMask(underlayCIDR.Bits(), 32)}}
		if err := h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("address eth0: %w", err)
		}
		return h.LinkSetUp(l)
	})
}

func disableIPv6(ifname string) error {
	return os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", ifname, "disable_ipv6"), []byte("1"), 0o644)
}

// vxlanDevice makes the node's one collect-metadata VXLAN device and hooks from_overlay on it.
func (b *builder) vxlanDevice(h *netlink.Handle, dp *loader.Datapath) (int, error) {
	v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: VXLANIf, MTU: underlayMTU}, FlowBased: true,
		Port: b.st.VXLANPort, Learning: false}
	if err := h.LinkAdd(v); err != nil {
		return 0, fmt.Errorf("add vxlan device: %w", err)
	}
	l, err := h.LinkByName(VXLANIf)
	if err != nil {
		return 0, err
	}
	if err := disableIPv6(VXLANIf); err != nil {
		return 0, err
	}
	if err := h.LinkSetUp(l); err != nil {
		return 0, err
	}
	if _, err := dp.Attach(VXLANIf, loader.HookFromOverlay); err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}

// nativeRoutes gives the node kernel routes to every other node's pods, via that node.
func (b *builder) nativeRoutes(h *netlink.Handle, self *Node, eth0 netlink.Link) error {
	for _, n := range b.st.Nodes {
		if n.Name == self.Name {
			continue
		}
		r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: prefixNet(n.PodCIDR), Gw: n.IP.AsSlice()}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s via %s: %w", n.PodCIDR, n.IP, err)
		}
	}
	return nil
}

// routes fills the routes map: the cluster CIDR is a dead end unless a more specific entry
// (this node's own pod CIDR, or another node's) says otherwise.
func (b *builder) routes(dp *loader.Datapath, self *Node) error {
	rs := dp.Routes()
	if err := rs.Upsert(maps.Route{Prefix: netip.MustParsePrefix(b.st.ClusterCIDR), Flags: maps.RouteUnreachable}); err != nil {
		return err
	}
	for i, n := range b.st.Nodes {
		r := maps.Route{Prefix: n.PodCIDR, NodeIP: n.IP, NodeID: uint32(i + 1), Mode: b.mode}
		if n.Name == self.Name {
			r.Flags = maps.RouteLocal
		}
		if err := rs.Upsert(r); err != nil {
			return err
		}
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (b *builder) pod(p *Pod) error {
	if _, err := namespace.Create(filepath.Base(p.Netns)); err != nil {
		return err
	}
	node, err := b.st.Node(p.Node)
	if err != nil {
		return err
	}
	_, err = podnet.Plumb(podnet.Pod{NodeNetns: node.Netns, Netns: p.Netns, ContainerID: p.ContainerID,
		IP: p.IP, MTU: node.MTU, EndpointID: p.EndpointID}, b.dps[p.Node])
	return err
}

// startServers starts one `ebpfnet lab serve` per pod with ports, inside the pod, and waits
// until each has bound every port.
func startServers(ctx context.Context, st *State, exe string) error {
	dir := filepath.Join(Dir(st.Name), "servers")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var ready []string
	for i := range st.Pods {
		p := &st.Pods[i]
		if len(p.Ports) == 0 {
			continue
		}
		var ports []string
		for _, pt := range p.Ports {
			ports = append(ports, fmt.Sprintf("%d/%s", pt.Port, pt.Protocol))
		}
		base := filepath.Join(dir, p.Namespace+"."+p.Name)
		os.Remove(base + ".ready")
		logf, err := os.Create(base + ".log")
		if err != nil {
			return err
		}
		cmd := exec.Command("ip", "netns", "exec", filepath.Base(p.Netns), exe, "lab", "serve",
			"--ready", base+".ready", "--ports", strings.Join(ports, ","))
		cmd.Env = append(os.Environ(), ServeEnv+"=1")
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		err = cmd.Start()
		logf.Close()
		if err != nil {
			return fmt.Errorf("start server in %s: %w", p.Key(), err)
		}
		p.ServerPID = cmd.Process.Pid
		go cmd.Wait() // reap it if it dies while we still run
		ready = append(ready, base+".ready")
	}
	if err := st.save(); err != nil {
		return err
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, f := range ready {
		for {
			if _, err := os.Stat(f); err == nil {
				break
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(strings.TrimSuffix(f, ".ready") + ".log")
				return fmt.Errorf("server %s did not become ready: %s", filepath.Base(f), strings.TrimSpace(string(log)))
			}
			time.Sleep(10 * time.Millisecond) // polling a file the server writes once bound
		}
	}
	return nil
}

// ServeEnv marks a process started as a lab server (test binaries dispatch on it).
const ServeEnv = "EBPFNET_LAB_SERVE"
