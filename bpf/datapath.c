// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* datapath.c: the tc and XDP entry points of ebpfnet; the work lives in include/. */

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "maps.h"
#include "metrics.h"
#include "parse.h"
#include "forward.h"
#include "crossnode.h"
#include "policy.h"
#include "prefilter.h"
#include "service.h"

/* admit_local_flow runs policy on what a packet has become after the NAT stage (the backend,
 * not the Service, is judged), then writes a new translation, or masquerades a pod's new
 * flow leaving the cluster. */
static __always_inline int admit_local_flow(struct __sk_buff *skb, struct packet *pkt,
					    struct endpoint_info *src, struct xlate *x,
					    __u8 direction)
{
	struct endpoint_info *dst = lookup_endpoint(pkt->family, &pkt->daddr);
	int reason;

	reason = admit(skb, pkt, src, dst, 0, direction);
	if (reason != CONTINUE) {
		nat_abort(pkt, x);
		return reason;
	}
	reason = nat_commit(pkt, x, skb);
	if (reason == CONTINUE && src)
		reason = nat_masquerade(skb, pkt, node_config(), x);
	return reason;
}

/* forward_from_pod sends a pod's (translated) packet on: into a local pod, to the node, or
 * to another node or outside. */
static __always_inline int forward_from_pod(struct __sk_buff *skb, struct packet *pkt,
					    struct endpoint_info *src, struct xlate *x)
{
	struct endpoint_info *dst = lookup_endpoint(pkt->family, &pkt->daddr);
	struct node_config *cfg = node_config();
	int reason;

	if (dst && (dst->flags & EP_F_LOCAL)) {
		reason = decrement_ttl(skb, pkt);
		return reason == CONTINUE ? redirect_to_endpoint(skb, dst) : reason;
	}
	if (is_node(cfg, pkt->family, &pkt->daddr))
		return x->state == XL_REPLY ? redirect_to_node(skb, cfg) : REASON_FORWARD_HOST;
	return forward_remote(skb, pkt, src->identity, x->state != XL_NONE);
}

/* from_pod: tc ingress of a pod's host-side veth; everything a pod sends starts here. */
SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	struct endpoint_info *src = NULL;
	struct packet pkt = {};
	struct xlate x = {};
	int reason;

	reason = parse_skb(skb, &pkt);
	if (reason == CONTINUE)
		reason = check_source(skb, &pkt, &src);
	if (reason != CONTINUE || !src)
		return finish(skb, &pkt, reason, DIR_FROM_POD);
	reason = nat_begin(skb, &pkt, node_config(), &x);
	if (reason == CONTINUE && x.state != XL_REPLY)
		reason = admit_local_flow(skb, &pkt, src, &x, DIR_FROM_POD);
	if (reason == CONTINUE)
		reason = forward_from_pod(skb, &pkt, src, &x);
	return finish(skb, &pkt, reason, DIR_FROM_POD);
}

/* to_pod: tc egress of a pod's host-side veth; traffic that reached the pod through the stack. */
SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	struct endpoint_info *dst;
	struct packet pkt = {};
	struct nat_entry *e;
	struct ct_key key;
	int reason;

	/* What the node's stack sends is not judged for form, only for policy; its neighbour
	 * discovery and MLD, like ARP, not even for that. */
	if (parse_skb(skb, &pkt) != CONTINUE || !pkt.family ||
	    (pkt.family == AF_INET6 && is_ndp_or_mld(&pkt)))
		return finish(skb, &pkt, REASON_DELIVER, DIR_TO_POD);
	dst = lookup_endpoint(pkt.family, &pkt.daddr);
	if (!dst || !(dst->flags & EP_F_LOCAL))
		return finish(skb, &pkt, REASON_DELIVER, DIR_TO_POD);
	/* A reply from a Service backend on the node's own network: back to the frontend. */
	e = nat_lookup(&pkt, &key);
	if (e && (e->flags & NAT_F_REPLY)) {
		nat_touch(e, &pkt);
		reason = nat_rewrite(skb, &pkt, e);
	} else {
		reason = admit(skb, &pkt, NULL, dst, 0, DIR_TO_POD);
	}
	return finish(skb, &pkt, reason == CONTINUE ? REASON_DELIVER : reason, DIR_TO_POD);
}

/* link_scope_dest says whether an IPv6 packet is for the link (link-local or multicast):
 * the host device's own neighbour discovery and MLD, nobody's pod traffic. */
static __always_inline int link_scope_dest(struct packet *pkt)
{
	return pkt->family == AF_INET6 &&
	       (pkt->daddr.v6[0] == 0xff ||
		(pkt->daddr.v6[0] == 0xfe && (pkt->daddr.v6[1] & 0xc0) == 0x80));
}

/* from_host: tc egress of the host device; the node's own traffic to Services and (VXLAN,
 * IP-in-IP) to pods on other nodes, which the node's routes send here. */
SEC("tc")
int from_host(struct __sk_buff *skb)
{
	struct endpoint_info *dst;
	struct packet pkt = {};
	struct xlate x = {};
	int reason;

	if (parse_skb(skb, &pkt) != CONTINUE || !pkt.family || link_scope_dest(&pkt))
		return finish(skb, &pkt, REASON_FORWARD_HOST, DIR_FROM_HOST);
	reason = nat_begin(skb, &pkt, node_config(), &x);
	if (reason == CONTINUE)
		reason = admit_local_flow(skb, &pkt, NULL, &x, DIR_FROM_HOST);
	if (reason != CONTINUE)
		return finish(skb, &pkt, reason, DIR_FROM_HOST);
	dst = lookup_endpoint(pkt.family, &pkt.daddr);
	if (dst && (dst->flags & EP_F_LOCAL))
		reason = send_to_endpoint(skb, dst);
	else
		reason = forward_remote(skb, &pkt, IDENTITY_REMOTE_NODE, 0);
	if (reason == REASON_FORWARD_HOST)
		reason = REASON_DROP_UNKNOWN_DEST; /* nothing else is routed to the host device */
	return finish(skb, &pkt, reason, DIR_FROM_HOST);
}

/* tunnel_identity is the sender's identity, carried in the VNI. */
static __always_inline __u32 tunnel_identity(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0))
		return 0;
	return key.tunnel_id;
}

/* from_overlay: tc ingress of the VXLAN device; pod traffic from other nodes that the kernel
 * decapsulated (a node config without a VXLAN port, reassembled fragments). */
SEC("tc")
int from_overlay(struct __sk_buff *skb)
{
	struct packet pkt = {};
	int reason;

	reason = parse_skb(skb, &pkt);
	if (reason == CONTINUE)
		reason = pkt.family ? receive_remote(skb, &pkt, tunnel_identity(skb),
						     DIR_FROM_OVERLAY, 1)
				    : REASON_FORWARD_HOST;
	return finish(skb, &pkt, reason, DIR_FROM_OVERLAY);
}

/* from_underlay: tc ingress of the underlay device; native, VXLAN and IP-in-IP pod traffic. */
SEC("tc")
int from_underlay(struct __sk_buff *skb)
{
	__u8 direction = DIR_FROM_UNDERLAY;
	struct packet pkt = {};
	int reason;

	reason = parse_skb(skb, &pkt);
	if (reason == CONTINUE)
		reason = receive_underlay(skb, &pkt, &direction);
	else
		reason = REASON_FORWARD_HOST; /* the node's own traffic is not ours to judge */
	return finish(skb, &pkt, reason, direction);
}

/* xdp_prefilter: XDP on the underlay device; drops denied sources before the stack. */
SEC("xdp")
int xdp_prefilter(struct xdp_md *ctx)
{
	return prefilter_verdict(ctx);
}

/* Unused pointers that put the enums into BTF, so bpf2go mirrors them in Go. */
const enum reason *unused_reason __attribute__((unused));
const enum direction *unused_direction __attribute__((unused));
const enum tunnel_mode *unused_tunnel_mode __attribute__((unused));
const enum route_flags *unused_route_flags __attribute__((unused));
const enum identity_reserved *unused_identity_reserved __attribute__((unused));
const enum policy_direction *unused_policy_direction __attribute__((unused));
const enum endpoint_flags *unused_endpoint_flags __attribute__((unused));
const enum ct_flags *unused_ct_flags __attribute__((unused));
const enum service_flags *unused_service_flags __attribute__((unused));
const enum backend_flags *unused_backend_flags __attribute__((unused));
const enum nat_flags *unused_nat_flags __attribute__((unused));
const struct event *unused_event __attribute__((unused));

/* Dual BSD/GPL: the SPDX line above, in the spelling the kernel takes as GPL-compatible. */
char __license[] SEC("license") = "Dual BSD/GPL";
