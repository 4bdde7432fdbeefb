// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* maps.h: every map the datapath uses; sizes are placeholders that the loader sets at load time. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "types.h"

/* endpoints: pod IP -> where it lives and what it may send. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

/* metrics: packets and bytes per (reason, direction), per CPU so counting never contends. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} metrics SEC(".maps");

/* routes: pod CIDR -> owning node, for pods that are not on this node. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_key);
	__type(value, struct route_info);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} routes SEC(".maps");

/* config: one entry describing this node; written by the agent, read on every cross-node packet. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

/* prefilter: source CIDRs that XDP drops before the stack sees them. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_key);
	__type(value, __u8);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} prefilter SEC(".maps");

/* ipcache: every address the cluster knows (pods, nodes, policy CIDRs) -> identities. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_key);
	__type(value, struct ipcache_info);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

/* policy: what each local endpoint may receive and send, compiled from NetworkPolicies. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

/* conntrack: flows already allowed, so replies pass both directions' policies. LRU: a full
 * table forgets the oldest flow rather than refusing new ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

/* events: drops for `ebpfnet monitor`; a full buffer loses events (counted), never packets. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 12);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* services: Service frontends (ClusterIP, NodePort on this node's address) and their backend
 * slots. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct service_key);
	__type(value, struct service_value);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} services SEC(".maps");

/* backends: backend id -> address and port; an id gone from here ends its flows' translation. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct backend_info);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backends SEC(".maps");

/* affinity: (client, Service) -> the backend it keeps under sessionAffinity ClientIP. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} affinity SEC(".maps");

/* nat: translated flows, one entry per direction (original and reply tuple); LRU so a full
 * table drops the oldest flow, never a new one. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct nat_entry);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat SEC(".maps");

/* no_masquerade: destinations outside the cluster that pods reach with their own address. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm_key);
	__type(value, __u8);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} no_masquerade SEC(".maps");

/* fragments: datagram -> its first fragment's ports, so later fragments (which carry no L4
 * header) get the first one's policy, conntrack and translation. Not pinned: an upgrade only
 * forgets the datagrams in flight. LRU: a datagram whose later fragments never come ages out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_l4);
	__uint(max_entries, 8192);
} fragments SEC(".maps");

/* The addresses and ports of an IPv6 struct bpf_sock_tuple (an IPv4 one is its first 12 bytes:
 * saddr, daddr, sport, dport), spelled out: bpf2go cannot mirror the kernel's anonymous union. */
struct sock_tuple {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
};

/* Per-CPU room for the NAT stage's larger temporaries, which do not fit on the 512-byte BPF
 * stack beside policy's and forwarding's. */
struct nat_scratch {
	struct nat_entry entry;
	struct ct_key tuple;
	struct ct_key reply;
	struct sock_tuple sock; /* the port search's socket lookup */
};

/* nat_scratch: one struct nat_scratch per CPU; a program runs to its end on one CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct nat_scratch);
	__uint(max_entries, 1);
} nat_scratch SEC(".maps");

/* route_scratch is what routing a packet out of the underlay needs besides the packet. */
struct route_scratch {
	struct bpf_fib_lookup fib;
	struct bpf_redir_neigh nh;
};

/* fib_scratch: one route_scratch per CPU, kept off the stack of the tunnel paths. Sized, not
 * typed: bpf2go cannot mirror the kernel structs' anonymous unions. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__uint(value_size, sizeof(struct route_scratch));
	__uint(max_entries, 1);
} fib_scratch SEC(".maps");
