package maps

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
)

// prefilterPrefixBase mirrors PREFILTER_PREFIX_BASE: the family byte and padding.
const prefilterPrefixBase = 32

// Prefilter is a typed view of the XDP deny list.
type Prefilter struct{ m *ebpf.Map }

// NewPrefilter wraps the prefilter map.
func NewPrefilter(m *ebpf.Map) *Prefilter { return &Prefilter{m: m} }

func prefilterKey(p netip.Prefix) bpf.DatapathPrefilterKey {
	p = p.Masked()
	k := EndpointKey(p.Addr())
	return bpf.DatapathPrefilterKey{Prefixlen: uint32(prefilterPrefixBase + p.Bits()), Family: k.Family, Ip: k.Ip}
}

// Add denies traffic from p.
func (f *Prefilter) Add(p netip.Prefix) error {
	k := prefilterKey(p)
	if err := f.m.Put(&k, uint8(1)); err != nil {
		return fmt.Errorf("add prefilter %s: %w", p, err)
	}
	return nil
}

// Delete stops denying p; a missing entry is not an error.
func (f *Prefilter) Delete(p netip.Prefix) error {
	k := prefilterKey(p)
	if err := f.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete prefilter %s: %w", p, err)
	}
	return nil
}

// List returns every denied prefix.
func (f *Prefilter) List() ([]netip.Prefix, error) {
	var (
		k   bpf.DatapathPrefilterKey
		v   uint8
		out []netip.Prefix
	)
	it := f.m.Iterate()
	for it.Next(&k, &v) {
		ip := keyAddr(bpf.DatapathEndpointKey{Family: k.Family, Ip: k.Ip})
		out = append(out, netip.PrefixFrom(ip, int(k.Prefixlen)-prefilterPrefixBase))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list prefilter: %w", err)
	}
	return out, nil
}
