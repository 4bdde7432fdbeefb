// Package model says, in plain Go, what the datapath should do with a packet given the
// contents of its maps: the verdict and reason of from_pod, to_pod, from_overlay and
// from_underlay, the packet as it leaves, and the conntrack entry it creates or touches. It is
// the reference the fuzzer (package fuzz) holds the C programs in bpf/ to.
//
// IPv6 is modelled as for IPv4 (IPv6 crosses the IPv4 underlay in VXLAN, in 6in4, or natively
// to the owning node's IPv4 address), with neighbour discovery's anti-spoofing. A node with an
// IPv6 underlay address (NodeConfig.NodeIPv6) also routes translated IPv6 leaving the cluster
// out of the underlay itself, by the IPv6 routes of FIB, and speaks VXLAN over IPv6 with the
// nodes routes know by their IPv6 address (the outer UDP checksum, like the source port and
// the flow label, comes from the kernel's flow hash and is left unknown).
//
// Services and source translation are modelled for IPv6 (nat.go): ClusterIP and NodePort
// frontends whose slots name one backend, NodePort flows that take the node's IPv6 address,
// masquerading of pods' IPv6 flows (TCP, UDP, ICMPv6 echo) and ICMPv6 errors about them. Not
// modelled: IPv4 Services and IPv4 masquerading (the worlds have no IPv4 frontend, and
// no_masquerade holds 0.0.0.0/0 whenever masquerading is on), the random pick of a source port
// (ChoosePort takes the datapath's), the node's own sockets (the port search skips their ports;
// the fuzzer's namespace has none), the VNI identity hint (BPF_PROG_TEST_RUN carries no tunnel
// metadata), conntrack and nat expiry (the fuzzer clears both long before an entry could
// expire), monitor events and from_host.
package model

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/ebpfnet/ebpfnet/maps"
	wire "github.com/ebpfnet/ebpfnet/testkit/packet"
)

// Hook is one of the datapath's tc programs.
type Hook uint8

// The programs the model knows.
const (
	FromPod Hook = iota + 1
	ToPod
	FromOverlay
	FromUnderlay
)

// Hooks lists every program the model knows.
var Hooks = []Hook{FromPod, ToPod, FromOverlay, FromUnderlay}

var hookNames = map[Hook]string{FromPod: "from_pod", ToPod: "to_pod", FromOverlay: "from_overlay", FromUnderlay: "from_underlay"}

func (h Hook) String() string {
	if n, ok := hookNames[h]; ok {
		return n
	}
	return fmt.Sprintf("hook-%d", uint8(h))
}

// GoString names the constant, for printed Go literals.
func (h Hook) GoString() string {
	switch h {
	case FromPod:
		return "model.FromPod"
	case ToPod:
		return "model.ToPod"
	case FromOverlay:
		return "model.FromOverlay"
	case FromUnderlay:
		return "model.FromUnderlay"
	}
	return fmt.Sprintf("model.Hook(%d)", uint8(h))
}

// Direction is the metrics direction the hook counts under.
func (h Hook) Direction() maps.Direction {
	switch h {
	case ToPod:
		return maps.DirToPod
	case FromOverlay:
		return maps.DirFromOverlay
	case FromUnderlay:
		return maps.DirFromUnderlay
	}
	return maps.DirFromPod
}

// tc actions, as finish() in forward.h returns them.
const (
	ActOK       = 0
	ActShot     = 2
	ActRedirect = 7
)

// Verdict is the tc action finish() gives a reason.
func Verdict(r maps.Reason) uint32 {
	switch {
	case maps.IsDrop(r):
		return ActShot
	case r == maps.ReasonForwardHost || r == maps.ReasonDeliver:
		return ActOK
	}
	return ActRedirect
}

// FIBType is what the node's routing table says about a prefix.
type FIBType uint8

// Route types bpf_fib_lookup tells apart.
const (
	FIBUnicast     FIBType = iota // forwarded: SUCCESS, or NO_NEIGH without a neighbour entry
	FIBUnreachable                // an unreachable route: the lookup fails
	FIBLocal                      // the node's own or a broadcast address: not forwarded
)

// FIBRoute is one route of the node's kernel routing table.
type FIBRoute struct {
	Prefix netip.Prefix
	Type   FIBType
	Via    netip.Addr // gateway; invalid means on-link
}

// World is everything the programs read besides the packet: the maps and the kernel routing
// table on the underlay device.
type World struct {
	Node      maps.NodeConfig
	Endpoints []maps.Endpoint
	Routes    []maps.Route
	IPCache   []maps.IPCacheEntry
	Policy    []maps.PolicyEntry
	// FIB and Neighbours are the node's routes and neighbour entries (IPv4, and IPv6 for a
	// node with an IPv6 address); UnderlayMAC is the underlay device's address (the source
	// bpf_fib_lookup hands back) and UnderlayMTU its MTU.
	FIB         []FIBRoute
	Neighbours  map[netip.Addr]net.HardwareAddr
	UnderlayMAC net.HardwareAddr
	UnderlayMTU int
	// Ifindex is the device packets arrive on (skb->ifindex).
	Ifindex uint32
	// Frontends and Backends are the services and backends maps: IPv6 ClusterIPs and
	// NodePorts, every slot of a frontend naming the same backend.
	Frontends []maps.Frontend
	Backends  []maps.Backend
	// NoMasquerade is the no_masquerade map: destinations pods reach with their own address.
	NoMasquerade []netip.Prefix
}

// CTKey is a conntrack key: a flow in the direction of its first packet (struct ct_key).
type CTKey struct {
	Src, Dst     [16]byte
	Sport, Dport uint16 // host order
	Proto        uint8
	Family       uint8
}

// CTEntry is what the model expects of a conntrack value.
type CTEntry struct {
	Flags   uint32 // enum ct_flags
	Packets uint64 // both directions
	Bytes   uint64
	// ReplyPackets and ReplyBytes: the reply direction's share of Packets and Bytes.
	ReplyPackets, ReplyBytes uint64
}

// Outcome is what one program does with one packet.
type Outcome struct {
	Reason maps.Reason
	// Out is the packet as it leaves (for drops: as far as it got).
	Out []byte
	// Key is the conntrack key of the packet conntrack looked at (the inner packet of
	// IP-in-IP), or nil when the packet never reached conntrack.
	Key *CTKey
	// Created says the packet began a new flow under Key.
	Created bool
	// Quoted is the key of the flow an IPv4 ICMP error quotes, or nil.
	Quoted *CTKey
	// Conntrack is what conntrack knew of the packet.
	Conntrack Conntrack
	// Direction is where the datapath counts the packet: its hook's, but from_overlay for
	// VXLAN that from_underlay decapsulated.
	Direction maps.Direction
	// Unknown are byte ranges [from, to) of Out that the model cannot know: VXLAN's UDP
	// source port, which comes from the kernel's flow hash.
	Unknown [][2]int
	// LaterFragment says the packet was a later fragment given its first's ports.
	LaterFragment bool
	// Translated says the NAT stage rewrote the packet (a Service flow, either way).
	Translated bool
	// IPv6 says the packet the verdict is about (the inner one of a tunnel) is IPv6; NA that
	// it was a Neighbor Advertisement anti-spoofing looked into.
	IPv6 bool
	NA   bool
	// SNAT is what the packet had to do with the node's own address.
	SNAT SNAT
}

// SNAT is what a packet had to do with a translation to the node's address.
type SNAT uint8

// The ways a packet meets the node's address in the NAT stage.
const (
	SNATNone       SNAT = iota
	SNATNodePort        // a new NodePort flow took the node's address and a port
	SNATMasquerade      // a new flow leaving the cluster took them (or a known one, again)
	SNATReply           // a reply to either was translated back
	SNATError           // an ICMPv6 error about a masqueraded flow was handed to its pod
)

// Model holds a world and the conntrack and fragment tables the packets run so far have
// built.
type Model struct {
	w         World
	endpoints map[epKey]*maps.Endpoint
	CT        map[CTKey]*CTEntry
	frags     map[fragKey]fragL4
	backends  map[uint32]*maps.Backend
	nat       map[CTKey]*natEntry
	affinity  map[affinityKey]uint32
	// ChoosePort picks the source port a translation to the node's address takes among the
	// free ones of the node's range (in order), as the datapath's search from a random start
	// does; fromEnd is where the port (an echo's identifier) sits, counted from the end of the
	// packet as it leaves, for a caller that reads the datapath's pick there. nil: the first.
	ChoosePort func(free []uint16, fromEnd int) uint16
}

type epKey struct {
	family uint8
	ip     [16]byte
}

// New returns a model of w with empty conntrack.
func New(w World) *Model {
	m := &Model{w: w, endpoints: map[epKey]*maps.Endpoint{}, CT: map[CTKey]*CTEntry{},
		frags: map[fragKey]fragL4{}, backends: map[uint32]*maps.Backend{}, nat: map[CTKey]*natEntry{},
		affinity: map[affinityKey]uint32{}}
	for i := range w.Endpoints {
		ep := &m.w.Endpoints[i]
		m.endpoints[keyOf(ep.IP)] = ep
	}
	for i := range w.Backends {
		m.backends[w.Backends[i].ID] = &m.w.Backends[i]
	}
	return m
}

// World returns the world the model was made with.
func (m *Model) World() World { return m.w }

// ResetConntrack forgets every flow, every fragmented datagram, every translation and every
// client's affinity.
func (m *Model) ResetConntrack() {
	clear(m.CT)
	clear(m.frags)
	clear(m.nat)
	clear(m.affinity)
}

// Translations is how many nat entries the flows so far have written.
func (m *Model) Translations() int { return len(m.nat) }

// keyOf is the endpoint key of ip as maps.EndpointKey builds it.
func keyOf(ip netip.Addr) epKey {
	ip = ip.Unmap()
	if ip.Is4() {
		a := ip.As4()
		var k epKey
		k.family = afInet
		copy(k.ip[:], a[:])
		return k
	}
	return epKey{family: afInet6, ip: ip.As16()}
}

// Run puts frame through program h, updating conntrack as the datapath would.
func (m *Model) Run(h Hook, frame []byte) Outcome {
	r := &run{m: m, out: append([]byte(nil), frame...), dir: h.Direction()}
	switch h {
	case FromPod:
		r.reason = r.fromPod()
	case ToPod:
		r.reason = r.toPod()
	case FromOverlay:
		r.reason = r.fromOverlay()
	case FromUnderlay:
		r.reason = r.fromUnderlay()
	default:
		panic(fmt.Sprintf("model: unknown hook %d", h))
	}
	return Outcome{Reason: r.reason, Out: r.out, Key: r.key, Created: r.created, Quoted: r.quoted,
		Conntrack: r.ct, Direction: r.dir, Unknown: r.unknown, LaterFragment: r.laterFragment, Translated: r.translated,
		IPv6: r.family == afInet6, NA: r.na, SNAT: r.snat}
}

// run is one packet's way through one program.
type run struct {
	m       *Model
	out     []byte // the packet as the program has left it so far
	reason  maps.Reason
	key     *CTKey
	created bool
	quoted  *CTKey
	ct      Conntrack
	dir     maps.Direction
	unknown [][2]int
	// laterFragment: a parse gave a later fragment its first's ports.
	laterFragment bool
	family        uint8 // of the last packet parsed
	na            bool  // checkNA looked at it
	translated    bool  // the NAT stage rewrote it
	snat          SNAT  // what it had to do with the node's address
}

// next is the model's CONTINUE: a helper that has no verdict yet.
const next maps.Reason = 0

// from_pod: tc ingress of a pod's host-side veth.
func (r *run) fromPod() maps.Reason {
	p, reason := r.parse(r.out)
	if reason != next {
		return reason
	}
	src, reason := r.checkSource(&p)
	if reason != next {
		return reason
	}
	var x xlate
	if reason := r.natBegin(&p, &x); reason != next {
		return reason
	}
	dst := r.m.endpoint(p.family, p.daddr)
	if x.state != xlReply {
		if reason := r.admit(&p, src, dst, 0); reason != next {
			r.m.natAbort(&p, &x)
			return reason
		}
		r.natCommit(&p, &x)
		if reason := r.natMasquerade(&p, &x); reason != next {
			return reason
		}
	}
	if dst != nil && dst.Local {
		if reason := r.decrementTTL(&p); reason != next {
			return reason
		}
		return r.toEndpoint(dst)
	}
	if r.m.isNode(p.family, p.daddr) {
		if x.state == xlReply {
			return r.toNode()
		}
		return maps.ReasonForwardHost
	}
	return r.forwardRemote(&p, src.Identity, x.state != xlNone)
}

// to_pod: tc egress of a pod's host-side veth; only policy is judged, never form, and not
// even that for the node's neighbour discovery and MLD.
func (r *run) toPod() maps.Reason {
	p, reason := r.parse(r.out)
	if reason != next || p.family == 0 || p.family == afInet6 && isNDPOrMLD(&p) {
		return maps.ReasonDeliver
	}
	dst := r.m.endpoint(p.family, p.daddr)
	if dst == nil || !dst.Local {
		return maps.ReasonDeliver
	}
	// A reply from a Service backend on the node's own network: back to the frontend.
	if natApplies(&p, r.laterFragment) {
		if e := r.m.nat[ctKeyOf(&p, false)]; e != nil && e.flags&natReply != 0 {
			e.flags |= natReplySeen
			if p.l4Proto == wire.ProtoTCP && p.tcpFlags&(tcpFIN|tcpRST) != 0 {
				e.flags |= natClosing
			}
			r.translated = true
			r.rewrite(&p, e.to)
			return maps.ReasonDeliver
		}
	}
	if reason := r.admit(&p, nil, dst, 0); reason != next {
		return reason
	}
	return maps.ReasonDeliver
}

// from_overlay: tc ingress of the VXLAN device. The test run carries no tunnel key, so the
// VNI's identity hint is 0.
func (r *run) fromOverlay() maps.Reason {
	p, reason := r.parse(r.out)
	if reason != next {
		return reason
	}
	if p.family == 0 {
		return maps.ReasonForwardHost
	}
	return r.receiveRemote(&p, 0, true)
}

// from_underlay: tc ingress of the underlay device: native pod traffic (IPv4 and IPv6), VXLAN
// over IPv4 or IPv6 (when the node config names its port) and IP-in-IP (IPv4 or IPv6 inside).
func (r *run) fromUnderlay() maps.Reason {
	p, reason := r.parse(r.out)
	if reason != next || p.family == 0 {
		return maps.ReasonForwardHost
	}
	node := r.m.w.Node
	if p.family == afInet6 {
		// VXLAN over IPv6 for the node, from a node the ipcache knows: only a node may claim
		// an identity in the VNI, so from anyone else it is dropped, not left to the device.
		if node.NodeIPv6.IsValid() && p.daddr == node.NodeIPv6 && !p.fragment && p.l4Proto == wire.ProtoUDP &&
			node.VXLANPort != 0 && p.dport == node.VXLANPort {
			if r.m.resolvePeer(afInet6, p.saddr).identity != maps.IdentityRemoteNode {
				return maps.ReasonSpoofedSource
			}
			return r.decapVXLAN(&p)
		}
		return r.receiveRemote(&p, 0, false)
	}
	// A fragment of a tunnelled packet cannot be decapsulated on its own: the node's stack
	// reassembles it (or not).
	forUs := p.daddr == node.NodeIP && !p.fragment
	if forUs && p.l4Proto == wire.ProtoUDP && node.VXLANPort != 0 && p.dport == node.VXLANPort {
		// From a node the ipcache knows only, as over IPv6.
		if r.m.resolvePeer(afInet, p.saddr).identity != maps.IdentityRemoteNode {
			return maps.ReasonSpoofedSource
		}
		return r.decapVXLAN(&p)
	}
	if p.l4Proto != wire.ProtoIPIP && p.l4Proto != wire.ProtoIPv6 {
		return r.receiveRemote(&p, 0, false)
	}
	if !forUs {
		return maps.ReasonForwardHost
	}
	etherType := uint16(wire.EtherIPv4)
	if p.l4Proto == wire.ProtoIPv6 {
		etherType = wire.EtherIPv6
	}
	if reason := r.stripOuter(p.l3Off, p.l4Off-p.l3Off, etherType); reason != next {
		return reason
	}
	inner, reason := r.parse(r.out)
	if reason != next || inner.family == 0 {
		return maps.ReasonMalformed
	}
	return r.receiveRemote(&inner, 0, true)
}

// stripOuter is strip_outer: n bytes go from l3 on, which must leave an IPv4 or IPv6 header's
// worth (bpf_skb_adjust_room's minimum for the family it decapsulates to), and the Ethernet
// header that stays names etherType.
func (r *run) stripOuter(l3, n int, etherType uint16) maps.Reason {
	min := ipv4HeaderLen
	if etherType == wire.EtherIPv6 {
		min = ipv6HeaderLen
	}
	if len(r.out)-l3-n < min {
		return maps.ReasonEncapFailed
	}
	r.out = append(r.out[:l3:l3], r.out[l3+n:]...)
	binary.BigEndian.PutUint16(r.out[12:], etherType)
	return next
}

// decapVXLAN is decap_vxlan: the outer IP (IPv4 or IPv6), UDP and VXLAN headers and the inner Ethernet
// header go, the VNI becomes the sender's identity, and the inner packet counts as arriving
// from the overlay. Not flagged by RFC 7348's I bit, or neither IPv4 nor IPv6 inside, it is
// the device's.
func (r *run) decapVXLAN(p *packet) maps.Reason {
	hdr := p.l4Off + udpHeaderLen
	if len(r.out) < hdr+vxlanHeaderLen+ethHeaderLen {
		return maps.ReasonForwardHost
	}
	flags, vni := r.out[hdr], binary.BigEndian.Uint32(r.out[hdr+4:])>>8
	etherType := be16(r.out[hdr+vxlanHeaderLen+12:])
	if flags&0x08 == 0 || etherType != wire.EtherIPv4 && etherType != wire.EtherIPv6 {
		return maps.ReasonForwardHost
	}
	outer := hdr + vxlanHeaderLen + ethHeaderLen - p.l3Off
	if reason := r.stripOuter(p.l3Off, outer, etherType); reason != next {
		return reason
	}
	r.dir = maps.DirFromOverlay
	inner, reason := r.parse(r.out)
	if reason != next || inner.family == 0 {
		return maps.ReasonMalformed
	}
	return r.receiveRemote(&inner, vni, true)
}
