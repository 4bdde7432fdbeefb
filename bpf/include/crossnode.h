// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* crossnode.h: sending pod traffic to other nodes (VXLAN, native, IP-in-IP) and receiving it. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "forward.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"
#include "service.h"

/* The installed UAPI header predates these flags (kernel 6.3); the running kernel knows them. */
#define ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#define IP_DF 0x4000
#define IPIP_HLEN 20
#define TUNNEL_TTL 64
#define VXLAN_HLEN 8
#define VXLAN_F_VNI 0x08000000 /* RFC 7348's I flag: the VNI is valid */
/* What VXLAN puts before the inner IP header: outer IP, UDP, VXLAN, inner Ethernet. */
#define VXLAN_ENCAP_LEN (IPIP_HLEN + sizeof(struct udphdr) + VXLAN_HLEN + ETH_HLEN)
#define VXLAN_ADJ_ROOM_FLAGS                                                                       \
	(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |                              \
	 BPF_F_ADJ_ROOM_ENCAP_L2_ETH |                                                             \
	 (((__u64)ETH_HLEN & BPF_ADJ_ROOM_ENCAP_L2_MASK) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT))

/* VXLAN over an IPv6 underlay: an outer IPv6 header instead of the IPv4 one, 70 bytes in all. */
#define IPV6_HLEN 40
#define VXLAN6_ENCAP_LEN (IPV6_HLEN + sizeof(struct udphdr) + VXLAN_HLEN + ETH_HLEN)
#define VXLAN6_ADJ_ROOM_FLAGS                                                                      \
	(BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |                              \
	 BPF_F_ADJ_ROOM_ENCAP_L2_ETH |                                                             \
	 (((__u64)ETH_HLEN & BPF_ADJ_ROOM_ENCAP_L2_MASK) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT))

/* vxlan_headers is what VXLAN adds in front of the inner Ethernet header. */
struct vxlan_headers {
	struct iphdr ip;
	struct udphdr udp;
	__be32 flags;
	__be32 vni; /* the VNI in the upper 24 bits */
};

/* vxlan6_headers is what VXLAN over IPv6 adds in front of the inner Ethernet header. */
struct vxlan6_headers {
	struct ipv6hdr ip;
	struct udphdr udp;
	__be32 flags;
	__be32 vni; /* the VNI in the upper 24 bits */
};

/* tunnel_mac is the inner Ethernet address of a node's VXLAN side: 0e:00 and its IPv4
 * address. A kernel VXLAN endpoint given this address takes our frames as its own. */
static __always_inline void tunnel_mac(__u8 mac[ETH_ALEN], const __u8 *ip)
{
	mac[0] = 0x0e;
	mac[1] = 0;
	__builtin_memcpy(&mac[2], ip, 4);
}

/* tunnel_mac6 is tunnel_mac for a node known by its IPv6 address: 0e:00 and its last four
 * bytes. */
static __always_inline void tunnel_mac6(__u8 mac[ETH_ALEN], const __u8 *ip6)
{
	tunnel_mac(mac, ip6 + 12);
}

/* route_scratch_get is this CPU's route_scratch. */
static __always_inline struct route_scratch *route_scratch_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&fib_scratch, &zero);
}

/* fib_redirect routes a packet out of the underlay with the kernel's FIB and neighbour table,
 * without the node's forwarding path: the lookup r->fib holds its family and addresses. */
static __always_inline int fib_redirect(struct __sk_buff *skb, struct node_config *cfg,
					struct route_scratch *r)
{
	long ret;

	r->fib.ifindex = cfg->underlay_ifindex;
	/* OUTPUT: look up as the node sending. The kernel still wants forwarding on in the
	 * underlay device, which the agent turns on. */
	ret = bpf_fib_lookup(skb, &r->fib, sizeof(r->fib), BPF_FIB_LOOKUP_OUTPUT);
	if (ret == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, r->fib.dmac, ETH_ALEN, 0) ||
		    bpf_skb_store_bytes(skb, ETH_ALEN, r->fib.smac, ETH_ALEN, 0))
			return REASON_DROP_MALFORMED;
		if (bpf_redirect(r->fib.ifindex, 0) != TC_ACT_REDIRECT)
			return REASON_DROP_REDIRECT_FAILED;
		return CONTINUE;
	}
	if (ret != BPF_FIB_LKUP_RET_NO_NEIGH)
		return REASON_DROP_NO_ROUTE;
	/* bpf_redirect_neigh resolves the next hop in the skb's own family: an IPv6 packet
	 * cannot take an IPv4 one (the kernel would read it as an IPv6 address). An IPv6 lookup
	 * is only ever made for an IPv6 packet. */
	if (r->fib.family == AF_INET6) {
		r->nh.nh_family = AF_INET6;
		__builtin_memcpy(r->nh.ipv6_nh, r->fib.ipv6_dst, 16);
	} else if (skb->protocol == bpf_htons(ETH_P_IP)) {
		r->nh.nh_family = AF_INET;
		r->nh.ipv4_nh = r->fib.ipv4_dst;
	} else {
		return REASON_DROP_NO_ROUTE;
	}
	if (bpf_redirect_neigh(r->fib.ifindex, &r->nh, sizeof(r->nh), 0) != TC_ACT_REDIRECT)
		return REASON_DROP_REDIRECT_FAILED;
	return CONTINUE;
}

/* redirect_via_underlay routes an (outer) IPv4 packet out of the underlay. The lookup's
 * parameters and the MACs it writes live in a per-CPU map, not on the stack: the tunnel paths'
 * callers leave little room. */
static __always_inline int redirect_via_underlay(struct __sk_buff *skb, struct node_config *cfg,
						 __be32 saddr, __be32 daddr)
{
	struct route_scratch *r = route_scratch_get();

	if (!r)
		return REASON_DROP_NO_ROUTE;
	__builtin_memset(r, 0, sizeof(*r));
	r->fib.family = AF_INET;
	r->fib.ipv4_src = saddr;
	r->fib.ipv4_dst = daddr;
	return fib_redirect(skb, cfg, r);
}

/* redirect_via_underlay6_addrs routes an (outer) IPv6 packet from saddr to daddr out of the
 * underlay. */
static __always_inline int redirect_via_underlay6_addrs(struct __sk_buff *skb,
							struct node_config *cfg, const __u8 *saddr,
							const __u8 *daddr)
{
	struct route_scratch *r = route_scratch_get();

	if (!r)
		return REASON_DROP_NO_ROUTE;
	__builtin_memset(r, 0, sizeof(*r));
	r->fib.family = AF_INET6;
	__builtin_memcpy(r->fib.ipv6_src, saddr, 16);
	__builtin_memcpy(r->fib.ipv6_dst, daddr, 16);
	return fib_redirect(skb, cfg, r);
}

/* redirect_via_underlay6 routes an IPv6 packet out of the underlay by its own addresses: the
 * way out of the cluster of a node with an IPv6 address. */
static __always_inline int redirect_via_underlay6(struct __sk_buff *skb, struct node_config *cfg,
						  struct packet *pkt)
{
	return redirect_via_underlay6_addrs(skb, cfg, pkt->saddr.v6, pkt->daddr.v6);
}

/* send_vxlan_device hands the packet to the kernel's VXLAN device with a tunnel key: the way
 * when the node config names no VXLAN port, or when BPF cannot add the headers (UDP GSO). */
static __always_inline int send_vxlan_device(struct __sk_buff *skb, struct node_config *cfg,
					     struct route_info *rt, __u32 identity)
{
	struct bpf_tunnel_key key = {};
	__u64 flags = BPF_F_ZERO_CSUM_TX;

	/* The VNI carries the source identity (24 bits) to the receiving node. */
	key.tunnel_id = identity & 0xffffff;
	key.tunnel_ttl = TUNNEL_TTL;
	if (rt->flags & ROUTE_F_NODE_IPV6) {
		__u8 dst[ETH_ALEN], src[ETH_ALEN];

		/* Over IPv6 with a UDP checksum, which IPv6 receivers insist on (a kernel VXLAN
		 * device takes none without udp6zerocsumrx). From the node's IPv6 address, which
		 * the receiver knows it by; all zero lets the kernel choose. The inner frame
		 * gets the tunnel MACs vxlan_encap6 gives it, which a kernel VXLAN endpoint
		 * takes as its own. */
		__builtin_memcpy(key.remote_ipv6, rt->node_ip, 16);
		__builtin_memcpy(key.local_ipv6, cfg->node_ipv6, 16);
		flags = BPF_F_TUNINFO_IPV6;
		tunnel_mac6(dst, rt->node_ip);
		tunnel_mac6(src, cfg->node_ipv6);
		if (set_macs(skb, dst, src))
			return REASON_DROP_MALFORMED;
	} else {
		key.remote_ipv4 = bpf_ntohl(*(__be32 *)rt->node_ip);
	}
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), flags))
		return REASON_DROP_ENCAP_FAILED;
	if (bpf_redirect(cfg->tunnel_ifindex, 0) != TC_ACT_REDIRECT)
		return REASON_DROP_REDIRECT_FAILED;
	return REASON_FORWARD_TUNNEL;
}

/* vxlan_source_port spreads flows over the underlay's paths and queues, as the kernel does:
 * from the inner flow's hash, within the ephemeral range. */
static __always_inline __be16 vxlan_source_port(struct __sk_buff *skb)
{
	return bpf_htons(0xc000 | (bpf_get_hash_recalc(skb) & 0x3fff));
}

/* vxlan_encap encapsulates in RFC 7348 VXLAN itself, the sender's identity in the VNI, and
 * routes the result out of the underlay: no VXLAN device on the way. The inner frame keeps the
 * packet's ethertype (IPv4 or IPv6); the outer is IPv4. It answers CONTINUE when BPF cannot
 * add the headers (UDP GSO), for the device to. A global function: the verifier checks it
 * once, not again inside every path that reaches it. */
__attribute__((noinline)) int vxlan_encap(struct __sk_buff *skb, __u32 remote, __u32 identity)
{
	struct node_config *cfg = node_config();
	__u32 inner = skb->len - ETH_HLEN;
	struct ethhdr *outer, *eth;
	struct vxlan_headers *h;
	void *data, *end;
	int reason;

	if (!cfg)
		return REASON_DROP_NO_ROUTE;
	/* The encap flags mark GSO packets as UDP-tunnelled, so segmentation repeats the outer
	 * headers. */
	if (bpf_skb_adjust_room(skb, VXLAN_ENCAP_LEN, BPF_ADJ_ROOM_MAC, VXLAN_ADJ_ROOM_FLAGS))
		return CONTINUE;
	/* Written in place, not from the stack: the callers' stacks leave this function little
	 * room. */
	if (bpf_skb_pull_data(skb, ETH_HLEN + VXLAN_ENCAP_LEN))
		return REASON_DROP_ENCAP_FAILED;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN + VXLAN_ENCAP_LEN > end)
		return REASON_DROP_ENCAP_FAILED;
	outer = data;
	h = data + ETH_HLEN;
	eth = data + ETH_HLEN + sizeof(*h);
	h->ip.version = 4;
	h->ip.ihl = 5;
	h->ip.tos = 0;
	h->ip.tot_len = bpf_htons(inner + VXLAN_ENCAP_LEN);
	h->ip.id = 0;
	h->ip.frag_off = bpf_htons(IP_DF);
	h->ip.ttl = TUNNEL_TTL;
	h->ip.protocol = IPPROTO_UDP;
	h->ip.check = 0;
	h->ip.saddr = *(__be32 *)cfg->node_ip;
	h->ip.daddr = remote;
	h->ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&h->ip, sizeof(h->ip), 0));
	h->udp.source = vxlan_source_port(skb);
	h->udp.dest = cfg->vxlan_port;
	h->udp.len = bpf_htons(inner + VXLAN_ENCAP_LEN - IPIP_HLEN);
	/* No UDP checksum, as RFC 7348 allows over IPv4: the inner packet carries its own. */
	h->udp.check = 0;
	h->flags = bpf_htonl(VXLAN_F_VNI);
	h->vni = bpf_htonl((identity & 0xffffff) << 8);
	tunnel_mac(eth->h_dest, (__u8 *)&h->ip.daddr);
	tunnel_mac(eth->h_source, (__u8 *)&h->ip.saddr);
	eth->h_proto = outer->h_proto;
	outer->h_proto = bpf_htons(ETH_P_IP);
	/* Routed as it will leave, outer header and all, as IP-in-IP is. */
	reason = redirect_via_underlay(skb, cfg, *(__be32 *)cfg->node_ip, remote);
	return reason == CONTINUE ? REASON_FORWARD_TUNNEL : reason;
}

/* csum_add adds two 32-bit partial Internet checksums, the carry wrapped around. */
static __always_inline __u32 csum_add(__u32 a, __u32 b)
{
	a += b;
	return a + (a < b);
}

/* inner_csum sets *sum to what the inner packet adds to the outer UDP checksum of VXLAN over
 * IPv6, summed without reading its payload: a valid L4 checksum makes the L4 segment sum to
 * the complement of its pseudo-header's sum (an ICMPv4 message, whose checksum has no
 * pseudo-header, to nothing), and a valid IPv4 header sums to nothing. That holds too for a
 * checksum that offload has yet to fill in (CHECKSUM_PARTIAL, as a pod's TCP and UDP come
 * through its veth): the kernel's own tunnels sum such packets so (lco_csum). It says whether
 * it could: not for a fragment, another protocol, UDP without a checksum, IPv6 extension
 * headers or bytes past the datagram, which are the VXLAN device's to send. The packet is read
 * where it lies before encapsulation. An inner checksum that is wrong makes the outer one
 * wrong: the receiver drops what it would have dropped anyway. */
static __always_inline int inner_csum(struct __sk_buff *skb, __u32 *sum)
{
	__u32 len = skb->len - ETH_HLEN, l4len, pseudo;
	__u16 l3len, l4csum = 1;
	__u8 proto, hlen;
	union {
		struct iphdr v4;
		struct ipv6hdr v6;
	} ip;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip.v4)))
		return 0;
	if (ip.v4.version == 4) {
		hlen = ip.v4.ihl * 4;
		l3len = bpf_ntohs(ip.v4.tot_len);
		proto = ip.v4.protocol;
		if (l3len != len || hlen < sizeof(ip.v4) || l3len <= hlen ||
		    ip.v4.frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return 0;
		l4len = l3len - hlen;
		pseudo = bpf_csum_diff(0, 0, &ip.v4.saddr, 8, 0);
		*sum = 0;
	} else {
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip.v6)))
			return 0;
		hlen = IPV6_HLEN;
		l4len = bpf_ntohs(ip.v6.payload_len);
		proto = ip.v6.nexthdr;
		if (ip.v6.version != 6 || !l4len || l4len + IPV6_HLEN != len)
			return 0;
		pseudo = bpf_csum_diff(0, 0, (__be32 *)&ip.v6.saddr, 32, 0);
		*sum = bpf_csum_diff(0, 0, (__be32 *)&ip.v6, IPV6_HLEN, 0);
	}
	if (proto == IPPROTO_ICMP && ip.v4.version == 4)
		return 1;
	if (proto == IPPROTO_UDP &&
	    bpf_skb_load_bytes(skb, ETH_HLEN + hlen + offsetof(struct udphdr, check), &l4csum, 2))
		return 0;
	if ((proto != IPPROTO_TCP && proto != IPPROTO_UDP &&
	     (proto != IPPROTO_ICMPV6 || ip.v4.version != 6)) ||
	    !l4csum)
		return 0;
	/* The pseudo-header's protocol and length as one 32-bit word: both sum alike. */
	pseudo = csum_add(pseudo, bpf_htonl(((__u32)proto << 16) | l4len));
	*sum = csum_add(*sum, csum_fold(pseudo));
	return 1;
}

/* vxlan_encap6 is vxlan_encap over an IPv6 underlay, to the IPv6 address of the route rt from
 * the node's: an outer IPv6 header (hop limit 64, a flow label from the inner flow's hash)
 * and a UDP checksum, which IPv6 needs (RFC 6935's exception for tunnels is the receiver's to
 * allow, and a kernel VXLAN device does not by default). It answers CONTINUE for the device
 * to send: GSO packets, which the device sums segment by segment (bpf_skb_adjust_room marks
 * them UDP_TUNNEL, not UDP_TUNNEL_CSUM, so GSO would copy one checksum into every segment),
 * and what inner_csum cannot sum. A global function, as vxlan_encap is. */
__attribute__((noinline)) int vxlan_encap6(struct __sk_buff *skb, const struct route_info *rt,
					   __u32 identity)
{
	struct node_config *cfg = node_config();
	__u32 inner = skb->len - ETH_HLEN, hash, sum;
	struct ethhdr *outer, *eth;
	struct vxlan6_headers *h;
	void *data, *end;
	__u16 check;
	int reason;

	if (!cfg || !rt || !node_addr(cfg, AF_INET6))
		return REASON_DROP_NO_ROUTE;
	if (skb->gso_size)
		return CONTINUE;
	if (!inner_csum(skb, &sum))
		return CONTINUE;
	/* The inner flow's hash, while the inner packet is all there is to dissect. */
	hash = bpf_get_hash_recalc(skb);
	if (bpf_skb_adjust_room(skb, VXLAN6_ENCAP_LEN, BPF_ADJ_ROOM_MAC, VXLAN6_ADJ_ROOM_FLAGS))
		return CONTINUE;
	if (bpf_skb_pull_data(skb, ETH_HLEN + VXLAN6_ENCAP_LEN))
		return REASON_DROP_ENCAP_FAILED;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN + VXLAN6_ENCAP_LEN > end)
		return REASON_DROP_ENCAP_FAILED;
	outer = data;
	h = data + ETH_HLEN;
	eth = data + ETH_HLEN + sizeof(*h);
	h->ip.version = 6;
	h->ip.priority = 0;
	h->ip.flow_lbl[0] = (hash >> 16) & 0x0f;
	h->ip.flow_lbl[1] = hash >> 8;
	h->ip.flow_lbl[2] = hash;
	h->ip.payload_len = bpf_htons(inner + VXLAN6_ENCAP_LEN - IPV6_HLEN);
	h->ip.nexthdr = IPPROTO_UDP;
	h->ip.hop_limit = TUNNEL_TTL;
	__builtin_memcpy(&h->ip.saddr, cfg->node_ipv6, 16);
	__builtin_memcpy(&h->ip.daddr, rt->node_ip, 16);
	h->udp.source = bpf_htons(0xc000 | (hash & 0x3fff));
	h->udp.dest = cfg->vxlan_port;
	h->udp.len = h->ip.payload_len;
	h->udp.check = 0;
	h->flags = bpf_htonl(VXLAN_F_VNI);
	h->vni = bpf_htonl((identity & 0xffffff) << 8);
	tunnel_mac6(eth->h_dest, rt->node_ip);
	tunnel_mac6(eth->h_source, cfg->node_ipv6);
	eth->h_proto = outer->h_proto;
	outer->h_proto = bpf_htons(ETH_P_IPV6);
	/* The UDP checksum: the outer addresses, UDP, VXLAN and the inner Ethernet header, summed
	 * from the next header field on (a multiple of four bytes, as bpf_csum_diff wants), with
	 * the pseudo-header's length and protocol for the next header and hop limit; then the
	 * inner packet. */
	sum = csum_add(sum, bpf_csum_diff(0, 0, (__be32 *)&h->ip.nexthdr,
					  VXLAN6_ENCAP_LEN - offsetof(struct ipv6hdr, nexthdr), 0));
	sum = csum_add(sum, ~(__u32)bpf_htons((IPPROTO_UDP << 8) | TUNNEL_TTL));
	sum = csum_add(sum, bpf_htonl(IPPROTO_UDP));
	sum = csum_add(sum, h->udp.len);
	check = csum_fold(sum);
	h->udp.check = check ? check : 0xffff;
	reason = redirect_via_underlay6_addrs(skb, cfg, cfg->node_ipv6, rt->node_ip);
	return reason == CONTINUE ? REASON_FORWARD_TUNNEL : reason;
}

/* send_vxlan sends to another node in VXLAN: encapsulated here when the node config names
 * VXLAN's port, by the device otherwise. */
static __always_inline int send_vxlan(struct __sk_buff *skb, struct node_config *cfg,
				      struct route_info *rt, __u32 identity)
{
	int reason;

	if (cfg->vxlan_port) {
		if (rt->flags & ROUTE_F_NODE_IPV6)
			reason = vxlan_encap6(skb, rt, identity);
		else
			reason = vxlan_encap(skb, *(__u32 *)rt->node_ip, identity);
		if (reason != CONTINUE)
			return reason;
	}
	return send_vxlan_device(skb, cfg, rt, identity);
}

/* send_native routes a packet out of the underlay as it is, towards the IPv4 address daddr:
 * its own destination, or (an IPv6 pod's, whose CIDR the underlay does not route) its node's
 * address. */
static __always_inline int send_native(struct __sk_buff *skb, struct node_config *cfg, __be32 saddr,
				       __be32 daddr)
{
	int reason = redirect_via_underlay(skb, cfg, saddr, daddr);

	return reason == CONTINUE ? REASON_FORWARD_UNDERLAY : reason;
}

/* send_native_to sends a packet for a pod on another node natively: IPv4 by its own
 * address, IPv6 to the node's IPv4 address on the underlay (the same link, or a router that
 * routes the pod CIDRs). */
static __always_inline int send_native_to(struct __sk_buff *skb, struct node_config *cfg,
					  struct route_info *rt, struct packet *pkt)
{
	if (pkt->family == AF_INET)
		return send_native(skb, cfg, pkt->saddr.v4, pkt->daddr.v4);
	return send_native(skb, cfg, *(__be32 *)cfg->node_ip, *(__be32 *)rt->node_ip);
}

/* send_ipip puts an outer IPv4 header in front: IPv4 in IPv4 (protocol 4), or IPv6 in IPv4
 * (protocol 41, RFC 4213), which needs no sit device either. */
static __always_inline int send_ipip(struct __sk_buff *skb, struct node_config *cfg,
				     struct route_info *rt, struct packet *pkt)
{
	__be16 proto = bpf_htons(ETH_P_IP);
	struct iphdr outer = {};
	int reason;

	outer.version = 4;
	outer.ihl = 5;
	outer.tot_len = bpf_htons(pkt->len - ETH_HLEN + IPIP_HLEN);
	outer.frag_off = bpf_htons(IP_DF);
	outer.ttl = TUNNEL_TTL;
	outer.protocol = pkt->family == AF_INET6 ? IPPROTO_IPV6 : IPPROTO_IPIP;
	outer.saddr = *(__be32 *)cfg->node_ip;
	outer.daddr = *(__be32 *)rt->node_ip;
	outer.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&outer, sizeof(outer), 0));
	/* ENCAP_L3_IPV4 marks GSO packets as IP-in-IP so segmentation repeats the outer header. */
	if (bpf_skb_adjust_room(skb, IPIP_HLEN, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
		return REASON_DROP_ENCAP_FAILED;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0) ||
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, 2, 0))
		return REASON_DROP_ENCAP_FAILED;
	reason = redirect_via_underlay(skb, cfg, outer.saddr, outer.daddr);
	return reason == CONTINUE ? REASON_FORWARD_TUNNEL : reason;
}

/* send_outside routes a translated packet leaving the cluster straight out of the underlay:
 * its source is now the node's (or a Service's), which the node's forwarding path would
 * refuse as a martian (IPv6: as its own address). */
static __always_inline int send_outside(struct __sk_buff *skb, struct packet *pkt,
					struct node_config *cfg)
{
	int reason = decrement_ttl(skb, pkt);

	if (reason != CONTINUE)
		return reason;
	if (pkt->family == AF_INET)
		return send_native(skb, cfg, pkt->saddr.v4, pkt->daddr.v4);
	reason = redirect_via_underlay6(skb, cfg, pkt);
	return reason == CONTINUE ? REASON_FORWARD_UNDERLAY : reason;
}

/* forward_remote sends a packet for a pod on another node the cluster's way; identity is the
 * sender's, for the VNI. A packet for outside the cluster goes to the node's stack, or, once
 * translated, straight out of the underlay: IPv6 only when the node has an IPv6 address (the
 * underlay routes IPv6 then). */
static __always_inline int forward_remote(struct __sk_buff *skb, struct packet *pkt, __u32 identity,
					  int translated)
{
	struct route_info *rt = lookup_route(pkt->family, &pkt->daddr);
	struct node_config *cfg = node_config();
	int reason;

	if (!rt) {
		if (translated && node_addr(cfg, pkt->family))
			return send_outside(skb, pkt, cfg);
		return REASON_FORWARD_HOST; /* outside the cluster: the node's business */
	}
	if (rt->flags & (ROUTE_F_LOCAL | ROUTE_F_UNREACHABLE))
		return REASON_DROP_UNKNOWN_DEST;
	if (!cfg)
		return REASON_DROP_NO_ROUTE;
	/* Only VXLAN runs over an IPv6 underlay. */
	if ((rt->flags & ROUTE_F_NODE_IPV6) && rt->mode != MODE_VXLAN)
		return REASON_DROP_NO_ROUTE;
	reason = decrement_ttl(skb, pkt);
	if (reason != CONTINUE)
		return reason;
	switch (rt->mode) {
	case MODE_VXLAN:
		return send_vxlan(skb, cfg, rt, identity);
	case MODE_NATIVE:
		return send_native_to(skb, cfg, rt, pkt);
	case MODE_IPIP:
		return send_ipip(skb, cfg, rt, pkt);
	}
	return REASON_DROP_NO_ROUTE;
}

/* redirect_to_node hands a packet to the node's own stack through the host device, which the
 * node's routes to remote pods and Services point at, so reverse-path filtering accepts it. */
static __always_inline int redirect_to_node(struct __sk_buff *skb, struct node_config *cfg)
{
	if (!cfg || !cfg->host_ifindex)
		return REASON_FORWARD_HOST;
	if (set_macs(skb, cfg->host_mac, cfg->host_mac))
		return REASON_DROP_MALFORMED;
	if (bpf_redirect(cfg->host_ifindex, BPF_F_INGRESS) != TC_ACT_REDIRECT)
		return REASON_DROP_REDIRECT_FAILED;
	return REASON_FORWARD_NODE;
}

/* receive_remote handles what arrives from other nodes or outside: replies of translated
 * flows (and ICMPv6 errors about masqueraded ones), NodePort clients, pod traffic for local
 * pods (after their ingress policy), and the node's own traffic. tunneled says the packet came
 * decapsulated from another node; hint is the sender's identity if it carried one. */
static __always_inline int receive_remote(struct __sk_buff *skb, struct packet *pkt, __u32 hint,
					  __u8 direction, int tunneled)
{
	struct node_config *cfg = node_config();
	struct endpoint_info *dst;
	struct xlate x = {};
	int reason;

	reason = CONTINUE;
	/* Only ICMPv6 pays for the call. */
	if (pkt->family == AF_INET6 && pkt->l4_proto == IPPROTO_ICMPV6)
		reason = nat_icmp6_error(skb, pkt);
	if (reason == CONTINUE)
		reason = nat_begin(skb, pkt, cfg, &x);
	if (reason != CONTINUE)
		return reason;
	dst = lookup_endpoint(pkt->family, &pkt->daddr);
	if (dst && (dst->flags & EP_F_LOCAL)) {
		if (x.state != XL_REPLY) {
			reason = admit(skb, pkt, NULL, dst, hint, direction);
			if (reason != CONTINUE) {
				nat_abort(pkt, &x);
				return reason;
			}
			nat_commit(pkt, &x, skb);
		}
		/* A decapsulated frame was addressed to the tunnel device; the pod must see it
		 * as its own. */
		bpf_skb_change_type(skb, PACKET_HOST);
		return redirect_to_endpoint(skb, dst);
	}
	if (is_node(cfg, pkt->family, &pkt->daddr))
		return tunneled || x.state == XL_REPLY ? redirect_to_node(skb, cfg)
						       : REASON_FORWARD_HOST;
	if (x.state == XL_NONE)
		return tunneled ? REASON_DROP_UNKNOWN_DEST : REASON_FORWARD_HOST;
	/* Translated towards elsewhere: a NodePort's backend on another node, or a reply
	 * leaving the cluster. */
	nat_commit(pkt, &x, skb);
	return forward_remote(skb, pkt, IDENTITY_REMOTE_NODE, 1);
}

/* strip_outer removes len bytes behind the MAC header, which leaves an IPv4 or IPv6 packet
 * (ethertype proto) there, and makes the Ethernet header that stays name it. */
static __always_inline int strip_outer(struct __sk_buff *skb, __u32 len, __be16 proto)
{
	__u64 flags =
		proto == bpf_htons(ETH_P_IPV6) ? ADJ_ROOM_DECAP_L3_IPV6 : ADJ_ROOM_DECAP_L3_IPV4;

	if (bpf_skb_adjust_room(skb, -(__s32)len, BPF_ADJ_ROOM_MAC, flags))
		return REASON_DROP_ENCAP_FAILED;
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, 2, 0))
		return REASON_DROP_ENCAP_FAILED;
	return CONTINUE;
}

/* decap_vxlan strips the headers of a VXLAN packet for this node; hint becomes the sender's
 * identity from the VNI. What is neither IPv4 nor IPv6 inside (or not flagged as RFC 7348
 * says) is left to the VXLAN device. */
static __always_inline int decap_vxlan(struct __sk_buff *skb, struct packet *pkt, __u32 *hint)
{
	struct {
		__be32 flags;
		__be32 vni;
		struct ethhdr inner;
	} __attribute__((packed)) h;
	__u32 outer = pkt->l4_off - pkt->l3_off + sizeof(struct udphdr) + sizeof(h);
	int reason;

	if (bpf_skb_load_bytes(skb, pkt->l4_off + sizeof(struct udphdr), &h, sizeof(h)))
		return REASON_FORWARD_HOST;
	if (!(h.flags & bpf_htonl(VXLAN_F_VNI)) ||
	    (h.inner.h_proto != bpf_htons(ETH_P_IP) && h.inner.h_proto != bpf_htons(ETH_P_IPV6)))
		return REASON_FORWARD_HOST;
	/* Outer IP, UDP, VXLAN and the inner Ethernet go; the outer Ethernet stays. */
	reason = strip_outer(skb, outer, h.inner.h_proto);
	if (reason == CONTINUE)
		*hint = bpf_ntohl(h.vni) >> 8;
	return reason;
}

/* is_ipip says whether pkt is IP-in-IP: IPv4 (4) or IPv6 (41) in IPv4. */
static __always_inline int is_ipip(struct packet *pkt)
{
	return pkt->l4_proto == IPPROTO_IPIP || pkt->l4_proto == IPPROTO_IPV6;
}

/* from_node says whether the source of a tunnelled packet is another node of the cluster,
 * which the ipcache holds with the remote-node identity: only nodes may claim an identity in
 * the VNI. */
static __always_inline int from_node(struct packet *pkt)
{
	struct peer peer;

	resolve_peer(pkt->family, &pkt->saddr, &peer);
	return peer.identity == IDENTITY_REMOTE_NODE;
}

/* decap_underlay strips the tunnel headers of VXLAN and IP-in-IP for this node and parses
 * what was inside; tunneled says it did. VXLAN comes to either of the node's addresses, from a
 * known node only, IP-in-IP to its IPv4 one. A fragment cannot be decapsulated on its
 * own: the node's stack reassembles it (and hands VXLAN to the VXLAN device). */
static __always_inline int decap_underlay(struct __sk_buff *skb, struct packet *pkt, __u32 *hint,
					  __u8 *direction, int *tunneled)
{
	struct node_config *cfg = node_config();
	int ipip = pkt->family == AF_INET && is_ipip(pkt);
	int reason;

	if (!cfg || !is_node(cfg, pkt->family, &pkt->daddr) || pkt->fragment)
		return ipip ? REASON_FORWARD_HOST : CONTINUE;
	if (pkt->l4_proto == IPPROTO_UDP && cfg->vxlan_port && pkt->dport == cfg->vxlan_port) {
		/* Not left to the stack: the VXLAN device would take it, VNI and all. */
		if (!from_node(pkt))
			return REASON_DROP_SPOOFED_SOURCE;
		reason = decap_vxlan(skb, pkt, hint);
		if (reason == CONTINUE)
			*direction = DIR_FROM_OVERLAY;
	} else if (ipip) {
		/* The whole outer header goes, options too. */
		reason = strip_outer(
			skb, pkt->l4_off - pkt->l3_off,
			bpf_htons(pkt->l4_proto == IPPROTO_IPV6 ? ETH_P_IPV6 : ETH_P_IP));
	} else {
		return CONTINUE;
	}
	if (reason != CONTINUE)
		return reason;
	__builtin_memset(pkt, 0, sizeof(*pkt));
	if (parse_skb(skb, pkt) != CONTINUE || !pkt->family)
		return REASON_DROP_MALFORMED;
	*tunneled = 1;
	return CONTINUE;
}

/* receive_underlay handles what arrives on the underlay: VXLAN (over IPv4 or IPv6) and
 * IP-in-IP (6in4 too) for this node are decapsulated and handled as tunnelled; native pod
 * traffic (IPv6 too, which other nodes send to this node's underlay MAC), NodePort clients and
 * replies of translated flows are handled by receive_remote. direction becomes
 * DIR_FROM_OVERLAY for what came in VXLAN, as if through the VXLAN device. */
static __always_inline int receive_underlay(struct __sk_buff *skb, struct packet *pkt,
					    __u8 *direction)
{
	int tunneled = 0, reason;
	__u32 hint = 0;

	if (pkt->family != AF_INET && pkt->family != AF_INET6)
		return REASON_FORWARD_HOST;
	reason = decap_underlay(skb, pkt, &hint, direction, &tunneled);
	if (reason != CONTINUE)
		return reason;
	return receive_remote(skb, pkt, hint, *direction, tunneled);
}
