package model

import (
	"encoding/binary"
	"net/netip"

	"github.com/ebpfnet/ebpfnet/maps"
	wire "github.com/ebpfnet/ebpfnet/testkit/packet"
)

// Service translation and source translation to the node's address (nat.h, service.h): a new
// flow to a frontend takes a backend, and the nat entries of both directions are written once
// policy admits it; later packets of either direction are rewritten by them. A NodePort flow
// whose backend is elsewhere (externalTrafficPolicy Cluster), or a flow leaving the cluster
// under masquerading, takes the node's address and a free port of its range: its reply entry
// is written at once, which is what takes the port. The model knows IPv6 frontends (ClusterIP
// and NodePort) whose slots all name one backend (the datapath picks a slot at random),
// masquerading of IPv6 only, and never expires an entry (a world lives for well under the
// shortest timeout).

// hairpin6 is the source a pod sees when it reaches itself through a Service
// (HAIRPIN_ADDR6_HI/_LO).
var hairpin6 = netip.MustParseAddr("100::7:7")

// What the NAT stage did to a packet (enum xlate_state).
const (
	xlNone  = iota
	xlHit   // rewritten by the entry of a known flow
	xlReply // a reply of a translated flow, rewritten
	xlMasq  // a known masqueraded flow: its source is rewritten after admission
	xlNew   // a new Service flow, rewritten; its entries are written once admitted
)

// nat entry flags (enum nat_flags).
const (
	natReply      = 1 << 0
	natService    = 1 << 1
	natMasquerade = 1 << 2
	natReplySeen  = 1 << 3
	natClosing    = 1 << 4
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
	state    int
	orig     CTKey
	backend  uint32
	hit      *natEntry // xlMasq: the flow's entry
	reserved bool      // xlNew: the reply entry is written already (a source port was taken)
	flags    uint32    // xlNew: the new entries' flags
}

// isEcho is is_echo: an ICMP echo of the packet's own family (ICMP in IPv4, ICMPv6 in IPv6).
func isEcho(p *packet) bool {
	proto := uint8(wire.ProtoICMP)
	if p.family == afInet6 {
		proto = wire.ProtoICMP6
	}
	return p.l4Proto == proto && isICMPEcho(p)
}

// natApplies is nat_applies: TCP, UDP and ICMP echo of both families, with their L4 header or
// as a later fragment that knows its first's.
func natApplies(p *packet, later bool) bool {
	if p.family != afInet && p.family != afInet6 || p.l4Off == 0 && !later {
		return false
	}
	return p.l4Proto == wire.ProtoTCP || p.l4Proto == wire.ProtoUDP || isEcho(p)
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

// natBegin is nat_begin: a packet of a known translated flow is rewritten (a masqueraded one
// only after policy), the first packet to a Service frontend gets its backend.
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
	switch {
	case e.flags&natReply != 0:
		x.state = xlReply
		if e.flags&natMasquerade != 0 {
			r.snat = SNATReply
		}
	case e.flags&(natMasquerade|natService) == natMasquerade:
		x.state, x.hit = xlMasq, e
		return next
	default:
		x.state = xlHit
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

// frontend is the services map's slot 0 for the packet's destination, or nil: the worlds'
// frontends are IPv6 ClusterIPs and NodePorts on the node's IPv6 address.
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
// the backend, or to the node's address when the replies must come back through the node.
// The world's frontends name one backend in every slot.
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
	x.state, x.backend, x.flags = xlNew, id, natService
	r.translated = true
	to := ctKeyOf(p, false)
	to.Dst, to.Dport = addrKey(p.family, be.Addr.Addr()).ip, be.Addr.Port()
	if to.Dst == to.Src {
		to.Src = hairpin6.As16()
	}
	r.rewrite(p, to)
	if !r.needsSourceNAT(p, f, be) {
		return next
	}
	x.reserved = true
	x.flags |= natMasquerade
	if reason := r.translateSource(p, x.orig, x.flags); reason != next {
		return reason
	}
	r.snat = SNATMasquerade // a ClusterIP's backend outside the cluster
	if f.NodePort {
		r.snat = SNATNodePort
	}
	return next
}

// nodeAddr is the node's underlay address of the family, or the zero Addr when it has none.
func (m *Model) nodeAddr(family uint8) netip.Addr {
	switch family {
	case afInet:
		return m.w.Node.NodeIP
	case afInet6:
		return m.w.Node.NodeIPv6
	}
	return netip.Addr{}
}

// isNode is is_node: a is the node's underlay address of the family.
func (m *Model) isNode(family uint8, a netip.Addr) bool {
	node := m.nodeAddr(family)
	return node.IsValid() && addrKey(family, a) == addrKey(family, node)
}

// needsSourceNAT is needs_source_nat: a Service flow now in p takes the node's address when
// it is a NodePort's whose backend is elsewhere (externalTrafficPolicy Cluster), or its backend
// is outside the cluster under masquerading; never without a node address of the family, nor
// for the node's own traffic.
func (r *run) needsSourceNAT(p *packet, f *maps.Frontend, be *maps.Backend) bool {
	if !r.m.nodeAddr(p.family).IsValid() || r.m.isNode(p.family, p.saddr) {
		return false
	}
	if f.NodePort && !f.ExternalLocal && !be.Local {
		return true
	}
	return r.masquerades(p)
}

// masquerades is masquerades: a flow to p's destination takes the node's address when
// masquerading is on, the node has an address of the family, and the destination is outside
// the cluster, not the node, and not in no_masquerade.
func (r *run) masquerades(p *packet) bool {
	m := r.m
	if !m.w.Node.Masquerade || !natApplies(p, r.laterFragment) || !m.nodeAddr(p.family).IsValid() {
		return false
	}
	if m.isNode(p.family, p.daddr) || m.isNode(p.family, p.saddr) || m.route(p.family, p.daddr) != nil {
		return false
	}
	for _, exempt := range m.w.NoMasquerade {
		if lpmMatch(exempt, p.family, p.daddr) {
			return false
		}
	}
	return true
}

// translateSource is nat_translate_source: the flow now in p (orig is how it arrived) takes
// the node's address and a port of the node's range whose reply key is free, the reply entry
// is written under that key, and the packet's source rewritten. An echo's identifier is both
// its ports. Which free port the datapath's search from a random start finds is ChoosePort's
// to say (the search tries every port of a range as narrow as the worlds').
func (r *run) translateSource(p *packet, orig CTKey, flags uint32) maps.Reason {
	m := r.m
	ports := m.w.Node.NATPorts
	if ports.Max < ports.Min {
		return maps.ReasonNATNoPort
	}
	echo := isEcho(p)
	t := ctKeyOf(p, false)
	t.Src = addrKey(p.family, m.nodeAddr(p.family)).ip
	var free []uint16
	for port := uint32(ports.Min); port <= uint32(ports.Max); port++ {
		k := t
		k.Sport = uint16(port)
		if echo {
			k.Dport = k.Sport
		}
		if m.nat[reversedKey(k)] == nil {
			free = append(free, k.Sport)
		}
	}
	if len(free) == 0 {
		return maps.ReasonNATNoPort
	}
	off := p.l4Off
	if echo {
		off += 4 // the identifier, behind type, code and checksum
	}
	t.Sport = free[0]
	if m.ChoosePort != nil {
		t.Sport = m.ChoosePort(free, len(r.out)-off)
	}
	if echo {
		t.Dport = t.Sport
	}
	m.nat[reversedKey(t)] = &natEntry{to: reversedKey(orig), flags: flags | natReply}
	r.rewrite(p, t)
	return next
}

// natCommit is nat_commit: a new flow's entries (its reply entry unless the source
// translation wrote it), once admitted; a known masqueraded flow gets its source rewritten.
func (r *run) natCommit(p *packet, x *xlate) {
	m := r.m
	if x.state == xlMasq {
		r.translated = true
		r.snat = SNATMasquerade
		r.rewrite(p, x.hit.to)
		return
	}
	if x.state != xlNew {
		return
	}
	tuple := ctKeyOf(p, false)
	if !x.reserved {
		m.nat[reversedKey(tuple)] = &natEntry{to: reversedKey(x.orig), flags: x.flags | natReply}
	}
	m.nat[x.orig] = &natEntry{to: tuple, flags: x.flags, backend: x.backend}
}

// natAbort is nat_abort: a new flow that policy refused gives back the port it took.
func (m *Model) natAbort(p *packet, x *xlate) {
	if x.state == xlNew && x.reserved {
		delete(m.nat, reversedKey(ctKeyOf(p, false)))
	}
}

// natMasquerade is nat_masquerade: a pod's flow leaving the cluster that is not a reply (or
// an error) of a flow someone else began, and not a later fragment, takes the node's address.
func (r *run) natMasquerade(p *packet, x *xlate) maps.Reason {
	if x.state != xlNone || r.ct == CTReply || r.ct == CTRelated || r.laterFragment || !r.masquerades(p) {
		return next
	}
	x.orig = ctKeyOf(p, false)
	if reason := r.translateSource(p, x.orig, natMasquerade); reason != next {
		return reason
	}
	r.m.nat[x.orig] = &natEntry{to: ctKeyOf(p, false), flags: natMasquerade}
	x.state = xlHit
	r.translated = true
	r.snat = SNATMasquerade
	return next
}

// icmp6QuoteOff is where an ICMPv6 error's quoted packet begins, behind its 8-byte header.
const icmp6QuoteOff = 8

// icmp6Error is nat_icmp6_error: an ICMPv6 error (types 1-4) for the node's IPv6 address,
// not a fragment, quoting a packet from the node (up to the quoted L4 header's first 6 bytes
// in the frame, its L4 header at most 120 bytes in) that was a masqueraded flow's: TCP or
// UDP, or an echo request. The destination, the quoted source address and the quoted source
// port (the identifier) become the pod's; ICMPv6's checksum takes each change, the quoted
// L4 checksum is left.
func (r *run) icmp6Error(p *packet) {
	m := r.m
	if p.family != afInet6 || p.l4Proto != wire.ProtoICMP6 || p.l4Off == 0 || p.fragment ||
		p.icmpType < 1 || p.icmpType > 4 || !m.isNode(afInet6, p.daddr) || p.l4Off > 120 {
		return
	}
	b, q := r.out, p.l4Off+icmp6QuoteOff
	node := m.w.Node.NodeIPv6.As16()
	if q+ipv6HeaderLen+6 > len(b) || [16]byte(b[q+8:q+24]) != node {
		return
	}
	k := CTKey{Family: afInet6, Proto: b[q+6], Src: [16]byte(b[q+24 : q+40]), Dst: node}
	port := q + ipv6HeaderLen // the quoted source port
	switch {
	case k.Proto == wire.ProtoTCP || k.Proto == wire.ProtoUDP:
		k.Sport, k.Dport = be16(b[port+2:]), be16(b[port:])
	case k.Proto == wire.ProtoICMP6 && b[port] == 128:
		port += 4
		k.Sport = be16(b[port:])
		k.Dport = k.Sport
	default:
		return
	}
	e := m.nat[k]
	if e == nil || e.flags&(natReply|natMasquerade|natService) != natReply|natMasquerade {
		return
	}
	csum := p.l4Off + 2
	r.rewritePort(port, csum, k.Dport, e.to.Dport, false)
	l4CsumUpdate(b[csum:], node[:], e.to.Dst[:], false)
	copy(b[q+8:q+24], e.to.Dst[:])
	pod := addrOf(afInet6, e.to.Dst)
	if pod != p.daddr {
		from := p.daddr.As16()
		l4CsumUpdate(b[csum:], from[:], e.to.Dst[:], false)
		copy(b[p.l3Off+24:], e.to.Dst[:])
	}
	p.daddr = pod
	r.translated = true
	r.snat = SNATError
}

// addrOf is the address a 16-byte key holds for the family.
func addrOf(family uint8, b [16]byte) netip.Addr {
	if family == afInet {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// rewrite is rewrite_tuple for IPv6 (the only family the model translates): the packet's
// addresses and ports (an echo's identifier: t's source port) become t's, the L4 checksum
// follows as the kernel's incremental updates leave it; a later fragment gets the addresses
// only (its L4 header is in the first).
func (r *run) rewrite(p *packet, t CTKey) {
	saddr, daddr := addrOf(p.family, t.Src), addrOf(p.family, t.Dst)
	csum := p.l4Off + 16 // TCP's checksum
	udp := p.l4Proto == wire.ProtoUDP
	echo := p.l4Proto == wire.ProtoICMP || p.l4Proto == wire.ProtoICMP6
	switch {
	case udp:
		csum = p.l4Off + 6
	case echo:
		csum = p.l4Off + 2 // type, code, checksum
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
	switch {
	case r.laterFragment:
		p.sport, p.dport = t.Sport, t.Dport
		if echo {
			p.icmpID = t.Sport
		}
	case echo:
		r.rewritePort(p.l4Off+4, csum, p.icmpID, t.Sport, false)
		p.icmpID = t.Sport
	default:
		r.rewritePort(p.l4Off, csum, p.sport, t.Sport, udp)
		r.rewritePort(p.l4Off+2, csum, p.dport, t.Dport, udp)
		p.sport, p.dport = t.Sport, t.Dport
	}
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
