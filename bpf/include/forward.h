// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* forward.h: anti-spoofing, delivery into local pods, and the reason -> tc action mapping. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "maps.h"
#include "metrics.h"
#include "parse.h"

/* PACKET_HOST from linux/if_packet.h, which drags in libc headers. */
#define PACKET_HOST 0

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return *(__u32 *)a == *(__u32 *)b && *(__u16 *)(a + 4) == *(__u16 *)(b + 4);
}

/* mac_bytes_equal is mac_equal for an address at any alignment (stack reads must be aligned). */
static __always_inline int mac_bytes_equal(const __u8 *a, const __u8 *b)
{
	return !((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) |
		 (a[5] ^ b[5]));
}

/* addr_key fills a 16-byte map key address from a parsed address. */
static __always_inline void addr_key(__u8 *dst, __u8 family, const union addr *ip)
{
	if (family == AF_INET)
		__builtin_memcpy(dst, &ip->v4, 4);
	else
		__builtin_memcpy(dst, ip->v6, 16);
}

static __always_inline struct endpoint_info *lookup_endpoint(__u8 family, const union addr *ip)
{
	struct endpoint_key key = {.family = family};

	addr_key(key.ip, family, ip);
	return bpf_map_lookup_elem(&endpoints, &key);
}

static __always_inline struct route_info *lookup_route(__u8 family, const union addr *ip)
{
	struct lpm_key key = {.family = family};

	key.prefixlen = LPM_PREFIX_BASE + (family == AF_INET ? 32 : 128);
	addr_key(key.ip, family, ip);
	return bpf_map_lookup_elem(&routes, &key);
}

/* link_scope_source says whether an IPv6 source is link-local (fe80::/10) or unspecified (::):
 * no endpoint has it, so only the link's own protocols may use it. */
static __always_inline int link_scope_source(const union addr *a)
{
	const __u32 *w = (const __u32 *)a->v6;

	if (a->v6[0] == 0xfe && (a->v6[1] & 0xc0) == 0x80)
		return 1;
	return !(w[0] | w[1] | w[2] | w[3]);
}

/* is_ndp_or_mld says whether pkt is ICMPv6 of the link: MLD (130-132, 143) or neighbour
 * discovery (133-137). RFC 6980: never fragmented. */
static __always_inline int is_ndp_or_mld(struct packet *pkt)
{
	__u8 t = pkt->icmp_type;

	if (pkt->l4_proto != IPPROTO_ICMPV6 || !pkt->l4_off || pkt->fragment)
		return 0;
	return (t >= ICMP6_MLD_QUERY && t <= ICMP6_NDP_REDIRECT) || t == ICMP6_MLD2_REPORT;
}

/* check_na drops a Neighbor Advertisement in someone else's name, as check_source does ARP:
 * its target must be an address of the endpoint on this veth with the frame's MAC, and so
 * must its target link-layer address option say. Its options are read up to NDP_MAX_OPTS; an
 * advertisement with more is not let through. */
static __always_inline int check_na(struct __sk_buff *skb, struct packet *pkt)
{
	struct endpoint_info *ep;
	union addr target;
	__u32 off, end;
	__be16 plen;
	__u8 opt[8];

	if (bpf_skb_load_bytes(skb, pkt->l3_off + offsetof(struct ipv6hdr, payload_len), &plen, 2))
		return REASON_DROP_MALFORMED;
	end = plen ? pkt->l3_off + sizeof(struct ipv6hdr) + bpf_ntohs(plen) : skb->len;
	off = pkt->l4_off + NDP_NA_LEN;
	if (off > end || bpf_skb_load_bytes(skb, pkt->l4_off + 8, target.v6, 16))
		return REASON_DROP_MALFORMED;
	ep = lookup_endpoint(AF_INET6, &target);
	if (!ep || ep->ifindex != skb->ifindex || !mac_equal(ep->mac, pkt->smac))
		return REASON_DROP_SPOOFED_SOURCE;
#pragma unroll
	for (int i = 0; i < NDP_MAX_OPTS; i++) {
		if (off >= end)
			return REASON_FORWARD_HOST;
		/* Every option is a multiple of 8 bytes, never 0 (RFC 4861 4.6). */
		if (off + 8 > end || bpf_skb_load_bytes(skb, off, opt, 8) || !opt[1])
			return REASON_DROP_MALFORMED;
		if (opt[0] == NDP_OPT_TARGET_LLADDR && !mac_bytes_equal(opt + 2, ep->mac))
			return REASON_DROP_SPOOFED_SOURCE;
		off += opt[1] * 8;
	}
	return off >= end ? REASON_FORWARD_HOST : REASON_DROP_SPOOFED_SOURCE;
}

/* check_link drops what the node may not see of a pod's link traffic and hands the rest (MLD
 * and neighbour discovery) to the node's stack, without policy, as ARP is. A pod is nobody's
 * router: its Router Advertisements and Redirects are dropped (RA guard, RFC 6105). */
static __always_inline int check_link(struct __sk_buff *skb, struct packet *pkt)
{
	if (!is_ndp_or_mld(pkt) || pkt->icmp_type == ICMP6_NDP_RA ||
	    pkt->icmp_type == ICMP6_NDP_REDIRECT)
		return REASON_DROP_SPOOFED_SOURCE;
	return pkt->icmp_type == ICMP6_NDP_NA ? check_na(skb, pkt) : REASON_FORWARD_HOST;
}

/* check_source drops what a pod sends in someone else's name (IP, MAC, ARP sender or
 * neighbour advertisement target) and hands back the sending endpoint. A link-local or
 * unspecified IPv6 source may only do neighbour discovery and MLD with the node. */
static __always_inline int check_source(struct __sk_buff *skb, struct packet *pkt,
					struct endpoint_info **src)
{
	struct endpoint_info *ep;

	switch (pkt->family) {
	case AF_INET:
		ep = lookup_endpoint(AF_INET, &pkt->saddr);
		break;
	case AF_INET6:
		if (link_scope_source(&pkt->saddr))
			return check_link(skb, pkt);
		ep = lookup_endpoint(AF_INET6, &pkt->saddr);
		break;
	default: {
		union addr sip = {.v4 = pkt->arp_sip};

		ep = lookup_endpoint(AF_INET, &sip);
		if (!ep || ep->ifindex != skb->ifindex || !mac_equal(ep->mac, pkt->smac) ||
		    !mac_equal(pkt->arp_sha, pkt->smac))
			return REASON_DROP_SPOOFED_SOURCE;
		return REASON_FORWARD_HOST;
	}
	}
	if (!ep || ep->ifindex != skb->ifindex || !mac_equal(ep->mac, pkt->smac))
		return REASON_DROP_SPOOFED_SOURCE;
	if (pkt->family == AF_INET6 && is_ndp_or_mld(pkt))
		return check_link(skb, pkt);
	*src = ep;
	return CONTINUE;
}

/* decrement_ttl lowers the TTL (fixing the IPv4 checksum) or hop limit by one. */
static __always_inline int decrement_ttl(struct __sk_buff *skb, struct packet *pkt)
{
	if (pkt->ttl <= 1)
		return REASON_DROP_TTL_EXCEEDED;
	if (pkt->family == AF_INET) {
		/* TTL shares a 16-bit checksum word with the protocol byte. */
		__be16 old = bpf_htons(pkt->ttl << 8 | pkt->l4_proto);
		__be16 new = bpf_htons((pkt->ttl - 1) << 8 | pkt->l4_proto);
		__u8 ttl = pkt->ttl - 1;

		if (bpf_l3_csum_replace(skb, pkt->l3_off + offsetof(struct iphdr, check), old, new,
					2))
			return REASON_DROP_MALFORMED;
		if (bpf_skb_store_bytes(skb, pkt->l3_off + offsetof(struct iphdr, ttl), &ttl, 1, 0))
			return REASON_DROP_MALFORMED;
	} else {
		__u8 hops = pkt->ttl - 1;

		if (bpf_skb_store_bytes(skb, pkt->l3_off + offsetof(struct ipv6hdr, hop_limit),
					&hops, 1, 0))
			return REASON_DROP_MALFORMED;
	}
	pkt->ttl--;
	return CONTINUE;
}

/* set_macs rewrites the Ethernet addresses of the frame. */
static __always_inline int set_macs(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	__u8 macs[2 * ETH_ALEN];

	__builtin_memcpy(macs, dst, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, src, ETH_ALEN);
	return bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0);
}

/* redirect_to_endpoint rewrites L2 for a local pod and hands the skb to its eth0 directly. */
static __always_inline int redirect_to_endpoint(struct __sk_buff *skb, struct endpoint_info *dst)
{
	if (set_macs(skb, dst->mac, dst->node_mac))
		return REASON_DROP_MALFORMED;
	if (bpf_redirect_peer(dst->ifindex, 0) != TC_ACT_REDIRECT)
		return REASON_DROP_REDIRECT_FAILED;
	return REASON_FORWARD_LOCAL;
}

/* send_to_endpoint hands a packet from the node's egress path to a local pod through its
 * host-side veth (bpf_redirect_peer works only from ingress). */
static __always_inline int send_to_endpoint(struct __sk_buff *skb, struct endpoint_info *dst)
{
	if (set_macs(skb, dst->mac, dst->node_mac))
		return REASON_DROP_MALFORMED;
	if (bpf_redirect(dst->ifindex, 0) != TC_ACT_REDIRECT)
		return REASON_DROP_REDIRECT_FAILED;
	return REASON_FORWARD_LOCAL;
}

static __always_inline struct node_config *node_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

/* addr6_equal compares two IPv6 addresses a word at a time. */
static __always_inline int addr6_equal(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return !((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]));
}

/* node_addr is this node's underlay address of the family, or NULL when it has none: a node
 * without an IPv6 address has node_ipv6 all zero, and then no IPv6 is the node's own. */
static __always_inline const union addr *node_addr(struct node_config *cfg, __u8 family)
{
	const __u32 *w;

	if (!cfg)
		return NULL;
	if (family == AF_INET)
		return (const union addr *)cfg->node_ip;
	w = (const __u32 *)cfg->node_ipv6;
	if (family != AF_INET6 || !(w[0] | w[1] | w[2] | w[3]))
		return NULL;
	return (const union addr *)cfg->node_ipv6;
}

/* is_node says whether a, of the family, is this node's underlay address. */
static __always_inline int is_node(struct node_config *cfg, __u8 family, const union addr *a)
{
	const union addr *node = node_addr(cfg, family);

	if (!node)
		return 0;
	return family == AF_INET ? a->v4 == node->v4 : addr6_equal(a->v6, node->v6);
}

/* emit_event sends a drop or a policy verdict to the monitor; when the ring buffer is full
 * the event is counted as lost and the packet goes on as decided. */
static __always_inline void emit_event(struct __sk_buff *skb, struct packet *pkt, int reason,
				       __u8 direction)
{
	struct lpm_key key = {};
	struct ipcache_info *info;
	struct event *ev;

	/* Written in place in the ring buffer: an event on the stack would not fit beside the
	 * NAT stage's. */
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count(REASON_EVENT_LOST, direction, 0);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts = bpf_ktime_get_ns();
	ev->ifindex = skb->ifindex;
	ev->len = skb->len;
	ev->reason = reason;
	ev->direction = direction;
	ev->src_identity = IDENTITY_WORLD;
	ev->dst_identity = IDENTITY_WORLD;
	if (pkt && (pkt->family == AF_INET || pkt->family == AF_INET6)) {
		ev->family = pkt->family;
		ev->protocol = pkt->l4_proto;
		ev->sport = pkt->sport;
		ev->dport = pkt->dport;
		addr_key(ev->saddr, pkt->family, &pkt->saddr);
		addr_key(ev->daddr, pkt->family, &pkt->daddr);
		key.family = pkt->family;
		key.prefixlen = LPM_PREFIX_BASE + (pkt->family == AF_INET ? 32 : 128);
		__builtin_memcpy(key.ip, ev->saddr, ADDR_LEN);
		info = bpf_map_lookup_elem(&ipcache, &key);
		if (info)
			ev->src_identity = info->identity;
		__builtin_memcpy(key.ip, ev->daddr, ADDR_LEN);
		info = bpf_map_lookup_elem(&ipcache, &key);
		if (info)
			ev->dst_identity = info->identity;
	}
	bpf_ringbuf_submit(ev, 0);
}

/* finish counts the verdict, reports drops, and turns the reason into a tc action. */
static __always_inline int finish(struct __sk_buff *skb, struct packet *pkt, int reason,
				  __u8 direction)
{
	count(reason, direction, skb->len);
	if (reason >= REASON_DROP_FIRST)
		emit_event(skb, pkt, reason, direction);
	if (reason >= REASON_DROP_FIRST)
		return TC_ACT_SHOT;
	if (reason == REASON_FORWARD_HOST || reason == REASON_DELIVER)
		return TC_ACT_OK;
	return TC_ACT_REDIRECT;
}
