package maps

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
)

// PrefixSet is a typed view of an LPM map used as a set of prefixes: the XDP deny list
// (prefilter) and the destinations pods reach unmasqueraded (no_masquerade).
type PrefixSet struct {
	m    *ebpf.Map
	what string // for errors
}

// NewPrefilter wraps the prefilter map.
func NewPrefilter(m *ebpf.Map) *PrefixSet { return &PrefixSet{m: m, what: "prefilter"} }

// NewNoMasquerade wraps the no_masquerade map.
func NewNoMasquerade(m *ebpf.Map) *PrefixSet { return &PrefixSet{m: m, what: "no-masquerade"} }

// Add puts p in the set.
func (f *PrefixSet) Add(p netip.Prefix) error {
	k := LPMKey(p)
	if err := f.m.Put(&k, uint8(1)); err != nil {
		return fmt.Errorf("add %s %s: %w", f.what, p, err)
	}
	return nil
}

// Delete takes p out of the set; a missing entry is not an error.
func (f *PrefixSet) Delete(p netip.Prefix) error {
	k := LPMKey(p)
	if err := f.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete %s %s: %w", f.what, p, err)
	}
	return nil
}

// List returns every prefix in the set.
func (f *PrefixSet) List() ([]netip.Prefix, error) {
	var (
		k   bpf.DatapathLpmKey
		v   uint8
		out []netip.Prefix
	)
	it := f.m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, lpmPrefix(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", f.what, err)
	}
	return out, nil
}
