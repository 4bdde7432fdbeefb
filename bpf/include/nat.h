// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* nat.h: translated flows: a Service frontend becomes a backend, a pod's source becomes the
 * node's (masquerading), and replies are translated back. One nat entry per direction. */
#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "ct.h"
#include "forward.h"
#include "maps.h"
#include "parse.h"

/* How many ports a source translation tries before it gives up. */
#define NAT_TRIES 32
/* The source a pod sees when it reaches itself through a Service (hairpin): 169.254.7.7. */
#define HAIRPIN_ADDR bpf_htonl(0xa9fe0707)
/* Its IPv6 counterpart, 100::7:7: in the discard-only prefix 100::/64 (RFC 6666), which no pod
 * or node is given, and not link-scoped, so the pod sends its replies via its default route. */
#define HAIRPIN_ADDR6_HI bpf_htonl(0x01000000)
#define HAIRPIN_ADDR6_LO bpf_htonl(0x00070007)

/* What the NAT stage did to a packet. */
enum xlate_state {
	XL_NONE = 0, /* not translated */
	XL_HIT = 1, /* rewritten by the entry of a known flow */
	XL_REPLY = 2, /* a reply of a translated flow, rewritten: admitted when the flow began */
	XL_MASQ = 3, /* a known masqueraded flow: its source is rewritten after admission */
	XL_NEW = 4, /* a new Service flow, rewritten; its entries are written once admitted */
};

/* A packet's way through the NAT stage. */
struct xlate {
	struct ct_key orig; /* the tuple as the packet arrived */
	struct nat_entry *hit; /* XL_MASQ: the flow's entry */
	__u32 backend_id; /* XL_NEW: the backend chosen */
	__u8 state; /* enum xlate_state */
	__u8 reserved; /* XL_NEW: the reply entry is written already (a source port was taken) */
	__u8 flags; /* XL_NEW: enum nat_flags of the new entries */
	__u8 pad;
};

static __always_inline struct nat_scratch *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&nat_scratch, &zero);
}

/* is_echo says whether pkt is an ICMP echo of its own family (ICMP in IPv4, ICMPv6 in IPv6),
 * whose identifier the NAT stage translates as both its ports. */
static __always_inline int is_echo(struct packet *pkt)
{
	return pkt->l4_proto == (pkt->family == AF_INET6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP) &&
	       is_icmp_echo(pkt);
}

/* nat_applies: TCP, UDP and ICMP echo (of IPv4 and IPv6) with their L4 header, or later
 * fragments that know their first's, are translated; the rest passes as it is. */
static __always_inline int nat_applies(struct packet *pkt)
{
	if ((pkt->family != AF_INET && pkt->family != AF_INET6) || (!pkt->l4_off && !pkt->frag_l4))
		return 0;
	return pkt->l4_proto == IPPROTO_TCP || pkt->l4_proto == IPPROTO_UDP || is_echo(pkt);
}

/* tuple_of is the flow key of the packet as it is now. */
static __always_inline void tuple_of(struct packet *pkt, struct ct_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	ct_key_of(pkt, k, 0);
}

/* reversed fills r with the key of the other direction of saddr:sport -> daddr:dport. */
static __always_inline void reversed(struct ct_key *r, const __u8 *saddr, const __u8 *daddr,
				     __be16 sport, __be16 dport, __u8 protocol, __u8 family)
{
	__builtin_memset(r, 0, sizeof(*r));
	__builtin_memcpy(r->saddr, daddr, ADDR_LEN);
	__builtin_memcpy(r->daddr, saddr, ADDR_LEN);
	r->sport = dport;
	r->dport = sport;
	r->protocol = protocol;
	r->family = family;
}

/* reverse_of is the key a reply of tuple t carries. */
static __always_inline void reverse_of(const struct ct_key *t, struct ct_key *r)
{
	reversed(r, t->saddr, t->daddr, t->sport, t->dport, t->protocol, t->family);
}

/* entry_of fills the translation part of a nat entry with tuple t. */
static __always_inline void entry_of(const struct ct_key *t, struct nat_entry *e)
{
	__builtin_memcpy(e->saddr, t->saddr, ADDR_LEN);
	__builtin_memcpy(e->daddr, t->daddr, ADDR_LEN);
	e->sport = t->sport;
	e->dport = t->dport;
}

static __always_inline __u64 nat_timeout(struct packet *pkt, __u32 flags)
{
	__u32 ct = 0;

	if (flags & NAT_F_REPLY_SEEN)
		ct |= CT_F_REPLY_SEEN;
	if (flags & NAT_F_CLOSING)
		ct |= CT_F_CLOSING;
	return ct_timeout(pkt, ct);
}

/* nat_touch counts a packet on its entry and pushes the entry's expiry out. */
static __always_inline void nat_touch(struct nat_entry *e, struct packet *pkt)
{
	__u32 flags = e->flags;

	if (flags & NAT_F_REPLY)
		flags |= NAT_F_REPLY_SEEN;
	if (pkt->l4_proto == IPPROTO_TCP && (pkt->tcp_flags & (TCP_FIN | TCP_RST)))
		flags |= NAT_F_CLOSING;
	if (flags != e->flags)
		e->flags = flags;
	e->expires = bpf_ktime_get_ns() + nat_timeout(pkt, flags);
	__sync_fetch_and_add(&e->packets, 1);
}

/* rewrite_ip_addr replaces one IPv4 address in the IP header and fixes the header's checksum. */
static __always_inline int rewrite_ip_addr(struct __sk_buff *skb, struct packet *pkt, __u32 off,
					   __be32 from, __be32 to)
{
	if (bpf_l3_csum_replace(skb, pkt->l3_off + offsetof(struct iphdr, check), from, to, 4))
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, 4, 0);
}

/* rewrite_addr replaces one IPv4 address of the packet, fixing the IP and (for TCP and UDP,
 * whose checksum covers the addresses) the L4 checksum, which a later fragment has not: it
 * is in the first. */
static __always_inline int rewrite_addr(struct __sk_buff *skb, struct packet *pkt, __u32 off,
					__be32 from, __be32 to)
{
	if (from == to)
		return 0;
	if (pkt->frag_l4)
		return rewrite_ip_addr(skb, pkt, off, from, to);
	if (pkt->l4_proto == IPPROTO_TCP &&
	    bpf_l4_csum_replace(skb, pkt->l4_off + offsetof(struct tcphdr, check), from, to,
				BPF_F_PSEUDO_HDR | 4))
		return -1;
	if (pkt->l4_proto == IPPROTO_UDP &&
	    bpf_l4_csum_replace(skb, pkt->l4_off + offsetof(struct udphdr, check), from, to,
				BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4))
		return -1;
	return rewrite_ip_addr(skb, pkt, off, from, to);
}

/* rewrite_addr6 replaces one IPv6 address of the packet. IPv6 has no header checksum; TCP's,
 * UDP's and ICMPv6's cover the address in the pseudo-header (a UDP checksum that comes out 0 is
 * sent as 0xffff: 0 is illegal over IPv6). A later fragment's L4 checksum is in its first. */
static __always_inline int rewrite_addr6(struct __sk_buff *skb, struct packet *pkt, __u32 off,
					 const __u8 *from, const __u8 *to)
{
	__u32 csum_off = pkt->l4_off + offsetof(struct tcphdr, check);
	__u64 flags = BPF_F_PSEUDO_HDR;
	__s64 diff;

	if (addr6_equal(from, to))
		return 0;
	if (pkt->l4_proto == IPPROTO_UDP) {
		csum_off = pkt->l4_off + offsetof(struct udphdr, check);
		flags |= BPF_F_MARK_MANGLED_0;
	} else if (pkt->l4_proto == IPPROTO_ICMPV6) {
		csum_off = pkt->l4_off + 2; /* type, code, checksum */
	}
	if (!pkt->frag_l4) {
		diff = bpf_csum_diff((__be32 *)from, 16, (__be32 *)to, 16, 0);
		if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, flags))
			return -1;
	}
	/* RECOMPUTE_CSUM adds the address change to a CHECKSUM_COMPLETE skb's sum, which the
	 * pseudo-header fix above takes back out (the kernel's BPF_F_IPV6 would need 6.16). */
	return bpf_skb_store_bytes(skb, off, to, 16, BPF_F_RECOMPUTE_CSUM);
}

/* rewrite_addrs6 gives an IPv6 packet these addresses (16 bytes each) and keeps pkt in step. */
static __always_inline int rewrite_addrs6(struct __sk_buff *skb, struct packet *pkt,
					  const __u8 *saddr, const __u8 *daddr)
{
	if (rewrite_addr6(skb, pkt, pkt->l3_off + offsetof(struct ipv6hdr, saddr), pkt->saddr.v6,
			  saddr) ||
	    rewrite_addr6(skb, pkt, pkt->l3_off + offsetof(struct ipv6hdr, daddr), pkt->daddr.v6,
			  daddr))
		return -1;
	__builtin_memcpy(pkt->saddr.v6, saddr, 16);
	__builtin_memcpy(pkt->daddr.v6, daddr, 16);
	return 0;
}

/* rewrite_port replaces a TCP or UDP port, or the ICMP echo identifier, at off. */
static __always_inline int rewrite_port(struct __sk_buff *skb, struct packet *pkt, __u32 off,
					__be16 from, __be16 to)
{
	__u32 csum_off = pkt->l4_off + offsetof(struct tcphdr, check);
	__u64 flags = 2;

	if (from == to)
		return 0;
	if (pkt->l4_proto == IPPROTO_UDP) {
		csum_off = pkt->l4_off + offsetof(struct udphdr, check);
		flags |= BPF_F_MARK_MANGLED_0;
	} else if (pkt->l4_proto != IPPROTO_TCP) {
		csum_off = pkt->l4_off + 2; /* ICMP: type, code, checksum */
	}
	if (bpf_l4_csum_replace(skb, csum_off, from, to, flags))
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, 2, 0);
}

/* rewrite_tuple makes the packet's addresses and ports (the echo identifier for ICMP, given
 * as sport) these, and keeps pkt in step; ports holds sport in its low half, dport in its
 * high. A later fragment gets the addresses only: its ports, and the L4 checksum over them,
 * are in the first fragment, rewritten there. A global function, verified once for both
 * families: inlined in every path that translates, IPv6 beside IPv4 took from_pod past the
 * verifier's limit. Its pointers are never NULL; the check is the verifier's. */
__attribute__((noinline)) int rewrite_tuple(struct __sk_buff *skb, struct packet *pkt,
					    const union addr *saddr, const union addr *daddr,
					    __u32 ports)
{
	__be16 sport = ports & 0xffff, dport = ports >> 16;

	if (!skb || !pkt || !saddr || !daddr)
		return REASON_DROP_MALFORMED;
	if (pkt->family == AF_INET6) {
		if (rewrite_addrs6(skb, pkt, saddr->v6, daddr->v6))
			return REASON_DROP_MALFORMED;
	} else {
		if (rewrite_addr(skb, pkt, pkt->l3_off + offsetof(struct iphdr, saddr),
				 pkt->saddr.v4, saddr->v4) ||
		    rewrite_addr(skb, pkt, pkt->l3_off + offsetof(struct iphdr, daddr),
				 pkt->daddr.v4, daddr->v4))
			return REASON_DROP_MALFORMED;
		pkt->saddr.v4 = saddr->v4;
		pkt->daddr.v4 = daddr->v4;
	}
	if (pkt->frag_l4) {
		pkt->sport = sport;
		pkt->dport = dport;
		if (pkt->l4_proto == IPPROTO_ICMP || pkt->l4_proto == IPPROTO_ICMPV6)
			pkt->icmp_id = sport;
		return CONTINUE;
	}
	if (pkt->l4_proto == IPPROTO_ICMP || pkt->l4_proto == IPPROTO_ICMPV6) {
		if (rewrite_port(skb, pkt, pkt->l4_off + 4, pkt->icmp_id, sport))
			return REASON_DROP_MALFORMED;
		pkt->icmp_id = sport;
		return CONTINUE;
	}
	if (rewrite_port(skb, pkt, pkt->l4_off, pkt->sport, sport) ||
	    rewrite_port(skb, pkt, pkt->l4_off + 2, pkt->dport, dport))
		return REASON_DROP_MALFORMED;
	pkt->sport = sport;
	pkt->dport = dport;
	return CONTINUE;
}

/* tuple_ports packs a source and destination port as rewrite_tuple takes them. */
static __always_inline __u32 tuple_ports(__be16 sport, __be16 dport)
{
	return (__u32)sport | (__u32)dport << 16;
}

/* nat_rewrite makes the packet's tuple the entry's. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, struct packet *pkt,
				       const struct nat_entry *e)
{
	return rewrite_tuple(skb, pkt, (const union addr *)e->saddr, (const union addr *)e->daddr,
			     tuple_ports(e->sport, e->dport));
}

/* nat_partner is the key of the other direction's entry of the flow whose entry at key is e:
 * the reverse of e's translation. */
static __always_inline void nat_partner(const struct ct_key *key, const struct nat_entry *e,
					struct ct_key *p)
{
	reversed(p, e->saddr, e->daddr, e->sport, e->dport, key->protocol, key->family);
}

/* nat_delete_pair forgets a flow's two entries: the one at key and its partner's. */
static __always_inline void nat_delete_pair(const struct ct_key *key, const struct nat_entry *e)
{
	struct ct_key partner;

	nat_partner(key, e, &partner);
	bpf_map_delete_elem(&nat, &partner);
	bpf_map_delete_elem(&nat, key);
}

/* nat_forget_closed_reply: a new connection whose replies would meet the reply entry of an
 * earlier translated flow (a client reaching a backend directly from the port it reached it
 * through a Service before) takes that tuple when the earlier flow is closed or expired: its
 * two entries go, or the new flow's replies would come back from the Service's address.
 * While the earlier flow is open (a port in use twice), it keeps its replies. */
static __always_inline void nat_forget_closed_reply(struct packet *pkt, const struct ct_key *orig)
{
	struct nat_scratch *sc;
	struct nat_entry *r, *f;

	if (!syn_only(pkt) || !(sc = scratch()))
		return;
	reverse_of(orig, &sc->reply);
	r = bpf_map_lookup_elem(&nat, &sc->reply);
	if (!r || !(r->flags & NAT_F_REPLY))
		return;
	nat_partner(&sc->reply, r, &sc->tuple);
	f = bpf_map_lookup_elem(&nat, &sc->tuple);
	if (f && !(f->flags & NAT_F_CLOSING) && f->expires > bpf_ktime_get_ns())
		return;
	bpf_map_delete_elem(&nat, &sc->tuple);
	bpf_map_delete_elem(&nat, &sc->reply);
}

/* The IPv4 part of struct bpf_sock_tuple, all an IPv4 lookup reads. */
struct sock_tuple4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

/* node_port_in_use says whether the node's own stack has a socket that a packet from the
 * peer of t to port of the node would reach, so translations never take its ports. The tuple
 * is built in the nat scratch: an IPv6 one would not fit the stack of the port search's
 * callback beside from_pod's. */
static __always_inline int node_port_in_use(struct __sk_buff *skb, struct nat_scratch *sc,
					    const struct ct_key *t, __be16 port)
{
	struct sock_tuple *st = &sc->sock;
	struct sock_tuple4 *st4 = (struct sock_tuple4 *)st;
	__u32 size = sizeof(*st);
	struct bpf_sock *sk;

	if (t->protocol != IPPROTO_TCP && t->protocol != IPPROTO_UDP)
		return 0;
	if (t->family == AF_INET6) {
		__builtin_memcpy(st->saddr, t->daddr, 16);
		__builtin_memcpy(st->daddr, t->saddr, 16);
		st->sport = t->dport;
		st->dport = port;
	} else {
		st4->saddr = *(__be32 *)t->daddr;
		st4->daddr = *(__be32 *)t->saddr;
		st4->sport = t->dport;
		st4->dport = port;
		size = sizeof(*st4);
	}
	if (t->protocol == IPPROTO_TCP)
		sk = bpf_skc_lookup_tcp(skb, (struct bpf_sock_tuple *)st, size, BPF_F_CURRENT_NETNS,
					0);
	else
		sk = bpf_sk_lookup_udp(skb, (struct bpf_sock_tuple *)st, size, BPF_F_CURRENT_NETNS,
				       0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* A source port search: what nat_try_port needs besides the nat scratch, whose tuple and
 * entry it works on. */
struct port_search {
	struct __sk_buff *skb;
	__u32 base; /* where the search starts in the range */
	__u16 min; /* the range: min, and span ports from it */
	__u32 span;
	int found;
};

/* nat_try_port is one try of the search, a bpf_loop callback: the verifier checks its body
 * until its state converges, not once per try as an unrolled loop (32 tries of map writes and
 * socket lookups in every path was most of from_pod's verification). */
static long nat_try_port(__u64 i, void *ctx)
{
	struct port_search *s = ctx;
	struct nat_scratch *sc = scratch();
	struct ct_key *t;
	__be16 port;

	if (!sc)
		return 1;
	t = &sc->tuple;
	port = bpf_htons(s->min + (s->base + (__u32)i) % s->span);
	t->sport = port;
	if (t->protocol == IPPROTO_ICMP || t->protocol == IPPROTO_ICMPV6)
		t->dport = port; /* echo: the identifier is both "ports" */
	else if (node_port_in_use(s->skb, sc, t, port))
		return 0;
	reverse_of(t, &sc->reply);
	if (bpf_map_update_elem(&nat, &sc->reply, &sc->entry, BPF_NOEXIST))
		return 0;
	s->found = 1;
	return 1;
}

/* nat_take_port picks a free source port for the nat scratch's tuple (whose source is the
 * node's address): it writes the scratch's entry, the reply entry, under the reply key of the
 * tuple with that port, which is what makes the port taken, and leaves the port in the tuple. */
static __always_inline int nat_take_port(struct __sk_buff *skb, struct node_config *cfg)
{
	struct port_search s = {.skb = skb, .min = cfg->nat_port_min};

	if (cfg->nat_port_max < cfg->nat_port_min)
		return REASON_DROP_NAT_NO_PORT;
	s.base = bpf_get_prandom_u32();
	s.span = (__u32)cfg->nat_port_max - cfg->nat_port_min + 1;
	bpf_loop(NAT_TRIES, nat_try_port, &s, 0);
	return s.found ? CONTINUE : REASON_DROP_NAT_NO_PORT;
}

/* nat_translate_source takes a port of the node's address of the packet's family for the
 * flow now in pkt (orig is how it arrived): writes its reply entry, rewrites the packet's
 * source. */
static __always_inline int nat_translate_source(struct __sk_buff *skb, struct packet *pkt,
						struct node_config *cfg, const struct ct_key *orig,
						__u32 flags)
{
	const union addr *node = node_addr(cfg, pkt->family);
	struct nat_scratch *sc = scratch();
	struct nat_entry *back;
	struct ct_key *t;
	int reason;

	if (!sc || !node)
		return REASON_DROP_NAT_NO_PORT;
	back = &sc->entry;
	t = &sc->tuple;
	/* The reply becomes the reverse of what arrived. */
	__builtin_memset(back, 0, sizeof(*back));
	__builtin_memcpy(back->saddr, orig->daddr, ADDR_LEN);
	__builtin_memcpy(back->daddr, orig->saddr, ADDR_LEN);
	back->sport = orig->dport;
	back->dport = orig->sport;
	back->flags = flags | NAT_F_REPLY;
	back->expires = bpf_ktime_get_ns() + nat_timeout(pkt, 0);
	tuple_of(pkt, t);
	addr_key(t->saddr, pkt->family, node);
	reason = nat_take_port(skb, cfg);
	if (reason != CONTINUE)
		return reason;
	return rewrite_tuple(skb, pkt, node, &pkt->daddr,
			     tuple_ports(t->sport, is_echo(pkt) ? t->sport : pkt->dport));
}

/* nat_lookup finds the entry of a known translated flow, or NULL. */
static __always_inline struct nat_entry *nat_lookup(struct packet *pkt, struct ct_key *key)
{
	if (!nat_applies(pkt))
		return NULL;
	tuple_of(pkt, key);
	return bpf_map_lookup_elem(&nat, key);
}

/* nat_commit writes a new flow's entries once policy has admitted it; a known masqueraded
 * flow gets its source rewritten now. */
static __always_inline int nat_commit(struct packet *pkt, struct xlate *x, struct __sk_buff *skb)
{
	struct nat_scratch *sc;
	struct nat_entry *e;

	/* The verifier does not tie hit to state: check it again. */
	if (x->state == XL_MASQ)
		return x->hit ? nat_rewrite(skb, pkt, x->hit) : CONTINUE;
	if (x->state != XL_NEW)
		return CONTINUE;
	sc = scratch();
	if (!sc)
		return CONTINUE;
	e = &sc->entry;
	__builtin_memset(e, 0, sizeof(*e));
	tuple_of(pkt, &sc->tuple);
	e->expires = bpf_ktime_get_ns() + nat_timeout(pkt, 0);
	if (!x->reserved) {
		reverse_of(&x->orig, &sc->reply);
		entry_of(&sc->reply, e);
		e->flags = x->flags | NAT_F_REPLY;
		reverse_of(&sc->tuple, &sc->reply);
		bpf_map_update_elem(&nat, &sc->reply, e, BPF_ANY);
	}
	entry_of(&sc->tuple, e);
	e->flags = x->flags;
	e->backend_id = x->backend_id;
	bpf_map_update_elem(&nat, &x->orig, e, BPF_ANY);
	return CONTINUE;
}

/* nat_abort undoes what a new flow that policy refused had taken. */
static __always_inline void nat_abort(struct packet *pkt, struct xlate *x)
{
	struct nat_scratch *sc;

	if (x->state != XL_NEW || !x->reserved)
		return;
	sc = scratch();
	if (!sc)
		return;
	tuple_of(pkt, &sc->tuple);
	reverse_of(&sc->tuple, &sc->reply);
	bpf_map_delete_elem(&nat, &sc->reply);
}

/* masquerades says whether a pod's new flow to pkt's destination takes the node's address:
 * masquerading is on, the node has an address of the packet's family (IPv6: when it has
 * one), the destination is outside the cluster, not this node, and not in the no_masquerade
 * list. */
static __always_inline int masquerades(struct packet *pkt, struct node_config *cfg)
{
	struct lpm_key key = {.family = pkt->family};

	if (!cfg || !cfg->masquerade || !nat_applies(pkt) || !node_addr(cfg, pkt->family))
		return 0;
	if (is_node(cfg, pkt->family, &pkt->daddr) || is_node(cfg, pkt->family, &pkt->saddr) ||
	    lookup_route(pkt->family, &pkt->daddr))
		return 0;
	key.prefixlen = LPM_PREFIX_BASE + (pkt->family == AF_INET ? 32 : 128);
	addr_key(key.ip, pkt->family, &pkt->daddr);
	return !bpf_map_lookup_elem(&no_masquerade, &key);
}

/* nat_masquerade gives a pod's flow leaving the cluster the node's address: a new flow, or
 * one whose translation is gone (a port was not free before, or the entry was evicted); a
 * reply to a flow someone else began keeps its source. */
static __always_inline int nat_masquerade(struct __sk_buff *skb, struct packet *pkt,
					  struct node_config *cfg, struct xlate *x)
{
	struct nat_scratch *sc;
	int reason;

	/* A later fragment follows its first's translation; it never starts one. */
	if (x->state != XL_NONE || pkt->ct_reply || pkt->frag_l4 || !masquerades(pkt, cfg))
		return CONTINUE;
	tuple_of(pkt, &x->orig);
	reason = nat_translate_source(skb, pkt, cfg, &x->orig, NAT_F_MASQUERADE);
	sc = scratch();
	if (reason != CONTINUE || !sc)
		return reason;
	__builtin_memset(&sc->entry, 0, sizeof(sc->entry));
	tuple_of(pkt, &sc->tuple);
	entry_of(&sc->tuple, &sc->entry);
	sc->entry.flags = NAT_F_MASQUERADE;
	sc->entry.expires = bpf_ktime_get_ns() + nat_timeout(pkt, 0);
	bpf_map_update_elem(&nat, &x->orig, &sc->entry, BPF_ANY);
	x->state = XL_HIT;
	return CONTINUE;
}

/* An ICMPv6 error quotes the packet it is about behind its own 8-byte header. */
#define ICMP6_QUOTE_OFF 8

/* quoted_tuple6 reads the flow an ICMPv6 error for this node quotes, as the reply key of what
 * the node sent (a masqueraded packet, its source the node's address): its TCP or UDP ports, or
 * an echo request's identifier. It answers whether there was one to read. */
static __always_inline int quoted_tuple6(struct __sk_buff *skb, struct packet *pkt,
					 const union addr *node, struct ct_key *k)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 l4 = pkt->l4_off;
	struct ipv6hdr *inner;
	__be16 *ports;

	/* Bound the offset so the verifier can follow it, as ct_related6 does. */
	if (l4 > 120)
		return 0;
	inner = data + l4 + ICMP6_QUOTE_OFF;
	ports = (void *)(inner + 1);
	if ((void *)(ports + 3) > data_end || !addr6_equal((__u8 *)&inner->saddr, node->v6))
		return 0;
	__builtin_memset(k, 0, sizeof(*k));
	k->family = AF_INET6;
	k->protocol = inner->nexthdr;
	__builtin_memcpy(k->saddr, &inner->daddr, 16);
	__builtin_memcpy(k->daddr, &inner->saddr, 16);
	if (k->protocol == IPPROTO_TCP || k->protocol == IPPROTO_UDP) {
		k->sport = ports[1];
		k->dport = ports[0];
		return 1;
	}
	/* An echo request: type 128, then code and checksum; the identifier is both ports. */
	if (k->protocol != IPPROTO_ICMPV6 || *(__u8 *)ports != 128)
		return 0;
	k->sport = k->dport = ports[2];
	return 1;
}

/* nat_icmp6_error hands an ICMPv6 error (unreachable, packet too big, time exceeded, parameter
 * problem) for the node's IPv6 address about a masqueraded flow to the pod the flow is: the
 * destination, the quoted source and its port (the echo identifier) become the pod's, and
 * conntrack then finds the error related to the pod's flow. The quoted TCP or UDP checksum is
 * left as it is (the quote may be cut short; the receiver does not check it), and ICMPv6's own
 * takes the three changes. Not the NAT stage's rewrite_tuple: the quoted addresses are not the
 * packet's. A global function, verified once: inlined in receive_remote, it took
 * from_underlay's verification from 423k to 656k instructions. Its pointers are never NULL;
 * the check is the verifier's. */
__attribute__((noinline)) int nat_icmp6_error(struct __sk_buff *skb, struct packet *pkt)
{
	struct node_config *cfg = node_config();
	__u32 quote, csum, port;
	struct nat_scratch *sc;
	const union addr *node;
	struct nat_entry *e;
	__s64 diff;

	if (!skb || !pkt)
		return REASON_DROP_MALFORMED;
	if (pkt->family != AF_INET6 || pkt->l4_proto != IPPROTO_ICMPV6 || !pkt->l4_off ||
	    pkt->fragment || pkt->icmp_type < ICMP6_DEST_UNREACH ||
	    pkt->icmp_type > ICMP6_PARAM_PROB || !is_node(cfg, AF_INET6, &pkt->daddr))
		return CONTINUE;
	node = node_addr(cfg, AF_INET6);
	sc = scratch();
	if (!node || !sc || !quoted_tuple6(skb, pkt, node, &sc->tuple))
		return CONTINUE;
	e = bpf_map_lookup_elem(&nat, &sc->tuple);
	if (!e || (e->flags & (NAT_F_REPLY | NAT_F_MASQUERADE | NAT_F_SERVICE)) !=
			  (NAT_F_REPLY | NAT_F_MASQUERADE))
		return CONTINUE;
	quote = pkt->l4_off + ICMP6_QUOTE_OFF;
	csum = pkt->l4_off + 2;
	/* The quoted source port; an echo's identifier sits 4 bytes into its header. */
	port = quote + sizeof(struct ipv6hdr);
	if (sc->tuple.protocol == IPPROTO_ICMPV6)
		port += 4;
	if (rewrite_port(skb, pkt, port, sc->tuple.dport, e->dport))
		return REASON_DROP_MALFORMED;
	/* The quoted source address: ICMPv6's checksum covers it as data, not pseudo-header. */
	diff = bpf_csum_diff((__be32 *)node->v6, 16, (__be32 *)e->daddr, 16, 0);
	if (diff < 0 || bpf_l4_csum_replace(skb, csum, 0, diff, 0) ||
	    bpf_skb_store_bytes(skb, quote + offsetof(struct ipv6hdr, saddr), e->daddr, 16, 0))
		return REASON_DROP_MALFORMED;
	if (rewrite_addr6(skb, pkt, pkt->l3_off + offsetof(struct ipv6hdr, daddr), pkt->daddr.v6,
			  e->daddr))
		return REASON_DROP_MALFORMED;
	__builtin_memcpy(pkt->daddr.v6, e->daddr, 16);
	return CONTINUE;
}
