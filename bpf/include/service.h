// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* service.h: Service load balancing (frontend lookup, backend choice, ClientIP affinity) and
 * the NAT stage every hook runs before policy. */
#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "ct.h"
#include "maps.h"
#include "nat.h"
#include "parse.h"

static __always_inline struct service_value *service_lookup(struct packet *pkt,
							    struct service_key *key)
{
	if (pkt->l4_proto != IPPROTO_TCP && pkt->l4_proto != IPPROTO_UDP)
		return NULL;
	__builtin_memset(key, 0, sizeof(*key));
	addr_key(key->ip, pkt->family, &pkt->daddr);
	key->port = pkt->dport;
	key->protocol = pkt->l4_proto;
	key->family = pkt->family;
	return bpf_map_lookup_elem(&services, key);
}

/* affinity_backend is the backend a client keeps under ClientIP affinity, or 0. */
static __always_inline __u32 affinity_backend(struct service_value *svc, struct affinity_key *ak,
					      __u64 now)
{
	struct affinity_value *av = bpf_map_lookup_elem(&affinity, ak);
	struct backend_info *be;

	if (!av || now - av->last_used > (__u64)svc->affinity_timeout * NSEC)
		return 0;
	be = bpf_map_lookup_elem(&backends, &av->backend_id);
	if (!be || (be->flags & BACKEND_F_TERMINATING))
		return 0;
	return av->backend_id;
}

/* service_select chooses the backend of a new flow: the client's under affinity, else a
 * random slot. */
static __always_inline struct backend_info *
service_select(struct packet *pkt, struct service_key *key, struct service_value *svc, __u32 *id)
{
	struct affinity_key ak = {.family = pkt->family, .service_id = svc->service_id};
	struct affinity_value av = {};
	struct service_value *slot;
	__u64 now = bpf_ktime_get_ns();
	__u16 count = svc->count;

	if (!count)
		return NULL;
	addr_key(ak.client, pkt->family, &pkt->saddr);
	*id = 0;
	if (svc->flags & SVC_F_AFFINITY)
		*id = affinity_backend(svc, &ak, now);
	if (!*id) {
		key->slot = bpf_get_prandom_u32() % count + 1;
		slot = bpf_map_lookup_elem(&services, key);
		key->slot = 0;
		if (!slot)
			return NULL;
		*id = slot->backend_id;
	}
	if (svc->flags & SVC_F_AFFINITY) {
		av.last_used = now;
		av.backend_id = *id;
		bpf_map_update_elem(&affinity, &ak, &av, BPF_ANY);
	}
	return bpf_map_lookup_elem(&backends, id);
}

/* needs_source_nat says whether a Service flow now in pkt must take the node's address so its
 * replies come back here: a NodePort whose backend is elsewhere (externalTrafficPolicy
 * Cluster), or a backend outside the cluster under masquerading. Never when the node has no
 * address of the packet's family (IPv6: all zero), nor for the node's own traffic. */
static __always_inline int needs_source_nat(struct packet *pkt, struct node_config *cfg,
					    struct service_value *svc, struct backend_info *be)
{
	if (!node_addr(cfg, pkt->family) || is_node(cfg, pkt->family, &pkt->saddr))
		return 0;
	if ((svc->flags & SVC_F_NODEPORT) && !(svc->flags & SVC_F_EXTERNAL_LOCAL) &&
	    !(be->flags & BACKEND_F_LOCAL))
		return 1;
	return masquerades(pkt, cfg);
}

/* hairpin_source is the source a Service flow takes: the client's own, or the hairpin address
 * of its family when the client is the backend. */
static __always_inline void hairpin_source(struct packet *pkt, struct backend_info *be,
					   union addr *src)
{
	*src = pkt->saddr;
	if (pkt->family == AF_INET6) {
		if (!addr6_equal(be->ip, pkt->saddr.v6))
			return;
		__builtin_memset(src, 0, sizeof(*src));
		*(__be32 *)&src->v6[0] = HAIRPIN_ADDR6_HI;
		*(__be32 *)&src->v6[12] = HAIRPIN_ADDR6_LO;
	} else if (*(__be32 *)be->ip == pkt->saddr.v4) {
		src->v4 = HAIRPIN_ADDR;
	}
}

/* service_begin translates the first packet of a flow to a Service frontend: destination to
 * the chosen backend, source to the hairpin address when the client is the backend, or to
 * the node when the replies must come back through it. */
static __always_inline int service_begin(struct __sk_buff *skb, struct packet *pkt,
					 struct node_config *cfg, struct service_key *key,
					 struct service_value *svc, struct xlate *x)
{
	struct backend_info *be;
	union addr saddr;
	__u32 id = 0;
	int reason;

	if (!cfg)
		return REASON_DROP_NO_ROUTE;
	be = service_select(pkt, key, svc, &id);
	if (!be || be->family != pkt->family)
		return REASON_DROP_NO_BACKEND;
	x->state = XL_NEW;
	x->backend_id = id;
	x->flags = NAT_F_SERVICE;
	hairpin_source(pkt, be, &saddr);
	reason = rewrite_tuple(skb, pkt, &saddr, (const union addr *)be->ip,
			       tuple_ports(pkt->sport, be->port));
	if (reason != CONTINUE || !needs_source_nat(pkt, cfg, svc, be))
		return reason;
	x->reserved = 1;
	x->flags |= NAT_F_MASQUERADE;
	return nat_translate_source(skb, pkt, cfg, &x->orig, x->flags);
}

/* nat_begin is the NAT stage: a packet of a known translated flow is rewritten (a
 * masqueraded one only after policy), and the first packet to a Service frontend gets its
 * backend. Policy then judges what the packet has become. A connection opened on the tuple
 * of a closed one is new: it chooses its backend again. */
static __always_inline int nat_begin(struct __sk_buff *skb, struct packet *pkt,
				     struct node_config *cfg, struct xlate *x)
{
	struct service_value *svc;
	struct service_key key;
	struct nat_entry *e;

	e = nat_lookup(pkt, &x->orig);
	if (!nat_applies(pkt))
		return CONTINUE;
	if (e && !(e->flags & NAT_F_REPLY) &&
	    (((e->flags & NAT_F_CLOSING) && syn_only(pkt)) ||
	     ((e->flags & NAT_F_SERVICE) && !bpf_map_lookup_elem(&backends, &e->backend_id)))) {
		/* Its connection closed, or its backend is gone: the flow chooses again. */
		nat_delete_pair(&x->orig, e);
		e = NULL;
	}
	/* A later fragment follows its first's translation; it never chooses a backend. */
	if (!e && pkt->frag_l4)
		return CONTINUE;
	if (!e)
		nat_forget_closed_reply(pkt, &x->orig);
	if (e) {
		nat_touch(e, pkt);
		if (e->flags & NAT_F_REPLY) {
			x->state = XL_REPLY;
			return nat_rewrite(skb, pkt, e);
		}
		if ((e->flags & (NAT_F_MASQUERADE | NAT_F_SERVICE)) == NAT_F_MASQUERADE) {
			x->state = XL_MASQ;
			x->hit = e;
			return CONTINUE;
		}
		x->state = XL_HIT;
		return nat_rewrite(skb, pkt, e);
	}
	svc = service_lookup(pkt, &key);
	if (!svc)
		return CONTINUE;
	return service_begin(skb, pkt, cfg, &key, svc, x);
}
