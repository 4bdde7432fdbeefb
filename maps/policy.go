package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/bpf"
)

// Reserved identities (enum identity_reserved); pods get IdentityFirstPod and up.
const (
	IdentityAny        = uint32(bpf.DatapathIdentityReservedIDENTITY_ANY)
	IdentityHost       = uint32(bpf.DatapathIdentityReservedIDENTITY_HOST)
	IdentityWorld      = uint32(bpf.DatapathIdentityReservedIDENTITY_WORLD)
	IdentityRemoteNode = uint32(bpf.DatapathIdentityReservedIDENTITY_REMOTE_NODE)
	IdentityCIDRFirst  = uint32(bpf.DatapathIdentityReservedIDENTITY_CIDR_FIRST)
	IdentityFirstPod   = 256
)

// Endpoint flags for policy enforcement.
const (
	epIngressEnforced = uint32(bpf.DatapathEndpointFlagsEP_F_INGRESS_ENFORCED)
	epEgressEnforced  = uint32(bpf.DatapathEndpointFlagsEP_F_EGRESS_ENFORCED)
)

// Direction of a policy entry.
type PolicyDirection uint8

// Policy directions (enum policy_direction).
const (
	Ingress = PolicyDirection(bpf.DatapathPolicyDirectionPOLICY_INGRESS)
	Egress  = PolicyDirection(bpf.DatapathPolicyDirectionPOLICY_EGRESS)
)

func (d PolicyDirection) String() string {
	if d == Ingress {
		return "ingress"
	}
	return "egress"
}

// Prefix lengths of policy keys (POLICY_PREFIX_* in C).
const (
	policyPrefixAnyProto = 32 + 32 + 8
	policyPrefixProto    = policyPrefixAnyProto + 8
)

// IPCacheEntry says who the addresses of a prefix are.
type IPCacheEntry struct {
	Prefix       netip.Prefix `json:"prefix"`
	Identity     uint32       `json:"identity"`
	CIDRIdentity uint32       `json:"cidrIdentity"`
}

// IPCache is a typed view of the ipcache map.
type IPCache struct{ m *ebpf.Map }

// NewIPCache wraps the ipcache map.
func NewIPCache(m *ebpf.Map) *IPCache { return &IPCache{m: m} }

// Upsert writes e.
func (c *IPCache) Upsert(e IPCacheEntry) error {
	k := LPMKey(e.Prefix)
	v := bpf.DatapathIpcacheInfo{Identity: e.Identity, CidrIdentity: e.CIDRIdentity}
	if err := c.m.Put(&k, &v); err != nil {
		return fmt.Errorf("write ipcache %s: %w", e.Prefix, err)
	}
	return nil
}

// Delete removes p; a missing entry is not an error.
func (c *IPCache) Delete(p netip.Prefix) error {
	k := LPMKey(p)
	if err := c.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete ipcache %s: %w", p, err)
	}
	return nil
}

// List returns every entry.
func (c *IPCache) List() ([]IPCacheEntry, error) {
	var (
		k   bpf.DatapathLpmKey
		v   bpf.DatapathIpcacheInfo
		out []IPCacheEntry
	)
	it := c.m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, IPCacheEntry{Prefix: lpmPrefix(k), Identity: v.Identity, CIDRIdentity: v.CidrIdentity})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list ipcache: %w", err)
	}
	return out, nil
}

// PolicyEntry allows traffic of one endpoint with one peer: all protocols (Protocol 0), one
// protocol (PortBits 0), or a block of ports (the top PortBits bits of Port).
type PolicyEntry struct {
	Endpoint  uint32          `json:"endpoint"`
	Peer      uint32          `json:"peer"`
	Direction PolicyDirection `json:"direction"`
	Protocol  uint8           `json:"protocol"`
	Port      uint16          `json:"port"`
	PortBits  uint8           `json:"portBits"`
	Rule      uint32          `json:"rule"`
}

// Key is the entry's map key.
func (e PolicyEntry) Key() bpf.DatapathPolicyKey {
	k := bpf.DatapathPolicyKey{Endpoint: e.Endpoint, Peer: e.Peer, Direction: uint8(e.Direction)}
	switch {
	case e.Protocol == 0:
		k.Prefixlen = policyPrefixAnyProto
	default:
		k.Prefixlen = policyPrefixProto + uint32(e.PortBits)
		k.Protocol = e.Protocol
		if e.PortBits > 0 {
			k.Port = htons(e.Port & ^uint16(0xffff>>e.PortBits))
		}
	}
	return k
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(v uint16) uint16 { return htons(v) }

// Policy is a typed view of the policy map.
type Policy struct{ m *ebpf.Map }

// NewPolicy wraps the policy map.
func NewPolicy(m *ebpf.Map) *Policy { return &Policy{m: m} }

// Put writes e.
func (p *Policy) Put(e PolicyEntry) error {
	k := e.Key()
	v := bpf.DatapathPolicyValue{Rule: e.Rule}
	if err := p.m.Put(&k, &v); err != nil {
		return fmt.Errorf("write policy entry %+v: %w", e, err)
	}
	return nil
}

// Delete removes the entry with e's key.
func (p *Policy) Delete(e PolicyEntry) error {
	k := e.Key()
	if err := p.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete policy entry: %w", err)
	}
	return nil
}

// List returns every entry.
func (p *Policy) List() ([]PolicyEntry, error) {
	var (
		k   bpf.DatapathPolicyKey
		v   bpf.DatapathPolicyValue
		out []PolicyEntry
	)
	it := p.m.Iterate()
	for it.Next(&k, &v) {
		e := PolicyEntry{Endpoint: k.Endpoint, Peer: k.Peer, Direction: PolicyDirection(k.Direction), Rule: v.Rule}
		if k.Prefixlen > policyPrefixAnyProto {
			e.Protocol = k.Protocol
			e.PortBits = uint8(k.Prefixlen - policyPrefixProto)
			e.Port = ntohs(k.Port)
		}
		out = append(out, e)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list policy: %w", err)
	}
	return out, nil
}

// PortBlocks covers [from, to] with the fewest aligned power-of-two blocks, as (start, bits)
// pairs where bits is the prefix length: at most 30 blocks for any range.
func PortBlocks(from, to uint16) [][2]uint16 {
	var out [][2]uint16
	lo, hi := uint32(from), uint32(to)
	for lo <= hi {
		size := uint32(1)
		for lo%(size*2) == 0 && lo+size*2-1 <= hi && size < 1<<16 {
			size *= 2
		}
		bits := uint16(16)
		for s := size; s > 1; s /= 2 {
			bits--
		}
		out = append(out, [2]uint16{uint16(lo), bits})
		lo += size
	}
	return out
}

// Flow is one conntrack entry.
type Flow struct {
	Src, Dst netip.AddrPort
	Protocol uint8
	Expires  uint64 // CLOCK_MONOTONIC ns
	// Packets and Bytes count both directions; ReplyPackets and ReplyBytes those of replies
	// (counted since the datapath's layout 3: a flow carried over from an older one counts
	// its replies from the upgrade on).
	Packets, Bytes           uint64
	ReplyPackets, ReplyBytes uint64
	ReplySeen                bool
	Closing                  bool
	ExpiresIn                int64 // seconds left, negative when expired
	// Age is the seconds since the flow's first packet; -1 when unknown (a flow carried
	// over from a datapath whose layout did not record it).
	Age int64
	key bpf.DatapathCtKey
}

// Conntrack is a typed view of the conntrack map.
type Conntrack struct{ m *ebpf.Map }

// NewConntrack wraps the conntrack map.
func NewConntrack(m *ebpf.Map) *Conntrack { return &Conntrack{m: m} }

// MonotonicNow is the clock bpf_ktime_get_ns reads, in ns. clock_gettime(CLOCK_MONOTONIC)
// fails only for a bad pointer or clock id, neither possible here.
func MonotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Sec)*1e9 + uint64(ts.Nsec)
}

// List returns every flow.
func (c *Conntrack) List() ([]Flow, error) {
	var (
		k   bpf.DatapathCtKey
		v   bpf.DatapathCtEntry
		out []Flow
	)
	now := MonotonicNow()
	it := c.m.Iterate()
	for it.Next(&k, &v) {
		addr := func(b [16]uint8) netip.Addr {
			if k.Family == afInet {
				return netip.AddrFrom4([4]byte(b[:4]))
			}
			return netip.AddrFrom16(b)
		}
		f := Flow{Src: netip.AddrPortFrom(addr(k.Saddr), ntohs(k.Sport)), Dst: netip.AddrPortFrom(addr(k.Daddr), ntohs(k.Dport)),
			Protocol: k.Protocol, Expires: v.Expires, Packets: v.Packets, Bytes: v.Bytes,
			ReplyPackets: v.ReplyPackets, ReplyBytes: v.ReplyBytes,
			ReplySeen: v.Flags&uint32(bpf.DatapathCtFlagsCT_F_REPLY_SEEN) != 0,
			Closing:   v.Flags&uint32(bpf.DatapathCtFlagsCT_F_CLOSING) != 0,
			ExpiresIn: (int64(v.Expires) - int64(now)) / 1e9, Age: -1, key: k}
		if v.Created != 0 {
			f.Age = (int64(now) - int64(v.Created)) / 1e9
		}
		out = append(out, f)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list conntrack: %w", err)
	}
	return out, nil
}

// GC deletes expired flows and returns how many it removed and how many are left.
func (c *Conntrack) GC() (removed, left int, err error) {
	flows, err := c.List()
	if err != nil {
		return 0, 0, err
	}
	now := MonotonicNow()
	for _, f := range flows {
		if f.Expires > now {
			left++
			continue
		}
		if err := c.m.Delete(&f.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return removed, left, fmt.Errorf("delete flow: %w", err)
		}
		removed++
	}
	return removed, left, nil
}
