// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* policy.h: who a peer is (ipcache) and whether NetworkPolicy lets a new flow through. */
#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "ct.h"
#include "forward.h"
#include "maps.h"
#include "parse.h"

/* A peer as policy sees it: its label identity and the identity of its policy CIDR. */
struct peer {
	__u32 identity;
	__u32 cidr;
};

static __always_inline void resolve_peer(__u8 family, const union addr *ip, struct peer *p)
{
	struct lpm_key key = {.family = family};
	struct ipcache_info *info;

	key.prefixlen = LPM_PREFIX_BASE + (family == AF_INET ? 32 : 128);
	addr_key(key.ip, family, ip);
	info = bpf_map_lookup_elem(&ipcache, &key);
	p->identity = info ? info->identity : IDENTITY_WORLD;
	p->cidr = info ? info->cidr_identity : 0;
}

static __always_inline int policy_hit(__u32 endpoint, __u32 peer, __u8 direction,
				      struct packet *pkt)
{
	struct policy_key key = {
		.prefixlen = POLICY_PREFIX_PORT,
		.endpoint = endpoint,
		.peer = peer,
		.direction = direction,
		.protocol = pkt->l4_proto,
		.port = pkt->dport,
	};

	return bpf_map_lookup_elem(&policy, &key) != NULL;
}

/* policy_allows asks the endpoint's rules about peer: by its label identity, by its CIDR
 * identity, and the rules that allow any peer. Its own node is always allowed. */
static __always_inline int policy_allows(__u32 endpoint, __u8 direction, struct peer *peer,
					 struct packet *pkt)
{
	if (peer->identity == IDENTITY_HOST)
		return 1;
	if (policy_hit(endpoint, peer->identity, direction, pkt))
		return 1;
	if (peer->cidr && policy_hit(endpoint, peer->cidr, direction, pkt))
		return 1;
	return policy_hit(endpoint, IDENTITY_ANY, direction, pkt);
}

/* check_ingress lets a new flow into a local endpoint, or says why not. */
static __always_inline int check_ingress(struct endpoint_info *dst, struct peer *peer,
					 struct packet *pkt)
{
	if (!(dst->flags & EP_F_INGRESS_ENFORCED) ||
	    policy_allows(dst->id, POLICY_INGRESS, peer, pkt))
		return CONTINUE;
	return REASON_DROP_POLICY_INGRESS;
}

/* check_egress lets a new flow out of a local endpoint, or says why not. */
static __always_inline int check_egress(struct endpoint_info *src, struct packet *pkt)
{
	struct peer peer;

	if (!(src->flags & EP_F_EGRESS_ENFORCED))
		return CONTINUE;
	resolve_peer(pkt->family, &pkt->daddr, &peer);
	if (policy_allows(src->id, POLICY_EGRESS, &peer, pkt))
		return CONTINUE;
	return REASON_DROP_POLICY_EGRESS;
}

/* admit runs conntrack and, for a new flow, the policies it must pass: egress of src (when
 * it is a local pod) and ingress of dst (when it is one). Known flows pass untouched. The
 * sender's identity comes from its endpoint entry when local, else from the ipcache, else
 * from hint (the VNI a tunnelled packet carried). */
static __always_inline int admit(struct __sk_buff *skb, struct packet *pkt,
				 struct endpoint_info *src, struct endpoint_info *dst, __u32 hint,
				 __u8 direction)
{
	struct node_config *cfg;
	int judged = 0;
	struct peer peer;
	int reason;

	reason = ct_lookup(skb, pkt);
	if (reason != CT_NEW) {
		pkt->ct_reply = reason == CT_REPLY || reason == CT_RELATED;
		return CONTINUE;
	}
	if (src) {
		judged = src->flags & EP_F_EGRESS_ENFORCED;
		reason = check_egress(src, pkt);
		if (reason != CONTINUE)
			return reason;
	}
	if (dst && (dst->flags & EP_F_LOCAL) && (dst->flags & EP_F_INGRESS_ENFORCED)) {
		resolve_peer(pkt->family, &pkt->saddr, &peer);
		if (src && src->identity)
			peer.identity = src->identity;
		else if (hint && peer.identity == IDENTITY_WORLD)
			peer.identity = hint;
		reason = check_ingress(dst, &peer, pkt);
		if (reason != CONTINUE)
			return reason;
		judged = 1;
	}
	/* Allowed verdicts go to the monitor only while someone asks for them. */
	cfg = node_config();
	if (judged && cfg && cfg->monitor_verdicts)
		emit_event(skb, pkt, REASON_POLICY_ALLOWED, direction);
	ct_create(pkt);
	return CONTINUE;
}
