// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* types.h: structs shared with user space (mirrored in Go by bpf2go and maps/). */
#pragma once

#include <linux/types.h>

/* An IPv4 or IPv6 address; IPv4 uses the first four bytes, the rest zero. */
union addr {
	__be32 v4;
	__u8 v6[16];
};

/* Map keys hold addresses as plain bytes (IPv4 in the first four) so Go sees [16]uint8. */
#define ADDR_LEN 16

/* Key of the endpoints map. */
struct endpoint_key {
	__u8 family; /* AF_INET or AF_INET6 */
	__u8 pad[3];
	__u8 ip[ADDR_LEN];
};

/* Value of the endpoints map: everything needed to deliver to, and police, a pod. */
struct endpoint_info {
	__u32 ifindex; /* host-side veth in the node's namespace */
	__u32 id; /* endpoint id, stable for the pod's life */
	__u32 identity; /* security identity (policy) */
	__u32 flags; /* enum endpoint_flags */
	__u8 mac[6]; /* pod's eth0 MAC */
	__u8 node_mac[6]; /* host-side veth MAC, source of packets towards the pod */
};

/* Key of the metrics map. */
struct metrics_key {
	__u8 reason; /* enum reason */
	__u8 direction; /* enum direction */
	__u16 pad;
};

/* Value of the metrics map, one per CPU. */
struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* LPM prefixes count from the family byte: family and pad are always matched whole. */
#define LPM_PREFIX_BASE 32

/* Key of every LPM map (routes, prefilter): an IPv4 or IPv6 prefix. */
struct lpm_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u8 ip[ADDR_LEN];
};

/* Value of the routes map: which node owns a pod CIDR and how to reach it. */
struct route_info {
	__u8 node_ip[ADDR_LEN]; /* underlay address of the owning node */
	__u8 mode; /* enum tunnel_mode */
	__u8 flags; /* enum route_flags */
	__u16 pad;
	__u32 node_id;
};

/* The one entry of the config map: what this node is. New fields go at the end, zero meaning
 * unset: an upgrade carries an older entry by appending zeros (maps/layouts.go). */
struct node_config {
	__u8 node_ip[ADDR_LEN]; /* this node's underlay address, source of IP-in-IP */
	__u32 underlay_ifindex; /* the underlay device (native and IP-in-IP egress) */
	__u32 tunnel_ifindex; /* the VXLAN device */
	__u8 mode; /* enum tunnel_mode */
	__u8 monitor_verdicts; /* 1 while someone monitors policy verdicts */
	__u8 masquerade; /* 1: pod traffic leaving the cluster takes the node's address */
	__u8 pad;
	__u32 host_ifindex; /* the host device: the node's way to remote pods and Services */
	__u8 host_mac[6]; /* its MAC, destination of what is handed to the node's stack */
	__u16 nat_port_min; /* source ports the node's address lends to translated flows */
	__u16 nat_port_max;
	__be16 vxlan_port; /* VXLAN's UDP port, encapsulated here in BPF; 0: by the VXLAN device */
	__u8 node_ipv6[ADDR_LEN]; /* this node's IPv6 underlay address; all zero: it has none */
};

/* Value of the ipcache: who an address is, for policy. */
struct ipcache_info {
	__u32 identity; /* label identity (pods), or a reserved one */
	__u32 cidr_identity; /* identity of the longest policy CIDR holding the address, or 0 */
};

/* Key of the policy LPM: the prefix covers endpoint, peer and direction always, the protocol
 * unless the rule allows every protocol, and as many port bits as the port range needs. */
struct policy_key {
	__u32 prefixlen;
	__u32 endpoint; /* local endpoint id */
	__u32 peer; /* peer identity; IDENTITY_ANY for rules that allow every peer */
	__u8 direction; /* enum policy_direction */
	__u8 protocol; /* IPPROTO_* */
	__be16 port; /* destination port */
};

#define POLICY_PREFIX_ANY_PROTO (32 + 32 + 8)
#define POLICY_PREFIX_PROTO (POLICY_PREFIX_ANY_PROTO + 8)
#define POLICY_PREFIX_PORT (POLICY_PREFIX_PROTO + 16)

/* Value of the policy LPM: which rule allowed it, for explain and monitor. */
struct policy_value {
	__u32 rule;
};

/* Key of the conntrack map: a flow in the direction of its first packet. */
struct ct_key {
	__u8 saddr[ADDR_LEN];
	__u8 daddr[ADDR_LEN];
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 family;
	__u16 pad;
};

/* Value of the conntrack map: packets and bytes count both directions. */
struct ct_entry {
	__u64 expires; /* bpf_ktime_get_ns() after which the entry is dead */
	__u64 packets;
	__u64 bytes;
	__u32 flags; /* enum ct_flags */
	__u32 pad;
	__u64 created; /* bpf_ktime_get_ns() of the first packet; 0: unknown (an older layout) */
	__u64 reply_packets; /* the reply direction's share of packets and bytes (layout 3) */
	__u64 reply_bytes;
};

/* A drop, as the monitor streams it. */
struct event {
	__u64 ts; /* bpf_ktime_get_ns() */
	__u32 ifindex;
	__u32 len;
	__u8 reason; /* enum reason */
	__u8 direction; /* enum direction */
	__u8 family;
	__u8 protocol;
	__be16 sport;
	__be16 dport;
	__u8 saddr[ADDR_LEN];
	__u8 daddr[ADDR_LEN];
	__u32 src_identity;
	__u32 dst_identity;
};

/* Key of the services map: a frontend (address, port, protocol) and a slot; slot 0 is the
 * frontend itself, slots 1..count its backends. */
struct service_key {
	__u8 ip[ADDR_LEN];
	__be16 port;
	__u8 protocol; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;
	__u16 slot;
	__u16 pad;
};

/* Value of the services map. */
struct service_value {
	__u32 backend_id; /* slot > 0: the backend in this slot */
	__u32 service_id; /* slot 0: the Service's id, for affinity */
	__u16 count; /* slot 0: how many backend slots follow */
	__u16 flags; /* slot 0: enum service_flags */
	__u32 affinity_timeout; /* slot 0: seconds a client keeps its backend (SVC_F_AFFINITY) */
};

/* Value of the backends map: where a backend id points. */
struct backend_info {
	__u8 ip[ADDR_LEN];
	__be16 port;
	__u8 family;
	__u8 flags; /* enum backend_flags */
};

/* Key of the affinity map: a client of a Service. */
struct affinity_key {
	__u8 client[ADDR_LEN];
	__u32 service_id;
	__u8 family;
	__u8 pad[3];
};

/* Value of the affinity map. */
struct affinity_value {
	__u64 last_used; /* bpf_ktime_get_ns() of the client's last new flow */
	__u32 backend_id;
	__u32 pad;
};

/* Key of the fragments map: one fragmented datagram, as its IP header names it. */
struct frag_key {
	__u8 saddr[ADDR_LEN];
	__u8 daddr[ADDR_LEN];
	__be32 id; /* IPv4's 16-bit identification (in the low-addressed bytes), IPv6's 32 */
	__u8 protocol;
	__u8 family;
	__u16 pad;
};

/* Value of the fragments map: what the first fragment's L4 header said, for the later ones. */
struct frag_l4 {
	__be16 sport;
	__be16 dport;
	__be16 icmp_id;
	__u8 icmp_type;
	__u8 pad;
};

/* Value of the nat map, keyed by struct ct_key: what a packet of that tuple becomes. */
struct nat_entry {
	__u8 saddr[ADDR_LEN];
	__u8 daddr[ADDR_LEN];
	__be16 sport;
	__be16 dport;
	__u32 backend_id; /* NAT_F_SERVICE without NAT_F_REPLY: the backend chosen */
	__u64 expires; /* bpf_ktime_get_ns() after which the entry may be collected */
	__u64 packets;
	__u32 flags; /* enum nat_flags */
	__u32 pad;
};
