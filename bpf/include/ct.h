// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* ct.h: connection tracking, so that replies (and related ICMP errors) of allowed flows pass. */
#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "maps.h"
#include "parse.h"

#define NSEC 1000000000ULL
#define CT_TCP_SYN_TIMEOUT (60 * NSEC)
#define CT_TCP_TIMEOUT (21600 * NSEC)
#define CT_TCP_CLOSE_TIMEOUT (10 * NSEC)
#define CT_UDP_TIMEOUT (60 * NSEC)
#define CT_ICMP_TIMEOUT (30 * NSEC)

/* What conntrack knows of a packet. */
enum ct_verdict {
	CT_NEW = 0,
	CT_ESTABLISHED = 1, /* another packet of a known flow, same direction */
	CT_REPLY = 2, /* a packet of a known flow, the other way */
	CT_RELATED = 3, /* an ICMP error about a known flow */
};

static __always_inline int is_icmp_echo(struct packet *pkt)
{
	if (pkt->l4_proto == IPPROTO_ICMP)
		return pkt->icmp_type == 8 || pkt->icmp_type == 0;
	if (pkt->l4_proto == IPPROTO_ICMPV6)
		return pkt->icmp_type == 128 || pkt->icmp_type == 129;
	return 0;
}

/* ct_key_of builds the flow key of pkt, or of its reverse. ICMP echo uses its identifier on
 * both sides, so request and reply meet in one entry. */
static __always_inline void ct_key_of(struct packet *pkt, struct ct_key *k, int reverse)
{
	__be16 sport = pkt->sport, dport = pkt->dport;

	k->family = pkt->family;
	k->protocol = pkt->l4_proto;
	if (is_icmp_echo(pkt))
		sport = dport = pkt->icmp_id;
	if (!reverse) {
		addr_key(k->saddr, pkt->family, &pkt->saddr);
		addr_key(k->daddr, pkt->family, &pkt->daddr);
		k->sport = sport;
		k->dport = dport;
	} else {
		addr_key(k->saddr, pkt->family, &pkt->daddr);
		addr_key(k->daddr, pkt->family, &pkt->saddr);
		k->sport = dport;
		k->dport = sport;
	}
}

static __always_inline __u64 ct_timeout(struct packet *pkt, __u32 flags)
{
	if (pkt->l4_proto == IPPROTO_TCP) {
		if (flags & CT_F_CLOSING)
			return CT_TCP_CLOSE_TIMEOUT;
		return (flags & CT_F_REPLY_SEEN) ? CT_TCP_TIMEOUT : CT_TCP_SYN_TIMEOUT;
	}
	if (pkt->l4_proto == IPPROTO_ICMP || pkt->l4_proto == IPPROTO_ICMPV6)
		return CT_ICMP_TIMEOUT;
	return CT_UDP_TIMEOUT;
}

/* ct_touch counts a packet on a live entry and pushes its expiry out. */
static __always_inline void ct_touch(struct ct_entry *e, struct packet *pkt, __u64 now, int reply)
{
	__u32 flags = e->flags;

	if (reply)
		flags |= CT_F_REPLY_SEEN;
	if (pkt->l4_proto == IPPROTO_TCP && (pkt->tcp_flags & (TCP_FIN | TCP_RST)))
		flags |= CT_F_CLOSING;
	e->flags = flags;
	e->expires = now + ct_timeout(pkt, flags);
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, pkt->len);
	if (reply) {
		__sync_fetch_and_add(&e->reply_packets, 1);
		__sync_fetch_and_add(&e->reply_bytes, pkt->len);
	}
}

/* ct_related4 looks up the flow an IPv4 ICMP error (unreachable, time exceeded, parameter
 * problem) is about: the packet it quotes, which must have come from where the error goes (as
 * Linux conntrack asks), or anyone with a flow on the node could send errors past the ingress
 * policy of every pod here. */
static __always_inline int ct_related4(struct __sk_buff *skb, struct packet *pkt)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ct_key k = {.family = AF_INET};
	struct iphdr *inner;
	__u32 l4 = pkt->l4_off;
	__be16 *ports;

	if (pkt->icmp_type != 3 && pkt->icmp_type != 11 && pkt->icmp_type != 12)
		return CT_NEW;
	/* Bound the offset so the verifier can follow it; real headers are far shorter. The
	 * bound is on the offset itself, not on a sum the compiler may widen and truncate. */
	if (l4 > 120)
		return CT_NEW;
	inner = data + l4 + 8;
	if ((void *)(inner + 1) > data_end || inner->ihl != 5 || inner->saddr != pkt->daddr.v4)
		return CT_NEW;
	ports = (void *)(inner + 1);
	if ((void *)(ports + 2) > data_end)
		return CT_NEW;
	k.protocol = inner->protocol;
	__builtin_memcpy(k.saddr, &inner->saddr, 4);
	__builtin_memcpy(k.daddr, &inner->daddr, 4);
	if (k.protocol == IPPROTO_TCP || k.protocol == IPPROTO_UDP || k.protocol == IPPROTO_SCTP) {
		k.sport = ports[0];
		k.dport = ports[1];
	}
	return bpf_map_lookup_elem(&conntrack, &k) ? CT_RELATED : CT_NEW;
}

/* ct_related6 is ct_related4 for ICMPv6 errors (unreachable, packet too big, time exceeded,
 * parameter problem), which quote an IPv6 header; the quoted packet's extension headers are
 * not walked (its ports are taken right after the fixed header). */
static __always_inline int ct_related6(struct __sk_buff *skb, struct packet *pkt)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ct_key k = {.family = AF_INET6};
	const __u32 *a, *b = (const __u32 *)pkt->daddr.v6;
	__u32 l4 = pkt->l4_off;
	struct ipv6hdr *inner;
	__be16 *ports;

	if (pkt->icmp_type < ICMP6_DEST_UNREACH || pkt->icmp_type > ICMP6_PARAM_PROB)
		return CT_NEW;
	/* Bound the offset so the verifier can follow it; real headers are far shorter. The
	 * bound is on the offset itself, not on a sum the compiler may widen and truncate. */
	if (l4 > 120)
		return CT_NEW;
	inner = data + l4 + 8;
	if ((void *)(inner + 1) > data_end)
		return CT_NEW;
	a = (const __u32 *)&inner->saddr;
	if ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]))
		return CT_NEW;
	ports = (void *)(inner + 1);
	if ((void *)(ports + 2) > data_end)
		return CT_NEW;
	k.protocol = inner->nexthdr;
	__builtin_memcpy(k.saddr, &inner->saddr, 16);
	__builtin_memcpy(k.daddr, &inner->daddr, 16);
	if (k.protocol == IPPROTO_TCP || k.protocol == IPPROTO_UDP || k.protocol == IPPROTO_SCTP) {
		k.sport = ports[0];
		k.dport = ports[1];
	}
	return bpf_map_lookup_elem(&conntrack, &k) ? CT_RELATED : CT_NEW;
}

/* ct_related finds the flow an ICMP or ICMPv6 error is about, or says CT_NEW. */
static __always_inline int ct_related(struct __sk_buff *skb, struct packet *pkt)
{
	if (!pkt->l4_off)
		return CT_NEW;
	if (pkt->family == AF_INET && pkt->l4_proto == IPPROTO_ICMP)
		return ct_related4(skb, pkt);
	if (pkt->family == AF_INET6 && pkt->l4_proto == IPPROTO_ICMPV6)
		return ct_related6(skb, pkt);
	return CT_NEW;
}

/* syn_only says whether pkt opens a TCP connection: SYN without ACK. */
static __always_inline int syn_only(struct packet *pkt)
{
	return pkt->l4_proto == IPPROTO_TCP && (pkt->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
}

/* ct_live says whether e still stands for pkt's flow: unexpired, and not a closing TCP
 * connection whose tuple a new one (SYN without ACK) takes over. That one is new, and policy
 * judges it as such: a client reusing the port of a closed connection gets no pass from it. */
static __always_inline int ct_live(struct ct_entry *e, struct packet *pkt, __u64 now)
{
	if (!e || e->expires <= now)
		return 0;
	return !((e->flags & CT_F_CLOSING) && syn_only(pkt));
}

/* ct_lookup says whether pkt belongs to a flow already allowed, and counts it there. */
static __always_inline int ct_lookup(struct __sk_buff *skb, struct packet *pkt)
{
	struct ct_key k = {};
	struct ct_entry *e;
	__u64 now = bpf_ktime_get_ns();

	ct_key_of(pkt, &k, 0);
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (ct_live(e, pkt, now)) {
		ct_touch(e, pkt, now, 0);
		return CT_ESTABLISHED;
	}
	ct_key_of(pkt, &k, 1);
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (ct_live(e, pkt, now)) {
		ct_touch(e, pkt, now, 1);
		return CT_REPLY;
	}
	return ct_related(skb, pkt);
}

/* ct_create records a new allowed flow. */
static __always_inline void ct_create(struct packet *pkt)
{
	struct ct_key k = {};
	struct ct_entry e = {};

	ct_key_of(pkt, &k, 0);
	e.created = bpf_ktime_get_ns();
	e.expires = e.created + ct_timeout(pkt, 0);
	e.packets = 1;
	e.bytes = pkt->len;
	bpf_map_update_elem(&conntrack, &k, &e, BPF_ANY);
}
