package maps

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
)

// Prefilter is a typed view of the XDP deny list.
type Prefilter struct{ m *ebpf.Map }

// NewPrefilter wraps the prefilter map.
func NewPrefilter(m *ebpf.Map) *Prefilter { return &Prefilter{m: m} }

// Add denies traffic from p.
func (f *Prefilter) Add(p netip.Prefix) error {
	k := LPMKey(p)
	if err := f.m.Put(&k, uint8(1)); err != nil {
		return fmt.Errorf("add prefilter %s: %w", p, err)
	}
	return nil
}

// Delete stops denying p; a missing entry is not an error.
func (f *Prefilter) Delete(p netip.Prefix) error {
	k := LPMKey(p)
	if err := f.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete prefilter %s: %w", p, err)
	}
	return nil
}

// List returns every denied prefix.
func (f *Prefilter) List() ([]netip.Prefix, error) {
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
		return nil, fmt.Errorf("list prefilter: %w", err)
	}
	return out, nil
}
