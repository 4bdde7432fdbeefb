// Package loader loads the datapath, pins its maps, attaches its programs with pinned links,
// replaces them in place and removes them again.
package loader

import (
	"errors"
	"fmt"
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
	// migrations are pinned maps of another layout whose new maps wait for Upgrade to switch
	// the links before taking their pins.
	migrations []*migration
}

// Close releases this process's handles; pinned maps and links stay. Migrations Upgrade did
// not finish are dropped: the old pins stay.
func (d *Datapath) Close() error {
	discard(d.migrations)
	d.migrations = nil
	return errors.Join(d.DatapathPrograms.Close(), d.DatapathMaps.Close())
}

// Migrating names the pinned maps Load is carrying into a new layout.
func (d *Datapath) Migrating() string { return migrationNames(d.migrations) }

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

// Load loads the datapath, reusing maps already pinned in cfg.PinDir when their layout matches.
// A pinned map of another layout or capacity is carried into a new map (see migration), which
// takes the pin when Upgrade has switched every link to the new programs; a map no known
// upgrade converts is refused, nothing changed.
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
		opts.Maps.PinPath = pinDir
	}
	d := &Datapath{PinDir: pinDir}
	if pinDir != "" {
		if d.migrations, err = planMigrations(spec, pinDir); err != nil {
			return nil, err
		}
		opts.MapReplacements = replacements(d.migrations)
	}
	objs := struct {
		*bpf.DatapathPrograms
		*bpf.DatapathMaps
	}{&d.DatapathPrograms, &d.DatapathMaps}
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		// Rollback: nothing pinned changed; the running programs keep the old maps.
		discard(d.migrations)
		return nil, describeLoadError(err)
	}
	return d, nil
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
