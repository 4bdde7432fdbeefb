package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/deploy"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/store/kubestore"
)

// AgentNamespace and AgentDaemonSet name the DaemonSet deploy/ebpfnet.yaml makes.
const (
	AgentNamespace = "kube-system"
	AgentDaemonSet = "ebpfnet"
)

// agentReadyTimeout bounds the wait for every node's agent after the manifest is applied or
// changed: the image is on the node already, so this is kubelet starting a pod.
const agentReadyTimeout = 3 * time.Minute

// kubeAgentConfig is the agent configuration of a kubernetes lab, the ConfigMap's agent.yaml:
// one for every node, as a DaemonSet has (the node's name comes from its pod). A dual-stack
// lab's has the API server's IPv6 Service range and the IPv6 cluster CIDR.
func (s *State) kubeAgentConfig() agent.Config {
	cfg := agent.Config{UnderlayInterface: UnderlayIf, ClusterCIDR: s.ClusterCIDR, Mode: s.Mode,
		VXLANPort: s.VXLANPort, MetricsAddress: "0.0.0.0:" + strconv.Itoa(MetricsPort),
		Store:           agent.StoreConfig{Type: "kubernetes"},
		IdentityGCGrace: IdentityGCGrace.String(), ServiceCIDR: s.serviceCIDR(),
		Masquerade: s.Masquerade, NoMasqueradeCIDRs: s.NoMasqueradeCIDRs, MapSizes: s.MapSizes}
	if s.DualStack() {
		cfg.ClusterCIDRv6, cfg.ServiceCIDRv6 = s.ClusterCIDRv6, ServiceCIDRv6
	}
	return cfg
}

// AgentManifest is deploy/ebpfnet.yaml with the overrides a cluster's operator makes, and no
// others (docs/kubernetes.md lists them): the image both containers run, the ConfigMap's
// agent.yaml, and the API server's address, which the agents cannot reach through the
// kubernetes Service's cluster IP as they are what serves it.
func (s *State) AgentManifest(image string) ([]byte, error) {
	cp, err := s.ControlPlane()
	if err != nil {
		return nil, err
	}
	server, err := url.Parse(cp.Server)
	if err != nil {
		return nil, fmt.Errorf("API server address %q: %w", cp.Server, err)
	}
	conf, err := yaml.Marshal(s.kubeAgentConfig())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, doc := range strings.Split(string(deploy.Manifest), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, fmt.Errorf("deploy/ebpfnet.yaml: %w", err)
		}
		switch obj["kind"] {
		case "ConfigMap":
			obj["data"] = map[string]any{"agent.yaml": string(conf)}
		case "DaemonSet":
			if err := overrideDaemonSet(obj, image, server.Hostname(), server.Port()); err != nil {
				return nil, err
			}
		}
		b, err := yaml.Marshal(obj)
		if err != nil {
			return nil, err
		}
		out = append(out, string(b))
	}
	return []byte(strings.Join(out, "---\n")), nil
}

// overrideDaemonSet sets the image of every container and the API server's address in the agent's
// environment.
func overrideDaemonSet(ds map[string]any, image, host, port string) error {
	spec, _ := dig(ds, "spec", "template", "spec").(map[string]any)
	if spec == nil {
		return errors.New("deploy/ebpfnet.yaml: the DaemonSet has no pod spec")
	}
	for _, list := range []string{"initContainers", "containers"} {
		cs, _ := spec[list].([]any)
		for _, c := range cs {
			c := c.(map[string]any)
			c["image"] = image
			if c["name"] != "agent" {
				continue
			}
			env, _ := c["env"].([]any)
			c["env"] = append(env,
				map[string]any{"name": "KUBERNETES_SERVICE_HOST", "value": host},
				map[string]any{"name": "KUBERNETES_SERVICE_PORT", "value": port})
		}
	}
	return nil
}

// dig walks nested maps by key.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// kubeAgents deploys ebpfnet on every node as a cluster does: the CRDs and deploy/ebpfnet.yaml
// through the API server, with the image every node imported. It returns once every node's
// agent answers ready and the DaemonSet's rollout is complete, with each node's pod CIDR.
func (b *builder) kubeAgents(ctx context.Context) error {
	for _, n := range b.st.Nodes {
		if n.WantCIDR == "" {
			continue
		}
		// What a cluster's IPAM (or its operator) does: ebpfnet takes spec.podCIDR when it is set.
		patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, n.WantCIDR, n.WantCIDR)
		if b.st.DualStack() {
			// spec.podCIDRs is set once, with both families: the lab names the IPv4 one
			// only, so it asks through the annotation ebpfnet takes when spec.podCIDR is unset,
			// and the agent writes both to spec when it claims them.
			patch = fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, kubestore.PodCIDRAnnotation, n.WantCIDR)
		}
		if _, err := b.st.Kubectl(ctx, "patch", "node", n.Name, "--type", "merge", "-p", patch); err != nil {
			return err
		}
	}
	if err := b.st.ApplyAgents(ctx, b.agentImage); err != nil {
		return err
	}
	return b.podCIDRsOnUnderlay()
}

// podCIDRsOnUnderlay routes each node's pod CIDR through the node on the underlay, and saves
// the state.
func (b *builder) podCIDRsOnUnderlay() error {
	for i := range b.st.Nodes {
		n := &b.st.Nodes[i]
		if b.st.Router != nil {
			continue
		}
		// The control plane reaches pods as a node of a real cluster does, for the API server's
		// proxy to pods and Services (kubectl proxy, the e2e suites' reads of a pod's files): the
		// node's pod CIDR through the node, which takes plain packets for its pods in every mode.
		gw := n.IP
		if n.PodCIDR.Addr().Is6() { // an IPv6-only lab: through the node's IPv6 address
			gw = n.IPv6
		}
		err := inNetns(b.st.Underlay, func(h *netlink.Handle) error {
			return h.RouteReplace(&netlink.Route{Dst: prefixNet(n.PodCIDR), Gw: gw.AsSlice()})
		})
		if err != nil {
			return fmt.Errorf("route %s via %s on the underlay: %w", n.PodCIDR, gw, err)
		}
	}
	return b.st.save()
}

// ApplyAgents applies the CRDs and AgentManifest(image) and waits until the DaemonSet has rolled
// out and every node's agent answers ready from a pod running image; it records each node's pod
// CIDR and agent process. Applying another image is an upgrade by rollout.
func (s *State) ApplyAgents(ctx context.Context, image string) error {
	manifest, err := s.AgentManifest(image)
	if err != nil {
		return err
	}
	cp, err := s.ControlPlane()
	if err != nil {
		return err
	}
	cmd := cp.KubectlCommand(ctx, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(string(deploy.CRDs) + "\n---\n" + string(manifest))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apply deploy/: %w: %s", err, bytes.TrimSpace(out))
	}
	return s.WaitAgents(ctx)
}

// WaitAgents waits until `kubectl rollout status` of the DaemonSet completes and every node's
// agent answers ready on its socket, and records each node's pod CIDR and agent process.
func (s *State) WaitAgents(ctx context.Context) error {
	if _, err := s.Kubectl(ctx, "rollout", "status", "-n", AgentNamespace, "daemonset/"+AgentDaemonSet,
		"--timeout", agentReadyTimeout.String()); err != nil {
		return fmt.Errorf("%w; agents: %s", err, s.agentPods(ctx))
	}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		var st agentapi.Status
		err := waitFor(ctx, agentReadyTimeout, "agent "+n.Name+" to be ready", func() (bool, string) {
			var err error
			st, err = agentapi.NewClient(n.Socket).Status(ctx)
			if err != nil {
				return false, err.Error() + "; " + s.agentPods(ctx)
			}
			return st.Ready, "not ready; " + s.agentPods(ctx)
		})
		if err != nil {
			return err
		}
		if n.PodCIDR, err = netip.ParsePrefix(st.PodCIDR); err != nil {
			return fmt.Errorf("agent %s: pod CIDR %q: %w", n.Name, st.PodCIDR, err)
		}
		if s.DualStack() {
			if n.PodCIDRv6, err = netip.ParsePrefix(st.PodCIDRv6); err != nil {
				return fmt.Errorf("agent %s: IPv6 pod CIDR %q: %w", n.Name, st.PodCIDRv6, err)
			}
		}
		if n.AgentPID, err = s.kubeAgentPID(n); err != nil {
			return err
		}
	}
	return s.save()
}

// agentPods is the DaemonSet's pods on one line each joined by " | ": name, node, phase,
// readiness, restarts, image and last event, for messages about a wait that timed out.
func (s *State) agentPods(ctx context.Context) string {
	out, err := s.Kubectl(ctx, "get", "pods", "-n", AgentNamespace, "-l", "app.kubernetes.io/name="+AgentDaemonSet,
		"-o", "custom-columns=POD:.metadata.name,NODE:.spec.nodeName,PHASE:.status.phase,READY:.status.containerStatuses[*].ready,RESTARTS:.status.containerStatuses[*].restartCount,IMAGE:.spec.containers[*].image", "--no-headers")
	if err != nil {
		return err.Error()
	}
	var pods []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		pods = append(pods, strings.Join(f, " ")+" (last event: "+s.lastEvent(ctx, AgentNamespace, f[0])+")")
	}
	return strings.Join(pods, " | ")
}

// AgentPID is the process of the agent that networks node's pods: ebpfnet's (the DaemonSet's
// pod in a kubernetes lab), or cilium-agent in a Cilium lab.
func (s *State) AgentPID(node string) (int, error) {
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if n.Name != node {
			continue
		}
		if s.Kubernetes && s.CNI != CNICilium {
			return s.kubeAgentPID(n)
		}
		return n.AgentPID, nil
	}
	return 0, fmt.Errorf("no node %q in lab %s", node, s.Name)
}

// kubeAgentPID finds the process of node n's agent: `/ebpfnet daemon` in the node's network
// namespace (a host-network pod), seen from the host.
func (s *State) kubeAgentPID(n *Node) (int, error) {
	want, err := os.Stat(n.Netns)
	if err != nil {
		return 0, err
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.HasPrefix(cmdline, []byte("/ebpfnet\x00daemon\x00")) {
			continue
		}
		if ns, err := os.Stat(filepath.Join("/proc", e.Name(), "ns", "net")); err == nil && os.SameFile(ns, want) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("node %s: no agent process (/ebpfnet daemon) runs in %s", n.Name, n.Netns)
}

// stopKubeAgent kills node n's agent and keeps it down: its kubelet is paused first (SIGSTOP),
// or it would start the agent's container again. startKubeAgent lets kubelet go on.
func (s *State) stopKubeAgent(n *Node) error {
	kubelet, err := kube.KubeletPID(s.kubeNodeDir(n.Name))
	if err != nil {
		return err
	}
	if err := syscall.Kill(kubelet, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("pause kubelet of %s: %w", n.Name, err)
	}
	pid, err := s.kubeAgentPID(n)
	if err != nil {
		return err
	}
	if err := killAndWait(pid, stopTimeout); err != nil {
		return fmt.Errorf("agent of %s: %w", n.Name, err)
	}
	n.AgentPID = 0
	return s.save()
}

// killAndWait SIGKILLs pid and waits until it has exited: gone, or a zombie all of whose
// threads have exited.
func killAndWait(pid int, timeout time.Duration) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return err
	}
	return waitFor(context.Background(), timeout, fmt.Sprintf("pid %d to exit", pid), func() (bool, string) {
		live := liveThreads(pid)
		return live == 0, fmt.Sprintf("%d threads still running", live)
	})
}

// liveThreads counts pid's threads that have not exited. A killed process's first thread can
// be a zombie while others still run (one blocked in the kernel, say): they hold the
// process's files, its listening sockets among them, until the last of them exits.
func liveThreads(pid int) int {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0 // gone
	}
	live := 0
	for _, t := range tasks {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
		if err == nil && !bytes.Contains(stat, []byte(") Z ")) && !bytes.Contains(stat, []byte(") X ")) {
			live++
		}
	}
	return live
}

// startKubeAgent resumes node n's kubelet, which starts the agent's container again, and waits
// until the new agent is ready.
func (s *State) startKubeAgent(ctx context.Context, n *Node) error {
	kubelet, err := kube.KubeletPID(s.kubeNodeDir(n.Name))
	if err != nil {
		return err
	}
	if err := syscall.Kill(kubelet, syscall.SIGCONT); err != nil {
		return fmt.Errorf("resume kubelet of %s: %w", n.Name, err)
	}
	return s.WaitAgents(ctx)
}

// KillAgent SIGKILLs node's agent process, as a crash would, and waits until kubelet has
// started it again and it is ready.
func (s *State) KillAgent(ctx context.Context, node string) error {
	n, err := s.Node(node)
	if err != nil {
		return err
	}
	if !s.Kubernetes {
		return fmt.Errorf("lab %s: KillAgent is for kubernetes labs (StopAgent and StartAgent otherwise)", s.Name)
	}
	pid, err := s.kubeAgentPID(n)
	if err != nil {
		return err
	}
	if err := killAndWait(pid, stopTimeout); err != nil {
		return fmt.Errorf("agent of %s: %w", node, err)
	}
	err = waitFor(ctx, agentReadyTimeout, "kubelet to restart the agent of "+node, func() (bool, string) {
		now, err := s.kubeAgentPID(n)
		if err != nil || now == pid {
			return false, fmt.Sprint("agent process: ", now, err)
		}
		st, err := agentapi.NewClient(n.Socket).Status(ctx)
		if err != nil || !st.Ready {
			return false, fmt.Sprint("status: ", err)
		}
		n.AgentPID = now
		return true, ""
	})
	if err != nil {
		return err
	}
	return s.save()
}
