// Package lab builds a cluster of ebpfnet nodes and pods out of network namespaces on one
// machine, for the demo, for tests and for anyone who wants to watch the dataplane work.
package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/maps"
)

// Spec is a lab file: the format of ../shared/netpol's `lab:` blocks.
type Spec struct {
	Mode        string `json:"mode"`
	ClusterCIDR string `json:"clusterCIDR,omitempty"`
	VXLANPort   int    `json:"vxlanPort,omitempty"`
	// Kubernetes makes a real Kubernetes of the lab: pods become Pod objects run by kubelet.
	Kubernetes bool        `json:"kubernetes,omitempty"`
	Nodes      []NodeSpec  `json:"nodes"`
	Namespaces []Namespace `json:"namespaces"`
	Pods       []PodSpec   `json:"pods"`
}

// NodeSpec declares a node.
type NodeSpec struct {
	Name    string `json:"name"`
	PodCIDR string `json:"podCIDR,omitempty"`
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

// Defaults.
const (
	DefaultClusterCIDR = "10.244.0.0/16"
	DefaultVXLANPort   = 8472
	underlayMTU        = 1500
)

// ReadSpec reads a lab file, or the `lab:` block of a NetworkPolicy case file, strictly:
// unknown fields are errors.
func ReadSpec(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read lab file: %w", err)
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

// Validate checks everything before anything is made, naming the offending field.
func (s *Spec) Validate() error {
	if _, err := maps.ParseMode(s.Mode); err != nil {
		return fmt.Errorf("mode: %w", err)
	}
	if s.ClusterCIDR == "" {
		s.ClusterCIDR = DefaultClusterCIDR
	}
	cluster, err := netip.ParsePrefix(s.ClusterCIDR)
	if err != nil || !cluster.Addr().Is4() || cluster.Bits() > 24 {
		return fmt.Errorf("clusterCIDR: %q is not an IPv4 CIDR of /24 or larger", s.ClusterCIDR)
	}
	if s.VXLANPort == 0 {
		s.VXLANPort = DefaultVXLANPort
	}
	if s.VXLANPort < 1 || s.VXLANPort > 65535 {
		return fmt.Errorf("vxlanPort: %d is not a port", s.VXLANPort)
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
		if !dnsLabel.MatchString(n.Name) || len(n.Name) > 40 || n.Name == "underlay" {
			return fmt.Errorf("%s.name: %q must be a lower-case DNS label of at most 40 characters (and not \"underlay\")", f, n.Name)
		}
		if nodes[n.Name] {
			return fmt.Errorf("%s.name: duplicate node %q", f, n.Name)
		}
		nodes[n.Name] = true
		if n.PodCIDR == "" {
			continue
		}
		p, err := netip.ParsePrefix(n.PodCIDR)
		if err != nil || !p.Addr().Is4() || p.Masked() != p || p.Bits() > 28 {
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
	namespaces := map[string]bool{}
	for i := range s.Namespaces {
		ns := &s.Namespaces[i]
		f := fmt.Sprintf("namespaces[%d]", i)
		if !dnsLabel.MatchString(ns.Name) || len(ns.Name) > 63 {
			return fmt.Errorf("%s.name: %q is not a DNS label", f, ns.Name)
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
			return fmt.Errorf("%s.name: %q is not a DNS label", f, p.Name)
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
