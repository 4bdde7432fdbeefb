// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* metrics.h: count a verdict under its (reason, direction). */
#pragma once

#include "maps.h"

static __always_inline void count(__u8 reason, __u8 direction, __u64 bytes)
{
	struct metrics_key key = {.reason = reason, .direction = direction};
	struct metrics_value *val = bpf_map_lookup_elem(&metrics, &key);

	if (!val) {
		struct metrics_value init = {};

		/* Another CPU may create the entry first; either way it exists afterwards. */
		bpf_map_update_elem(&metrics, &key, &init, BPF_NOEXIST);
		val = bpf_map_lookup_elem(&metrics, &key);
		if (!val)
			return;
	}
	/* Per-CPU values: plain adds are race-free. */
	val->packets++;
	val->bytes += bytes;
}
