// Package ipam hands out pod addresses from a node's pod CIDR, recording every lease in the
// store so that leases survive restarts and no address is ever given twice.
package ipam

import (
	"context"
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

func (p *IPAM) ipKey(ip netip.Addr) string {
	return store.Prefix + "ipam/" + p.node + "/ips/" + ip.String()
}
func (p *IPAM) ownerKey(owner string) string {
	return store.Prefix + "ipam/" + p.node + "/owners/" + owner
}

// Allocate returns owner's address, the one it already holds if any.
func (p *IPAM) Allocate(ctx context.Context, owner string) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ip, ok, err := p.lookup(ctx, owner); err != nil || ok {
		return ip, err
	}
	used, err := p.kv.List(ctx, store.Prefix+"ipam/"+p.node+"/ips/")
	if err != nil {
		return netip.Addr{}, err
	}
	// .0 is the network, .1 is kept for a gateway, the last is broadcast.
	for ip := p.cidr.Addr().Next().Next(); p.cidr.Contains(ip); ip = ip.Next() {
		if !p.cidr.Contains(ip.Next()) {
			break
		}
		if _, taken := used[p.ipKey(ip)]; taken {
			continue
		}
		ok, err := p.kv.Create(ctx, p.ipKey(ip), []byte(owner))
		if err != nil {
			return netip.Addr{}, err
		}
		if !ok {
			continue
		}
		if err := p.kv.Put(ctx, p.ownerKey(owner), []byte(ip.String()), 0); err != nil {
			return netip.Addr{}, errors.Join(err, p.kv.Delete(ctx, p.ipKey(ip)))
		}
		return ip, nil
	}
	return netip.Addr{}, fmt.Errorf("pod CIDR %s of node %s: %w", p.cidr, p.node, ErrExhausted)
}

func (p *IPAM) lookup(ctx context.Context, owner string) (netip.Addr, bool, error) {
	v, ok, err := p.kv.Get(ctx, p.ownerKey(owner))
	if err != nil || !ok {
		return netip.Addr{}, false, err
	}
	ip, err := netip.ParseAddr(string(v))
	return ip, err == nil, err
}

// Release frees owner's address; releasing what is not held is not an error.
func (p *IPAM) Release(ctx context.Context, owner string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	ip, ok, err := p.lookup(ctx, owner)
	if err != nil || !ok {
		return err
	}
	if err := p.kv.Delete(ctx, p.ipKey(ip)); err != nil {
		return err
	}
	return p.kv.Delete(ctx, p.ownerKey(owner))
}

// Leases returns owner -> address for every lease of the node.
func (p *IPAM) Leases(ctx context.Context) (map[string]netip.Addr, error) {
	prefix := store.Prefix + "ipam/" + p.node + "/owners/"
	kvs, err := p.kv.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := map[string]netip.Addr{}
	for k, v := range kvs {
		ip, err := netip.ParseAddr(string(v))
		if err != nil {
			return nil, fmt.Errorf("lease %s: %w", k, err)
		}
		out[strings.TrimPrefix(k, prefix)] = ip
	}
	return out, nil
}
