package maps

import (
	"errors"
	"fmt"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
)

// Reason is why the datapath gave a packet its verdict (enum reason in C).
type Reason = bpf.DatapathReason

// Direction is the hook that saw a packet (enum direction in C).
type Direction = bpf.DatapathDirection

// Reasons and directions, renamed from the generated identifiers.
const (
	ReasonForwardLocal   = bpf.DatapathReasonREASON_FORWARD_LOCAL
	ReasonForwardHost    = bpf.DatapathReasonREASON_FORWARD_HOST
	ReasonDeliver        = bpf.DatapathReasonREASON_DELIVER
	ReasonMalformed      = bpf.DatapathReasonREASON_DROP_MALFORMED
	ReasonSpoofedSource  = bpf.DatapathReasonREASON_DROP_SPOOFED_SOURCE
	ReasonTTLExceeded    = bpf.DatapathReasonREASON_DROP_TTL_EXCEEDED
	ReasonUnsupportedL3  = bpf.DatapathReasonREASON_DROP_UNSUPPORTED_L3
	ReasonPrefilter      = bpf.DatapathReasonREASON_DROP_PREFILTER
	ReasonRedirectFailed = bpf.DatapathReasonREASON_DROP_REDIRECT_FAILED
	ReasonForwardTunnel  = bpf.DatapathReasonREASON_FORWARD_TUNNEL
	ReasonForwardUnder   = bpf.DatapathReasonREASON_FORWARD_UNDERLAY
	ReasonUnknownDest    = bpf.DatapathReasonREASON_DROP_UNKNOWN_DEST
	ReasonNoRoute        = bpf.DatapathReasonREASON_DROP_NO_ROUTE
	ReasonEncapFailed    = bpf.DatapathReasonREASON_DROP_ENCAP_FAILED
	ReasonPolicyIngress  = bpf.DatapathReasonREASON_DROP_POLICY_INGRESS
	ReasonPolicyEgress   = bpf.DatapathReasonREASON_DROP_POLICY_EGRESS
	ReasonEventLost      = bpf.DatapathReasonREASON_EVENT_LOST
	ReasonPolicyAllowed  = bpf.DatapathReasonREASON_POLICY_ALLOWED
	ReasonForwardNode    = bpf.DatapathReasonREASON_FORWARD_NODE
	ReasonNoBackend      = bpf.DatapathReasonREASON_DROP_NO_BACKEND
	ReasonNATNoPort      = bpf.DatapathReasonREASON_DROP_NAT_NO_PORT

	DirFromPod      = bpf.DatapathDirectionDIR_FROM_POD
	DirToPod        = bpf.DatapathDirectionDIR_TO_POD
	DirPrefilter    = bpf.DatapathDirectionDIR_PREFILTER
	DirFromOverlay  = bpf.DatapathDirectionDIR_FROM_OVERLAY
	DirFromUnderlay = bpf.DatapathDirectionDIR_FROM_UNDERLAY
	DirFromHost     = bpf.DatapathDirectionDIR_FROM_HOST
)

// ReasonNames are the labels people and Prometheus see.
var ReasonNames = map[Reason]string{
	ReasonForwardLocal:   "forward-local",
	ReasonForwardHost:    "forward-host",
	ReasonDeliver:        "deliver",
	ReasonMalformed:      "malformed",
	ReasonSpoofedSource:  "spoofed-source",
	ReasonTTLExceeded:    "ttl-exceeded",
	ReasonUnsupportedL3:  "unsupported-l3",
	ReasonPrefilter:      "prefilter",
	ReasonRedirectFailed: "redirect-failed",
	ReasonForwardTunnel:  "forward-tunnel",
	ReasonForwardUnder:   "forward-underlay",
	ReasonUnknownDest:    "unknown-destination",
	ReasonNoRoute:        "no-route",
	ReasonEncapFailed:    "encap-failed",
	ReasonPolicyIngress:  "policy-denied-ingress",
	ReasonPolicyEgress:   "policy-denied-egress",
	ReasonEventLost:      "monitor-event-lost",
	ReasonPolicyAllowed:  "policy-allowed",
	ReasonForwardNode:    "forward-node",
	ReasonNoBackend:      "no-service-backend",
	ReasonNATNoPort:      "nat-no-port",
}

// DirectionNames are the labels of the hooks.
var DirectionNames = map[Direction]string{
	DirFromPod:      "from-pod",
	DirToPod:        "to-pod",
	DirPrefilter:    "prefilter",
	DirFromOverlay:  "from-overlay",
	DirFromUnderlay: "from-underlay",
	DirFromHost:     "from-host",
}

// IsDrop reports whether r is a drop (C: reason >= REASON_DROP_FIRST).
func IsDrop(r Reason) bool { return r >= bpf.DatapathReasonREASON_DROP_FIRST }

// ReasonName returns r's label, or its number for one this build does not know.
func ReasonName(r Reason) string {
	if n, ok := ReasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("reason-%d", uint32(r))
}

// DirectionName returns d's label.
func DirectionName(d Direction) string {
	if n, ok := DirectionNames[d]; ok {
		return n
	}
	return fmt.Sprintf("direction-%d", uint32(d))
}

// Counter is one (reason, direction) row summed over CPUs.
type Counter struct {
	Reason    Reason    `json:"-"`
	Direction Direction `json:"-"`
	Packets   uint64    `json:"packets"`
	Bytes     uint64    `json:"bytes"`
}

// Metrics is a typed view of the per-CPU metrics map.
type Metrics struct{ m *ebpf.Map }

// NewMetrics wraps the metrics map.
func NewMetrics(m *ebpf.Map) *Metrics { return &Metrics{m: m} }

// Get returns the counter for (reason, direction), zero when nothing was counted.
func (mt *Metrics) Get(r Reason, d Direction) (Counter, error) {
	k := bpf.DatapathMetricsKey{Reason: uint8(r), Direction: uint8(d)}
	var per []bpf.DatapathMetricsValue
	if err := mt.m.Lookup(&k, &per); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Counter{Reason: r, Direction: d}, nil
		}
		return Counter{}, fmt.Errorf("read metrics %s/%s: %w", ReasonName(r), DirectionName(d), err)
	}
	return sum(k, per), nil
}

// All returns every counter, sorted by direction then reason.
func (mt *Metrics) All() ([]Counter, error) {
	var (
		k   bpf.DatapathMetricsKey
		per []bpf.DatapathMetricsValue
		out []Counter
	)
	it := mt.m.Iterate()
	for it.Next(&k, &per) {
		out = append(out, sum(k, per))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Direction != out[j].Direction {
			return out[i].Direction < out[j].Direction
		}
		return out[i].Reason < out[j].Reason
	})
	return out, nil
}

func sum(k bpf.DatapathMetricsKey, per []bpf.DatapathMetricsValue) Counter {
	c := Counter{Reason: Reason(k.Reason), Direction: Direction(k.Direction)}
	for _, v := range per {
		c.Packets += v.Packets
		c.Bytes += v.Bytes
	}
	return c
}
