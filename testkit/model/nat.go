package model

import (
	"encoding/binary"
	"net/netip"

	"github.com/ebpfnet/ebpfnet/maps"
	wire "github.com/ebpfnet/ebpfnet/testkit/packet"
)

// Service translation (nat.h, service.h): a new flow to a frontend takes a backend, and the
// nat entries of both directions are written once policy admits it; later packets of either
// direction are rewritten by them. The model knows ClusterIP frontends whose slots all name one
// backend (the datapath picks a slot at random) of IPv6, no masquerading and no NodePorts,
// and never expires an entry (a world lives for well under the shortest timeout).

// hairpin6 is the source a pod sees when it reaches itself through a Service
// (HAIRPIN_ADDR6_HI/_LO).
var hairpin6 = netip.MustParseAddr("100::7:7")

// What the NAT stage did to a packet (enum xlate_state).
const (
	xlNone = iota
	xlHit
	xlReply
	xlNew
)

// nat entry flags (enum nat_flags).
const (
	natReply     = 1 << 0
	natService   = 1 << 1
	natReplySeen = 1 << 3
	natClosing   = 1 << 4
)

// natEntry is a nat map value: the tuple a packet of its key becomes.
type natEntry struct {
	to      CTKey // addresses and ports (protocol and family: the key's)
	flags   uint32
	backend uint32
}

// affinityKey is a client of a Service (struct affinity_key).
type affinityKey struct {
	client  epKey
	service uint32
}

// xlate is a packet's way through the NAT stage (struct xlate).
type xlate struct {
	state   int
	orig    CTKey
	backend uint32
}

// natApplies is nat_applies: TCP and UDP of both families and IPv4's ICMP echo, with their
// L4 header or as a later fragment that knows its first's.
func natApplies(p *packet, later bool) bool {
	if p.family != afInet && p.family != afInet6 || p.l4Off == 0 && !later {
		return false
	}
	return p.l4Proto == wire.ProtoTCP || p.l4Proto == wire.ProtoUDP || p.family == afInet && isICMPEcho(p)
}

// reversedKey is the key of the other direction of t.
func reversedKey(t CTKey) CTKey {
	t.Src, t.Dst = t.Dst, t.Src
	t.Sport, t.Dport = t.Dport, t.Sport
	return t
}

// partner is the key of the other direction's entry of the flow whose entry at key is e.
func partner(key CTKey, e *natEntry) CTKey {
	t := e.to
	t.Proto, t.Family = key.Proto, key.Family
	return reversedKey(t)
}

func synOnly(p *packet) bool {
	return p.l4Proto == wire.ProtoTCP && p.tcpFlags&(tcpSYN|tcpACK) == tcpSYN
}

// natBegin is nat_begin: a packet of a known translated flow is rewritten, the first packet
// to a Service frontend gets its backend.
func (r *run) natBegin(p *packet, x *xlate) maps.Reason {
	m := r.m
	if !natApplies(p, r.laterFragment) {
		return next
	}
	x.orig = ctKeyOf(p, false)
	e := m.nat[x.orig]
	if e != nil && e.flags&natReply == 0 &&
		(e.flags&natClosing != 0 && synOnly(p) || e.flags&natService != 0 && m.backends[e.backend] == nil) {
		delete(m.nat, partner(x.orig, e))
		delete(m.nat, x.orig)
		e = nil
	}
	if e == nil && r.laterFragment {
		return next
	}
	if e == nil {
		m.forgetClosedReply(p, x.orig)
		return r.serviceBegin(p, x)
	}
	if e.flags&natReply != 0 {
		e.flags |= natReplySeen
	}
	if p.l4Proto == wire.ProtoTCP && p.tcpFlags&(tcpFIN|tcpRST) != 0 {
		e.flags |= natClosing
	}
	x.state = xlHit
	if e.flags&natReply != 0 {
		x.state = xlReply
	}
	r.translated = true
	r.rewrite(p, e.to)
	return next
}

// forgetClosedReply is nat_forget_closed_reply: a new connection whose replies would meet
// the reply entry of a closed translated flow takes its tuple.
func (m *Model) forgetClosedReply(p *packet, orig CTKey) {
	if !synOnly(p) {
		return
	}
	reply := reversedKey(orig)
	e := m.nat[reply]
	if e == nil || e.flags&natReply == 0 {
		return
	}
	fwd := partner(reply, e)
	if f := m.nat[fwd]; f != nil && f.flags&natClosing == 0 {
		return
	}
	delete(m.nat, fwd)
	delete(m.nat, reply)
}

// frontend is the services map's slot 0 for the packet's destination, or nil.
func (m *Model) frontend(p *packet) *maps.Frontend {
	if p.family != afInet6 || p.l4Proto != wire.ProtoTCP && p.l4Proto != wire.ProtoUDP {
		return nil
	}
	for i := range m.w.Frontends {
		f := &m.w.Frontends[i]
		if f.Protocol == p.l4Proto && f.Addr.Port() == p.dport && keyOf(f.Addr.Addr()) == addrKey(p.family, p.daddr) {
			return f
		}
	}
	return nil
}

// serviceBegin is service_begin: the backend (the client's under affinity, else the slots'),
// the destination rewritten to it and the source to the hairpin address when the client is
// the backend. The world's frontends name one backend in every slot.
func (r *run) serviceBegin(p *packet, x *xlate) maps.Reason {
	m := r.m
	f := m.frontend(p)
	if f == nil {
		return next
	}
	if len(f.Backends) == 0 {
		return maps.ReasonNoBackend
	}
	id := uint32(0)
	ak := affinityKey{client: addrKey(p.family, p.saddr), service: f.ServiceID}
	if f.Affinity > 0 {
		if kept, ok := m.affinity[ak]; ok {
			if be := m.backends[kept]; be != nil && !be.Terminating {
				id = kept
			}
		}
	}
	if id == 0 {
		id = f.Backends[0]
	}
	if f.Affinity > 0 {
		m.affinity[ak] = id
	}
	be := m.backends[id]
	if be == nil || keyOf(be.Addr.Addr()).family != p.family {
		return maps.ReasonNoBackend
	}
	x.state, x.backend = xlNew, id
	r.translated = true
	to := ctKeyOf(p, false)
	to.Dst, to.Dport = addrKey(p.family, be.Addr.Addr()).ip, be.Addr.Port()
	if to.Dst == to.Src {
		to.Src = hairpin6.As16()
	}
	r.rewrite(p, to)
	return next
}

// natCommit is nat_commit: a new flow's two entries, once admitted.
func (m *Model) natCommit(p *packet, x *xlate) {
	if x.state != xlNew {
		return
	}
	tuple := ctKeyOf(p, false)
	m.nat[reversedKey(tuple)] = &natEntry{to: reversedKey(x.orig), flags: natService | natReply}
	m.nat[x.orig] = &natEntry{to: tuple, flags: natService, backend: x.backend}
}

// addrOf is the address a 16-byte key holds for the family.
func addrOf(family uint8, b [16]byte) netip.Addr {
	if family == afInet {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// rewrite is rewrite_tuple for IPv6 (the only family the model translates): the packet's
// addresses and ports become t's, the L4 checksum follows as the kernel's incremental
// updates leave it; a later fragment gets the addresses only (its L4 header is in the first).
func (r *run) rewrite(p *packet, t CTKey) {
	saddr, daddr := addrOf(p.family, t.Src), addrOf(p.family, t.Dst)
	csum := p.l4Off + 16 // TCP's checksum
	udp := p.l4Proto == wire.ProtoUDP
	if udp {
		csum = p.l4Off + 6
	}
	for _, a := range []struct {
		off      int
		from, to netip.Addr
	}{{p.l3Off + 8, p.saddr, saddr}, {p.l3Off + 24, p.daddr, daddr}} {
		if a.from == a.to {
			continue
		}
		from, to := a.from.As16(), a.to.As16()
		if !r.laterFragment {
			l4CsumUpdate(r.out[csum:], from[:], to[:], udp)
		}
		copy(r.out[a.off:], to[:])
	}
	p.saddr, p.daddr = saddr, daddr
	if !r.laterFragment {
		r.rewritePort(p.l4Off, csum, p.sport, t.Sport, udp)
		r.rewritePort(p.l4Off+2, csum, p.dport, t.Dport, udp)
	}
	p.sport, p.dport = t.Sport, t.Dport
}

// rewritePort is rewrite_port: a port (or echo identifier) at off and the checksum at csum.
func (r *run) rewritePort(off, csum int, from, to uint16, udp bool) {
	if from == to {
		return
	}
	var f, t [2]byte
	binary.BigEndian.PutUint16(f[:], from)
	binary.BigEndian.PutUint16(t[:], to)
	l4CsumUpdate(r.out[csum:], f[:], t[:], udp)
	copy(r.out[off:], t[:])
}

// l4CsumUpdate is bpf_l4_csum_replace on a CHECKSUM_NONE skb: the checksum at sum[0:2] takes the change of
// from into to (16-bit words). The kernel's arithmetic never leaves 0xffff (a sum of zero
// folds to 0); with BPF_F_MARK_MANGLED_0 (UDP) a checksum of 0 stays untouched and one that
// becomes 0 is sent as 0xffff.
func l4CsumUpdate(sum, from, to []byte, mangled0 bool) {
	old := binary.BigEndian.Uint16(sum)
	if mangled0 && old == 0 {
		return
	}
	acc := uint64(^old)
	for i := 0; i+1 < len(from); i += 2 {
		acc += uint64(^binary.BigEndian.Uint16(from[i:]))
		acc += uint64(binary.BigEndian.Uint16(to[i:]))
	}
	acc %= 0xffff
	if acc == 0 {
		acc = 0xffff
	}
	out := ^uint16(acc)
	if mangled0 && out == 0 {
		out = 0xffff
	}
	binary.BigEndian.PutUint16(sum, out)
}
