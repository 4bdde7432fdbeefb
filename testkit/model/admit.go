package model

import (
	"net/netip"

	"github.com/ebpfnet/ebpfnet/maps"
	wire "github.com/ebpfnet/ebpfnet/testkit/packet"
)

// Conntrack flags (enum ct_flags).
const (
	CTReplySeen = 1 << 0
	CTClosing   = 1 << 1
)

// Conntrack is what conntrack knew of a packet (enum ct_verdict in ct.h, and CTNone for
// packets that never reached it).
type Conntrack uint8

// Conntrack verdicts.
const (
	CTNone Conntrack = iota
	CTNew
	CTEstablished
	CTReply
	CTRelated
)

var conntrackNames = map[Conntrack]string{CTNone: "none", CTNew: "new", CTEstablished: "established", CTReply: "reply", CTRelated: "related"}

func (c Conntrack) String() string { return conntrackNames[c] }

// endpoint is the endpoints map's entry for an address of the family, or nil.
func (m *Model) endpoint(family uint8, ip netip.Addr) *maps.Endpoint {
	return m.endpoints[addrKey(family, ip)]
}

// addrKey is the 16-byte key the datapath builds from a parsed address: IPv4 in the first
// four bytes; an IPv6 address as it is, even when it maps an IPv4 one.
func addrKey(family uint8, ip netip.Addr) epKey {
	k := epKey{family: family}
	if family == afInet {
		a := ip.As4()
		copy(k.ip[:], a[:])
	} else {
		k.ip = ip.As16()
	}
	return k
}

// lpmMatch says whether prefix p holds ip of the family, as the LPM maps match a full-length
// key: the family is part of the key, an IPv4 prefix never holds an IPv6 address.
func lpmMatch(p netip.Prefix, family uint8, ip netip.Addr) bool {
	a := p.Addr().Unmap()
	if a.Is4() != (family == afInet) {
		return false
	}
	if family == afInet6 {
		return p.Contains(ip)
	}
	return netip.PrefixFrom(a, p.Bits()).Contains(netip.AddrFrom4(ip.As4()))
}

// route is the longest routes-map prefix holding ip, or nil.
func (m *Model) route(family uint8, ip netip.Addr) *maps.Route {
	var best *maps.Route
	for i := range m.w.Routes {
		rt := &m.w.Routes[i]
		if lpmMatch(rt.Prefix, family, ip) && (best == nil || rt.Prefix.Bits() > best.Prefix.Bits()) {
			best = rt
		}
	}
	return best
}

// peer is an address as policy sees it (struct peer in policy.h).
type peer struct {
	identity, cidr uint32
}

// resolvePeer reads the ipcache: the longest prefix holding ip, or the world.
func (m *Model) resolvePeer(family uint8, ip netip.Addr) peer {
	var best *maps.IPCacheEntry
	for i := range m.w.IPCache {
		e := &m.w.IPCache[i]
		if lpmMatch(e.Prefix, family, ip) && (best == nil || e.Prefix.Bits() > best.Prefix.Bits()) {
			best = e
		}
	}
	if best == nil {
		return peer{identity: maps.IdentityWorld}
	}
	return peer{identity: best.Identity, cidr: best.CIDRIdentity}
}

// policyHit says whether some rule of endpoint allows peer in dir for the packet's protocol
// and destination port: a rule for every protocol, for the protocol, or for a port block
// holding the port.
func (m *Model) policyHit(endpoint, peerID uint32, dir maps.PolicyDirection, p *packet) bool {
	for _, e := range m.w.Policy {
		if e.Endpoint != endpoint || e.Peer != peerID || e.Direction != dir {
			continue
		}
		if e.Protocol == 0 {
			return true
		}
		if e.Protocol != p.l4Proto {
			continue
		}
		mask := ^uint16(0xffff >> e.PortBits)
		if e.PortBits >= 16 {
			mask = 0xffff
		}
		if p.dport&mask == e.Port&mask {
			return true
		}
	}
	return false
}

// policyAllows asks endpoint's rules about the peer by label identity, CIDR identity and as
// any peer; the node itself is always allowed.
func (m *Model) policyAllows(endpoint uint32, dir maps.PolicyDirection, pr peer, p *packet) bool {
	if pr.identity == maps.IdentityHost {
		return true
	}
	if m.policyHit(endpoint, pr.identity, dir, p) {
		return true
	}
	if pr.cidr != 0 && m.policyHit(endpoint, pr.cidr, dir, p) {
		return true
	}
	return m.policyHit(endpoint, maps.IdentityAny, dir, p)
}

// admit runs conntrack and, for a new flow, the egress policy of a local sender and the
// ingress policy of a local receiver; an admitted new flow is recorded (policy.h).
func (r *run) admit(p *packet, src, dst *maps.Endpoint, hint uint32) maps.Reason {
	m := r.m
	if r.ct = r.ctLookup(p); r.ct != CTNew {
		return next
	}
	if src != nil && src.EgressEnforced {
		if !m.policyAllows(src.ID, maps.Egress, m.resolvePeer(p.family, p.daddr), p) {
			return maps.ReasonPolicyEgress
		}
	}
	if dst != nil && dst.Local && dst.IngressEnforced {
		pr := m.resolvePeer(p.family, p.saddr)
		if src != nil && src.Identity != 0 {
			pr.identity = src.Identity
		} else if hint != 0 && pr.identity == maps.IdentityWorld {
			pr.identity = hint
		}
		if !m.policyAllows(dst.ID, maps.Ingress, pr, p) {
			return maps.ReasonPolicyIngress
		}
	}
	m.CT[*r.key] = &CTEntry{Packets: 1, Bytes: uint64(p.len)}
	r.created = true
	return next
}

func isICMPEcho(p *packet) bool {
	switch p.l4Proto {
	case wire.ProtoICMP:
		return p.icmpType == 8 || p.icmpType == 0
	case wire.ProtoICMP6:
		return p.icmpType == 128 || p.icmpType == 129
	}
	return false
}

// ctKeyOf is the flow key of p, or of its reverse; an ICMP echo's identifier stands for both
// ports.
func ctKeyOf(p *packet, reverse bool) CTKey {
	k := CTKey{Family: p.family, Proto: p.l4Proto, Sport: p.sport, Dport: p.dport}
	if isICMPEcho(p) {
		k.Sport, k.Dport = p.icmpID, p.icmpID
	}
	s, d := addrKey(p.family, p.saddr).ip, addrKey(p.family, p.daddr).ip
	if reverse {
		s, d = d, s
		k.Sport, k.Dport = k.Dport, k.Sport
	}
	k.Src, k.Dst = s, d
	return k
}

// ctLookup finds the packet's flow, in its direction or as a reply, and counts the packet
// there; an IPv4 ICMP error about a known flow is related to it.
func (r *run) ctLookup(p *packet) Conntrack {
	k := ctKeyOf(p, false)
	r.key = &k
	if e := r.m.CT[k]; live(e, p) {
		touch(e, p, false)
		return CTEstablished
	}
	if e := r.m.CT[ctKeyOf(p, true)]; live(e, p) {
		touch(e, p, true)
		return CTReply
	}
	return r.CTRelated(p)
}

// live is ct_live: an entry stands for the packet's flow unless it is a closing TCP
// connection and the packet opens a new one on its tuple (SYN without ACK).
func live(e *CTEntry, p *packet) bool {
	return e != nil && !(p.l4Proto == wire.ProtoTCP && e.Flags&CTClosing != 0 && p.tcpFlags&(tcpSYN|tcpACK) == tcpSYN)
}

func touch(e *CTEntry, p *packet, reply bool) {
	if reply {
		e.Flags |= CTReplySeen
	}
	if p.l4Proto == wire.ProtoTCP && p.tcpFlags&(tcpFIN|tcpRST) != 0 {
		e.Flags |= CTClosing
	}
	e.Packets++
	e.Bytes += uint64(p.len)
	if reply {
		e.ReplyPackets++
		e.ReplyBytes += uint64(p.len)
	}
}

// CTRelated looks up the flow an ICMP error quotes (ct_related in ct.h): the quoted
// header must be 20 bytes and its ports inside the frame, and the error must go back to the
// quoted packet's source, as Linux conntrack asks (nf_conntrack_inet_error): else anyone
// with a flow on the node could send errors past the policy of every pod there.
func (r *run) CTRelated(p *packet) Conntrack {
	b := r.out
	if p.family == afInet6 && p.l4Proto == wire.ProtoICMP6 && p.l4Off != 0 {
		return r.ctRelated6(p)
	}
	if p.family != afInet || p.l4Proto != wire.ProtoICMP || p.l4Off == 0 {
		return CTNew
	}
	if p.icmpType != 3 && p.icmpType != 11 && p.icmpType != 12 {
		return CTNew
	}
	off := p.l4Off + 8
	if off > 128 || off+ipv4HeaderLen > len(b) || b[off]&0x0f != 5 || off+ipv4HeaderLen+4 > len(b) {
		return CTNew
	}
	k := CTKey{Family: afInet, Proto: b[off+9]}
	copy(k.Src[:], b[off+12:off+16])
	copy(k.Dst[:], b[off+16:off+20])
	if k.Proto == wire.ProtoTCP || k.Proto == wire.ProtoUDP || k.Proto == wire.ProtoSCTP {
		k.Sport, k.Dport = be16(b[off+20:]), be16(b[off+22:])
	}
	r.quoted = &k
	if k.Src != addrKey(afInet, p.daddr).ip {
		return CTNew
	}
	if r.m.CT[k] != nil {
		return CTRelated
	}
	return CTNew
}

// ctRelated6 is ct_related6: an ICMPv6 error (types 1-4: unreachable, packet too big, time
// exceeded, parameter problem) quotes a 40-byte IPv6 header whose next header is taken as
// the protocol (extension headers are not walked) and whose ports follow it; the quoted
// packet must have come from where the error goes.
func (r *run) ctRelated6(p *packet) Conntrack {
	b := r.out
	if p.icmpType < 1 || p.icmpType > 4 {
		return CTNew
	}
	off := p.l4Off + 8
	if off > 128 || off+ipv6HeaderLen+4 > len(b) {
		return CTNew
	}
	k := CTKey{Family: afInet6, Proto: b[off+6]}
	copy(k.Src[:], b[off+8:off+24])
	copy(k.Dst[:], b[off+24:off+40])
	if k.Proto == wire.ProtoTCP || k.Proto == wire.ProtoUDP || k.Proto == wire.ProtoSCTP {
		k.Sport, k.Dport = be16(b[off+40:]), be16(b[off+42:])
	}
	r.quoted = &k
	if k.Src != addrKey(afInet6, p.daddr).ip {
		return CTNew
	}
	if r.m.CT[k] != nil {
		return CTRelated
	}
	return CTNew
}
