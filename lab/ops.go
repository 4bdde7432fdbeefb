package lab

import (
	"context"
	"fmt"
	"net"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
)

// StopAgent kills a node's agent (SIGKILL); the node's datapath keeps running from its pins.
// In a kubernetes lab the node's kubelet is paused until StartAgent, as it would start the
// agent's container again.
func (s *State) StopAgent(node string) error {
	n, err := s.Node(node)
	if err != nil {
		return err
	}
	if s.Kubernetes {
		return s.stopKubeAgent(n)
	}
	if err := stop(n.AgentPID, s.Name); err != nil {
		return fmt.Errorf("stop the agent of %s: %w", node, err)
	}
	// The socket is what the next agent checks: nobody may answer on it any more.
	err = waitFor(context.Background(), stopTimeout, "the stopped agent's socket to close", func() (bool, string) {
		c, err := net.Dial("unix", n.Socket)
		if err != nil {
			return true, ""
		}
		c.Close()
		return false, "it still answers"
	})
	if err != nil {
		return fmt.Errorf("stop the agent of %s: %w", node, err)
	}
	n.AgentPID = 0
	return s.save()
}

// StartAgent (re)starts a node's agent from its config and waits until it is ready.
func (s *State) StartAgent(ctx context.Context, node string, opts Options) error {
	if err := opts.fill(); err != nil {
		return err
	}
	n, err := s.Node(node)
	if err != nil {
		return err
	}
	if s.Kubernetes {
		return s.startKubeAgent(ctx, n)
	}
	b := &builder{st: s, opts: opts}
	if err := b.startAgent(ctx, n, filepath.Join(filepath.Dir(n.Socket), "agent.yaml")); err != nil {
		return err
	}
	return s.save()
}

// AddPod adds a pod to a running lab through the CNI plugin and starts its server.
func (s *State) AddPod(ctx context.Context, spec PodSpec, opts Options) (*Pod, error) {
	if s.Kubernetes {
		return nil, fmt.Errorf("lab %s runs Kubernetes: create pods with `ebpfnet lab kubectl --name %s -- apply -f POD.yaml`", s.Name, s.Name)
	}
	if err := spec.checkNames(); err != nil {
		return nil, err
	}
	if err := opts.fill(); err != nil {
		return nil, err
	}
	if _, err := s.Pod(spec.Key()); err == nil {
		return nil, fmt.Errorf("lab %s already has pod %s", s.Name, spec.Key())
	}
	if _, err := s.Node(spec.Node); err != nil {
		return nil, err
	}
	for i := range spec.Ports {
		if spec.Ports[i].Protocol == "" {
			spec.Ports[i].Protocol = "TCP"
		}
	}
	s.Pods = append(s.Pods, Pod{Namespace: spec.Namespace, Name: spec.Name, Node: spec.Node, Labels: copyLabels(spec.Labels),
		Ports: spec.Ports, Netns: nsPath(s.Name, spec.Namespace, spec.Name),
		ContainerID: fmt.Sprintf("lab-%s-%s-%s", s.Name, spec.Namespace, spec.Name), EndpointID: uint32(len(s.Pods) + 1)})
	p := &s.Pods[len(s.Pods)-1]
	if err := s.save(); err != nil {
		return nil, err
	}
	if err := s.declare(ctx, []Pod{*p}); err != nil {
		return nil, err
	}
	b := &builder{st: s, opts: opts}
	if err := b.pod(ctx, p); err != nil {
		return nil, err
	}
	if err := s.Client().Sync(ctx); err != nil {
		return nil, err
	}
	one := &State{Name: s.Name, Pods: []Pod{*p}}
	if err := startServers(ctx, one, opts.Exe); err != nil {
		return nil, err
	}
	p.ServerPID = one.Pods[0].ServerPID
	return p, s.save()
}

// Client is the API of the lab's first node's agent; every agent shares the same store.
func (s *State) Client() *agentapi.Client { return agentapi.NewClient(s.Nodes[0].Socket) }

// declare writes the namespaces and pods (labels, named ports) to the store, as an API
// server holds them, before the pods exist.
func (s *State) declare(ctx context.Context, pods []Pod) error {
	req := agentapi.ObjectsRequest{Namespaces: map[string]map[string]string{}, Pods: map[string]agentapi.PodMeta{}}
	for _, ns := range s.Namespaces {
		req.Namespaces[ns.Name] = ns.Labels
	}
	for _, p := range pods {
		m := agentapi.PodMeta{Labels: p.Labels}
		for _, pt := range p.Ports {
			m.Ports = append(m.Ports, agentapi.PodPort{Name: pt.Name, Port: pt.Port, Protocol: pt.Protocol})
		}
		req.Pods[p.Key()] = m
	}
	return s.Client().PutObjects(ctx, req)
}

// Label changes a pod's labels (key "ns/name") or a namespace's (key "ns"), keeping the lab's
// record in step, and returns once every node has programmed the change.
func (s *State) Label(ctx context.Context, kind, key string, set map[string]string, remove []string) error {
	req := agentapi.LabelRequest{Kind: kind, Set: set, Remove: remove}
	var labels *map[string]string
	switch kind {
	case "pod":
		p, err := s.Pod(key)
		if err != nil {
			return err
		}
		req.Namespace, req.Name, labels = p.Namespace, p.Name, &p.Labels
	case "namespace":
		req.Namespace = key
		for i := range s.Namespaces {
			if s.Namespaces[i].Name == key {
				labels = &s.Namespaces[i].Labels
			}
		}
		if labels == nil {
			return fmt.Errorf("lab %s has no namespace %q", s.Name, key)
		}
	default:
		return fmt.Errorf("can label a pod or a namespace, not %q", kind)
	}
	if err := s.Client().Label(ctx, req); err != nil {
		return err
	}
	if *labels == nil {
		*labels = map[string]string{}
	}
	for k, v := range set {
		(*labels)[k] = v
	}
	for _, k := range remove {
		delete(*labels, k)
	}
	return s.save()
}

// ApplyServices creates or updates services of a running lab and returns them as stored, once
// every node has programmed them: through the agents (which allocate cluster IPs and node
// ports), or in a kubernetes lab with kubectl, once the store holds their EndpointSlices.
func (s *State) ApplyServices(ctx context.Context, specs []ServiceSpec) ([]corev1.Service, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	namespaces := map[string]bool{}
	for _, ns := range s.Namespaces {
		namespaces[ns.Name] = true
	}
	if err := validateServices(specs, namespaces, s.Families()); err != nil {
		return nil, err
	}
	var stored []corev1.Service
	var err error
	if s.Kubernetes {
		stored, err = s.kubeServices(ctx, specs)
	} else {
		var req, got agent.ServiceObjects
		for _, sp := range specs {
			req.Services = append(req.Services, sp.Object())
		}
		got, err = agent.ApplyServices(ctx, s.Client(), req)
		stored = got.Services
	}
	if err != nil {
		return nil, err
	}
	if s.CNI == CNICilium {
		return stored, nil // no ebpfnet agent to wait for
	}
	if err := s.Client().Sync(ctx); err != nil {
		return nil, fmt.Errorf("program the services on every node: %w", err)
	}
	return stored, nil
}

// selectedPods counts the lab's pods a service selects.
func (s *State) selectedPods(sp ServiceSpec) int {
	n := 0
	for _, p := range s.Pods {
		if p.Namespace != sp.Namespace || len(sp.Selector) == 0 {
			continue
		}
		match := true
		for k, v := range sp.Selector {
			if p.Labels[k] != v {
				match = false
			}
		}
		if match {
			n++
		}
	}
	return n
}
