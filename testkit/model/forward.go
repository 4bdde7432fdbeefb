package model

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/ebpfnet/ebpfnet/maps"
	wire "github.com/ebpfnet/ebpfnet/testkit/packet"
)

// tunnelTTL is the outer TTL of IP-in-IP (TUNNEL_TTL).
const tunnelTTL = 64

// checkSource drops what a pod sends in someone else's name and returns the sender
// (forward.h). ARP from its owner goes to the node's stack; so do MLD and neighbour discovery
// (a Neighbor Advertisement only of the sender's own address and MAC), the only IPv6 a
// link-local or unspecified source may send.
func (r *run) checkSource(p *packet) (*maps.Endpoint, maps.Reason) {
	m := r.m
	var ep *maps.Endpoint
	switch p.family {
	case afInet:
		ep = m.endpoint(afInet, p.saddr)
	case afInet6:
		if linkScope(p.saddr) {
			return nil, r.checkLink(p)
		}
		ep = m.endpoint(afInet6, p.saddr)
	default:
		ep = m.endpoint(afInet, p.arpSIP)
		if ep == nil || ep.Ifindex != m.w.Ifindex || !macIs(ep.MAC, p.smac) || p.arpSHA != p.smac {
			return nil, maps.ReasonSpoofedSource
		}
		return nil, maps.ReasonForwardHost
	}
	if ep == nil || ep.Ifindex != m.w.Ifindex || !macIs(ep.MAC, p.smac) {
		return nil, maps.ReasonSpoofedSource
	}
	if p.family == afInet6 && isNDPOrMLD(p) {
		return nil, r.checkLink(p)
	}
	return ep, next
}

// linkScope says whether an IPv6 source is link-local (fe80::/10) or unspecified.
func linkScope(a netip.Addr) bool {
	s := a.As16()
	return s[0] == 0xfe && s[1]&0xc0 == 0x80 || a == netip.IPv6Unspecified()
}

// ICMPv6 types of the link: MLD and neighbour discovery.
const (
	icmp6MLDQuery     = 130
	icmp6RouterAdvert = 134
	icmp6NDPRedirect  = 137
	icmp6MLD2Report   = 143
	icmp6NeighAdvert  = 136
	// ndpNALen is a Neighbor Advertisement before its options; ndpMaxOpts how many options
	// anti-spoofing reads; ndpOptTargetLLAddr the option naming the advertised MAC.
	ndpNALen           = 24
	ndpMaxOpts         = 4
	ndpOptTargetLLAddr = 2
)

// isNDPOrMLD says whether p is unfragmented ICMPv6 of the link (MLD 130-132 and 143,
// neighbour discovery 133-137).
func isNDPOrMLD(p *packet) bool {
	t := p.icmpType
	return p.l4Proto == wire.ProtoICMP6 && p.l4Off != 0 && !p.fragment &&
		(t >= icmp6MLDQuery && t <= icmp6NDPRedirect || t == icmp6MLD2Report)
}

// checkLink is check_link: the link's own ICMPv6 goes to the node, anything else is dropped,
// and so are Router Advertisements and Redirects: a pod is nobody's router.
func (r *run) checkLink(p *packet) maps.Reason {
	if !isNDPOrMLD(p) || p.icmpType == icmp6RouterAdvert || p.icmpType == icmp6NDPRedirect {
		return maps.ReasonSpoofedSource
	}
	if p.icmpType == icmp6NeighAdvert {
		return r.checkNA(p)
	}
	return maps.ReasonForwardHost
}

// checkNA is check_na: the advertised target must be an endpoint on this veth with the
// frame's MAC, and so must a target link-layer address option say; the options are read
// up to ndpMaxOpts, inside the datagram, and one of length 0 is malformed.
func (r *run) checkNA(p *packet) maps.Reason {
	r.na = true
	b := r.out
	end := len(b)
	if plen := int(be16(b[p.l3Off+4:])); plen != 0 {
		end = p.l3Off + ipv6HeaderLen + plen
	}
	off := p.l4Off + ndpNALen
	if off > end {
		return maps.ReasonMalformed
	}
	ep := r.m.endpoint(afInet6, netip.AddrFrom16([16]byte(b[p.l4Off+8:p.l4Off+24])))
	if ep == nil || ep.Ifindex != r.m.w.Ifindex || !macIs(ep.MAC, p.smac) {
		return maps.ReasonSpoofedSource
	}
	for range ndpMaxOpts {
		if off >= end {
			return maps.ReasonForwardHost
		}
		if off+8 > end || b[off+1] == 0 {
			return maps.ReasonMalformed
		}
		if b[off] == ndpOptTargetLLAddr && !macIs(ep.MAC, [6]byte(b[off+2:off+8])) {
			return maps.ReasonSpoofedSource
		}
		off += int(b[off+1]) * 8
	}
	if off >= end {
		return maps.ReasonForwardHost
	}
	return maps.ReasonSpoofedSource
}

func macIs(a net.HardwareAddr, b [6]byte) bool {
	return len(a) == 6 && [6]byte(a) == b
}

// decrementTTL lowers the TTL (patching the IPv4 checksum as bpf_l3_csum_replace does) or
// the hop limit; a packet that would leave with 0 is dropped.
func (r *run) decrementTTL(p *packet) maps.Reason {
	if p.ttl <= 1 {
		return maps.ReasonTTLExceeded
	}
	if p.family == afInet {
		csum := r.out[p.l3Off+10 : p.l3Off+12]
		old, updated := uint16(p.ttl)<<8|uint16(p.l4Proto), uint16(p.ttl-1)<<8|uint16(p.l4Proto)
		binary.BigEndian.PutUint16(csum, csumReplace2(be16(csum), old, updated))
		r.out[p.l3Off+8] = p.ttl - 1
	} else {
		r.out[p.l3Off+7] = p.ttl - 1
	}
	p.ttl--
	return next
}

// csumReplace2 is the kernel's csum_replace2: an incremental checksum update (RFC 1624).
func csumReplace2(sum, old, updated uint16) uint16 {
	return ^csum16Add(csum16Add(^sum, ^old), updated)
}

func csum16Add(c, a uint16) uint16 {
	s := c + a
	if s < a {
		s++
	}
	return s
}

func (r *run) setMACs(dst, src net.HardwareAddr) {
	copy(r.out[0:6], dst)
	copy(r.out[6:12], src)
}

// toEndpoint rewrites L2 for a local pod and redirects into it.
func (r *run) toEndpoint(ep *maps.Endpoint) maps.Reason {
	r.setMACs(ep.MAC, ep.NodeMAC)
	return maps.ReasonForwardLocal
}

// forwardRemote sends a packet for another node the cluster's way (crossnode.h): the
// routes map names the node and the mode; outside the cluster is the node's business, but for
// a translated packet of a family the node has an address of, which goes straight out of the
// underlay. IPv6 crosses the IPv4 underlay inside VXLAN, in 6in4, or natively to the node's
// IPv4 address; both families cross an IPv6 underlay in VXLAN to a node known by its IPv6
// address.
func (r *run) forwardRemote(p *packet, identity uint32, translated bool) maps.Reason {
	rt := r.m.route(p.family, p.daddr)
	if rt == nil {
		if translated && r.m.nodeAddr(p.family).IsValid() {
			return r.sendOutside(p)
		}
		return maps.ReasonForwardHost
	}
	if rt.Flags&(maps.RouteLocal|maps.RouteUnreachable) != 0 {
		return maps.ReasonUnknownDest
	}
	overIPv6 := rt.NodeIP.Unmap().Is6()
	if overIPv6 && rt.Mode != maps.ModeVXLAN {
		return maps.ReasonNoRoute // only VXLAN runs over an IPv6 underlay
	}
	if reason := r.decrementTTL(p); reason != next {
		return reason
	}
	switch rt.Mode {
	case maps.ModeVXLAN:
		if overIPv6 {
			return r.sendVXLAN6(rt.NodeIP, identity)
		}
		if r.m.w.Node.VXLANPort == 0 {
			return maps.ReasonForwardTunnel // the device's: its tunnel key is not visible to a test run
		}
		r.encapVXLAN(rt.NodeIP, identity)
		if reason := r.viaUnderlay(rt.NodeIP, false); reason != next {
			return reason
		}
		return maps.ReasonForwardTunnel
	case maps.ModeNative:
		dst := p.daddr
		if p.family == afInet6 {
			dst = rt.NodeIP
		}
		if reason := r.viaUnderlay(dst, p.family == afInet6); reason != next {
			return reason
		}
		return maps.ReasonForwardUnder
	case maps.ModeIPIP:
		proto := uint8(wire.ProtoIPIP)
		if p.family == afInet6 {
			proto = wire.ProtoIPv6
		}
		r.encapIPIP(rt.NodeIP, proto)
		if reason := r.viaUnderlay(rt.NodeIP, false); reason != next {
			return reason
		}
		return maps.ReasonForwardTunnel
	}
	return maps.ReasonNoRoute
}

// encapIPIP puts an outer IPv4 header of protocol proto (IP-in-IP or 6in4) from the node to
// nodeIP behind the MAC header, which then names IPv4.
func (r *run) encapIPIP(nodeIP netip.Addr, proto uint8) {
	outer := make([]byte, ipv4HeaderLen)
	r.outerIPv4(outer, nodeIP, proto, len(r.out)-ethHeaderLen+ipv4HeaderLen)
	r.out = append(r.out[:ethHeaderLen:ethHeaderLen], append(outer, r.out[ethHeaderLen:]...)...)
	binary.BigEndian.PutUint16(r.out[12:], wire.EtherIPv4)
}

// outerIPv4 writes into h a tunnel's outer IPv4 header, from the node to nodeIP: DF, the
// tunnel TTL, proto, total length and checksum.
func (r *run) outerIPv4(h []byte, nodeIP netip.Addr, proto uint8, total int) {
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(total))
	binary.BigEndian.PutUint16(h[6:], 0x4000) // DF
	h[8] = tunnelTTL
	h[9] = proto
	src, dst := r.m.w.Node.NodeIP.As4(), nodeIP.As4()
	copy(h[12:16], src[:])
	copy(h[16:20], dst[:])
	binary.BigEndian.PutUint16(h[10:], checksum(h[:ipv4HeaderLen]))
}

// encapVXLAN is vxlan_encap: behind the MAC header go an outer IPv4 header from the node to
// nodeIP, UDP to the VXLAN port (no checksum), VXLAN with the I flag and identity as the VNI,
// and an inner Ethernet header between the two nodes' tunnel MACs with the packet's own
// ethertype; the outer Ethernet header names IPv4.
func (r *run) encapVXLAN(nodeIP netip.Addr, identity uint32) {
	inner := len(r.out) - ethHeaderLen
	h := make([]byte, ipv4HeaderLen+udpHeaderLen+vxlanHeaderLen+ethHeaderLen)
	r.outerIPv4(h, nodeIP, wire.ProtoUDP, inner+len(h))
	udp := h[ipv4HeaderLen:]
	binary.BigEndian.PutUint16(udp[0:], 0xc000) // unknown: the flow hash picks it
	binary.BigEndian.PutUint16(udp[2:], r.m.w.Node.VXLANPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(inner+len(h)-ipv4HeaderLen))
	vx := udp[udpHeaderLen:]
	vx[0] = 0x08
	binary.BigEndian.PutUint32(vx[4:], (identity&0xffffff)<<8)
	eth := vx[vxlanHeaderLen:]
	copy(eth[0:6], tunnelMAC(nodeIP))
	copy(eth[6:12], tunnelMAC(r.m.w.Node.NodeIP))
	copy(eth[12:14], r.out[12:14])
	r.out = append(r.out[:ethHeaderLen:ethHeaderLen], append(h, r.out[ethHeaderLen:]...)...)
	binary.BigEndian.PutUint16(r.out[12:], wire.EtherIPv4)
	port := ethHeaderLen + ipv4HeaderLen
	r.unknown = append(r.unknown, [2]int{port, port + 2})
}

// sendVXLAN6 is send_vxlan to a node known by its IPv6 address: vxlan_encap6 when the node
// config names VXLAN's port and the packet can be summed without its payload (innerSummable),
// the device otherwise, which gets the frame between the two nodes' tunnel MACs. Without an
// IPv6 address of its own the node has no route there.
func (r *run) sendVXLAN6(node netip.Addr, identity uint32) maps.Reason {
	own := r.m.w.Node.NodeIPv6
	if r.m.w.Node.VXLANPort != 0 {
		if !own.IsValid() {
			return maps.ReasonNoRoute
		}
		if r.innerSummable() {
			r.encapVXLAN6(node, identity)
			if reason := r.viaUnderlay(node, true); reason != next {
				return reason
			}
			return maps.ReasonForwardTunnel
		}
	}
	r.setMACs(tunnelMAC6(node), tunnelMAC6(own))
	return maps.ReasonForwardTunnel // the device's: its tunnel key is not visible to a test run
}

// innerSummable is inner_csum's question: can the outer UDP checksum be summed from the inner
// packet's headers alone, taking its L4 checksum as right? An IPv4 packet that is no fragment
// and ends where the frame does, or an IPv6 one without extension headers that does; carrying
// TCP, UDP with a checksum, ICMP (IPv4) or ICMPv6 (IPv6).
func (r *run) innerSummable() bool {
	ip := r.out[ethHeaderLen:]
	var proto uint8
	var l4 []byte
	switch {
	case len(ip) >= ipv4HeaderLen && ip[0]>>4 == 4:
		hlen, total := int(ip[0]&0x0f)*4, int(be16(ip[2:]))
		if total != len(ip) || hlen < ipv4HeaderLen || total <= hlen || be16(ip[6:])&0x3fff != 0 {
			return false
		}
		proto, l4 = ip[9], ip[hlen:]
		if proto == wire.ProtoICMP {
			return true
		}
	case len(ip) >= ipv6HeaderLen && ip[0]>>4 == 6:
		plen := int(be16(ip[4:]))
		if plen == 0 || plen+ipv6HeaderLen != len(ip) {
			return false
		}
		proto, l4 = ip[6], ip[ipv6HeaderLen:]
		if proto == wire.ProtoICMP6 {
			return true
		}
	default:
		return false
	}
	switch proto {
	case wire.ProtoTCP:
		return true
	case wire.ProtoUDP:
		return len(l4) >= udpHeaderLen && be16(l4[6:]) != 0
	}
	return false
}

// encapVXLAN6 is vxlan_encap6: behind the MAC header go an outer IPv6 header from the node's
// IPv6 address to node (hop limit 64, a flow label from the flow hash), UDP to the VXLAN port
// with a checksum, VXLAN with the I flag and identity as the VNI, and an inner Ethernet header
// between the two nodes' tunnel MACs with the packet's own ethertype; the outer Ethernet header
// names IPv6. The flow label, the UDP source port and with it the checksum come from the
// kernel's flow hash: the model leaves them unknown (the packet tests check the checksum).
func (r *run) encapVXLAN6(node netip.Addr, identity uint32) {
	inner := len(r.out) - ethHeaderLen
	h := make([]byte, ipv6HeaderLen+udpHeaderLen+vxlanHeaderLen+ethHeaderLen)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(inner+len(h)-ipv6HeaderLen))
	h[6], h[7] = wire.ProtoUDP, tunnelTTL
	src, dst := r.m.w.Node.NodeIPv6.As16(), node.As16()
	copy(h[8:24], src[:])
	copy(h[24:40], dst[:])
	udp := h[ipv6HeaderLen:]
	binary.BigEndian.PutUint16(udp[2:], r.m.w.Node.VXLANPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(inner+len(h)-ipv6HeaderLen))
	vx := udp[udpHeaderLen:]
	vx[0] = 0x08
	binary.BigEndian.PutUint32(vx[4:], (identity&0xffffff)<<8)
	eth := vx[vxlanHeaderLen:]
	copy(eth[0:6], tunnelMAC6(node))
	copy(eth[6:12], tunnelMAC6(r.m.w.Node.NodeIPv6))
	copy(eth[12:14], r.out[12:14])
	r.out = append(r.out[:ethHeaderLen:ethHeaderLen], append(h, r.out[ethHeaderLen:]...)...)
	binary.BigEndian.PutUint16(r.out[12:], wire.EtherIPv6)
	udpAt := ethHeaderLen + ipv6HeaderLen
	r.unknown = append(r.unknown, [2]int{ethHeaderLen + 1, ethHeaderLen + 4}, [2]int{udpAt, udpAt + 2}, [2]int{udpAt + 6, udpAt + 8})
}

// tunnelMAC6 is a node's inner Ethernet address in VXLAN over IPv6: 0e:00 and the last four
// bytes of its IPv6 address (all zero for none).
func tunnelMAC6(ip netip.Addr) net.HardwareAddr {
	var a [16]byte
	if ip.IsValid() {
		a = ip.As16()
	}
	return net.HardwareAddr{0x0e, 0, a[12], a[13], a[14], a[15]}
}

// tunnelMAC is a node's inner Ethernet address in VXLAN: 0e:00 and its IPv4 address.
func tunnelMAC(ip netip.Addr) net.HardwareAddr {
	a := ip.As4()
	return net.HardwareAddr{0x0e, 0, a[0], a[1], a[2], a[3]}
}

// checksum is the Internet checksum of b.
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(be16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// sendOutside is send_outside: a translated packet leaving the cluster, its TTL or hop limit
// lowered, is routed out of the underlay by its own destination.
func (r *run) sendOutside(p *packet) maps.Reason {
	if reason := r.decrementTTL(p); reason != next {
		return reason
	}
	if p.family == afInet6 && (strict6(p.saddr) || strict6(p.daddr)) {
		return maps.ReasonNoRoute // bpf_fib_lookup does not forward these
	}
	if reason := r.viaUnderlay(p.daddr, p.family == afInet6); reason != next {
		return reason
	}
	return maps.ReasonForwardUnder
}

// strict6 says whether an IPv6 address is one the kernel never forwards (rt6_need_strict):
// multicast, link-local or loopback, by its bytes (an IPv4-mapped address is none of them).
func strict6(a netip.Addr) bool {
	b := a.As16()
	return b[0] == 0xff || b[0] == 0xfe && b[1]&0xc0 == 0x80 || a == netip.IPv6Loopback()
}

// viaUnderlay is redirect_via_underlay (and its IPv6 twin): bpf_fib_lookup towards dst, an
// IPv4 or IPv6 address, from the underlay device. A known neighbour rewrites the MACs; an
// unknown one leaves them to bpf_redirect_neigh, which an IPv6 packet (v6) cannot take towards
// an IPv4 next hop: it resolves in the packet's family. No unicast route, or a frame the
// device's MTU cannot carry, is no route.
func (r *run) viaUnderlay(dst netip.Addr, v6 bool) maps.Reason {
	var best *FIBRoute
	for i := range r.m.w.FIB {
		rt := &r.m.w.FIB[i]
		if rt.Prefix.Contains(dst) && (best == nil || rt.Prefix.Bits() > best.Prefix.Bits()) {
			best = rt
		}
	}
	if best == nil || best.Type != FIBUnicast {
		return maps.ReasonNoRoute
	}
	hop := dst
	if best.Via.IsValid() {
		hop = best.Via
	}
	mac, ok := r.m.w.Neighbours[hop]
	if !ok {
		if v6 && hop.Is4() {
			return maps.ReasonNoRoute
		}
		return next
	}
	// is_skb_forwardable: MTU plus the Ethernet header and a VLAN tag.
	if len(r.out) > r.m.w.UnderlayMTU+ethHeaderLen+4 {
		return maps.ReasonNoRoute
	}
	r.setMACs(mac, r.m.w.UnderlayMAC)
	return next
}

// receiveRemote handles what arrives from other nodes or outside (crossnode.h): an ICMPv6
// error about a masqueraded flow becomes its pod's; local pods get it after their ingress
// policy; the node gets what is addressed to it; tunnelled traffic for anyone else is dropped.
func (r *run) receiveRemote(p *packet, hint uint32, tunneled bool) maps.Reason {
	m := r.m
	var x xlate
	r.icmp6Error(p)
	if reason := r.natBegin(p, &x); reason != next {
		return reason
	}
	if dst := m.endpoint(p.family, p.daddr); dst != nil && dst.Local {
		if x.state != xlReply {
			if reason := r.admit(p, nil, dst, hint); reason != next {
				m.natAbort(p, &x)
				return reason
			}
			r.natCommit(p, &x)
		}
		return r.toEndpoint(dst)
	}
	if m.isNode(p.family, p.daddr) {
		if tunneled || x.state == xlReply {
			return r.toNode()
		}
		return maps.ReasonForwardHost
	}
	if x.state == xlNone {
		if tunneled {
			return maps.ReasonUnknownDest
		}
		return maps.ReasonForwardHost
	}
	// Translated towards elsewhere: a Service's backend on another node, or a reply to a
	// client outside the node.
	r.natCommit(p, &x)
	return r.forwardRemote(p, maps.IdentityRemoteNode, true)
}

// toNode is redirect_to_node: the packet goes to the node's stack through the host device,
// when there is one.
func (r *run) toNode() maps.Reason {
	n := r.m.w.Node
	if n.HostIfindex == 0 {
		return maps.ReasonForwardHost
	}
	r.setMACs(n.HostMAC, n.HostMAC)
	return maps.ReasonForwardNode
}
