// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* crossnode.h: sending pod traffic to other nodes (VXLAN, native, IP-in-IP) and receiving it. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "forward.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"
#include "service.h"

/* The installed UAPI header predates this flag (kernel 6.3); the running kernel knows it. */
#define ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define IP_DF 0x4000
#define IPIP_HLEN 20
#define TUNNEL_TTL 64

/* redirect_via_underlay routes an (outer) IPv4 packet out of the underlay with the kernel's
 * FIB and neighbour table, without the node's forwarding path. */
static __always_inline int redirect_via_underlay(struct __sk_buff *skb, struct node_config *cfg,
						 __be32 saddr, __be32 daddr)
{
	struct bpf_fib_lookup fib = {};
	long ret;

	fib.family = AF_INET;
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = cfg->underlay_ifindex;
	/* OUTPUT: look up as the node sending. The kernel still wants forwarding on in the
	 * underlay device, which the agent turns on. */
	ret = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (ret == BPF_FIB_LKUP_RET_SUCCESS) {
		if (set_macs(skb, fib.dmac, fib.smac))
			return REASON_DROP_MALFORMED;
		if (bpf_redirect(fib.ifindex, 0) != TC_ACT_REDIRECT)
			return REASON_DROP_REDIRECT_FAILED;
		return CONTINUE;
	}
	if (ret == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = fib.ipv4_dst};

		if (bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0) != TC_ACT_REDIRECT)
			return REASON_DROP_REDIRECT_FAILED;
		return CONTINUE;
	}
	return REASON_DROP_NO_ROUTE;
}

static __always_inline int send_vxlan(struct __sk_buff *skb, struct node_config *cfg,
				      struct route_info *rt, __u32 identity)
{
	struct bpf_tunnel_key key = {};

	/* The VNI carries the source identity (24 bits) to the receiving node. */
	key.tunnel_id = identity & 0xffffff;
	key.remote_ipv4 = bpf_ntohl(*(__be32 *)rt->node_ip);
	key.tunnel_ttl = TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX))
		return REASON_DROP_ENCAP_FAILED;
	if (bpf_redirect(cfg->tunnel_ifindex, 0) != TC_ACT_REDIRECT)
		return REASON_DROP_REDIRECT_FAILED;
	return REASON_FORWARD_TUNNEL;
}

static __always_inline int send_native(struct __sk_buff *skb, struct node_config *cfg,
				       struct packet *pkt)
{
	int reason = redirect_via_underlay(skb, cfg, pkt->saddr.v4, pkt->daddr.v4);

	return reason == CONTINUE ? REASON_FORWARD_UNDERLAY : reason;
}

static __always_inline int send_ipip(struct __sk_buff *skb, struct node_config *cfg,
				     struct route_info *rt, struct packet *pkt)
{
	struct iphdr outer = {};
	int reason;

	outer.version = 4;
	outer.ihl = 5;
	outer.tot_len = bpf_htons(pkt->len - ETH_HLEN + IPIP_HLEN);
	outer.frag_off = bpf_htons(IP_DF);
	outer.ttl = TUNNEL_TTL;
	outer.protocol = IPPROTO_IPIP;
	outer.saddr = *(__be32 *)cfg->node_ip;
	outer.daddr = *(__be32 *)rt->node_ip;
	outer.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&outer, sizeof(outer), 0));
	/* ENCAP_L3_IPV4 marks GSO packets as IP-in-IP so segmentation repeats the outer header. */
	if (bpf_skb_adjust_room(skb, IPIP_HLEN, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
		return REASON_DROP_ENCAP_FAILED;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0))
		return REASON_DROP_ENCAP_FAILED;
	reason = redirect_via_underlay(skb, cfg, outer.saddr, outer.daddr);
	return reason == CONTINUE ? REASON_FORWARD_TUNNEL : reason;
}

/* send_outside routes a translated packet leaving the cluster straight out of the underlay:
 * its source is now the node's (or a Service's), which the node's forwarding path would
 * refuse as a martian. */
static __always_inline int send_outside(struct __sk_buff *skb, struct packet *pkt,
					struct node_config *cfg)
{
	int reason = decrement_ttl(skb, pkt);

	if (reason != CONTINUE)
		return reason;
	return send_native(skb, cfg, pkt);
}

/* forward_remote sends a packet for a pod on another node the cluster's way; identity is the
 * sender's, for the VNI. A packet for outside the cluster goes to the node's stack, or, once
 * translated, straight out of the underlay. */
static __always_inline int forward_remote(struct __sk_buff *skb, struct packet *pkt, __u32 identity,
					  int translated)
{
	struct route_info *rt = lookup_route(pkt->family, &pkt->daddr);
	struct node_config *cfg = node_config();
	int reason;

	if (!rt) {
		if (translated && cfg && pkt->family == AF_INET)
			return send_outside(skb, pkt, cfg);
		return REASON_FORWARD_HOST; /* outside the cluster: the node's business */
	}
	if (rt->flags & (ROUTE_F_LOCAL | ROUTE_F_UNREACHABLE))
		return REASON_DROP_UNKNOWN_DEST;
	if (!cfg || pkt->family != AF_INET)
		return REASON_DROP_NO_ROUTE;
	reason = decrement_ttl(skb, pkt);
	if (reason != CONTINUE)
		return reason;
	switch (rt->mode) {
	case MODE_VXLAN:
		return send_vxlan(skb, cfg, rt, identity);
	case MODE_NATIVE:
		return send_native(skb, cfg, pkt);
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
 * flows, NodePort clients, pod traffic for local pods (after their ingress policy), and the
 * node's own traffic. tunneled says the packet came decapsulated from another node; hint is
 * the sender's identity if it carried one. */
static __always_inline int receive_remote(struct __sk_buff *skb, struct packet *pkt, __u32 hint,
					  __u8 direction, int tunneled)
{
	struct node_config *cfg = node_config();
	struct endpoint_info *dst;
	struct xlate x = {};
	int reason;

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
	if (cfg && pkt->family == AF_INET && pkt->daddr.v4 == *(__be32 *)cfg->node_ip)
		return tunneled || x.state == XL_REPLY ? redirect_to_node(skb, cfg)
						       : REASON_FORWARD_HOST;
	if (x.state == XL_NONE)
		return tunneled ? REASON_DROP_UNKNOWN_DEST : REASON_FORWARD_HOST;
	/* Translated towards elsewhere: a NodePort's backend on another node, or a reply
	 * leaving the cluster. */
	nat_commit(pkt, &x, skb);
	return forward_remote(skb, pkt, IDENTITY_REMOTE_NODE, 1);
}

/* receive_underlay handles what arrives on the underlay: IP-in-IP for this node is
 * decapsulated and handled as tunnelled; native pod traffic, NodePort clients and replies of
 * translated flows are handled by receive_remote. */
static __always_inline int receive_underlay(struct __sk_buff *skb, struct packet *pkt)
{
	struct node_config *cfg;

	if (pkt->family != AF_INET)
		return REASON_FORWARD_HOST;
	if (pkt->l4_proto == IPPROTO_IPIP) {
		cfg = node_config();
		/* A fragment cannot be decapsulated on its own: the node's stack reassembles it. */
		if (!cfg || pkt->daddr.v4 != *(__be32 *)cfg->node_ip || pkt->fragment)
			return REASON_FORWARD_HOST;
		/* The whole outer header goes, options too. */
		if (bpf_skb_adjust_room(skb, -(__s32)(pkt->l4_off - pkt->l3_off), BPF_ADJ_ROOM_MAC,
					ADJ_ROOM_DECAP_L3_IPV4))
			return REASON_DROP_ENCAP_FAILED;
		__builtin_memset(pkt, 0, sizeof(*pkt));
		if (parse_skb(skb, pkt) != CONTINUE || pkt->family != AF_INET)
			return REASON_DROP_MALFORMED;
		return receive_remote(skb, pkt, 0, DIR_FROM_UNDERLAY, 1);
	}
	return receive_remote(skb, pkt, 0, DIR_FROM_UNDERLAY, 0);
}
