package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/lab/peers"
	"github.com/ebpfnet/ebpfnet/store"
)

// ServiceCIDR is the lab's Service range: the kube-apiserver's --service-cluster-ip-range in a
// kubernetes lab, and every lab agent's serviceCIDR.
const ServiceCIDR = "10.96.0.0/16"

// ServiceCIDRv6 is a dual-stack kubernetes lab's IPv6 Service range, the second of the
// kube-apiserver's --service-cluster-ip-range: the agents' default serviceCIDRv6.
const ServiceCIDRv6 = agent.DefaultServiceCIDRv6

// ClusterDNSIP is the kube-dns Service's cluster IP in a kubernetes lab: every pod's nameserver.
// ClusterDNSIPv6 is an IPv6-only lab's.
var (
	ClusterDNSIP   = netip.MustParseAddr("10.96.0.10")
	ClusterDNSIPv6 = netip.MustParseAddr("fd00:10:96::a")
)

// ClusterDNS is the lab's kube-dns cluster IP, of its Services' family.
func (s *State) ClusterDNS() netip.Addr {
	if s.IPv6Only() {
		return ClusterDNSIPv6
	}
	return ClusterDNSIP
}

// apiServerIP is where the API server listens and what the kubernetes Service leads to, of
// the lab's Services' family: the underlay namespace's bridge address.
func (s *State) apiServerIP() netip.Addr {
	if s.IPv6Only() {
		return UnderlayIPv6
	}
	return etcdIP
}

// KubeDir is where a kubernetes lab keeps its control plane and nodes.
func KubeDir(lab string) string { return filepath.Join(Dir(lab), "kube") }

func (s *State) controlPlaneDir() string { return filepath.Join(KubeDir(s.Name), "control-plane") }
func (s *State) kubeNodeDir(node string) string {
	return filepath.Join(KubeDir(s.Name), "nodes", node)
}

// ControlPlane describes the lab's running control plane.
func (s *State) ControlPlane() (*kube.ControlPlane, error) {
	if !s.Kubernetes {
		return nil, fmt.Errorf("lab %s is not a kubernetes lab (kubernetes: true in its file, or lab up --kubernetes)", s.Name)
	}
	return kube.LoadControlPlane(s.controlPlaneDir(), s.Underlay)
}

// Kubectl is kubectl against the lab's API server, run from the lab's underlay.
func (s *State) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cp, err := s.ControlPlane()
	if err != nil {
		return nil, err
	}
	out, err := cp.Kubectl(ctx, args...)
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// ImportImages loads image archives into every node's containerd, where kubelet finds them by
// name (no registry is reached).
func (s *State) ImportImages(ctx context.Context, archives []string) error {
	for _, n := range s.Nodes {
		if err := kube.ImportImages(ctx, filepath.Join(s.kubeNodeDir(n.Name), "containerd.sock"), archives); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return nil
}

// kubeControlPlane starts the API server, controller manager and scheduler on the underlay,
// storing in the lab's etcd, and builds the images every node imports: the agent's among them.
func (b *builder) kubeControlPlane(ctx context.Context) error {
	cfg := kube.ControlPlaneConfig{Dir: b.st.controlPlaneDir(), Netns: b.st.Underlay,
		EtcdURL: b.st.EtcdURL, AdvertiseIP: b.st.apiServerIP(), ServiceCIDR: b.st.serviceCIDR(), ClusterCIDR: b.st.ClusterCIDR}
	if b.st.DualStack() {
		cfg.ServiceCIDRv6, cfg.ClusterCIDRv6 = ServiceCIDRv6, b.st.ClusterCIDRv6
	}
	cp, err := kube.StartControlPlane(ctx, cfg)
	if err != nil {
		return fmt.Errorf("kubernetes control plane: %w", err)
	}
	b.cp = cp
	dir := filepath.Join(KubeDir(b.st.Name), "images")
	if b.images, err = kube.BuildImages(dir, b.opts.Exe); err != nil {
		return err
	}
	if b.st.CNI == CNICilium {
		return nil // no ebpfnet agent runs: its image is neither built nor imported
	}
	agentImage, err := kube.BuildAgentImage(dir, LabAgentImage, b.opts.AgentExe, b.opts.AgentCNI)
	if err != nil {
		return err
	}
	b.images, b.agentImage = append(b.images, agentImage), LabAgentImage
	return nil
}

// LabAgentImage is the name a kubernetes lab gives the agent's image it builds from its
// ebpfnet and ebpfnet-cni (Options.AgentExe and AgentCNI).
const LabAgentImage = "docker.io/ebpfnet/ebpfnet:lab"

// kubeNode gives the node its own mount namespace and runs its containerd and kubelet there,
// with the loopback plugin in its /opt/cni/bin; ebpfnet comes later, as a DaemonSet
// (kubeAgents), and installs its plugin and conflist beside it.
func (b *builder) kubeNode(ctx context.Context, n *Node) error {
	plugins := []string{filepath.Join(kube.CNIPluginsDir(), "loopback")}
	if b.st.CNI == CNICilium {
		plugins = append(plugins, peers.CiliumCNI())
	}
	_, err := kube.StartNode(ctx, b.cp, kube.NodeConfig{Name: n.Name, Dir: b.st.kubeNodeDir(n.Name), Netns: n.Netns,
		IP: n.IP, ClusterDNS: b.st.ClusterDNS(), CNIPlugins: plugins, Images: b.images})
	if err != nil {
		return fmt.Errorf("kubelet and containerd: %w", err)
	}
	return nil
}

// labPod is the Pod object of a lab pod: the echo server on its ports, or a pause container.
func labPod(p Pod) map[string]any {
	c := map[string]any{"name": "pause", "image": kube.PauseImage, "imagePullPolicy": "Never"}
	if len(p.Ports) > 0 {
		var spec []string
		var cports []map[string]any
		for _, pt := range p.Ports {
			spec = append(spec, fmt.Sprintf("%d/%s", pt.Port, pt.Protocol))
			cp := map[string]any{"containerPort": pt.Port, "protocol": pt.Protocol}
			if pt.Name != "" {
				cp["name"] = pt.Name
			}
			cports = append(cports, cp)
		}
		c = map[string]any{"name": "serve", "image": kube.EchoImage, "imagePullPolicy": "Never",
			"command": []string{"/ebpfnet", "lab", "serve", "--ports", strings.Join(spec, ","), "--ready", "/tmp/ready"},
			"ports":   cports}
	}
	return map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": p.Name, "namespace": p.Namespace, "labels": p.Labels},
		"spec": map[string]any{"nodeName": p.Node, "terminationGracePeriodSeconds": 0, "enableServiceLinks": false,
			"automountServiceAccountToken": false, "containers": []any{c}}}
}

// kubePods deploys the cluster DNS, creates the lab's namespaces and Pod objects, and waits
// until kubelet has started every pod through containerd and ebpfnet's CNI plugin, each one
// serves its ports, and every CoreDNS replica is ready.
func (b *builder) kubePods(ctx context.Context) error {
	if err := b.cp.DeployDNS(ctx, b.st.ClusterDNS()); err != nil {
		return err
	}
	var docs []string
	for _, ns := range b.st.Namespaces {
		l := copyLabels(ns.Labels)
		l["kubernetes.io/metadata.name"] = ns.Name
		d, _ := yaml.Marshal(map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns.Name, "labels": l}})
		docs = append(docs, string(d))
	}
	for _, p := range b.st.Pods {
		d, _ := yaml.Marshal(labPod(p))
		docs = append(docs, string(d))
	}
	if len(docs) > 0 {
		cmd := b.cp.KubectlCommand(ctx, "apply", "-f", "-")
		cmd.Stdin = strings.NewReader(strings.Join(docs, "---\n"))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("create pods: %w: %s", err, bytes.TrimSpace(out))
		}
		if err := b.st.waitKubePods(ctx, b.st.Pods, 3*time.Minute); err != nil {
			return err
		}
	}
	return b.cp.WaitDNS(ctx)
}

// waitKubePods waits until each pod runs with its address, records its address and network
// namespace (from its node's agent), waits until it answers on its ports, and then until the
// API server shows it Running and Ready.
func (s *State) waitKubePods(ctx context.Context, pods []Pod, timeout time.Duration) error {
	if s.CNI == CNICilium {
		return s.waitCiliumPods(ctx, pods, timeout)
	}
	want := map[string]bool{}
	for _, p := range pods {
		want[p.Key()] = true
	}
	found := map[string]store.Endpoint{}
	err := waitFor(ctx, timeout, "pods to run", func() (bool, string) {
		for _, n := range s.Nodes {
			var eps []store.Endpoint
			if err := agentapi.NewClient(n.Socket).Get(ctx, "/v1/endpoints?node="+n.Name, &eps); err != nil {
				return false, err.Error()
			}
			for _, e := range eps {
				if want[e.Namespace+"/"+e.Pod] {
					found[e.Namespace+"/"+e.Pod] = e
				}
			}
		}
		if len(found) < len(want) {
			return false, fmt.Sprintf("%d of %d pods attached; %s", len(found), len(want), s.podPhases(ctx))
		}
		return true, ""
	})
	if err != nil {
		return err
	}
	for i := range s.Pods {
		if e, ok := found[s.Pods[i].Key()]; ok {
			// The agent knows the pod's namespace by its path on the node.
			netns := s.NodeHostPath(s.Pods[i].Node, e.Netns)
			s.Pods[i].IP, s.Pods[i].Netns, s.Pods[i].ContainerID, s.Pods[i].EndpointID = e.IP, netns, e.ContainerID, e.ID
			s.Pods[i].IPv6 = e.IPv6 // zero unless the lab is dual stack
		}
	}
	if err := s.save(); err != nil {
		return err
	}
	return s.waitServingAndReady(ctx, pods, timeout)
}

// waitServingAndReady waits until each pod answers on its ports from its node, and then until
// the API server shows it Running and Ready.
func (s *State) waitServingAndReady(ctx context.Context, pods []Pod, timeout time.Duration) error {
	for _, p := range pods {
		p, _ := s.Pod(p.Key())
		node, err := s.Node(p.Node)
		if err != nil {
			return err
		}
		for _, pt := range p.Ports {
			err := waitFor(ctx, timeout, fmt.Sprintf("%s to serve %d/%s", p.Key(), pt.Port, pt.Protocol), func() (bool, string) {
				err := probe(node.Netns, netip.AddrPortFrom(p.IP, uint16(pt.Port)), pt.Protocol)
				return err == nil, fmt.Sprint(err)
			})
			if err != nil {
				return err
			}
		}
	}
	return s.waitKubePodsReady(ctx, pods, timeout)
}

// kubePod is what the lab reads of a Pod object's status.
type kubePod struct {
	Metadata struct{ Namespace, Name string }
	Status   struct {
		Phase      string
		PodIP      string
		PodIPs     []struct{ IP string }
		Conditions []struct{ Type, Status, Message string }
	}
}

// ips is the pod's status.podIPs, as "IP1,IP2".
func (p kubePod) ips() string {
	var ips []string
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	return strings.Join(ips, ",")
}

// wantIPs is what status.podIPs of lab pod p holds once kubelet has its addresses: the IPv4
// one, then the IPv6 one in a dual-stack lab.
func wantIPs(p *Pod) string {
	if p.IPv6.IsValid() {
		return p.IP.String() + "," + p.IPv6.String()
	}
	return p.IP.String()
}

func (p kubePod) key() string { return p.Metadata.Namespace + "/" + p.Metadata.Name }

// ready tells whether the API server shows the pod Running and Ready.
func (p kubePod) ready() bool {
	if p.Status.Phase != "Running" {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

// apiPods reads every Pod object the API server holds, by namespace/name.
func (s *State) apiPods(ctx context.Context) (map[string]kubePod, error) {
	out, err := s.Kubectl(ctx, "get", "pods", "-A", "-o", "json")
	if err != nil {
		return nil, err
	}
	var list struct{ Items []kubePod }
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("kubectl get pods: %w", err)
	}
	pods := make(map[string]kubePod, len(list.Items))
	for _, it := range list.Items {
		pods[it.key()] = it
	}
	return pods, nil
}

// podPhases summarises the lab's pods as the API server sees them, for timeout messages.
func (s *State) podPhases(ctx context.Context) string {
	pods, err := s.apiPods(ctx)
	if err != nil {
		return err.Error()
	}
	var parts []string
	for k, p := range pods {
		parts = append(parts, k+"="+p.Status.Phase)
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// waitKubePodsReady waits until the API server shows each pod Running and Ready with its
// address in status.podIP (and its addresses in status.podIPs), so that whoever asks the API server right after the lab step
// returns sees the pods as they are. It fails naming a pod that is not, its phase and its
// last event.
func (s *State) waitKubePodsReady(ctx context.Context, pods []Pod, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(250 * time.Millisecond) // each poll runs kubectl
	defer tick.Stop()
	for {
		got, err := s.apiPods(ctx)
		var late *Pod
		var seen kubePod
		if err == nil {
			for i := range pods {
				p, perr := s.Pod(pods[i].Key())
				if perr != nil {
					return perr
				}
				k := got[p.Key()]
				if !k.ready() || k.Status.PodIP != p.IP.String() || k.ips() != wantIPs(p) {
					late, seen = p, k
					break
				}
			}
			if late == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("timed out waiting for the lab's pods to be Ready: %w", err)
			}
			phase := seen.Status.Phase
			if phase == "" {
				phase = "absent"
			}
			return fmt.Errorf("timed out waiting for pod %s to be Running and Ready with IPs %s: phase %s, Ready %s, podIPs %q; last event: %s",
				late.Key(), wantIPs(late), phase, seen.readyCondition(), seen.ips(), s.lastEvent(ctx, late.Namespace, late.Name))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// readyCondition is the pod's Ready condition as "True", "False: why" or "unset".
func (p kubePod) readyCondition() string {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			if c.Message != "" {
				return c.Status + ": " + c.Message
			}
			return c.Status
		}
	}
	return "unset"
}

// lastEvent is the newest event about a pod, as one line, or why there is none.
func (s *State) lastEvent(ctx context.Context, ns, name string) string {
	out, err := s.Kubectl(ctx, "get", "events", "-n", ns, "--field-selector", "involvedObject.name="+name,
		"--sort-by", ".lastTimestamp", "-o", "jsonpath={range .items[-1:]}{.reason}: {.message}{end}")
	if err != nil {
		return err.Error()
	}
	if len(bytes.TrimSpace(out)) == 0 {
		return "none"
	}
	return string(bytes.TrimSpace(out))
}

// kubeServices applies the services as Service objects and waits until the store through the
// agents holds each one with its cluster IP and, from the EndpointSlices the controller
// manager makes, a ready backend for every lab pod it selects.
func (s *State) kubeServices(ctx context.Context, specs []ServiceSpec) ([]corev1.Service, error) {
	cp, err := s.ControlPlane()
	if err != nil {
		return nil, err
	}
	var docs []string
	for _, sp := range specs {
		d, err := yaml.Marshal(sp.Object())
		if err != nil {
			return nil, err
		}
		docs = append(docs, string(d))
	}
	cmd := cp.KubectlCommand(ctx, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(strings.Join(docs, "---\n"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("create services: %w: %s", err, bytes.TrimSpace(out))
	}
	for _, sp := range specs {
		want := s.selectedPods(sp)
		err := waitFor(ctx, time.Minute, "service "+sp.Key()+" and its endpoints", func() (bool, string) {
			if s.CNI == CNICilium {
				// No ebpfnet agent: what the API server holds is what Cilium's agents watch.
				ready, err := s.readyEndpoints(ctx, sp.Namespace, sp.Name)
				return err == nil && ready >= want, fmt.Sprintf("%d of %d endpoints ready (%v)", ready, want, err)
			}
			views, err := s.Client().Services(ctx)
			if err != nil {
				return false, err.Error()
			}
			for _, v := range views {
				if v.Namespace != sp.Namespace || v.Name != sp.Name {
					continue
				}
				ready := 0
				for _, b := range v.Backends {
					if b.State == "ready" {
						ready++
					}
				}
				return v.ClusterIP != "" && ready >= want, fmt.Sprintf("cluster IP %q, %d of %d backends ready", v.ClusterIP, ready, want)
			}
			return false, "not in the store yet"
		})
		if err != nil {
			return nil, err
		}
	}
	out, err := s.Kubectl(ctx, "get", "services", "--all-namespaces", "-o", "json")
	if err != nil {
		return nil, err
	}
	var list corev1.ServiceList
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("kubectl get services: %w", err)
	}
	applied := map[string]bool{}
	for _, sp := range specs {
		applied[sp.Key()] = true
	}
	var stored []corev1.Service
	for _, svc := range list.Items {
		if applied[svc.Namespace+"/"+svc.Name] {
			stored = append(stored, svc)
		}
	}
	return stored, nil
}

// readyEndpoints counts the ready endpoints of Service ns/name's EndpointSlices.
func (s *State) readyEndpoints(ctx context.Context, ns, name string) (int, error) {
	out, err := s.Kubectl(ctx, "get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name="+name,
		"-o", `jsonpath={range .items[*].endpoints[*]}{.conditions.ready}{"\n"}{end}`)
	if err != nil {
		return 0, err
	}
	return strings.Count(string(out), "true"), nil
}
