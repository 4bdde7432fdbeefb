// Package maps mirrors the datapath's maps in Go: their names, sizes, pin paths and typed accessors.
package maps

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
)

// Names of the pinned maps, as the C code defines them.
const (
	EndpointsName = bpf.DatapathMapEndpoints
	MetricsName   = bpf.DatapathMapMetrics
	PrefilterName = bpf.DatapathMapPrefilter
	RoutesName    = bpf.DatapathMapRoutes
	ConfigName    = bpf.DatapathMapConfig
	IPCacheName   = bpf.DatapathMapIpcache
	PolicyName    = bpf.DatapathMapPolicy
	ConntrackName = bpf.DatapathMapConntrack
	EventsName    = bpf.DatapathMapEvents
	ServicesName  = bpf.DatapathMapServices
	BackendsName  = bpf.DatapathMapBackends
	AffinityName  = bpf.DatapathMapAffinity
	NATName       = bpf.DatapathMapNat
	NoMasqName    = bpf.DatapathMapNoMasquerade
)

// Names lists every map the datapath pins, in a stable order.
var Names = []string{EndpointsName, MetricsName, PrefilterName, RoutesName, ConfigName, IPCacheName, PolicyName,
	ConntrackName, EventsName, ServicesName, BackendsName, AffinityName, NATName, NoMasqName}

// DefaultPinDir is where maps and links are pinned unless configured otherwise.
const DefaultPinDir = "/sys/fs/bpf/ebpfnet"

// PinPath returns where map name is pinned under dir.
func PinPath(dir, name string) string { return filepath.Join(dir, name) }

// Sizes are the maps' capacities, applied at load time.
type Sizes struct {
	Endpoints uint32 `json:"endpoints" yaml:"endpoints"`
	Metrics   uint32 `json:"metrics" yaml:"metrics"`
	Prefilter uint32 `json:"prefilter" yaml:"prefilter"`
	Routes    uint32 `json:"routes" yaml:"routes"`
	IPCache   uint32 `json:"ipcache" yaml:"ipcache"`
	Policy    uint32 `json:"policy" yaml:"policy"`
	Conntrack uint32 `json:"conntrack" yaml:"conntrack"`
	// Events is the drop ring buffer's size in bytes: a power of two, at least a page.
	Events uint32 `json:"events" yaml:"events"`
	// Services holds every frontend and backend slot; Backends every backend.
	Services uint32 `json:"services" yaml:"services"`
	Backends uint32 `json:"backends" yaml:"backends"`
	// Affinity holds (client, Service) pairs under sessionAffinity ClientIP.
	Affinity uint32 `json:"affinity" yaml:"affinity"`
	// NAT holds two entries per translated flow (Services, masquerading).
	NAT uint32 `json:"nat" yaml:"nat"`
	// NoMasquerade holds the prefixes pods reach with their own address.
	NoMasquerade uint32 `json:"noMasquerade" yaml:"noMasquerade"`
}

// DefaultSizes fit a node with a few thousand pods.
var DefaultSizes = Sizes{Endpoints: 65536, Metrics: 1024, Prefilter: 16384, Routes: 16384,
	IPCache: 262144, Policy: 262144, Conntrack: 262144, Events: 1 << 20,
	Services: 65536, Backends: 65536, Affinity: 65536, NAT: 262144, NoMasquerade: 1024}

// Apply writes the sizes into spec; a zero size keeps the default.
func (s Sizes) Apply(spec *ebpf.CollectionSpec) error {
	for name, size := range map[string]uint32{
		EndpointsName: or(s.Endpoints, DefaultSizes.Endpoints),
		MetricsName:   or(s.Metrics, DefaultSizes.Metrics),
		PrefilterName: or(s.Prefilter, DefaultSizes.Prefilter),
		RoutesName:    or(s.Routes, DefaultSizes.Routes),
		IPCacheName:   or(s.IPCache, DefaultSizes.IPCache),
		PolicyName:    or(s.Policy, DefaultSizes.Policy),
		ConntrackName: or(s.Conntrack, DefaultSizes.Conntrack),
		EventsName:    or(s.Events, DefaultSizes.Events),
		ServicesName:  or(s.Services, DefaultSizes.Services),
		BackendsName:  or(s.Backends, DefaultSizes.Backends),
		AffinityName:  or(s.Affinity, DefaultSizes.Affinity),
		NATName:       or(s.NAT, DefaultSizes.NAT),
		NoMasqName:    or(s.NoMasquerade, DefaultSizes.NoMasquerade),
	} {
		m, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("datapath has no map %q", name)
		}
		m.MaxEntries = size
	}
	return nil
}

func or(v, def uint32) uint32 {
	if v == 0 {
		return def
	}
	return v
}
