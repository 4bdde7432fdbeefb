package maps

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
)

// Translation is one entry of the nat map: packets of tuple From become tuple To.
type Translation struct {
	Protocol   uint8
	From, To   [2]netip.AddrPort // source, destination
	Reply      bool              // it translates replies back
	Service    bool
	Masquerade bool
	BackendID  uint32
	Packets    uint64
	Expires    uint64 // CLOCK_MONOTONIC ns
	key        bpf.DatapathCtKey
}

// NAT is a typed view of the nat map.
type NAT struct{ m *ebpf.Map }

// NewNAT wraps the nat map.
func NewNAT(m *ebpf.Map) *NAT { return &NAT{m: m} }

func addrOf(family uint8, b [16]uint8) netip.Addr {
	return keyAddr(bpf.DatapathEndpointKey{Family: family, Ip: b})
}

// List returns every translation.
func (n *NAT) List() ([]Translation, error) {
	var (
		k   bpf.DatapathCtKey
		v   bpf.DatapathNatEntry
		out []Translation
	)
	it := n.m.Iterate()
	for it.Next(&k, &v) {
		t := Translation{Protocol: k.Protocol, BackendID: v.BackendId, Packets: v.Packets, Expires: v.Expires, key: k,
			Reply:      v.Flags&uint32(bpf.DatapathNatFlagsNAT_F_REPLY) != 0,
			Service:    v.Flags&uint32(bpf.DatapathNatFlagsNAT_F_SERVICE) != 0,
			Masquerade: v.Flags&uint32(bpf.DatapathNatFlagsNAT_F_MASQUERADE) != 0}
		t.From = [2]netip.AddrPort{netip.AddrPortFrom(addrOf(k.Family, k.Saddr), ntohs(k.Sport)),
			netip.AddrPortFrom(addrOf(k.Family, k.Daddr), ntohs(k.Dport))}
		t.To = [2]netip.AddrPort{netip.AddrPortFrom(addrOf(k.Family, v.Saddr), ntohs(v.Sport)),
			netip.AddrPortFrom(addrOf(k.Family, v.Daddr), ntohs(v.Dport))}
		out = append(out, t)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list nat: %w", err)
	}
	return out, nil
}

// partner is the key of the entry for the other direction of t's flow.
func (t Translation) partner() bpf.DatapathCtKey {
	p := bpf.DatapathCtKey{Protocol: t.key.Protocol, Family: t.key.Family}
	k := EndpointKey(t.To[1].Addr())
	p.Saddr = k.Ip
	p.Sport = htons(t.To[1].Port())
	k = EndpointKey(t.To[0].Addr())
	p.Daddr = k.Ip
	p.Dport = htons(t.To[0].Port())
	return p
}

// GC deletes the translations of flows whose two directions have both expired, and
// returns how many entries it removed and how many are left.
func (n *NAT) GC() (removed, left int, err error) {
	all, err := n.List()
	if err != nil {
		return 0, 0, err
	}
	live := map[bpf.DatapathCtKey]bool{}
	now := MonotonicNow()
	for _, t := range all {
		live[t.key] = t.Expires > now
	}
	for _, t := range all {
		if live[t.key] || live[t.partner()] {
			left++
			continue
		}
		if err := n.m.Delete(&t.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return removed, left, fmt.Errorf("delete translation: %w", err)
		}
		removed++
	}
	return removed, left, nil
}
