// Package ipam hands out pod addresses from a node's pod CIDR, recording every lease in the
// store so that leases survive restarts and no address is ever given twice.
package ipam

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/ebpfnet/ebpfnet/store"
)

// ErrExhausted says the pod CIDR has no free address.
var ErrExhausted = errors.New("no free address")

// IPAM allocates within one node's pod CIDR.
type IPAM struct {
	kv   store.KV
	node string
	cidr netip.Prefix
	mu   sync.Mutex // one allocation at a time per node; the store's Create guards the rest
}

// New returns the allocator of node's cidr.
func New(kv store.KV, node string, cidr netip.Prefix) *IPAM {
	return &IPAM{kv: kv, node: node, cidr: cidr.Masked()}
}

func (p *IPAM) ipsPrefix() string          { return store.Prefix + "ipam/" + p.node + "/ips/" }
func (p *IPAM) ipKey(ip netip.Addr) string { return p.ipsPrefix() + ip.String() }
func (p *IPAM) ownerKey(owner string) string {
	return store.Prefix + "ipam/" + p.node + "/owners/" + owner
}

// Paired is the IPv6 address of the pod that holds ip in a dual-stack node: the same offset
// into cidr6 as ip's into cidr4. An IPv4 lease is therefore the IPv6 one as well: nothing
// more to record, to lose on a restart or to leak.
func Paired(ip netip.Addr, cidr4, cidr6 netip.Prefix) netip.Addr {
	if !cidr6.IsValid() || !cidr4.Contains(ip) {
		return netip.Addr{}
	}
	off := Offset(ip, cidr4)
	v6 := cidr6.Masked().Addr().As16()
	for i := 15; i >= 12; i-- {
		v6[i] |= byte(off >> (8 * (15 - i)))
	}
	return netip.AddrFrom16(v6)
}

// Offset is how far ip lies into cidr: the pod's number within its node. In an IPv6 /64 it is
// the low 32 bits' distance, which Allocate keeps small by taking the first free address.
func Offset(ip netip.Addr, cidr netip.Prefix) uint32 {
	low := func(a netip.Addr) uint32 { b := a.As16(); return binary.BigEndian.Uint32(b[12:]) }
	return low(ip) - low(cidr.Masked().Addr())
}

// Allocate returns owner's address, the one it already holds if any.
//
// Every step leaves what a crash may interrupt findable from the owner: the owner's key is
// written before the address is claimed, and Release reads both the owner's key and the
// addresses held in its name. A lease is therefore never orphaned by an agent killed mid-ADD.
func (p *IPAM) Allocate(ctx context.Context, owner string) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ip, ok, err := p.lookup(ctx, owner); err != nil || ok {
		return ip, err
	}
	used, err := p.kv.List(ctx, p.ipsPrefix())
	if err != nil {
		return netip.Addr{}, err
	}
	// An address claimed in owner's name whose owner key a crash kept from being written.
	for _, ip := range p.heldIn(used, owner) {
		if held, err := p.heldBy(ctx, ip, owner); err != nil || held {
			if err == nil {
				err = p.kv.Put(ctx, p.ownerKey(owner), []byte(ip.String()), 0)
			}
			return ip, err
		}
	}
	// .0 is the network, .1 is kept for a gateway, the last is broadcast.
	for ip := p.cidr.Addr().Next().Next(); p.cidr.Contains(ip); ip = ip.Next() {
		if !p.cidr.Contains(ip.Next()) {
			break
		}
		if _, taken := used[p.ipKey(ip)]; taken {
			continue
		}
		// The intent first: a crash after it leaves an owner key that Release follows.
		if err := p.kv.Put(ctx, p.ownerKey(owner), []byte(ip.String()), 0); err != nil {
			return netip.Addr{}, err
		}
		ok, err := p.kv.Create(ctx, p.ipKey(ip), []byte(owner))
		if err != nil {
			return netip.Addr{}, errors.Join(err, p.kv.Delete(ctx, p.ownerKey(owner)))
		}
		if ok {
			return ip, nil
		}
	}
	if err := p.kv.Delete(ctx, p.ownerKey(owner)); err != nil {
		return netip.Addr{}, err
	}
	return netip.Addr{}, fmt.Errorf("pod CIDR %s of node %s: %w", p.cidr, p.node, ErrExhausted)
}

// lookup returns the address owner's key names if owner holds it. An owner key that names an
// address nobody holds (a crash between the intent and the claim) claims it now; one that names
// an address someone else holds is stale and ignored.
func (p *IPAM) lookup(ctx context.Context, owner string) (netip.Addr, bool, error) {
	v, ok, err := p.kv.Get(ctx, p.ownerKey(owner))
	if err != nil || !ok {
		return netip.Addr{}, false, err
	}
	ip, err := netip.ParseAddr(string(v))
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("lease of %s: %w", owner, err)
	}
	if held, err := p.heldBy(ctx, ip, owner); err != nil || held {
		return ip, held, err
	}
	if !p.cidr.Contains(ip) {
		return netip.Addr{}, false, nil
	}
	claimed, err := p.kv.Create(ctx, p.ipKey(ip), []byte(owner))
	return ip, claimed, err
}

// heldIn lists the addresses used (a List of ipsPrefix) shows leased to owner.
func (p *IPAM) heldIn(used map[string][]byte, owner string) []netip.Addr {
	var out []netip.Addr
	for k, v := range used {
		if ip, err := netip.ParseAddr(strings.TrimPrefix(k, p.ipsPrefix())); err == nil && string(v) == owner {
			out = append(out, ip)
		}
	}
	return out
}

// heldBy reads, from the store itself, whether ip is leased to owner.
func (p *IPAM) heldBy(ctx context.Context, ip netip.Addr, owner string) (bool, error) {
	v, ok, err := p.kv.Get(ctx, p.ipKey(ip))
	return ok && string(v) == owner, err
}

// Release frees owner's address; releasing what is not held is not an error. It frees every
// address held in owner's name, whether or not owner's key names it, and never one held by
// another owner.
func (p *IPAM) Release(ctx context.Context, owner string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	candidates := map[netip.Addr]bool{}
	if v, ok, err := p.kv.Get(ctx, p.ownerKey(owner)); err != nil {
		return err
	} else if ok {
		if ip, err := netip.ParseAddr(string(v)); err == nil {
			candidates[ip] = true
		}
	}
	used, err := p.kv.List(ctx, p.ipsPrefix())
	if err != nil {
		return err
	}
	for _, ip := range p.heldIn(used, owner) {
		candidates[ip] = true
	}
	for ip := range candidates {
		held, err := p.heldBy(ctx, ip, owner)
		if err != nil {
			return err
		}
		if !held {
			continue
		}
		if err := p.kv.Delete(ctx, p.ipKey(ip)); err != nil {
			return err
		}
	}
	return p.kv.Delete(ctx, p.ownerKey(owner))
}

// Leases returns owner -> address for every lease of the node: each address held and, for an
// owner holding none, the address its key names (a claim a crash interrupted), so that a
// collector releasing the owners it does not know leaves nothing behind.
func (p *IPAM) Leases(ctx context.Context) (map[string]netip.Addr, error) {
	ips := p.ipsPrefix()
	held, err := p.kv.List(ctx, ips)
	if err != nil {
		return nil, err
	}
	out := map[string]netip.Addr{}
	for k, v := range held {
		ip, err := netip.ParseAddr(strings.TrimPrefix(k, ips))
		if err != nil {
			return nil, fmt.Errorf("lease %s: %w", k, err)
		}
		out[string(v)] = ip
	}
	owners := store.Prefix + "ipam/" + p.node + "/owners/"
	named, err := p.kv.List(ctx, owners)
	if err != nil {
		return nil, err
	}
	for k, v := range named {
		owner := strings.TrimPrefix(k, owners)
		if _, ok := out[owner]; ok {
			continue
		}
		ip, err := netip.ParseAddr(string(v))
		if err != nil {
			return nil, fmt.Errorf("lease %s: %w", k, err)
		}
		out[owner] = ip
	}
	return out, nil
}
