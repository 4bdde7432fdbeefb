// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* parse.h: bounds-checked parsing of Ethernet, ARP, IPv4, IPv6 and their L4 headers. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "maps.h"
#include "types.h"

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define SCTP_HDR_LEN 12
/* How many IPv6 extension headers we walk before giving up on finding L4. */
#define MAX_IPV6_EXT 4
/* Enough linear bytes for Ethernet, IPv6 with extensions and a TCP header with options. */
#define PULL_LEN 256

/* linux/if_arp.h drags in libc headers, so the ARP header is spelled out here. */
#define ARPHRD_ETHER 1
struct arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

/* ARP payload for Ethernet/IPv4, which the UAPI does not spell out. */
struct arp_eth_ipv4 {
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

/* What the parser learned about one packet. */
struct packet {
	__u32 len;
	__u16 eth_proto; /* host order */
	__u8 family; /* AF_INET, AF_INET6, or 0 for ARP */
	__u8 l4_proto;
	__u32 l3_off;
	__u32 l4_off; /* 0 when there is no L4 header to read (later fragments) */
	__u8 ttl;
	__u8 fragment; /* 1 when part of a fragmented datagram */
	__u8 frag_l4; /* a later fragment whose ports (or ICMP echo) came from its first */
	__be32 frag_id; /* the datagram's identification, when fragment */
	__be16 sport;
	__be16 dport;
	union addr saddr;
	union addr daddr;
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
	__u8 arp_sha[ETH_ALEN]; /* ARP sender, checked by anti-spoofing */
	__be32 arp_sip;
	__u8 tcp_flags;
	__u8 icmp_type;
	__be16 icmp_id; /* echo identifier: conntrack's "port" for ICMP echo */
	__u8 ct_reply; /* admit found a reply (or ICMP error) of a tracked flow */
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* csum_fold folds a 32-bit checksum sum into the 16-bit Internet checksum. */
static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 c = (__u32)sum;

	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)~c;
}

/* parse_l4 reads the L4 header at pkt->l4_off, which must lie inside the datagram (ending at
 * offset end), not merely inside the frame: bytes past the IP length (Ethernet padding, or a
 * length that lies) are no part of the packet, and the receiver's stack discards what ends
 * there. Each data_end check is the verifier's; each end check is the packet's. */
static __always_inline int parse_l4(void *data, void *data_end, __u32 end, struct packet *pkt)
{
	void *l4 = data + pkt->l4_off;

	switch (pkt->l4_proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end || pkt->l4_off + sizeof(*th) > end || th->doff < 5)
			return REASON_DROP_MALFORMED;
		if (l4 + th->doff * 4 > data_end || pkt->l4_off + th->doff * 4 > end)
			return REASON_DROP_MALFORMED;
		pkt->sport = th->source;
		pkt->dport = th->dest;
		pkt->tcp_flags = ((__u8 *)th)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end || pkt->l4_off + sizeof(*uh) > end)
			return REASON_DROP_MALFORMED;
		pkt->sport = uh->source;
		pkt->dport = uh->dest;
		break;
	}
	case IPPROTO_SCTP: {
		__be16 *ports = l4;

		if (l4 + SCTP_HDR_LEN > data_end || pkt->l4_off + SCTP_HDR_LEN > end)
			return REASON_DROP_MALFORMED;
		pkt->sport = ports[0];
		pkt->dport = ports[1];
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 *ih = l4; /* type, code; linux/icmp.h would drag in libc headers */

		if (l4 + 8 > data_end || pkt->l4_off + 8 > end)
			return REASON_DROP_MALFORMED;
		pkt->icmp_type = ih[0];
		pkt->icmp_id = *(__be16 *)(ih + 4);
		break;
	}
	default:
		break;
	}
	return CONTINUE;
}

static __always_inline int parse_ipv4(void *data, void *data_end, struct packet *pkt)
{
	struct iphdr *ip = data + pkt->l3_off;
	__u32 hlen, tot;

	if ((void *)(ip + 1) > data_end)
		return REASON_DROP_MALFORMED;
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || hlen < sizeof(*ip) || tot < hlen)
		return REASON_DROP_MALFORMED;
	if ((void *)ip + hlen > data_end || pkt->l3_off + tot > pkt->len)
		return REASON_DROP_MALFORMED;
	pkt->family = AF_INET;
	pkt->l4_proto = ip->protocol;
	pkt->ttl = ip->ttl;
	pkt->saddr.v4 = ip->saddr;
	pkt->daddr.v4 = ip->daddr;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		pkt->fragment = 1;
		pkt->frag_id = ip->id;
		/* Only the first fragment carries the L4 header. */
		if (ip->frag_off & bpf_htons(IP_OFFSET))
			return CONTINUE;
	}
	pkt->l4_off = pkt->l3_off + hlen;
	return parse_l4(data, data_end, pkt->l3_off + tot, pkt);
}

static __always_inline int parse_ipv6(void *data, void *data_end, struct packet *pkt)
{
	struct ipv6hdr *ip6 = data + pkt->l3_off;
	__u32 off = pkt->l3_off + sizeof(*ip6);
	__u32 plen, end;
	__u8 next;

	if ((void *)(ip6 + 1) > data_end)
		return REASON_DROP_MALFORMED;
	plen = bpf_ntohs(ip6->payload_len);
	if (ip6->version != 6 || pkt->l3_off + sizeof(*ip6) + plen > pkt->len)
		return REASON_DROP_MALFORMED;
	/* Extension and L4 headers lie inside the payload; a length of 0 (a jumbogram, or a BIG
	 * TCP packet) leaves the frame as the bound. */
	end = plen ? pkt->l3_off + sizeof(*ip6) + plen : pkt->len;
	pkt->family = AF_INET6;
	pkt->ttl = ip6->hop_limit;
	__builtin_memcpy(pkt->saddr.v6, &ip6->saddr, 16);
	__builtin_memcpy(pkt->daddr.v6, &ip6->daddr, 16);
	next = ip6->nexthdr;

#pragma unroll
	for (int i = 0; i < MAX_IPV6_EXT; i++) {
		__u8 *ext = data + off;

		if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS &&
		    next != IPPROTO_FRAGMENT)
			break;
		if ((void *)(ext + 8) > data_end || off + 8 > end)
			return REASON_DROP_MALFORMED;
		if (next == IPPROTO_FRAGMENT) {
			pkt->fragment = 1;
			pkt->frag_id = *(__be32 *)(ext + 4);
			/* Fragment offset is the top 13 bits of bytes 2-3; non-zero means no L4
			 * here. */
			if (bpf_ntohs(*(__be16 *)(ext + 2)) & 0xfff8) {
				pkt->l4_proto = ext[0];
				return CONTINUE;
			}
			next = ext[0];
			off += 8;
		} else {
			next = ext[0];
			off += (ext[1] + 1) * 8;
		}
	}
	pkt->l4_proto = next;
	pkt->l4_off = off;
	return parse_l4(data, data_end, end, pkt);
}

static __always_inline int parse_arp(void *data, void *data_end, struct packet *pkt)
{
	struct arphdr *arp = data + pkt->l3_off;
	struct arp_eth_ipv4 *body = (void *)(arp + 1);

	if ((void *)(body + 1) > data_end)
		return REASON_DROP_MALFORMED;
	if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
		return REASON_DROP_MALFORMED;
	__builtin_memcpy(pkt->arp_sha, body->sha, ETH_ALEN);
	pkt->arp_sip = body->sip;
	return CONTINUE;
}

/* parse fills pkt from skb; returns CONTINUE or a drop reason. */
static __always_inline int parse(struct __sk_buff *skb, struct packet *pkt)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	pkt->len = skb->len;
	if ((void *)(eth + 1) > data_end)
		return REASON_DROP_MALFORMED;
	__builtin_memcpy(pkt->smac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(pkt->dmac, eth->h_dest, ETH_ALEN);
	pkt->eth_proto = bpf_ntohs(eth->h_proto);
	pkt->l3_off = sizeof(*eth);

	switch (pkt->eth_proto) {
	case ETH_P_IP:
		return parse_ipv4(data, data_end, pkt);
	case ETH_P_IPV6:
		return parse_ipv6(data, data_end, pkt);
	case ETH_P_ARP:
		return parse_arp(data, data_end, pkt);
	default:
		return REASON_DROP_UNSUPPORTED_L3;
	}
}

/* track_fragment remembers a first fragment's ports under its datagram, and gives them to the
 * datagram's later fragments, which then meet policy, conntrack and NAT as their first did.
 * A later fragment whose first was not seen keeps port 0. */
static __always_inline void track_fragment(struct packet *pkt)
{
	struct frag_key key = {.family = pkt->family, .protocol = pkt->l4_proto};
	struct frag_l4 *known, l4 = {};

	if (!pkt->fragment || !pkt->family)
		return;
	key.id = pkt->frag_id;
	if (pkt->family == AF_INET) {
		__builtin_memcpy(key.saddr, &pkt->saddr.v4, 4);
		__builtin_memcpy(key.daddr, &pkt->daddr.v4, 4);
	} else {
		__builtin_memcpy(key.saddr, pkt->saddr.v6, 16);
		__builtin_memcpy(key.daddr, pkt->daddr.v6, 16);
	}
	if (pkt->l4_off) {
		l4.sport = pkt->sport;
		l4.dport = pkt->dport;
		l4.icmp_id = pkt->icmp_id;
		l4.icmp_type = pkt->icmp_type;
		bpf_map_update_elem(&fragments, &key, &l4, BPF_ANY);
		return;
	}
	known = bpf_map_lookup_elem(&fragments, &key);
	if (!known)
		return;
	pkt->sport = known->sport;
	pkt->dport = known->dport;
	pkt->icmp_id = known->icmp_id;
	pkt->icmp_type = known->icmp_type;
	pkt->frag_l4 = 1;
}

/* parse_linear parses with direct access; only when the headers run past the linear part of a
 * non-linear skb does it pull them in and look again, so ordinary GSO packets are not copied. */
static __always_inline int parse_linear(struct __sk_buff *skb, struct packet *pkt)
{
	int reason = parse(skb, pkt);
	__u32 want;

	if (reason != REASON_DROP_MALFORMED || skb->data_end - skb->data >= skb->len)
		return reason;
	want = skb->len < PULL_LEN ? skb->len : PULL_LEN;
	if (bpf_skb_pull_data(skb, want))
		return REASON_DROP_MALFORMED;
	__builtin_memset(pkt, 0, sizeof(*pkt));
	return parse(skb, pkt);
}

/* parse_skb parses a packet and ties a fragment to its datagram's first fragment. */
static __always_inline int parse_skb(struct __sk_buff *skb, struct packet *pkt)
{
	int reason = parse_linear(skb, pkt);

	if (reason == CONTINUE)
		track_fragment(pkt);
	return reason;
}
