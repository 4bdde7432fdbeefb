package lab

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/lab/peers"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/netlinksafe"
	"github.com/ebpfnet/ebpfnet/store"
)

// The CNIs a kubernetes lab runs (the lab file's cni): ebpfnet by its DaemonSet, or Cilium,
// the peer it is measured against, on the same nodes, pods and packets.
const (
	CNIEbpfnet = "ebpfnet"
	CNICilium  = "cilium"
)

// ciliumReadyTimeout bounds the wait for every node's cilium-agent: it compiles its BPF
// programs with clang when it starts, which takes a while on a busy 2-core machine.
const ciliumReadyTimeout = 5 * time.Minute

// ciliumPodCIDRBits is the size of each node's pod CIDR in a Cilium lab, as kube-controller-
// manager would allocate them (the lab's nodes ask for theirs, or get the next free one).
const ciliumPodCIDRBits = 24

// ciliumPodCIDRs gives every node its pod CIDR: the one the lab file asked for, else the next
// /24 of the cluster CIDR no other node has.
func (s *State) ciliumPodCIDRs() error {
	cluster, err := netip.ParsePrefix(s.ClusterCIDR)
	if err != nil {
		return err
	}
	taken := map[netip.Prefix]bool{}
	for i := range s.Nodes {
		if s.Nodes[i].WantCIDR != "" {
			p, err := netip.ParsePrefix(s.Nodes[i].WantCIDR)
			if err != nil {
				return err
			}
			s.Nodes[i].PodCIDR, taken[p] = p, true
		}
	}
	next := netip.PrefixFrom(cluster.Addr(), ciliumPodCIDRBits)
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if n.PodCIDR.IsValid() {
			continue
		}
		for overlapsAny(next, taken) {
			next = store.NextPrefix(next)
		}
		if !cluster.Contains(next.Addr()) {
			return fmt.Errorf("cluster CIDR %s has no /%d left for node %s", cluster, ciliumPodCIDRBits, n.Name)
		}
		n.PodCIDR, taken[next] = next, true
	}
	return nil
}

func overlapsAny(p netip.Prefix, set map[netip.Prefix]bool) bool {
	for q := range set {
		if q.Overlaps(p) {
			return true
		}
	}
	return false
}

// ciliumAgents runs Cilium where a kubernetes lab would deploy ebpfnet: every Node gets its
// spec.podCIDR (Cilium's ipam: kubernetes), the CRDs its operator would install are applied,
// and each node runs cilium-agent in its network and mount namespaces, with the flags of
// peers.CiliumArgs. It returns once every node's agent has written its CNI config, which it
// does when it is ready.
func (b *builder) ciliumAgents(ctx context.Context) error {
	st := b.st
	if err := st.ciliumPodCIDRs(); err != nil {
		return err
	}
	for _, n := range st.Nodes {
		patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, n.PodCIDR, n.PodCIDR)
		if _, err := st.Kubectl(ctx, "patch", "node", n.Name, "--type", "merge", "-p", patch); err != nil {
			return err
		}
	}
	crds, err := peers.CiliumCRDs()
	if err != nil {
		return err
	}
	cp, err := st.ControlPlane()
	if err != nil {
		return err
	}
	cmd := cp.KubectlCommand(ctx, "apply", "--server-side", "-f", "-")
	cmd.Stdin = bytes.NewReader(bytes.Join(crds, []byte("\n---\n")))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apply Cilium's CRDs: %w: %s", err, bytes.TrimSpace(out))
	}
	// kubectl wait fails outright on a CRD whose status is not written yet: poll.
	err = waitFor(ctx, time.Minute, "Cilium's CRDs to be established", func() (bool, string) {
		_, err := st.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=5s", "crd", "ciliumnodes.cilium.io",
			"ciliumidentities.cilium.io", "ciliumendpoints.cilium.io", "ciliumnetworkpolicies.cilium.io")
		return err == nil, fmt.Sprint(err)
	})
	if err != nil {
		return err
	}
	cluster, err := netip.ParsePrefix(st.ClusterCIDR)
	if err != nil {
		return err
	}
	kubeconfig, err := os.ReadFile(cp.Kubeconfig)
	if err != nil {
		return err
	}
	for i := range st.Nodes {
		n := &st.Nodes[i]
		dir := st.kubeNodeDir(n.Name)
		// In the node's dir, so that the agent's command line names it and teardown finds it.
		own := filepath.Join(dir, "cilium.kubeconfig")
		if err := os.WriteFile(own, kubeconfig, 0o600); err != nil {
			return err
		}
		args, err := peers.CiliumArgs(peers.CiliumNode{Mode: st.Mode, ClusterCIDR: cluster,
			VXLANPort: st.VXLANPort, Device: UnderlayIf, Kubeconfig: own})
		if err != nil {
			return err
		}
		if n.AgentPID, err = kube.StartDaemon(dir, n.Netns, "cilium-agent", peers.CiliumEnv(n.Name), peers.CiliumAgent(), args...); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if err := st.save(); err != nil {
		return err
	}
	for _, n := range st.Nodes {
		dir := st.kubeNodeDir(n.Name)
		conf := kube.NodeHostPath(dir, filepath.Join(kube.NodeCNIConf, "05-cilium.conflist"))
		err := waitFor(ctx, ciliumReadyTimeout, "cilium-agent on "+n.Name+" to be ready", func() (bool, string) {
			if !kube.OwnedBy(n.AgentPID, dir) {
				return false, "cilium-agent exited: " + logTail(filepath.Join(dir, "cilium-agent.log"))
			}
			_, err := os.Stat(conf)
			return err == nil, "no " + conf + " yet; its log: " + logTail(filepath.Join(dir, "cilium-agent.log"))
		})
		if err != nil {
			return err
		}
	}
	return b.podCIDRsOnUnderlay()
}

// ciliumPods records each pod's address (status.podIP) and network namespace (the one of its
// node's that holds the address): what ebpfnet's agents tell, Cilium's lab reads itself.
func (s *State) ciliumPods(ctx context.Context) error {
	api, err := s.apiPods(ctx)
	if err != nil {
		return err
	}
	for i := range s.Pods {
		p := &s.Pods[i]
		kp, ok := api[p.Key()]
		if !ok {
			continue
		}
		if p.IP, err = netip.ParseAddr(kp.Status.PodIP); err != nil {
			return fmt.Errorf("pod %s: status.podIP %q: %w", p.Key(), kp.Status.PodIP, err)
		}
		if p.Netns, err = s.netnsHolding(p.Node, p.IP); err != nil {
			return fmt.Errorf("pod %s: %w", p.Key(), err)
		}
	}
	return s.save()
}

// netnsHolding finds, among the pod namespaces containerd made on node, the one with addr.
func (s *State) netnsHolding(node string, addr netip.Addr) (string, error) {
	dir := s.NodeHostPath(node, kube.NodeNetns)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		found := false
		_ = namespace.Do(path, func() error {
			addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_V4)
			for _, a := range addrs {
				found = found || a.IP.Equal(addr.AsSlice())
			}
			return err
		})
		if found {
			return path, nil
		}
	}
	return "", fmt.Errorf("no network namespace in %s holds %s", dir, addr)
}

// waitCiliumPods waits until the API server gives each pod its address, records the pods'
// addresses and namespaces, then waits as for ebpfnet's pods until they serve and are Ready.
func (s *State) waitCiliumPods(ctx context.Context, pods []Pod, timeout time.Duration) error {
	err := waitFor(ctx, timeout, "pods to get their addresses", func() (bool, string) {
		api, err := s.apiPods(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range pods {
			if api[p.Key()].Status.PodIP == "" {
				return false, p.Key() + " has no address yet; " + s.podPhases(ctx)
			}
		}
		return true, ""
	})
	if err != nil {
		return err
	}
	if err := s.ciliumPods(ctx); err != nil {
		return err
	}
	return s.waitServingAndReady(ctx, pods, timeout)
}
