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

/* check_source drops what a pod sends in someone else's name (IP, MAC or ARP sender) and
 * hands back the sending endpoint. */
static __always_inline int check_source(struct __sk_buff *skb, struct packet *pkt,
					struct endpoint_info **src)
{
	struct endpoint_info *ep;

	switch (pkt->family) {
	case AF_INET:
		ep = lookup_endpoint(AF_INET, &pkt->saddr);
		break;
	case AF_INET6:
		/* Link-local sources only do neighbour discovery with the node. */
		if (pkt->saddr.v6[0] == 0xfe && (pkt->saddr.v6[1] & 0xc0) == 0x80)
			return REASON_FORWARD_HOST;
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
