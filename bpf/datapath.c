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

/* from_pod: tc ingress of a pod's host-side veth; everything a pod sends starts here. */
SEC("tc")
int from_pod(struct __sk_buff *skb)
{
	struct endpoint_info *src = NULL, *dst;
	struct packet pkt = {};
	int reason;

	reason = parse_skb(skb, &pkt);
	if (reason == CONTINUE)
		reason = check_source(skb, &pkt, &src);
	if (reason != CONTINUE || !src)
		return finish(skb, &pkt, reason, DIR_FROM_POD);
	dst = lookup_endpoint(pkt.family, &pkt.daddr);
	reason = admit(skb, &pkt, src, dst, 0, DIR_FROM_POD);
	if (reason != CONTINUE)
		return finish(skb, &pkt, reason, DIR_FROM_POD);
	if (dst && (dst->flags & EP_F_LOCAL)) {
		reason = decrement_ttl(skb, &pkt);
		if (reason == CONTINUE)
			reason = redirect_to_endpoint(skb, dst);
	} else {
		reason = forward_remote(skb, &pkt, src);
	}
	return finish(skb, &pkt, reason, DIR_FROM_POD);
}

/* to_pod: tc egress of a pod's host-side veth; traffic that reached the pod through the stack. */
SEC("tc")
int to_pod(struct __sk_buff *skb)
{
	struct endpoint_info *dst;
	struct packet pkt = {};
	int reason;

	/* What the node's stack sends is not judged for form, only for policy. */
	if (parse_skb(skb, &pkt) != CONTINUE || !pkt.family)
		return finish(skb, &pkt, REASON_DELIVER, DIR_TO_POD);
	dst = lookup_endpoint(pkt.family, &pkt.daddr);
	if (!dst || !(dst->flags & EP_F_LOCAL))
		return finish(skb, &pkt, REASON_DELIVER, DIR_TO_POD);
	reason = admit(skb, &pkt, NULL, dst, 0, DIR_TO_POD);
	return finish(skb, &pkt, reason == CONTINUE ? REASON_DELIVER : reason, DIR_TO_POD);
}

/* tunnel_identity is the sender's identity, carried in the VNI. */
static __always_inline __u32 tunnel_identity(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0))
		return 0;
	return key.tunnel_id;
}

/* from_overlay: tc ingress of the VXLAN device; pod traffic from other nodes, decapsulated. */
SEC("tc")
int from_overlay(struct __sk_buff *skb)
{
	struct packet pkt = {};
	int reason;

	reason = parse_skb(skb, &pkt);
	if (reason == CONTINUE)
		reason = pkt.family
				 ? deliver_local(skb, &pkt, tunnel_identity(skb), DIR_FROM_OVERLAY)
				 : REASON_FORWARD_HOST;
	return finish(skb, &pkt, reason, DIR_FROM_OVERLAY);
}

/* from_underlay: tc ingress of the underlay device; native and IP-in-IP pod traffic. */
SEC("tc")
int from_underlay(struct __sk_buff *skb)
{
	struct packet pkt = {};
	int reason;

	reason = parse_skb(skb, &pkt);
	if (reason == CONTINUE)
		reason = receive_underlay(skb, &pkt);
	else
		reason = REASON_FORWARD_HOST; /* the node's own traffic is not ours to judge */
	return finish(skb, &pkt, reason, DIR_FROM_UNDERLAY);
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
const struct event *unused_event __attribute__((unused));

char __license[] SEC("license") = "GPL";
