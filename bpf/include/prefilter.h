// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* prefilter.h: the XDP source-CIDR deny list. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "maps.h"
#include "metrics.h"

static __always_inline int prefilter_verdict(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct lpm_key key = {};

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return XDP_PASS;
		key.prefixlen = LPM_PREFIX_BASE + 32;
		key.family = AF_INET;
		__builtin_memcpy(key.ip, &ip->saddr, 4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		key.prefixlen = LPM_PREFIX_BASE + 128;
		key.family = AF_INET6;
		__builtin_memcpy(key.ip, &ip6->saddr, 16);
	} else {
		return XDP_PASS;
	}
	if (!bpf_map_lookup_elem(&prefilter, &key))
		return XDP_PASS;
	count(REASON_DROP_PREFILTER, DIR_PREFILTER, data_end - data);
	return XDP_DROP;
}
