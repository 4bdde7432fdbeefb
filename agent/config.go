package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/store"
	"github.com/ebpfnet/ebpfnet/yamlguard"
)

// Config is the agent's configuration file; flags override its fields.
type Config struct {
	NodeName          string `json:"nodeName"`
	UnderlayInterface string `json:"underlayInterface"`
	NodeIP            string `json:"nodeIP,omitempty"`
	PodCIDR           string `json:"podCIDR,omitempty"`
	PodCIDRBits       int    `json:"podCIDRBits,omitempty"`
	// ClusterCIDR is where nodes' pod CIDRs come from. An IPv6 one (/64 or larger) makes the
	// cluster IPv6-only: every node takes a /64, pods and cluster IPs are IPv6 alone.
	ClusterCIDR string `json:"clusterCIDR"`
	// ClusterCIDRv6 makes the cluster dual stack: each node takes a /64 of it (or PodCIDRv6),
	// and each pod an IPv6 address beside its IPv4 one.
	ClusterCIDRv6 string `json:"clusterCIDRv6,omitempty"`
	PodCIDRv6     string `json:"podCIDRv6,omitempty"`
	// NodeIPv6 is the node's IPv6 underlay address in a dual-stack cluster (default: the
	// underlay device's first global one, if it has one): IPv6 NodePorts answer on it and
	// pods' IPv6 traffic leaving the cluster is masqueraded to it. Without one, neither.
	NodeIPv6 string `json:"nodeIPv6,omitempty"`
	// UnderlayFamily is the family of the addresses VXLAN runs between: IPv4 (the default),
	// or IPv6, the nodes' IPv6 underlay addresses (nodeIPv6), in vxlan mode.
	UnderlayFamily string      `json:"underlayFamily,omitempty"`
	Mode           string      `json:"mode"`
	VXLANPort      int         `json:"vxlanPort,omitempty"`
	Store          StoreConfig `json:"store"`
	PinDir         string      `json:"pinDir,omitempty"`
	Socket         string      `json:"socket,omitempty"`
	MetricsAddress string      `json:"metricsAddress,omitempty"`
	MapSizes       maps.Sizes  `json:"mapSizes,omitempty"`
	// NodeLeaseTTL > 0 makes the node's registration expire that long after the agent stops
	// renewing it (etcd only). Zero keeps nodes until `ebpfnet node delete`.
	NodeLeaseTTL string `json:"nodeLeaseTTL,omitempty"`
	// IdentityGCGrace is how long an identity must go unused by every pod and node before it is
	// deleted (default 5m).
	IdentityGCGrace string `json:"identityGCGrace,omitempty"`
	// ServiceCIDR is where ClusterIPs come from (default 10.96.0.0/12, fd00:10:96::/112 in an
	// IPv6-only cluster): the node routes it to the datapath, and Services applied without a
	// clusterIP get one from it.
	ServiceCIDR string `json:"serviceCIDR,omitempty"`
	// ServiceCIDRv6 is where IPv6 ClusterIPs come from in a dual-stack cluster (default
	// fd00:10:96::/112 when clusterCIDRv6 is set).
	ServiceCIDRv6 string `json:"serviceCIDRv6,omitempty"`
	// Masquerade gives pod traffic to destinations outside the cluster the node's address
	// (default true).
	Masquerade *bool `json:"masquerade,omitempty"`
	// NoMasqueradeCIDRs are destinations outside the cluster that pods reach with their own
	// address.
	NoMasqueradeCIDRs []string `json:"noMasqueradeCIDRs,omitempty"`
	// MasqueradePorts are the node's source ports that translated flows take, "MIN-MAX"
	// (default 20000-29999): keep them out of net.ipv4.ip_local_port_range and NodePorts.
	MasqueradePorts string `json:"masqueradePorts,omitempty"`
	// Routing is where routes to other nodes' pod CIDRs come from: store (the default) or
	// bgp (native mode: the embedded BGP speaker configured by BGP).
	Routing string     `json:"routing,omitempty"`
	BGP     *BGPConfig `json:"bgp,omitempty"`
}

// StoreConfig says where desired state lives.
type StoreConfig struct {
	Type       string   `json:"type"`                 // "local", "etcd" or "kubernetes"
	Path       string   `json:"path,omitempty"`       // local
	Endpoints  []string `json:"endpoints,omitempty"`  // etcd
	Kubeconfig string   `json:"kubeconfig,omitempty"` // kubernetes; empty: the in-cluster configuration
}

// Defaults for fields left empty.
const (
	DefaultStorePath  = "/var/lib/ebpfnet/store.db"
	DefaultVXLANPort  = 8472
	DefaultPodCIDRLen = 24
	// DefaultIdentityGCGrace is how long an unused identity is kept.
	DefaultIdentityGCGrace = 5 * time.Minute
	DefaultServiceCIDR     = "10.96.0.0/12"
	DefaultServiceCIDRv6   = "fd00:10:96::/112"
	DefaultMasqueradePorts = "20000-29999"
)

// ReadConfig reads a YAML or JSON config file strictly: unknown fields are errors.
func ReadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if err := yamlguard.Check(data); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		msg := strings.TrimPrefix(err.Error(), "error unmarshaling JSON: while decoding JSON: json: ")
		return nil, fmt.Errorf("config %s: %s", path, msg)
	}
	return &c, nil
}

// settled is a validated config with parsed values.
type settled struct {
	Config
	mode    maps.Mode
	nodeIP  netip.Addr
	podCIDR netip.Prefix
	cluster netip.Prefix
	// podCIDRv6 and clusterV6 are zero in an IPv4-only cluster.
	podCIDRv6 netip.Prefix
	clusterV6 netip.Prefix
	nodeIPv6  netip.Addr // zero: taken from the underlay device, if it has one
	// underlayV6: tunnels run between nodes' IPv6 addresses (underlayFamily IPv6).
	underlayV6 bool
	leaseTTL   time.Duration
	// identityGCGrace is IdentityGCGrace parsed.
	identityGCGrace time.Duration
	serviceCIDR     netip.Prefix
	serviceCIDRv6   netip.Prefix // zero unless the cluster is dual stack
	masquerade      bool
	noMasquerade    []netip.Prefix
	natPorts        maps.PortRange
	bgp             *bgpSettings // nil unless routing is bgp
}

// validate fills defaults and checks every field, naming the one that is wrong.
func (c Config) validate() (*settled, error) {
	s := &settled{Config: c}
	var err error
	if c.NodeName == "" {
		if s.NodeName, err = os.Hostname(); err != nil {
			return nil, errors.New("nodeName: empty and the hostname is unknown")
		}
	}
	if c.UnderlayInterface == "" {
		return nil, errors.New("underlayInterface: must name the node's underlay device (e.g. eth0)")
	}
	if s.mode, err = maps.ParseMode(c.Mode); err != nil {
		return nil, fmt.Errorf("mode: %w", err)
	}
	if err := s.validateClusterCIDR(); err != nil {
		return nil, err
	}
	if c.NodeIP != "" {
		if s.nodeIP, err = netip.ParseAddr(c.NodeIP); err != nil || !s.nodeIP.Is4() {
			return nil, fmt.Errorf("nodeIP: %q is not an IPv4 address", c.NodeIP)
		}
	}
	if err := s.validatePodCIDR(); err != nil {
		return nil, err
	}
	switch c.UnderlayFamily {
	case "", "IPv4":
	case "IPv6":
		if s.mode != maps.ModeVXLAN {
			return nil, fmt.Errorf("underlayFamily: IPv6 carries VXLAN; mode is %s (want vxlan)", s.mode)
		}
		s.underlayV6 = true
	default:
		return nil, fmt.Errorf("underlayFamily: %q must be IPv4 or IPv6", c.UnderlayFamily)
	}
	if err := s.validateIPv6(); err != nil {
		return nil, err
	}
	if s.VXLANPort == 0 {
		s.VXLANPort = DefaultVXLANPort
	}
	if s.VXLANPort < 1 || s.VXLANPort > 65535 {
		return nil, fmt.Errorf("vxlanPort: %d is not a port", s.VXLANPort)
	}
	switch c.Store.Type {
	case "", "local":
		s.Store.Type = "local"
		if s.Store.Path == "" {
			s.Store.Path = DefaultStorePath
		}
	case "etcd":
		if len(c.Store.Endpoints) == 0 {
			return nil, errors.New("store.endpoints: etcd needs at least one endpoint")
		}
	case "kubernetes":
		if c.Store.Kubeconfig != "" {
			if _, err := os.Stat(c.Store.Kubeconfig); err != nil {
				return nil, fmt.Errorf("store.kubeconfig: %w", err)
			}
		}
	default:
		return nil, fmt.Errorf("store.type: %q must be local, etcd or kubernetes", c.Store.Type)
	}
	if s.PinDir == "" {
		s.PinDir = maps.DefaultPinDir
	}
	if s.Socket == "" {
		s.Socket = agentapi.DefaultSocket
	}
	if c.NodeLeaseTTL != "" {
		if s.leaseTTL, err = time.ParseDuration(c.NodeLeaseTTL); err != nil || s.leaseTTL < 2*time.Second {
			return nil, fmt.Errorf("nodeLeaseTTL: %q must be a duration of at least 2s", c.NodeLeaseTTL)
		}
		if s.Store.Type != "etcd" {
			return nil, errors.New("nodeLeaseTTL: only an etcd store has leases")
		}
	}
	s.identityGCGrace = DefaultIdentityGCGrace
	if c.IdentityGCGrace != "" {
		if s.identityGCGrace, err = time.ParseDuration(c.IdentityGCGrace); err != nil || s.identityGCGrace < time.Second {
			return nil, fmt.Errorf("identityGCGrace: %q must be a duration of at least 1s", c.IdentityGCGrace)
		}
	}
	if err := ValidateMapSizes(c.MapSizes); err != nil {
		return nil, err
	}
	if err := s.validateServices(); err != nil {
		return nil, err
	}
	if err := s.validateRouting(); err != nil {
		return nil, err
	}
	return s, nil
}

// PodCIDRv6Bits is the size of every node's IPv6 pod CIDR, as Kubernetes' default
// (--node-cidr-mask-size-ipv6).
const PodCIDRv6Bits = 64

// validateClusterCIDR settles clusterCIDR: an IPv4 network, or an IPv6 one of /64 or larger,
// which makes the cluster IPv6-only.
func (s *settled) validateClusterCIDR() error {
	var err error
	s.cluster, err = netip.ParsePrefix(s.ClusterCIDR)
	switch {
	case err == nil && s.cluster.Addr().Is4():
		return nil
	case err == nil && s.cluster.Addr().Is6() && !s.cluster.Addr().Is4In6() && s.cluster.Masked() == s.cluster && s.cluster.Bits() <= PodCIDRv6Bits:
		return nil
	}
	return fmt.Errorf("clusterCIDR: %q is not an IPv4 network, or an IPv6 one of /%d or larger", s.ClusterCIDR, PodCIDRv6Bits)
}

// validatePodCIDR settles podCIDRBits and podCIDR, of clusterCIDR's family: an IPv6 cluster's
// nodes take /64s.
func (s *settled) validatePodCIDR() error {
	if s.ipv6Only() {
		if s.PodCIDRBits == 0 {
			s.PodCIDRBits = PodCIDRv6Bits
		}
		if s.PodCIDRBits != PodCIDRv6Bits {
			return fmt.Errorf("podCIDRBits: %d, but an IPv6 clusterCIDR gives each node a /%d", s.PodCIDRBits, PodCIDRv6Bits)
		}
	} else {
		if s.PodCIDRBits == 0 {
			s.PodCIDRBits = DefaultPodCIDRLen
		}
		if s.PodCIDRBits < s.cluster.Bits() || s.PodCIDRBits > 28 {
			return fmt.Errorf("podCIDRBits: %d must be between the cluster CIDR's /%d and /28", s.PodCIDRBits, s.cluster.Bits())
		}
	}
	if s.PodCIDR == "" {
		return nil
	}
	var err error
	if s.podCIDR, err = netip.ParsePrefix(s.PodCIDR); err != nil || s.podCIDR.Masked() != s.podCIDR || s.podCIDR.Addr().Is6() != s.ipv6Only() ||
		s.ipv6Only() && s.podCIDR.Bits() != PodCIDRv6Bits {
		if s.ipv6Only() {
			return fmt.Errorf("podCIDR: %q is not an IPv6 /%d network (clusterCIDR is IPv6)", s.PodCIDR, PodCIDRv6Bits)
		}
		return fmt.Errorf("podCIDR: %q is not an IPv4 network", s.PodCIDR)
	}
	if !s.cluster.Contains(s.podCIDR.Addr()) || s.podCIDR.Bits() < s.cluster.Bits() {
		return fmt.Errorf("podCIDR: %s is not inside clusterCIDR %s", s.podCIDR, s.cluster)
	}
	return nil
}

// ipv6Only says the cluster is IPv6 only (clusterCIDR is IPv6): pods, pod CIDRs and cluster
// IPs have IPv6 addresses alone, in the fields that hold IPv4 ones in other clusters.
func (s *settled) ipv6Only() bool { return s.cluster.Addr().Is6() }

// hasIPv6 says pods have IPv6 addresses: the cluster is dual stack or IPv6 only.
func (s *settled) hasIPv6() bool { return s.ipv6Only() || s.clusterV6.IsValid() }

// serviceFamilies are the families of the cluster's Services, the default one first.
func (s *settled) serviceFamilies() []corev1.IPFamily {
	switch {
	case s.ipv6Only():
		return []corev1.IPFamily{corev1.IPv6Protocol}
	case s.serviceCIDRv6.IsValid():
		return []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	}
	return []corev1.IPFamily{corev1.IPv4Protocol}
}

// validateIPv6 settles the dual-stack fields.
func (s *settled) validateIPv6() error {
	var err error
	if s.ipv6Only() {
		for _, f := range []struct{ name, v string }{{"clusterCIDRv6", s.ClusterCIDRv6}, {"podCIDRv6", s.PodCIDRv6}} {
			if f.v != "" {
				return fmt.Errorf("%s: only beside an IPv4 clusterCIDR (dual stack); clusterCIDR %s makes the cluster IPv6-only", f.name, s.cluster)
			}
		}
		return s.validateNodeIPv6()
	}
	if s.ClusterCIDRv6 == "" {
		if s.PodCIDRv6 != "" {
			return errors.New("podCIDRv6: needs clusterCIDRv6")
		}
		if s.underlayV6 {
			return s.validateNodeIPv6()
		}
		if s.NodeIPv6 != "" {
			return errors.New("nodeIPv6: needs clusterCIDRv6 (or underlayFamily: IPv6)")
		}
		return nil
	}
	if err := s.validateNodeIPv6(); err != nil {
		return err
	}
	if s.clusterV6, err = netip.ParsePrefix(s.ClusterCIDRv6); err != nil || !s.clusterV6.Addr().Is6() || s.clusterV6.Addr().Is4In6() ||
		s.clusterV6.Masked() != s.clusterV6 || s.clusterV6.Bits() > PodCIDRv6Bits {
		return fmt.Errorf("clusterCIDRv6: %q is not an IPv6 network of /%d or larger", s.ClusterCIDRv6, PodCIDRv6Bits)
	}
	if s.PodCIDRv6 != "" {
		if s.podCIDRv6, err = netip.ParsePrefix(s.PodCIDRv6); err != nil || s.podCIDRv6.Masked() != s.podCIDRv6 || !s.podCIDRv6.Addr().Is6() ||
			s.podCIDRv6.Bits() != PodCIDRv6Bits {
			return fmt.Errorf("podCIDRv6: %q is not an IPv6 /%d network", s.PodCIDRv6, PodCIDRv6Bits)
		}
		if !s.clusterV6.Contains(s.podCIDRv6.Addr()) {
			return fmt.Errorf("podCIDRv6: %s is not inside clusterCIDRv6 %s", s.podCIDRv6, s.clusterV6)
		}
	}
	return nil
}

func (s *settled) validateNodeIPv6() error {
	var err error
	if s.NodeIPv6 != "" {
		if s.nodeIPv6, err = netip.ParseAddr(s.NodeIPv6); err != nil || !usableIPv6(s.nodeIPv6) {
			return fmt.Errorf("nodeIPv6: %q is not a global IPv6 address", s.NodeIPv6)
		}
	}
	return nil
}

// validateServices settles the Service and masquerading fields.
func (s *settled) validateServices() error {
	var err error
	cidr := s.ServiceCIDR
	switch {
	case cidr == "" && s.ipv6Only():
		cidr = DefaultServiceCIDRv6
	case cidr == "":
		cidr = DefaultServiceCIDR
	}
	if s.ipv6Only() {
		if s.serviceCIDR, err = parseServiceCIDRv6(cidr); err != nil {
			return fmt.Errorf("serviceCIDR: %w (clusterCIDR is IPv6)", err)
		}
	} else if s.serviceCIDR, err = netip.ParsePrefix(cidr); err != nil || !s.serviceCIDR.Addr().Is4() || s.serviceCIDR.Masked() != s.serviceCIDR {
		return fmt.Errorf("serviceCIDR: %q is not an IPv4 network", cidr)
	}
	if s.serviceCIDR.Overlaps(s.cluster) {
		return fmt.Errorf("serviceCIDR: %s overlaps clusterCIDR %s", s.serviceCIDR, s.cluster)
	}
	if err := s.validateServiceCIDRv6(); err != nil {
		return err
	}
	s.masquerade = s.Masquerade == nil || *s.Masquerade
	for _, c := range s.NoMasqueradeCIDRs {
		p, err := netip.ParsePrefix(c)
		switch {
		case s.ipv6Only() && (err != nil || !p.Addr().Is6() || p.Addr().Is4In6()):
			return fmt.Errorf("noMasqueradeCIDRs: %q is not an IPv6 CIDR (the cluster is IPv6-only)", c)
		case err != nil || p.Addr().Is4In6() || p.Addr().Is6() && !s.clusterV6.IsValid() && !s.ipv6Only():
			return fmt.Errorf("noMasqueradeCIDRs: %q is not an IPv4 CIDR (or IPv6, in a dual-stack cluster)", c)
		}
		s.noMasquerade = append(s.noMasquerade, p.Masked())
	}
	ports := s.MasqueradePorts
	if ports == "" {
		ports = DefaultMasqueradePorts
	}
	var lo, hi int
	if n, err := fmt.Sscanf(ports, "%d-%d", &lo, &hi); err != nil || n != 2 || lo < 1024 || hi > 65535 || lo > hi {
		return fmt.Errorf("masqueradePorts: %q must be MIN-MAX within 1024-65535", ports)
	}
	if lo <= 32767 && hi >= 30000 {
		return fmt.Errorf("masqueradePorts: %q overlaps the NodePort range 30000-32767", ports)
	}
	s.natPorts = maps.PortRange{Min: uint16(lo), Max: uint16(hi)}
	return nil
}

// validateServiceCIDRv6 settles serviceCIDRv6: only in a dual-stack cluster, an IPv6 network
// the service IP allocator takes, apart from the pods'.
func (s *settled) validateServiceCIDRv6() error {
	cidr := s.ServiceCIDRv6
	if !s.clusterV6.IsValid() {
		if cidr != "" {
			return errors.New("serviceCIDRv6: needs clusterCIDRv6")
		}
		return nil
	}
	if cidr == "" {
		cidr = DefaultServiceCIDRv6
	}
	var err error
	if s.serviceCIDRv6, err = parseServiceCIDRv6(cidr); err != nil {
		return fmt.Errorf("serviceCIDRv6: %w", err)
	}
	if s.serviceCIDRv6.Overlaps(s.clusterV6) {
		return fmt.Errorf("serviceCIDRv6: %s overlaps clusterCIDRv6 %s", s.serviceCIDRv6, s.clusterV6)
	}
	return nil
}

// parseServiceCIDRv6 parses an IPv6 service CIDR, one the service IP allocator takes.
func parseServiceCIDRv6(cidr string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() || p.Masked() != p || p.Bits() < store.MinServiceCIDRv6Bits || p.Bits() > 120 {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv6 network of /%d to /120", cidr, store.MinServiceCIDRv6Bits)
	}
	return p, nil
}

// serviceCIDRFor is where cluster IPs of family come from; invalid for a family the cluster
// has no Services of.
func (s *settled) serviceCIDRFor(family corev1.IPFamily) netip.Prefix {
	switch {
	case s.ipv6Only() && family == corev1.IPv6Protocol:
		return s.serviceCIDR
	case s.ipv6Only():
		return netip.Prefix{}
	case family == corev1.IPv6Protocol:
		return s.serviceCIDRv6
	}
	return s.serviceCIDR
}

// Bounds of mapSizes. MaxMapEntries is what one map may hold: beyond it the preallocated LRU maps
// (conntrack, nat) alone take gigabytes of locked kernel memory, and a node has no use for more
// (identities are 24 bits). MinMapEntries keeps a map useful at all.
const (
	MinMapEntries = 16
	MaxMapEntries = 1 << 24
	// MaxEventsBytes bounds the drop ring buffer.
	MaxEventsBytes = 1 << 30
	// MinFlowEntriesPerCPU bounds the LRU maps whose entries flows live on (conntrack, nat)
	// from below. The kernel keeps up to 128 of an LRU map's entries per CPU aside, frees and
	// moves them 128 at a time, and when none on its lists is unreferenced evicts one in use:
	// a small map under a flood of short flows loses the busy ones. test/fullmaps_test.go saw
	// a busy TCP flow evicted at 256 and 512 entries per CPU and kept at 1024 and 2048.
	MinFlowEntriesPerCPU = 2048
)

// MinFlowEntries is the smallest conntrack or nat map this node takes (MinFlowEntriesPerCPU
// for each of its CPUs).
func MinFlowEntries() uint32 { return uint32(MinFlowEntriesPerCPU * runtime.NumCPU()) }

// ValidateMapSizes checks mapSizes field by field; zero keeps a map's default.
func ValidateMapSizes(s maps.Sizes) error {
	d := maps.DefaultSizes
	flowReason := fmt.Sprintf(" (%d per CPU: smaller LRU maps evict flows in use)", MinFlowEntriesPerCPU)
	for _, f := range []struct {
		name      string
		v, def    uint32
		min, max  uint32
		minReason string
	}{
		{"endpoints", s.Endpoints, d.Endpoints, MinMapEntries, MaxMapEntries, ""},
		// Every (reason, direction) the datapath counts needs its own entry.
		{"metrics", s.Metrics, d.Metrics, uint32(len(maps.ReasonNames) * len(maps.DirectionNames)), 1 << 16,
			" (one entry per reason and hook)"},
		{"prefilter", s.Prefilter, d.Prefilter, MinMapEntries, MaxMapEntries, ""},
		{"routes", s.Routes, d.Routes, MinMapEntries, MaxMapEntries, ""},
		{"ipcache", s.IPCache, d.IPCache, MinMapEntries, MaxMapEntries, ""},
		{"policy", s.Policy, d.Policy, MinMapEntries, MaxMapEntries, ""},
		{"conntrack", s.Conntrack, d.Conntrack, MinFlowEntries(), MaxMapEntries, flowReason},
		{"services", s.Services, d.Services, MinMapEntries, MaxMapEntries, ""},
		{"backends", s.Backends, d.Backends, MinMapEntries, MaxMapEntries, ""},
		{"affinity", s.Affinity, d.Affinity, MinMapEntries, MaxMapEntries, ""},
		{"nat", s.NAT, d.NAT, MinFlowEntries(), MaxMapEntries, flowReason},
		{"noMasquerade", s.NoMasquerade, d.NoMasquerade, MinMapEntries, MaxMapEntries, ""},
	} {
		if f.v != 0 && (f.v < f.min || f.v > f.max) {
			return fmt.Errorf("mapSizes.%s: %d must be between %d%s and %d (0 keeps the default %d)", f.name, f.v, f.min, f.minReason, f.max, f.def)
		}
	}
	if e := s.Events; e != 0 && (e < uint32(os.Getpagesize()) || e > MaxEventsBytes || e&(e-1) != 0) {
		return fmt.Errorf("mapSizes.events: %d bytes must be a power of two between the page size %d and %d (0 keeps the default %d)",
			e, os.Getpagesize(), MaxEventsBytes, d.Events)
	}
	return nil
}
