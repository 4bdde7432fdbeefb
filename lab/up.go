package lab

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/netlinksafe"
	"github.com/ebpfnet/ebpfnet/podnet"
)

// MetricsPort is where each lab agent serves Prometheus metrics, on its underlay address.
const MetricsPort = 9962

// UnderlayIf is each node's device on the underlay.
const UnderlayIf = "eth0"

const bridgeIf = "br0"

// Options tune how a lab is made.
type Options struct {
	// Exe is the ebpfnet binary that runs etcd, the agents and the pods' servers; empty
	// means this process's own executable.
	Exe string
	// CNIPlugin is the ebpfnet-cni binary; empty means ebpfnet-cni beside Exe.
	CNIPlugin string
	// AgentExe and AgentCNI are what a kubernetes lab's agent image holds (the DaemonSet's
	// agent, and the plugin its init container installs); empty means Exe and CNIPlugin. A
	// lab can so start on another build of the agent, to be upgraded by a rollout.
	AgentExe, AgentCNI string
}

func (o *Options) fill() error {
	if o.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
		o.Exe = exe
	}
	if o.CNIPlugin == "" {
		o.CNIPlugin = filepath.Join(filepath.Dir(o.Exe), "ebpfnet-cni")
	}
	if o.AgentExe == "" {
		o.AgentExe = o.Exe
	}
	if o.AgentCNI == "" {
		o.AgentCNI = o.CNIPlugin
	}
	for _, f := range []string{o.Exe, o.CNIPlugin, o.AgentExe, o.AgentCNI} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("lab needs %s: %w (make build)", f, err)
		}
	}
	return nil
}

// Up makes the lab described by spec on the real control plane (an etcd, one agent per node,
// pods added through the CNI plugin) and returns when every pod serves its ports. On any
// error it removes whatever it made.
func Up(ctx context.Context, name string, spec *Spec, opts Options) (st *State, err error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	if _, err := os.Stat(statePath(name)); err == nil {
		return nil, fmt.Errorf("lab %q is already up (ebpfnet lab down --name %s)", name, name)
	}
	if err := opts.fill(); err != nil {
		return nil, err
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
	b := &builder{st: st, opts: opts}
	if err := b.underlay(ctx); err != nil {
		return nil, err
	}
	if err := b.router(ctx); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	if st.Kubernetes {
		if err := b.kubeControlPlane(ctx); err != nil {
			return nil, err
		}
	}
	for i := range st.Nodes {
		if err := b.node(ctx, &st.Nodes[i]); err != nil {
			return nil, fmt.Errorf("node %s: %w", st.Nodes[i].Name, err)
		}
	}
	if st.CNI == CNICilium {
		// The peer: Cilium's agents are ready once they wrote their CNI config; there is no
		// ebpfnet agent to converge or program.
		if err := b.ciliumAgents(ctx); err != nil {
			return nil, fmt.Errorf("cilium: %w", err)
		}
	} else {
		if st.Kubernetes {
			if err := b.kubeAgents(ctx); err != nil {
				return nil, fmt.Errorf("ebpfnet's DaemonSet: %w", err)
			}
		}
		if err := b.converged(ctx); err != nil {
			return nil, err
		}
	}
	if st.Kubernetes {
		if err := b.kubePods(ctx); err != nil {
			return nil, err
		}
		if _, err := st.ApplyServices(ctx, spec.Services); err != nil {
			return nil, err
		}
		if st.CNI != CNICilium {
			if err := st.Client().Sync(ctx); err != nil {
				return nil, fmt.Errorf("program the lab on every node: %w", err)
			}
		}
		return st, st.save()
	}
	if err := st.declare(ctx, st.Pods); err != nil {
		return nil, err
	}
	for i := range st.Pods {
		if err := b.pod(ctx, &st.Pods[i]); err != nil {
			return nil, fmt.Errorf("pod %s: %w", st.Pods[i].Key(), err)
		}
	}
	if err := st.save(); err != nil {
		return nil, err
	}
	if err := st.Client().Sync(ctx); err != nil {
		return nil, fmt.Errorf("program the lab on every node: %w", err)
	}
	err = startServers(ctx, st, opts.Exe)
	if serr := st.save(); err == nil {
		err = serr
	}
	if err != nil {
		return nil, err
	}
	if _, err := st.ApplyServices(ctx, spec.Services); err != nil {
		return nil, err
	}
	return st, nil
}

// builder carries what making one lab needs across its steps.
type builder struct {
	st         *State
	opts       Options
	cp         *kube.ControlPlane // a kubernetes lab's control plane
	images     []string           // a kubernetes lab's image archives
	agentImage string             // the agent's image among them, by name
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

// underlay makes the switch every node plugs into, a bridge in its own namespace, and runs
// the cluster's etcd there.
func (b *builder) underlay(ctx context.Context) error {
	if _, err := namespace.Create(filepath.Base(b.st.Underlay)); err != nil {
		return err
	}
	err := inNetns(b.st.Underlay, func(h *netlink.Handle) error {
		br, err := addBridge(h, bridgeIf)
		if err != nil {
			return err
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: etcdIP.AsSlice(), Mask: net.CIDRMask(underlayCIDR.Bits(), 32)}}
		if err := h.AddrAdd(br, addr); err != nil {
			return err
		}
		if b.st.UnderlayIPv6() {
			if err := addIPv6(h, br, UnderlayIPv6); err != nil {
				return fmt.Errorf("underlay %s: %w", bridgeIf, err)
			}
		}
		if err := h.LinkSetUp(br); err != nil {
			return err
		}
		if b.st.Router == nil {
			return nil
		}
		// Racks reach etcd, and NodePort probes from here reach the racks, through the router.
		return h.RouteAdd(&netlink.Route{Dst: prefixNet(segmentsCIDR), Gw: routerIP.AsSlice()})
	})
	if err != nil {
		return err
	}
	return b.st.startEtcd(ctx, b.opts.Exe)
}

func (b *builder) node(ctx context.Context, n *Node) error {
	if _, err := namespace.Create(filepath.Base(n.Netns)); err != nil {
		return err
	}
	if err := b.plugIntoUnderlay(n); err != nil {
		return err
	}
	if b.st.Kubernetes {
		return b.kubeNode(ctx, n)
	}
	return b.startNodeAgent(ctx, n, agent.StoreConfig{Type: "etcd", Endpoints: []string{b.st.EtcdURL}})
}

// startNodeAgent writes the node's agent config, with its store, and starts the agent.
func (b *builder) startNodeAgent(ctx context.Context, n *Node, st agent.StoreConfig) error {
	dir := filepath.Dir(n.Socket)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	data, err := yaml.Marshal(b.st.agentConfig(n, st))
	if err != nil {
		return err
	}
	cfgFile := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(cfgFile, data, 0o600); err != nil {
		return err
	}
	return b.startAgent(ctx, n, cfgFile)
}

// agentConfig is node n's agent config, with its store: every lab agent's is made here.
func (s *State) agentConfig(n *Node, st agent.StoreConfig) agent.Config {
	cfg := agent.Config{NodeName: n.Name, UnderlayInterface: UnderlayIf, ClusterCIDR: s.ClusterCIDR, ClusterCIDRv6: s.ClusterCIDRv6,
		PodCIDR: n.WantCIDR, Mode: s.Mode, VXLANPort: s.VXLANPort, UnderlayFamily: s.UnderlayFamily, PinDir: n.PinDir, Socket: n.Socket,
		MetricsAddress: netip.AddrPortFrom(n.IP, MetricsPort).String(), Store: st,
		IdentityGCGrace: IdentityGCGrace.String(), ServiceCIDR: s.serviceCIDR(),
		Masquerade: s.Masquerade, NoMasqueradeCIDRs: s.NoMasqueradeCIDRs, MapSizes: s.MapSizes}
	if s.BGP != nil {
		cfg.Routing, cfg.BGP = agent.RoutingBGP, s.bgpConfig(n)
	}
	return cfg
}

// bgpConfig is node n's BGP speaker: in the lab's AS, peering with the router's address in its
// segment and, with meshNodes, with every other node.
func (s *State) bgpConfig(n *Node) *agent.BGPConfig {
	b := &agent.BGPConfig{ASN: uint32(s.BGP.ASN), MeshNodes: s.BGP.MeshNodes, HoldTime: s.BGP.HoldTime,
		GracefulRestart: &agent.BGPGracefulRestart{RestartTime: s.BGP.RestartTime}}
	if s.BGP.HasRouter() {
		_, router := s.segment(n)
		b.Peers = []agent.BGPPeer{{Address: router.String(), ASN: uint32(s.BGP.RouterASN), Password: s.BGP.Password}}
	}
	if s.BGP.MeshNodes {
		b.MeshPassword = s.BGP.Password
	}
	return b
}

// IdentityGCGrace is how long the lab's agents keep an identity no pod uses: short, so that a
// lab shows its collection.
const IdentityGCGrace = 10 * time.Second

// startAgent runs the node's agent and waits until it answers ready; it records the pod CIDR
// the agent got from the store.
func (b *builder) startAgent(ctx context.Context, n *Node, cfgFile string) error {
	logFile := filepath.Join(filepath.Dir(n.Socket), "agent.log")
	pid, err := spawn(n.Netns, logFile, b.opts.Exe, "daemon", "-c", cfgFile)
	if err != nil {
		return err
	}
	n.AgentPID = pid
	if err := b.st.save(); err != nil {
		return err
	}
	c := agentapi.NewClient(n.Socket)
	var st agentapi.Status
	err = waitFor(ctx, 30*time.Second, "agent "+n.Name+" to be ready", func() (bool, string) {
		s, err := c.Status(ctx)
		st = s
		return err == nil && s.Ready, logTail(logFile)
	})
	if err != nil {
		return err
	}
	if n.PodCIDR, err = netip.ParsePrefix(st.PodCIDR); err != nil || st.PodCIDRv6 == "" {
		return err
	}
	n.PodCIDRv6, err = netip.ParsePrefix(st.PodCIDRv6)
	return err
}

// converged waits until every agent routes to every node's pod CIDR.
func (b *builder) converged(ctx context.Context) error {
	for _, n := range b.st.Nodes {
		c := agentapi.NewClient(n.Socket)
		err := waitFor(ctx, 30*time.Second, "routes on "+n.Name, func() (bool, string) {
			var routes []struct {
				Prefix netip.Prefix `json:"prefix"`
			}
			if err := c.Get(ctx, "/v1/routes", &routes); err != nil {
				return false, err.Error()
			}
			have := map[netip.Prefix]bool{}
			for _, r := range routes {
				have[r.Prefix] = true
			}
			for _, other := range b.st.Nodes {
				for _, p := range []netip.Prefix{other.PodCIDR, other.PodCIDRv6} {
					if p.IsValid() && !have[p] {
						return false, "missing " + p.String()
					}
				}
			}
			return true, ""
		})
		if err != nil {
			return err
		}
	}
	if b.st.Router == nil {
		return nil
	}
	// Between racks the router forwards, by the routes BIRD exports to its kernel: the nodes
	// may learn a route from BIRD a moment before BIRD's kernel has it.
	return waitFor(ctx, 30*time.Second, "pod routes in the router's kernel", func() (bool, string) {
		var missing []string
		err := inNetns(b.st.Router.Netns, func(h *netlink.Handle) error {
			routes, err := netlinksafe.NewHandle(h).RouteList(nil, netlink.FAMILY_ALL)
			if err != nil {
				return err
			}
			have := map[netip.Prefix]bool{}
			for _, r := range routes {
				if r.Dst == nil {
					continue
				}
				if ip, ok := netip.AddrFromSlice(r.Dst.IP); ok {
					ones, _ := r.Dst.Mask.Size()
					have[netip.PrefixFrom(ip.Unmap(), ones)] = true
				}
			}
			for _, n := range b.st.Nodes {
				if !have[n.PodCIDR] {
					missing = append(missing, n.PodCIDR.String())
				}
			}
			return nil
		})
		if err != nil {
			return false, err.Error()
		}
		return len(missing) == 0, "missing " + strings.Join(missing, ", ")
	})
}

// addBridge makes a switch of the underlay: no IPv6, no multicast snooping, not yet up.
func addBridge(h *netlink.Handle, name string) (netlink.Link, error) {
	off := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: underlayMTU}, MulticastSnooping: &off}
	if err := h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("add underlay bridge %s: %w", name, err)
	}
	return br, disableIPv6(name)
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// plugPort makes a veth whose port end sits on bridge in the underlay namespace and whose other
// end, peer, goes into the namespace at netns, down and unaddressed.
func (b *builder) plugPort(bridge, port, netns, peer string) error {
	ns, err := os.Open(netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	return inNetns(b.st.Underlay, func(h *netlink.Handle) error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port, MTU: underlayMTU}, PeerName: peer,
			PeerMTU: underlayMTU, PeerNamespace: netlink.NsFd(int(ns.Fd()))}
		if err := h.LinkAdd(v); err != nil {
			return err
		}
		l, err := h.LinkByName(port)
		if err != nil {
			return err
		}
		br, err := h.LinkByName(bridge)
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
}

// plugIntoUnderlay gives the node its eth0 on its segment's bridge and, in a rack, the route
// to the other segments through the router.
func (b *builder) plugIntoUnderlay(n *Node) error {
	port := portName(n.IP)
	bridge, gateway := b.st.segment(n)
	if err := b.plugPort(bridge, port, n.Netns, UnderlayIf); err != nil {
		return fmt.Errorf("add underlay port: %w", err)
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
		if n.IPv6.IsValid() {
			if err := addIPv6(h, l, n.IPv6); err != nil {
				return fmt.Errorf("address eth0: %w", err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
		if n.Rack == "" {
			return nil
		}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixNet(segmentsCIDR), Gw: gateway.AsSlice()}); err != nil {
			return fmt.Errorf("route %s via the router: %w", segmentsCIDR, err)
		}
		return nil
	})
}

// addIPv6 turns IPv6 back on for l (addBridge and plugIntoUnderlay turn it off) and gives it
// ip in its /64, without duplicate address detection and without taking router
// advertisements.
func addIPv6(h *netlink.Handle, l netlink.Link, ip netip.Addr) error {
	if err := podnet.SetIPv6(l.Attrs().Name, true); err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}
	if err := h.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("address %s: %w", ip, err)
	}
	return nil
}

func disableIPv6(ifname string) error {
	return os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", ifname, "disable_ipv6"), []byte("1"), 0o644)
}

// pod makes the pod's namespace and has the CNI plugin attach it, as a runtime would.
func (b *builder) pod(ctx context.Context, p *Pod) error {
	if _, err := namespace.Create(filepath.Base(p.Netns)); err != nil {
		return err
	}
	node, err := b.st.Node(p.Node)
	if err != nil {
		return err
	}
	ips, err := runCNI(ctx, b.opts.CNIPlugin, node, "ADD", p)
	if err != nil {
		return err
	}
	// The first address is of the lab's first family; a dual-stack pod's IPv6 one follows.
	for _, ip := range ips {
		if !p.IP.IsValid() && familyOf(ip) == b.st.Families()[0] {
			p.IP = ip
		} else if ip.Is6() {
			p.IPv6 = ip
		}
	}
	want := "an " + b.st.Families()[0] + " address"
	if !p.IP.IsValid() || p.IPv6.IsValid() != b.st.DualStack() || len(ips) != len(b.st.Families()) {
		if b.st.DualStack() {
			want += " and an IPv6 one"
		}
		return fmt.Errorf("pod %s: CNI ADD gave %v, want %s", p.Key(), ips, want)
	}
	return nil
}

// waitFor polls cond until it holds, ctx ends or timeout passes; the error carries cond's
// last word on why not.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %s: %s", what, why)
		}
		time.Sleep(20 * time.Millisecond) // polling the condition, bounded by the deadline
	}
}

func logTail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	return strings.Join(lines, " | ")
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
		pid, err := spawn(p.Netns, base+".log", exe, "lab", "serve", "--ready", base+".ready", "--ports", strings.Join(ports, ","))
		if err != nil {
			return fmt.Errorf("server in %s: %w", p.Key(), err)
		}
		p.ServerPID = pid
		ready = append(ready, base)
	}
	for _, base := range ready {
		err := waitFor(ctx, 20*time.Second, "server "+filepath.Base(base), func() (bool, string) {
			_, err := os.Stat(base + ".ready")
			return err == nil, logTail(base + ".log")
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// ServeEnv marks a process started by the lab (test binaries may dispatch on it).
const ServeEnv = "EBPFNET_LAB_SERVE"
