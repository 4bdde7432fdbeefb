/* consts.h: verdict reasons, directions and flags shared by every ebpfnet program. */
#pragma once

/* Why a packet got its verdict; values below REASON_DROP_FIRST are forwards. */
enum reason {
	REASON_UNSPEC = 0,
	REASON_FORWARD_LOCAL = 1, /* redirected by BPF into a pod on this node */
	REASON_FORWARD_HOST = 2,  /* handed to the node's network stack */
	REASON_DELIVER = 3,	  /* let through a hook towards its destination */
	REASON_DROP_FIRST = 64,
	REASON_DROP_MALFORMED = 64,	  /* truncated or inconsistent headers */
	REASON_DROP_SPOOFED_SOURCE = 65,  /* source IP or MAC not the endpoint's own */
	REASON_DROP_TTL_EXCEEDED = 66,	  /* TTL / hop limit would reach 0 */
	REASON_DROP_UNSUPPORTED_L3 = 67,  /* ethertype that pods may not send */
	REASON_DROP_PREFILTER = 68,	  /* source in the XDP deny list */
	REASON_DROP_REDIRECT_FAILED = 69, /* helper refused to redirect */
};

/* Which hook saw the packet. */
enum direction {
	DIR_FROM_POD = 1,  /* tc ingress of a pod's host-side veth */
	DIR_TO_POD = 2,	   /* tc egress of a pod's host-side veth */
	DIR_PREFILTER = 3, /* XDP on the underlay device */
};

/* Endpoint flags. */
enum endpoint_flags {
	EP_F_LOCAL = 1 << 0, /* the endpoint is a pod on this node */
};

#define ETH_ALEN 6
#define AF_INET 2
#define AF_INET6 10

/* Helper return codes for "keep going" inside a chain of inline helpers. */
#define CONTINUE -1
