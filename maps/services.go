package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
)

// Frontend is a Service frontend as the datapath holds it: an address, port and protocol
// (a ClusterIP, or this node's address for a NodePort) and its backends in slot order.
type Frontend struct {
	Addr      netip.AddrPort `json:"addr"`
	Protocol  uint8          `json:"protocol"`
	ServiceID uint32         `json:"serviceID"`
	Backends  []uint32       `json:"backends"`
	// Affinity > 0 keeps a client on its backend for that long (sessionAffinity ClientIP).
	Affinity time.Duration `json:"affinity,omitempty"`
	// NodePort: remote backends see the node as the source, unless ExternalLocal.
	NodePort      bool `json:"nodePort,omitempty"`
	ExternalLocal bool `json:"externalLocal,omitempty"`
}

// Backend is an entry of the backends map.
type Backend struct {
	ID          uint32         `json:"id"`
	Addr        netip.AddrPort `json:"addr"`
	Local       bool           `json:"local,omitempty"`
	Terminating bool           `json:"terminating,omitempty"`
}

// Services is a typed view of the services and backends maps.
type Services struct{ svc, be *ebpf.Map }

// NewServices wraps the services and backends maps.
func NewServices(svc, be *ebpf.Map) *Services { return &Services{svc: svc, be: be} }

func serviceKey(addr netip.AddrPort, proto uint8, slot uint16) bpf.DatapathServiceKey {
	k := EndpointKey(addr.Addr())
	return bpf.DatapathServiceKey{Ip: k.Ip, Family: k.Family, Port: htons(addr.Port()), Protocol: proto, Slot: slot}
}

// UpsertBackend writes a backend.
func (s *Services) UpsertBackend(b Backend) error {
	k := EndpointKey(b.Addr.Addr())
	v := bpf.DatapathBackendInfo{Ip: k.Ip, Family: k.Family, Port: htons(b.Addr.Port())}
	if b.Local {
		v.Flags |= uint8(bpf.DatapathBackendFlagsBACKEND_F_LOCAL)
	}
	if b.Terminating {
		v.Flags |= uint8(bpf.DatapathBackendFlagsBACKEND_F_TERMINATING)
	}
	if err := s.be.Put(b.ID, &v); err != nil {
		return fmt.Errorf("write backend %d (%s): %w", b.ID, b.Addr, err)
	}
	return nil
}

// DeleteBackend removes a backend: flows still translated to it choose again.
func (s *Services) DeleteBackend(id uint32) error {
	if err := s.be.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete backend %d: %w", id, err)
	}
	return nil
}

// Backends returns every backend by id.
func (s *Services) Backends() (map[uint32]Backend, error) {
	var (
		id uint32
		v  bpf.DatapathBackendInfo
	)
	out := map[uint32]Backend{}
	it := s.be.Iterate()
	for it.Next(&id, &v) {
		addr := keyAddr(bpf.DatapathEndpointKey{Family: v.Family, Ip: v.Ip})
		out[id] = Backend{ID: id, Addr: netip.AddrPortFrom(addr, ntohs(v.Port)),
			Local:       v.Flags&uint8(bpf.DatapathBackendFlagsBACKEND_F_LOCAL) != 0,
			Terminating: v.Flags&uint8(bpf.DatapathBackendFlagsBACKEND_F_TERMINATING) != 0}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list backends: %w", err)
	}
	return out, nil
}

// Upsert writes a frontend so that a packet never sees a slot that is not there: new slots
// before a larger count, a smaller count before the slots it drops. prev is how many slots
// the frontend had (0 when new).
func (s *Services) Upsert(f Frontend, prev int) error {
	for i, id := range f.Backends {
		k := serviceKey(f.Addr, f.Protocol, uint16(i+1))
		if err := s.svc.Put(&k, &bpf.DatapathServiceValue{BackendId: id}); err != nil {
			return fmt.Errorf("write %s slot %d: %w", f.Addr, i+1, err)
		}
	}
	v := bpf.DatapathServiceValue{ServiceId: f.ServiceID, Count: uint16(len(f.Backends)),
		AffinityTimeout: uint32(f.Affinity / time.Second)}
	if f.Affinity > 0 {
		v.Flags |= uint16(bpf.DatapathServiceFlagsSVC_F_AFFINITY)
	}
	if f.NodePort {
		v.Flags |= uint16(bpf.DatapathServiceFlagsSVC_F_NODEPORT)
	}
	if f.ExternalLocal {
		v.Flags |= uint16(bpf.DatapathServiceFlagsSVC_F_EXTERNAL_LOCAL)
	}
	k := serviceKey(f.Addr, f.Protocol, 0)
	if err := s.svc.Put(&k, &v); err != nil {
		return fmt.Errorf("write frontend %s: %w", f.Addr, err)
	}
	return s.deleteSlots(f.Addr, f.Protocol, len(f.Backends)+1, prev)
}

func (s *Services) deleteSlots(addr netip.AddrPort, proto uint8, from, to int) error {
	for i := from; i <= to; i++ {
		k := serviceKey(addr, proto, uint16(i))
		if err := s.svc.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %s slot %d: %w", addr, i, err)
		}
	}
	return nil
}

// Delete removes a frontend with its slots; prev is how many slots it had.
func (s *Services) Delete(addr netip.AddrPort, proto uint8, prev int) error {
	return s.deleteSlots(addr, proto, 0, prev)
}

// List returns every frontend with its backends, sorted by address.
func (s *Services) List() ([]Frontend, error) {
	var (
		k bpf.DatapathServiceKey
		v bpf.DatapathServiceValue
	)
	type fkey struct {
		addr  netip.AddrPort
		proto uint8
	}
	fronts := map[fkey]*Frontend{}
	slots := map[fkey]map[uint16]uint32{}
	it := s.svc.Iterate()
	for it.Next(&k, &v) {
		addr := keyAddr(bpf.DatapathEndpointKey{Family: k.Family, Ip: k.Ip})
		fk := fkey{netip.AddrPortFrom(addr, ntohs(k.Port)), k.Protocol}
		if k.Slot > 0 {
			if slots[fk] == nil {
				slots[fk] = map[uint16]uint32{}
			}
			slots[fk][k.Slot] = v.BackendId
			continue
		}
		fronts[fk] = &Frontend{Addr: fk.addr, Protocol: k.Protocol, ServiceID: v.ServiceId,
			Backends: make([]uint32, v.Count), Affinity: time.Duration(v.AffinityTimeout) * time.Second,
			NodePort:      v.Flags&uint16(bpf.DatapathServiceFlagsSVC_F_NODEPORT) != 0,
			ExternalLocal: v.Flags&uint16(bpf.DatapathServiceFlagsSVC_F_EXTERNAL_LOCAL) != 0}
		if v.Flags&uint16(bpf.DatapathServiceFlagsSVC_F_AFFINITY) == 0 {
			fronts[fk].Affinity = 0
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	out := make([]Frontend, 0, len(fronts))
	for fk, f := range fronts {
		for i := range f.Backends {
			f.Backends[i] = slots[fk][uint16(i+1)]
		}
		out = append(out, *f)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr.Compare(out[j].Addr); c != 0 {
			return c < 0
		}
		return out[i].Protocol < out[j].Protocol
	})
	return out, nil
}
