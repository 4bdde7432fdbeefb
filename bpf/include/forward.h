/* forward.h: anti-spoofing and delivery of pod traffic, and the reason -> tc action mapping. */
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

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return *(__u32 *)a == *(__u32 *)b && *(__u16 *)(a + 4) == *(__u16 *)(b + 4);
}

static __always_inline struct endpoint_info *lookup_endpoint(__u8 family, const union addr *ip)
{
	struct endpoint_key key = {.family = family};

	if (family == AF_INET)
		__builtin_memcpy(key.ip, &ip->v4, 4);
	else
		__builtin_memcpy(key.ip, ip->v6, 16);
	return bpf_map_lookup_elem(&endpoints, &key);
}

/* owns reports whether the endpoint behind ip sits on this interface with this MAC. */
static __always_inline int owns(struct __sk_buff *skb, __u8 family, const union addr *ip,
				const __u8 *mac)
{
	struct endpoint_info *ep = lookup_endpoint(family, ip);

	return ep && ep->ifindex == skb->ifindex && mac_equal(ep->mac, mac);
}

/* check_source drops what a pod sends in someone else's name (IP, MAC or ARP sender). */
static __always_inline int check_source(struct __sk_buff *skb, struct packet *pkt)
{
	switch (pkt->family) {
	case AF_INET:
		break;
	case AF_INET6:
		/* Link-local sources only do neighbour discovery with the node. */
		if (pkt->saddr.v6[0] == 0xfe && (pkt->saddr.v6[1] & 0xc0) == 0x80)
			return REASON_FORWARD_HOST;
		break;
	default: {
		union addr sip = {.v4 = pkt->arp_sip};

		if (!mac_equal(pkt->arp_sha, pkt->smac) || !owns(skb, AF_INET, &sip, pkt->smac))
			return REASON_DROP_SPOOFED_SOURCE;
		return REASON_FORWARD_HOST;
	}
	}
	if (!owns(skb, pkt->family, &pkt->saddr, pkt->smac))
		return REASON_DROP_SPOOFED_SOURCE;
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
	return CONTINUE;
}

/* redirect_to_endpoint rewrites L2 for the destination pod and hands the skb to its peer. */
static __always_inline int redirect_to_endpoint(struct __sk_buff *skb, struct packet *pkt,
						struct endpoint_info *dst)
{
	struct ethhdr eth = {};
	int reason = decrement_ttl(skb, pkt);

	if (reason != CONTINUE)
		return reason;
	__builtin_memcpy(eth.h_dest, dst->mac, ETH_ALEN);
	__builtin_memcpy(eth.h_source, dst->node_mac, ETH_ALEN);
	eth.h_proto = bpf_htons(pkt->eth_proto);
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
		return REASON_DROP_MALFORMED;
	if (bpf_redirect_peer(dst->ifindex, 0) != TC_ACT_REDIRECT)
		return REASON_DROP_REDIRECT_FAILED;
	return REASON_FORWARD_LOCAL;
}

/* forward_from_pod delivers to a local pod in BPF, or leaves the packet to the node's stack. */
static __always_inline int forward_from_pod(struct __sk_buff *skb, struct packet *pkt)
{
	struct endpoint_info *dst = lookup_endpoint(pkt->family, &pkt->daddr);

	if (dst && (dst->flags & EP_F_LOCAL))
		return redirect_to_endpoint(skb, pkt, dst);
	return REASON_FORWARD_HOST;
}

/* finish counts the verdict and turns its reason into a tc action. */
static __always_inline int finish(struct __sk_buff *skb, int reason, __u8 direction)
{
	count(reason, direction, skb->len);
	if (reason >= REASON_DROP_FIRST)
		return TC_ACT_SHOT;
	if (reason == REASON_FORWARD_LOCAL)
		return TC_ACT_REDIRECT;
	return TC_ACT_OK;
}
