// Package lab builds a cluster of ebpfnet nodes and pods out of network namespaces on one
// machine, for the demo, for tests and for anyone who wants to watch the dataplane work.
package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/lab/peers"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/store"
	"github.com/ebpfnet/ebpfnet/yamlguard"
)

// Spec is a lab file: the format of ../shared/netpol's `lab:` blocks.
type Spec struct {
	Mode        string `json:"mode"`
	ClusterCIDR string `json:"clusterCIDR,omitempty"`
	// IPFamilies are the pods' address families: [IPv4] (the default); [IPv4, IPv6], dual
	// stack, where every pod has an address of each, the IPv6 one from ClusterCIDRv6; or
	// [IPv6], IPv6 only, where ClusterCIDR is IPv6 (default fd00:10:244::/56).
	IPFamilies    []string `json:"ipFamilies,omitempty"`
	ClusterCIDRv6 string   `json:"clusterCIDRv6,omitempty"`
	VXLANPort     int      `json:"vxlanPort,omitempty"`
	// UnderlayFamily is what VXLAN runs over: IPv4 (the default) or IPv6, the nodes' IPv6
	// underlay addresses (the underlay is dual stack in every lab that has IPv6 in it).
	UnderlayFamily string `json:"underlayFamily,omitempty"`
	// Kubernetes makes a real Kubernetes of the lab: pods become Pod objects run by kubelet.
	Kubernetes bool `json:"kubernetes,omitempty"`
	// CNI is what networks a kubernetes lab's pods: ebpfnet (the default), or cilium, the peer
	// ebpfnet is measured against (lab/peers), in mode vxlan or native.
	CNI        string      `json:"cni,omitempty"`
	Nodes      []NodeSpec  `json:"nodes"`
	Namespaces []Namespace `json:"namespaces"`
	Pods       []PodSpec   `json:"pods"`
	// Services are applied once the pods serve: through the agents, or in a kubernetes lab as
	// Service objects whose EndpointSlices the controller manager makes.
	Services []ServiceSpec `json:"services,omitempty"`
	// Masquerade and NoMasqueradeCIDRs are every node's agent settings of the same names:
	// false leaves pods' traffic out of the cluster with the pods' own addresses (default
	// true); the CIDRs are destinations pods reach unmasqueraded.
	Masquerade        *bool    `json:"masquerade,omitempty"`
	NoMasqueradeCIDRs []string `json:"noMasqueradeCIDRs,omitempty"`
	// BGP has the agents learn their routes over BGP (routing: bgp), from the lab's router,
	// from each other, or both (see BGPSpec).
	BGP *BGPSpec `json:"bgp,omitempty"`
	// MapSizes is every node's agent mapSizes: small maps show what a full one does.
	MapSizes maps.Sizes `json:"mapSizes,omitempty"`
}

// NodeSpec declares a node.
type NodeSpec struct {
	Name    string `json:"name"`
	PodCIDR string `json:"podCIDR,omitempty"`
	// Rack is the node's L2 segment, a DNS label: racks are joined only through the lab's BGP
	// router. Either every node has one or none does.
	Rack string `json:"rack,omitempty"`
}

// Namespace is a Kubernetes namespace with its labels.
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// PodSpec declares a pod and the ports it serves.
type PodSpec struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Node      string            `json:"node"`
	Labels    map[string]string `json:"labels,omitempty"`
	Ports     []Port            `json:"ports,omitempty"`
}

// Port is a named port a pod serves.
type Port struct {
	Name     string `json:"name,omitempty"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol,omitempty"`
}

// Key is "namespace/name".
func (p PodSpec) Key() string { return p.Namespace + "/" + p.Name }

// ServiceSpec declares a Kubernetes Service of the lab's pods.
type ServiceSpec struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Type is ClusterIP (the default), NodePort or LoadBalancer (served as NodePort).
	Type                  string            `json:"type,omitempty"`
	Selector              map[string]string `json:"selector,omitempty"`
	Ports                 []ServicePortSpec `json:"ports"`
	SessionAffinity       string            `json:"sessionAffinity,omitempty"`       // None | ClientIP
	ExternalTrafficPolicy string            `json:"externalTrafficPolicy,omitempty"` // Cluster | Local
	InternalTrafficPolicy string            `json:"internalTrafficPolicy,omitempty"` // Cluster | Local
	// ClusterIP is inside ServiceCIDR, None for a headless service, or empty: allocated.
	ClusterIP string `json:"clusterIP,omitempty"`
	// IPFamilyPolicy is SingleStack (the default), PreferDualStack or RequireDualStack: in a
	// dual-stack lab the latter two give the service an IPv6 cluster IP too.
	IPFamilyPolicy string `json:"ipFamilyPolicy,omitempty"`
}

// ServicePortSpec is one port of a ServiceSpec.
type ServicePortSpec struct {
	Name string `json:"name,omitempty"`
	Port int    `json:"port"`
	// TargetPort is the pods' port, a number or the name of a port they declare; unset, Port.
	TargetPort intstr.IntOrString `json:"targetPort,omitempty"`
	Protocol   string             `json:"protocol,omitempty"` // TCP (the default), UDP or SCTP
	NodePort   int                `json:"nodePort,omitempty"` // 0: allocated, for NodePort and LoadBalancer
}

// Key is "namespace/name".
func (s ServiceSpec) Key() string { return s.Namespace + "/" + s.Name }

// Object is the Service object the spec declares.
func (s ServiceSpec) Object() corev1.Service {
	svc := corev1.Service{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceType(s.Type), Selector: copyLabels(s.Selector), ClusterIP: s.ClusterIP,
			SessionAffinity:       corev1.ServiceAffinity(s.SessionAffinity),
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicy(s.ExternalTrafficPolicy)}}
	if s.InternalTrafficPolicy != "" {
		p := corev1.ServiceInternalTrafficPolicy(s.InternalTrafficPolicy)
		svc.Spec.InternalTrafficPolicy = &p
	}
	if s.IPFamilyPolicy != "" {
		p := corev1.IPFamilyPolicy(s.IPFamilyPolicy)
		svc.Spec.IPFamilyPolicy = &p
	}
	for _, p := range s.Ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: p.Name, Port: int32(p.Port), TargetPort: p.TargetPort,
			Protocol: corev1.Protocol(p.Protocol), NodePort: int32(p.NodePort)})
	}
	return svc
}

// Defaults.
const (
	DefaultClusterCIDR = "10.244.0.0/16"
	// DefaultClusterCIDRv6 is a dual-stack lab's IPv6 cluster CIDR: a /64 per node.
	DefaultClusterCIDRv6 = "fd00:10:244::/56"
	DefaultVXLANPort     = 8472
	underlayMTU          = 1500
)

// ReadSpec reads a lab file, or the `lab:` block of a NetworkPolicy case file, strictly:
// unknown fields are errors.
func ReadSpec(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read lab file: %w", err)
	}
	if err := yamlguard.Check(data); err != nil {
		return nil, fmt.Errorf("lab file %s: %w", path, err)
	}
	var probe map[string]any
	if err := yaml.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("lab file %s: %w", path, err)
	}
	if inner, ok := probe["lab"]; ok {
		// A NetworkPolicy case file: the lab is one block of it.
		if data, err = yaml.Marshal(inner); err != nil {
			return nil, fmt.Errorf("lab file %s: lab: %w", path, err)
		}
	}
	var s Spec
	if err := yaml.UnmarshalStrict(data, &s); err != nil {
		return nil, fmt.Errorf("lab file %s: %s", path, cleanYAMLError(err))
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("lab file %s: %w", path, err)
	}
	return &s, nil
}

// cleanYAMLError turns the decoder's wording into "unknown field \"x\"" and the like.
func cleanYAMLError(err error) string {
	msg := err.Error()
	for _, p := range []string{"error unmarshaling JSON: while decoding JSON: ", "json: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	return msg
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// checkNodeName refuses names that would not make a node namespace "LAB-NAME" of its own:
// LAB-underlay and LAB-router are the lab's.
func checkNodeName(name string) error {
	if !dnsLabel.MatchString(name) || len(name) > 40 || name == "underlay" || name == "router" {
		return fmt.Errorf("%.80q must be a lower-case DNS label of at most 40 characters (and not \"underlay\" or \"router\")", name)
	}
	return nil
}

// checkNames refuses a pod whose namespace or name is not a DNS label of at most 63
// characters: with the lab's name they make the pod's network namespace, LAB.NAMESPACE.NAME
// under /run/netns, so no '/', "..", NUL or overlong name may get through.
func (p PodSpec) checkNames() error {
	if len(p.Namespace) > 63 || !dnsLabel.MatchString(p.Namespace) {
		return fmt.Errorf("pod namespace %.80q is not a DNS label", p.Namespace)
	}
	if len(p.Name) > 63 || !dnsLabel.MatchString(p.Name) {
		return fmt.Errorf("pod name %.80q is not a DNS label", p.Name)
	}
	return nil
}

// Validate checks everything before anything is made, naming the offending field.
func (s *Spec) Validate() error {
	if _, err := maps.ParseMode(s.Mode); err != nil {
		return fmt.Errorf("mode: %w", err)
	}
	if err := s.validateFamilies(); err != nil {
		return err
	}
	cluster, err := s.validateClusterCIDR()
	if err != nil {
		return err
	}
	switch s.CNI {
	case "", CNIEbpfnet:
		s.CNI = CNIEbpfnet
	case CNICilium:
		if !s.Kubernetes {
			return errors.New("cni: cilium runs only in a kubernetes lab (kubernetes: true)")
		}
		if !slices.Contains(peers.CiliumModes, s.Mode) {
			return fmt.Errorf("cni: cilium runs in mode %s, not %q", strings.Join(peers.CiliumModes, " or "), s.Mode)
		}
		if s.BGP != nil || s.MapSizes != (maps.Sizes{}) {
			return errors.New("cni: cilium: bgp and mapSizes are ebpfnet's settings")
		}
	default:
		return fmt.Errorf("cni: %q is not ebpfnet or cilium", s.CNI)
	}
	if s.VXLANPort == 0 {
		s.VXLANPort = DefaultVXLANPort
	}
	if s.VXLANPort < 1 || s.VXLANPort > 65535 {
		return fmt.Errorf("vxlanPort: %d is not a port", s.VXLANPort)
	}
	switch {
	case s.UnderlayFamily == "" || s.UnderlayFamily == FamilyIPv4:
	case s.UnderlayFamily != FamilyIPv6:
		return fmt.Errorf("underlayFamily: %q must be IPv4 or IPv6", s.UnderlayFamily)
	case s.Mode != "vxlan":
		return fmt.Errorf("underlayFamily: IPv6 carries VXLAN; mode is %s (want vxlan)", s.Mode)
	case s.Kubernetes:
		return errors.New("underlayFamily: IPv6 runs without kubernetes, not yet with it")
	}
	if err := agent.ValidateMapSizes(s.MapSizes); err != nil {
		return err
	}
	for i, c := range s.NoMasqueradeCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil || p.Addr().Is4In6() || !slices.Contains(s.IPFamilies, familyOf(p.Addr())) {
			return fmt.Errorf("noMasqueradeCIDRs[%d]: %q is not an %s CIDR", i, c, strings.Join(s.IPFamilies, " or "))
		}
	}
	if len(s.Nodes) == 0 {
		return errors.New("nodes: at least one node is needed")
	}
	if len(s.Nodes) > 200 {
		return errors.New("nodes: at most 200 nodes")
	}
	nodes := map[string]bool{}
	var cidrs []netip.Prefix
	for i, n := range s.Nodes {
		f := fmt.Sprintf("nodes[%d]", i)
		if err := checkNodeName(n.Name); err != nil {
			return fmt.Errorf("%s.name: %w", f, err)
		}
		if nodes[n.Name] {
			return fmt.Errorf("%s.name: duplicate node %q", f, n.Name)
		}
		nodes[n.Name] = true
		if n.Rack != "" && (!dnsLabel.MatchString(n.Rack) || len(n.Rack) > 63) {
			return fmt.Errorf("%s.rack: %.80q is not a DNS label", f, n.Rack)
		}
		if n.PodCIDR == "" {
			continue
		}
		p, err := netip.ParsePrefix(n.PodCIDR)
		switch {
		case cluster.Addr().Is6() && (err != nil || !p.Addr().Is6() || p.Masked() != p || p.Bits() != agent.PodCIDRv6Bits):
			return fmt.Errorf("%s.podCIDR: %q is not an IPv6 /%d network (the lab is IPv6-only)", f, n.PodCIDR, agent.PodCIDRv6Bits)
		case cluster.Addr().Is4() && (err != nil || !p.Addr().Is4() || p.Masked() != p || p.Bits() > 28):
			return fmt.Errorf("%s.podCIDR: %q is not an IPv4 network of /28 or larger", f, n.PodCIDR)
		}
		if !cluster.Contains(p.Addr()) || p.Bits() < cluster.Bits() {
			return fmt.Errorf("%s.podCIDR: %s is not inside clusterCIDR %s", f, p, cluster)
		}
		for j, q := range cidrs {
			if q.IsValid() && q.Overlaps(p) {
				return fmt.Errorf("%s.podCIDR: %s overlaps nodes[%d].podCIDR %s", f, p, j, q)
			}
		}
		cidrs = append(cidrs, p)
	}
	if err := s.validateBGP(); err != nil {
		return err
	}
	namespaces := map[string]bool{}
	for i := range s.Namespaces {
		ns := &s.Namespaces[i]
		f := fmt.Sprintf("namespaces[%d]", i)
		if !dnsLabel.MatchString(ns.Name) || len(ns.Name) > 63 {
			return fmt.Errorf("%s.name: %.80q is not a DNS label", f, ns.Name)
		}
		if namespaces[ns.Name] {
			return fmt.Errorf("%s.name: duplicate namespace %q", f, ns.Name)
		}
		namespaces[ns.Name] = true
		if err := validLabels(ns.Labels); err != nil {
			return fmt.Errorf("%s.labels: %w", f, err)
		}
		if ns.Labels == nil {
			ns.Labels = map[string]string{}
		}
		// As Kubernetes does, every namespace carries its name as a label.
		ns.Labels["kubernetes.io/metadata.name"] = ns.Name
	}
	pods := map[string]bool{}
	for i := range s.Pods {
		p := &s.Pods[i]
		f := fmt.Sprintf("pods[%d]", i)
		if !namespaces[p.Namespace] {
			return fmt.Errorf("%s.namespace: %q is not a declared namespace", f, p.Namespace)
		}
		if !dnsLabel.MatchString(p.Name) || len(p.Name) > 63 {
			return fmt.Errorf("%s.name: %.80q is not a DNS label", f, p.Name)
		}
		if !nodes[p.Node] {
			return fmt.Errorf("%s.node: %q is not a declared node", f, p.Node)
		}
		if pods[p.Key()] {
			return fmt.Errorf("%s: duplicate pod %s", f, p.Key())
		}
		pods[p.Key()] = true
		if err := validLabels(p.Labels); err != nil {
			return fmt.Errorf("%s.labels: %w", f, err)
		}
		names := map[string]bool{}
		served := map[string]bool{}
		for j := range p.Ports {
			pt := &p.Ports[j]
			pf := fmt.Sprintf("%s.ports[%d]", f, j)
			if pt.Port < 1 || pt.Port > 65535 {
				return fmt.Errorf("%s.port: %d is not in 1-65535", pf, pt.Port)
			}
			if pt.Protocol == "" {
				pt.Protocol = "TCP"
			}
			if pt.Protocol != "TCP" && pt.Protocol != "UDP" && pt.Protocol != "SCTP" {
				return fmt.Errorf("%s.protocol: %q must be TCP, UDP or SCTP", pf, pt.Protocol)
			}
			if pt.Name != "" {
				if len(pt.Name) > 15 || !dnsLabel.MatchString(pt.Name) {
					return fmt.Errorf("%s.name: %q is not a port name (a DNS label of at most 15 characters)", pf, pt.Name)
				}
				if names[pt.Name] {
					return fmt.Errorf("%s.name: duplicate port name %q", pf, pt.Name)
				}
				names[pt.Name] = true
			}
			key := fmt.Sprintf("%d/%s", pt.Port, pt.Protocol)
			if served[key] {
				return fmt.Errorf("%s: %s is declared twice", pf, key)
			}
			served[key] = true
		}
	}
	return validateServices(s.Services, namespaces, s.IPFamilies)
}

var dns1035Label = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)

// validateServices checks the services as the API server would, filling defaults (type
// ClusterIP, protocol TCP). A targetPort name no selected pod declares is fine: as in
// Kubernetes, those pods do not serve that port.
func validateServices(svcs []ServiceSpec, namespaces map[string]bool, families []string) error {
	cidr, dual := netip.MustParsePrefix(ServiceCIDR), len(families) > 1
	if families[0] == FamilyIPv6 {
		cidr = netip.MustParsePrefix(ServiceCIDRv6)
	}
	seen := map[string]bool{}
	ips := map[string]string{}         // cluster IP -> service
	nodePortsOpen := map[string]bool{} // "PORT/PROTOCOL" of every service
	for i := range svcs {
		s := &svcs[i]
		f := fmt.Sprintf("services[%d]", i)
		if !namespaces[s.Namespace] {
			return fmt.Errorf("%s.namespace: %q is not a declared namespace", f, s.Namespace)
		}
		if !dns1035Label.MatchString(s.Name) || len(s.Name) > 63 {
			return fmt.Errorf("%s.name: %q is not a DNS label starting with a letter", f, s.Name)
		}
		if seen[s.Key()] {
			return fmt.Errorf("%s: duplicate service %s", f, s.Key())
		}
		seen[s.Key()] = true
		if s.Type == "" {
			s.Type = "ClusterIP"
		}
		nodePorts := s.Type == "NodePort" || s.Type == "LoadBalancer"
		if s.Type != "ClusterIP" && !nodePorts {
			return fmt.Errorf("%s.type: %q must be ClusterIP, NodePort or LoadBalancer", f, s.Type)
		}
		if err := validLabels(s.Selector); err != nil {
			return fmt.Errorf("%s.selector: %w", f, err)
		}
		switch s.ClusterIP {
		case "":
		case "None":
			if nodePorts {
				return fmt.Errorf("%s.clusterIP: None (headless) is not allowed for type %s", f, s.Type)
			}
		default:
			ip, err := netip.ParseAddr(s.ClusterIP)
			if err != nil || !cidr.Contains(ip) || ip == cidr.Addr() || !cidr.Contains(ip.Next()) {
				return fmt.Errorf("%s.clusterIP: %q is not a host address of the lab's service CIDR %s", f, s.ClusterIP, cidr)
			}
			if other, dup := ips[s.ClusterIP]; dup {
				return fmt.Errorf("%s.clusterIP: %s is %s's too", f, s.ClusterIP, other)
			}
			ips[s.ClusterIP] = s.Key()
		}
		switch s.IPFamilyPolicy {
		case "", string(corev1.IPFamilyPolicySingleStack), string(corev1.IPFamilyPolicyPreferDualStack):
		case string(corev1.IPFamilyPolicyRequireDualStack):
			if !dual {
				return fmt.Errorf("%s.ipFamilyPolicy: RequireDualStack, but the lab is %s only (ipFamilies: [IPv4, IPv6])", f, families[0])
			}
		default:
			return fmt.Errorf("%s.ipFamilyPolicy: %q must be SingleStack, PreferDualStack or RequireDualStack", f, s.IPFamilyPolicy)
		}
		switch s.SessionAffinity {
		case "", "None", "ClientIP":
		default:
			return fmt.Errorf("%s.sessionAffinity: %q must be None or ClientIP", f, s.SessionAffinity)
		}
		switch s.ExternalTrafficPolicy {
		case "":
		case "Cluster", "Local":
			if !nodePorts {
				return fmt.Errorf("%s.externalTrafficPolicy: only for type NodePort or LoadBalancer", f)
			}
		default:
			return fmt.Errorf("%s.externalTrafficPolicy: %q must be Cluster or Local", f, s.ExternalTrafficPolicy)
		}
		if p := s.InternalTrafficPolicy; p != "" && p != "Cluster" && p != "Local" {
			return fmt.Errorf("%s.internalTrafficPolicy: %q must be Cluster or Local", f, p)
		}
		if len(s.Ports) == 0 && s.ClusterIP != "None" {
			return fmt.Errorf("%s.ports: at least one port is needed", f)
		}
		if err := validServicePorts(f, s.Ports, nodePorts, nodePortsOpen); err != nil {
			return err
		}
	}
	return nil
}

// validServicePorts checks one service's ports; open holds the node ports of the services
// before it.
func validServicePorts(f string, ports []ServicePortSpec, nodePorts bool, open map[string]bool) error {
	names, served := map[string]bool{}, map[string]bool{}
	for j := range ports {
		pt := &ports[j]
		pf := fmt.Sprintf("%s.ports[%d]", f, j)
		if len(ports) > 1 && pt.Name == "" {
			return fmt.Errorf("%s.name: needed when the service has more than one port", pf)
		}
		if pt.Name != "" {
			if !dnsLabel.MatchString(pt.Name) || len(pt.Name) > 63 {
				return fmt.Errorf("%s.name: %q is not a DNS label", pf, pt.Name)
			}
			if names[pt.Name] {
				return fmt.Errorf("%s.name: duplicate port name %q", pf, pt.Name)
			}
			names[pt.Name] = true
		}
		if pt.Port < 1 || pt.Port > 65535 {
			return fmt.Errorf("%s.port: %d is not in 1-65535", pf, pt.Port)
		}
		if pt.Protocol == "" {
			pt.Protocol = "TCP"
		}
		if pt.Protocol != "TCP" && pt.Protocol != "UDP" && pt.Protocol != "SCTP" {
			return fmt.Errorf("%s.protocol: %q must be TCP, UDP or SCTP", pf, pt.Protocol)
		}
		key := fmt.Sprintf("%d/%s", pt.Port, pt.Protocol)
		if served[key] {
			return fmt.Errorf("%s: %s is declared twice", pf, key)
		}
		served[key] = true
		switch tp := pt.TargetPort; {
		case tp.Type == intstr.Int && tp.IntVal != 0 && (tp.IntVal < 1 || tp.IntVal > 65535):
			return fmt.Errorf("%s.targetPort: %d is not in 1-65535", pf, tp.IntVal)
		case tp.Type == intstr.String && (len(tp.StrVal) > 15 || !dnsLabel.MatchString(tp.StrVal) ||
			!strings.ContainsAny(tp.StrVal, "abcdefghijklmnopqrstuvwxyz")):
			return fmt.Errorf("%s.targetPort: %q is neither a port number nor a port name", pf, tp.StrVal)
		}
		if pt.NodePort == 0 {
			continue
		}
		if !nodePorts {
			return fmt.Errorf("%s.nodePort: only for type NodePort or LoadBalancer", pf)
		}
		if pt.NodePort < store.MinNodePort || pt.NodePort > store.MaxNodePort {
			return fmt.Errorf("%s.nodePort: %d is not in %d-%d", pf, pt.NodePort, store.MinNodePort, store.MaxNodePort)
		}
		np := fmt.Sprintf("%d/%s", pt.NodePort, pt.Protocol)
		if open[np] {
			return fmt.Errorf("%s.nodePort: %s is taken by another port", pf, np)
		}
		open[np] = true
	}
	return nil
}

var (
	labelValue = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
	labelName  = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
)

// validLabels applies Kubernetes' rules for label keys and values.
func validLabels(labels map[string]string) error {
	for k, v := range labels {
		name := k
		if prefix, n, ok := strings.Cut(k, "/"); ok {
			if prefix == "" || len(prefix) > 253 {
				return fmt.Errorf("key %q has a bad prefix", k)
			}
			name = n
		}
		if len(name) > 63 || !labelName.MatchString(name) {
			return fmt.Errorf("key %q is not a valid label key", k)
		}
		if len(v) > 63 || !labelValue.MatchString(v) {
			return fmt.Errorf("value %q of %q is not a valid label value", v, k)
		}
	}
	return nil
}

// Address families of a lab's pods.
const (
	FamilyIPv4 = "IPv4"
	FamilyIPv6 = "IPv6"
)

// validateFamilies settles ipFamilies and clusterCIDRv6.
func (s *Spec) validateFamilies() error {
	switch {
	case len(s.IPFamilies) == 0 || slices.Equal(s.IPFamilies, []string{FamilyIPv4}):
		s.IPFamilies = []string{FamilyIPv4}
		if s.ClusterCIDRv6 != "" {
			return errors.New("clusterCIDRv6: set, but ipFamilies has no IPv6 (ipFamilies: [IPv4, IPv6])")
		}
		return nil
	case slices.Equal(s.IPFamilies, []string{FamilyIPv4, FamilyIPv6}):
	case slices.Equal(s.IPFamilies, []string{FamilyIPv6}):
		switch {
		case s.ClusterCIDRv6 != "":
			return errors.New("clusterCIDRv6: set, but the lab is IPv6-only (ipFamilies: [IPv6]): give its IPv6 CIDR as clusterCIDR")
		case s.Kubernetes && s.CNI == CNICilium:
			return errors.New("ipFamilies: an IPv6-only kubernetes lab runs ebpfnet, not yet cilium")
		}
		return nil
	default:
		return fmt.Errorf("ipFamilies: %q must be [IPv4], [IPv4, IPv6] or [IPv6]", s.IPFamilies)
	}
	switch {
	case s.Kubernetes && s.CNI == CNICilium:
		return errors.New("ipFamilies: a dual-stack kubernetes lab runs ebpfnet, not yet cilium")
	}
	if s.ClusterCIDRv6 == "" {
		s.ClusterCIDRv6 = DefaultClusterCIDRv6
	}
	p, err := netip.ParsePrefix(s.ClusterCIDRv6)
	if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() || p.Masked() != p || p.Bits() > agent.PodCIDRv6Bits {
		return fmt.Errorf("clusterCIDRv6: %q is not an IPv6 network of /%d or larger", s.ClusterCIDRv6, agent.PodCIDRv6Bits)
	}
	return nil
}

// validateClusterCIDR settles clusterCIDR, of the lab's first family: an IPv4 network of /24
// or larger, or, in an IPv6-only lab, an IPv6 one of /64 or larger.
func (s *Spec) validateClusterCIDR() (netip.Prefix, error) {
	v6 := s.IPFamilies[0] == FamilyIPv6
	switch {
	case s.ClusterCIDR == "" && v6:
		s.ClusterCIDR = DefaultClusterCIDRv6
	case s.ClusterCIDR == "":
		s.ClusterCIDR = DefaultClusterCIDR
	}
	cluster, err := netip.ParsePrefix(s.ClusterCIDR)
	switch {
	case v6 && (err != nil || !cluster.Addr().Is6() || cluster.Addr().Is4In6() || cluster.Masked() != cluster || cluster.Bits() > agent.PodCIDRv6Bits):
		return cluster, fmt.Errorf("clusterCIDR: %q is not an IPv6 network of /%d or larger (ipFamilies: [IPv6])", s.ClusterCIDR, agent.PodCIDRv6Bits)
	case !v6 && (err != nil || !cluster.Addr().Is4() || cluster.Bits() > 24):
		return cluster, fmt.Errorf("clusterCIDR: %q is not an IPv4 CIDR of /24 or larger", s.ClusterCIDR)
	}
	if svc := netip.MustParsePrefix(serviceCIDROf(cluster)); cluster.Overlaps(svc) {
		return cluster, fmt.Errorf("clusterCIDR: %s overlaps the lab's service CIDR %s", cluster, svc)
	}
	return cluster, nil
}

// serviceCIDROf is the lab's service CIDR of the family of clusterCIDR: IPv6 in an IPv6-only lab.
func serviceCIDROf(cluster netip.Prefix) string {
	if cluster.Addr().Is6() {
		return ServiceCIDRv6
	}
	return ServiceCIDR
}

// familyOf names ip's family as lab files do.
func familyOf(ip netip.Addr) string {
	if ip.Is4() {
		return FamilyIPv4
	}
	return FamilyIPv6
}

// DualStack says whether the lab's pods have IPv6 addresses too.
func (s *State) DualStack() bool { return s.ClusterCIDRv6 != "" }

// IPv6Only says whether the lab's pods have IPv6 addresses alone (ipFamilies: [IPv6]).
func (s *State) IPv6Only() bool { return s.clusterCIDR().Addr().Is6() }

func (s *State) clusterCIDR() netip.Prefix {
	p, _ := netip.ParsePrefix(s.ClusterCIDR)
	return p
}

// UnderlayIPv6 says whether the lab's underlay carries IPv6 beside IPv4: the nodes, the
// underlay namespace and the router have IPv6 addresses, in every lab whose pods or tunnels
// have IPv6 in them.
func (s *State) UnderlayIPv6() bool {
	return s.DualStack() || s.IPv6Only() || s.UnderlayFamily == FamilyIPv6
}

// serviceCIDR is the lab's service CIDR: IPv6 in an IPv6-only lab.
func (s *State) serviceCIDR() string { return serviceCIDROf(s.clusterCIDR()) }
