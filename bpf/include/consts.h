// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* consts.h: verdict reasons, directions and flags shared by every ebpfnet program. */
#pragma once

/* Why a packet got its verdict; values below REASON_DROP_FIRST are forwards. */
enum reason {
	REASON_UNSPEC = 0,
	REASON_FORWARD_LOCAL = 1, /* redirected by BPF into a pod on this node */
	REASON_FORWARD_HOST = 2, /* handed to the node's network stack */
	REASON_DELIVER = 3, /* let through a hook towards its destination */
	REASON_FORWARD_TUNNEL = 4, /* encapsulated towards another node (VXLAN, IP-in-IP) */
	REASON_FORWARD_UNDERLAY = 5, /* routed natively out of the underlay device */
	REASON_POLICY_ALLOWED = 6, /* event only: a new flow that policy let through */
	REASON_FORWARD_NODE = 7, /* redirected into the node's stack through the host device */
	REASON_EVENT_LOST = 32, /* not a verdict: a drop event the full ring buffer lost */
	REASON_DROP_FIRST = 64,
	REASON_DROP_MALFORMED = 64, /* truncated or inconsistent headers */
	REASON_DROP_SPOOFED_SOURCE = 65, /* source IP or MAC not the endpoint's own */
	REASON_DROP_TTL_EXCEEDED = 66, /* TTL / hop limit would reach 0 */
	REASON_DROP_UNSUPPORTED_L3 = 67, /* ethertype that pods may not send */
	REASON_DROP_PREFILTER = 68, /* source in the XDP deny list */
	REASON_DROP_REDIRECT_FAILED = 69, /* helper refused to redirect */
	REASON_DROP_UNKNOWN_DEST = 70, /* inside the cluster CIDR, but no pod or node has it */
	REASON_DROP_NO_ROUTE = 71, /* the underlay has no route to the destination's node */
	REASON_DROP_ENCAP_FAILED = 72, /* could not add or remove a tunnel header */
	REASON_DROP_POLICY_INGRESS =
		73, /* the destination's ingress policy allows no such traffic */
	REASON_DROP_POLICY_EGRESS = 74, /* the source's egress policy allows no such traffic */
	REASON_DROP_NO_BACKEND = 75, /* a Service frontend with no backend to take the flow */
	REASON_DROP_NAT_NO_PORT = 76, /* no free port to translate the flow's source to */
};

/* Which hook saw the packet. */
enum direction {
	DIR_FROM_POD = 1, /* tc ingress of a pod's host-side veth */
	DIR_TO_POD = 2, /* tc egress of a pod's host-side veth */
	DIR_PREFILTER = 3, /* XDP on the underlay device */
	DIR_FROM_OVERLAY = 4, /* tc ingress of the VXLAN device: decapsulated pod traffic */
	DIR_FROM_UNDERLAY = 5, /* tc ingress of the underlay device: native and IP-in-IP */
	DIR_FROM_HOST =
		6, /* tc egress of the host device: the node's traffic to pods and Services */
};

/* How pod traffic crosses to another node. */
enum tunnel_mode {
	MODE_VXLAN = 1, /* collect-metadata VXLAN device */
	MODE_NATIVE = 2, /* plain routing over the underlay */
	MODE_IPIP = 3, /* IPv4-in-IPv4 added and removed in BPF */
};

/* Route flags. */
enum route_flags {
	ROUTE_F_LOCAL = 1 << 0, /* this node's own pod CIDR: only endpoints live there */
	ROUTE_F_UNREACHABLE = 1 << 1, /* the cluster CIDR itself: no node owns what lands here */
	ROUTE_F_NODE_IPV6 = 1 << 2, /* node_ip is an IPv6 address (VXLAN over an IPv6 underlay) */
};

/* Endpoint flags. */
enum endpoint_flags {
	EP_F_LOCAL = 1 << 0, /* the endpoint is a pod on this node */
	EP_F_INGRESS_ENFORCED = 1 << 1, /* some policy selects it for ingress: default deny */
	EP_F_EGRESS_ENFORCED = 1 << 2, /* some policy selects it for egress: default deny */
};

/* Reserved identities; pods get 256 and up, CIDRs from IDENTITY_CIDR_FIRST. */
enum identity_reserved {
	IDENTITY_ANY = 0, /* in policy keys: any peer */
	IDENTITY_HOST = 1, /* this node: always allowed, as Kubernetes expects */
	IDENTITY_WORLD = 2, /* anything the ipcache does not know */
	IDENTITY_REMOTE_NODE = 3, /* another node of the cluster */
	IDENTITY_CIDR_FIRST = 1 << 24,
};

/* Policy directions. */
enum policy_direction {
	POLICY_INGRESS = 1,
	POLICY_EGRESS = 2,
};

/* Conntrack flags. */
enum ct_flags {
	CT_F_REPLY_SEEN = 1 << 0, /* the flow has answered: established */
	CT_F_CLOSING = 1 << 1, /* FIN or RST seen */
};

#define ETH_ALEN 6
#define AF_INET 2
#define AF_INET6 10

/* ICMPv6 of the link (RFC 4861, 2710, 3810) and ICMPv6 errors (RFC 4443). */
#define ICMP6_DEST_UNREACH 1
#define ICMP6_PARAM_PROB 4 /* the last error type: 1-4 quote the packet they are about */
#define ICMP6_MLD_QUERY 130
#define ICMP6_NDP_RA 134
#define ICMP6_NDP_NA 136
#define ICMP6_NDP_REDIRECT 137
#define ICMP6_MLD2_REPORT 143
/* A Neighbor Advertisement before its options: ICMPv6 header, flags and target address. */
#define NDP_NA_LEN 24
#define NDP_OPT_TARGET_LLADDR 2
/* How many options of a Neighbor Advertisement anti-spoofing reads. */
#define NDP_MAX_OPTS 4

/* Service flags (slot 0 of a frontend). */
enum service_flags {
	SVC_F_AFFINITY = 1 << 0, /* sessionAffinity ClientIP: a client keeps its backend */
	SVC_F_NODEPORT = 1 << 1, /* a NodePort frontend: remote backends see the node as source */
	SVC_F_EXTERNAL_LOCAL = 1 << 2, /* externalTrafficPolicy Local: no source translation */
};

/* Backend flags. */
enum backend_flags {
	BACKEND_F_LOCAL = 1 << 0, /* a pod on this node */
	BACKEND_F_TERMINATING = 1 << 1, /* keeps its flows, takes no new client under affinity */
};

/* NAT entry flags. */
enum nat_flags {
	NAT_F_REPLY =
		1 << 0, /* the entry translates replies: the flow was admitted when it began */
	NAT_F_SERVICE = 1 << 1, /* a Service translation; backend_id names the backend */
	NAT_F_MASQUERADE = 1 << 2, /* the source became the node's address */
	NAT_F_REPLY_SEEN = 1 << 3, /* the flow has answered */
	NAT_F_CLOSING = 1 << 4, /* FIN or RST seen */
};

/* Helper return codes for "keep going" inside a chain of inline helpers. */
#define CONTINUE -1
