package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"

	"github.com/ebpfnet/ebpfnet/maps"
)

// StateRoot holds one directory per lab: its state file, server logs and ready files. It is not
// under /run/ebpfnet, which a kubernetes lab's nodes each have of their own.
var StateRoot = "/run/ebpfnet-lab"

// PinRoot holds one directory per lab, with one pin dir per node.
var PinRoot = "/sys/fs/bpf/ebpfnet-lab"

var labName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?$`)

// CheckName refuses lab names that would not make valid namespace and pin names, or that
// would lead out of StateRoot and PinRoot ('/', "..", NUL, overlong).
func CheckName(name string) error {
	if !labName.MatchString(name) {
		return fmt.Errorf("lab name %.80q must be 1-16 lower-case letters, digits or '-'", name)
	}
	return nil
}

// State is a lab as made: written before anything is created, so `down` can always undo it.
type State struct {
	Name        string `json:"name"`
	Mode        string `json:"mode"`
	ClusterCIDR string `json:"clusterCIDR"`
	// ClusterCIDRv6 is set in a dual-stack lab.
	ClusterCIDRv6 string `json:"clusterCIDRv6,omitempty"`
	VXLANPort     int    `json:"vxlanPort"`
	// UnderlayFamily IPv6 makes VXLAN run between the nodes' IPv6 addresses.
	UnderlayFamily string `json:"underlayFamily,omitempty"`
	Underlay       string `json:"underlayNetns"`
	EtcdURL        string `json:"etcdURL"`
	EtcdPID        int    `json:"etcdPID,omitempty"`
	// Kubernetes says the lab runs a real Kubernetes: API server, kubelets, containerd.
	Kubernetes bool `json:"kubernetes,omitempty"`
	// CNI networks the pods: CNIEbpfnet, or CNICilium (a peer, for comparison).
	CNI        string      `json:"cni,omitempty"`
	Nodes      []Node      `json:"nodes"`
	Namespaces []Namespace `json:"namespaces"`
	Pods       []Pod       `json:"pods"`

	// Masquerade and NoMasqueradeCIDRs go into every node's agent config (see Spec).
	Masquerade        *bool    `json:"masquerade,omitempty"`
	NoMasqueradeCIDRs []string `json:"noMasqueradeCIDRs,omitempty"`

	// MapSizes goes into every node's agent config (see Spec).
	MapSizes maps.Sizes `json:"mapSizes,omitempty"`

	// BGP is the lab file's bgp block, with its defaults; nil: the agents route from the store.
	BGP *BGPSpec `json:"bgp,omitempty"`
	// Racks are the nodes' segments when they have racks, in the order they were made.
	Racks []Rack `json:"racks,omitempty"`
	// Router is the BGP router, when BGP.RouterASN is set.
	Router *Router `json:"router,omitempty"`
}

// Node is a node as made.
type Node struct {
	Name string     `json:"name"`
	IP   netip.Addr `json:"ip"`
	// IPv6 is the node's IPv6 underlay address in a dual-stack lab.
	IPv6    netip.Addr   `json:"ipv6,omitzero"`
	PodCIDR netip.Prefix `json:"podCIDR"`
	// PodCIDRv6 is the node's IPv6 pod CIDR in a dual-stack lab.
	PodCIDRv6 netip.Prefix `json:"podCIDRv6,omitzero"`
	Netns     string       `json:"netns"`
	PinDir    string       `json:"pinDir"`
	Socket    string       `json:"socket"`
	AgentPID  int          `json:"agentPID,omitempty"`
	// wantCIDR is the pod CIDR the lab file asked for, if any.
	WantCIDR string `json:"wantPodCIDR,omitempty"`
	// Rack is the node's rack, if the lab has racks.
	Rack string `json:"rack,omitempty"`
}

// Pod is a pod as made.
type Pod struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	Node      string     `json:"node"`
	IP        netip.Addr `json:"ip"`
	// IPv6 is the pod's IPv6 address in a dual-stack lab.
	IPv6        netip.Addr        `json:"ipv6,omitzero"`
	Labels      map[string]string `json:"labels"`
	Ports       []Port            `json:"ports"`
	Netns       string            `json:"netns"`
	ContainerID string            `json:"containerID"`
	EndpointID  uint32            `json:"endpointID"`
	ServerPID   int               `json:"serverPID,omitempty"`
}

// Key is "namespace/name".
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

// Dir is where a lab keeps its files.
func Dir(name string) string { return filepath.Join(StateRoot, name) }

func statePath(name string) string { return filepath.Join(Dir(name), "state.json") }

// ErrNotUp says there is no such lab.
var ErrNotUp = errors.New("lab is not up")

// Load reads a lab's state; a name CheckName refuses is refused before it becomes a path.
func Load(name string) (*State, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(statePath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("lab %q: %w (start it with `ebpfnet lab up -f FILE --name %s`)", name, ErrNotUp, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read lab %q: %w", name, err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("lab %q state is corrupt: %w", name, err)
	}
	return &s, nil
}

func (s *State) save() error {
	if err := os.MkdirAll(Dir(s.Name), 0o700); err != nil {
		return fmt.Errorf("make lab dir: %w", err)
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := statePath(s.Name) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return os.Rename(tmp, statePath(s.Name))
}

// Pod returns the pod "namespace/name".
func (s *State) Pod(key string) (*Pod, error) {
	for i := range s.Pods {
		if s.Pods[i].Key() == key {
			return &s.Pods[i], nil
		}
	}
	return nil, fmt.Errorf("lab %s has no pod %q", s.Name, key)
}

// Node returns the node called name.
func (s *State) Node(name string) (*Node, error) {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i], nil
		}
	}
	return nil, fmt.Errorf("lab %s has no node %q", s.Name, name)
}

// List names the labs that are up.
func List() ([]string, error) {
	entries, err := os.ReadDir(StateRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if _, err := os.Stat(statePath(e.Name())); err == nil {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
