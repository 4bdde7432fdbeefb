// Package loader loads the datapath, pins its maps, attaches its programs with pinned links,
// replaces them in place and removes them again.
package loader

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/maps"
)

// Config says where to pin and how large the maps are.
type Config struct {
	// PinDir holds the pinned maps and links; empty means maps.DefaultPinDir. Unpinned
	// loading (for BPF_PROG_TEST_RUN) uses Unpinned.
	PinDir string
	// Unpinned loads private maps that nothing else sees, for unit tests of programs.
	Unpinned bool
	Sizes    maps.Sizes
}

// Datapath is a loaded collection: programs and (pinned) maps.
type Datapath struct {
	bpf.DatapathPrograms
	bpf.DatapathMaps
	PinDir string
}

// Close releases this process's handles; pinned maps and links stay.
func (d *Datapath) Close() error {
	return errors.Join(d.DatapathPrograms.Close(), d.DatapathMaps.Close())
}

// Endpoints returns a typed view of the endpoints map.
func (d *Datapath) Endpoints() *maps.Endpoints { return maps.NewEndpoints(d.DatapathMaps.Endpoints) }

// IPCache returns a typed view of the ipcache map.
func (d *Datapath) IPCache() *maps.IPCache { return maps.NewIPCache(d.DatapathMaps.Ipcache) }

// Policy returns a typed view of the policy map.
func (d *Datapath) Policy() *maps.Policy { return maps.NewPolicy(d.DatapathMaps.Policy) }

// Conntrack returns a typed view of the conntrack map.
func (d *Datapath) Conntrack() *maps.Conntrack { return maps.NewConntrack(d.DatapathMaps.Conntrack) }

// Prefilter returns a typed view of the XDP deny list.
func (d *Datapath) Prefilter() *maps.PrefixSet { return maps.NewPrefilter(d.DatapathMaps.Prefilter) }

// NoMasquerade returns a typed view of the destinations pods reach with their own address.
func (d *Datapath) NoMasquerade() *maps.PrefixSet {
	return maps.NewNoMasquerade(d.DatapathMaps.NoMasquerade)
}

// Services returns a typed view of the services and backends maps.
func (d *Datapath) Services() *maps.Services {
	return maps.NewServices(d.DatapathMaps.Services, d.DatapathMaps.Backends)
}

// NAT returns a typed view of the nat map.
func (d *Datapath) NAT() *maps.NAT { return maps.NewNAT(d.DatapathMaps.Nat) }

// Routes returns a typed view of the routes map.
func (d *Datapath) Routes() *maps.Routes { return maps.NewRoutes(d.DatapathMaps.Routes) }

// SetNodeConfig tells the datapath what its node is.
func (d *Datapath) SetNodeConfig(c maps.NodeConfig) error {
	return maps.SetConfig(d.DatapathMaps.Config, c)
}

// Metrics returns a typed view of the metrics map.
func (d *Datapath) Metrics() *maps.Metrics { return maps.NewMetrics(d.DatapathMaps.Metrics) }

// Load loads the datapath, reusing maps already pinned in cfg.PinDir when their layout matches
// and refusing when it does not.
func Load(cfg Config) (*Datapath, error) {
	spec, err := bpf.LoadDatapath()
	if err != nil {
		return nil, fmt.Errorf("read datapath object: %w", err)
	}
	if err := cfg.Sizes.Apply(spec); err != nil {
		return nil, err
	}
	opts := &ebpf.CollectionOptions{}
	pinDir := ""
	if cfg.Unpinned {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	} else {
		pinDir = cfg.PinDir
		if pinDir == "" {
			pinDir = maps.DefaultPinDir
		}
		if err := ensurePinDir(pinDir); err != nil {
			return nil, err
		}
		if err := checkPinnedLayouts(spec, pinDir); err != nil {
			return nil, err
		}
		opts.Maps.PinPath = pinDir
	}
	d := &Datapath{PinDir: pinDir}
	objs := struct {
		*bpf.DatapathPrograms
		*bpf.DatapathMaps
	}{&d.DatapathPrograms, &d.DatapathMaps}
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		return nil, describeLoadError(err)
	}
	return d, nil
}

// checkPinnedLayouts refuses to reuse a pinned map whose type, key, value, size or flags differ.
func checkPinnedLayouts(spec *ebpf.CollectionSpec, pinDir string) error {
	for _, name := range maps.Names {
		ms := spec.Maps[name]
		path := maps.PinPath(pinDir, name)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			continue
		}
		pinned, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", path, err)
		}
		info, err := pinned.Info()
		pinned.Close()
		if err != nil {
			return fmt.Errorf("read pinned map %s: %w", path, err)
		}
		var diffs []string
		check := func(what string, have, want uint32) {
			if have != want {
				diffs = append(diffs, fmt.Sprintf("%s %d, want %d", what, have, want))
			}
		}
		check("type", uint32(info.Type), uint32(ms.Type))
		check("key size", info.KeySize, ms.KeySize)
		check("value size", info.ValueSize, ms.ValueSize)
		check("max entries", info.MaxEntries, ms.MaxEntries)
		check("flags", info.Flags, ms.Flags)
		if len(diffs) > 0 && name == maps.ConfigName {
			// The config map holds nothing the agent does not write again at start: a new
			// layout replaces it, and programs still attached keep the old one until switched.
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("replace pinned map %s of an older layout: %w", path, err)
			}
			continue
		}
		if len(diffs) > 0 {
			return fmt.Errorf("pinned map %s has a different layout (%s); refusing to reuse it: "+
				"uninstall the old datapath or use another pin dir", path, strings.Join(diffs, ", "))
		}
	}
	return nil
}

// describeLoadError keeps the tail of a verifier log in the one-line error.
func describeLoadError(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		tail := ve.Log
		if len(tail) > 8 {
			tail = tail[len(tail)-8:]
		}
		return fmt.Errorf("verifier rejected the datapath: %w; log tail: %s", err, strings.Join(tail, " | "))
	}
	return fmt.Errorf("load datapath: %w", err)
}
