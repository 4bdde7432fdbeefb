package kubestore

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// nodeOf reads a Node's pod CIDRs from spec.podCIDRs by family, else from the annotations the
// agent writes, and takes a Node as usable once it has an address and a pod CIDR: an IPv4
// one, or an IPv6 one alone (an IPv6-only cluster's, which is then its PodCIDR).
func TestNodeOf(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")
	node := func(podCIDRs []string, annotations map[string]string) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: annotations},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.250.0.1"}}}}
		n.Spec.PodCIDRs = podCIDRs
		if len(podCIDRs) > 0 {
			n.Spec.PodCIDR = podCIDRs[0]
		}
		return n
	}
	for _, tc := range []struct {
		name         string
		node         *corev1.Node
		usable       bool
		want4, want6 netip.Prefix
	}{
		{"IPv4 spec", node([]string{v4.String()}, nil), true, v4, netip.Prefix{}},
		{"dual-stack spec", node([]string{v4.String(), v6.String()}, nil), true, v4, v6},
		{"IPv6 first in spec", node([]string{v6.String(), v4.String()}, nil), true, v4, v6},
		{"IPv4 spec, IPv6 annotation", node([]string{v4.String()}, map[string]string{PodCIDRv6Annotation: v6.String()}), true, v4, v6},
		{"annotations only", node(nil, map[string]string{PodCIDRAnnotation: v4.String(), PodCIDRv6Annotation: v6.String()}), true, v4, v6},
		{"spec wins over annotations", node([]string{v4.String(), v6.String()},
			map[string]string{PodCIDRAnnotation: "10.244.7.0/24", PodCIDRv6Annotation: "fd00:10:244:7::/64"}), true, v4, v6},
		{"no pod CIDR", node(nil, nil), false, netip.Prefix{}, netip.Prefix{}},
		{"IPv6 only", node([]string{v6.String()}, nil), true, v6, netip.Prefix{}},
		{"IPv6 only, annotated", node([]string{v6.String()}, map[string]string{PodCIDRAnnotation: v6.String()}), true, v6, netip.Prefix{}},
		{"IPv4 in the IPv6 annotation", node([]string{v4.String()}, map[string]string{PodCIDRv6Annotation: "10.1.0.0/24"}), true, v4, netip.Prefix{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := nodeOf(tc.node)
			if ok != tc.usable || got.PodCIDR != tc.want4 || got.PodCIDRv6 != tc.want6 {
				t.Fatalf("nodeOf: %+v usable %t; want pod CIDRs %v and %v, usable %t", got, ok, tc.want4, tc.want6, tc.usable)
			}
		})
	}
}

// The IPv6 underlay address comes from the agent's annotation; anything but an IPv6 address
// there is no address.
func TestNodeOfIPv6Address(t *testing.T) {
	for _, tc := range []struct{ annotation, want string }{
		{"fd00:10:250::1", "fd00:10:250::1"},
		{"10.250.0.1", "invalid IP"},
		{"", "invalid IP"},
	} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: map[string]string{
			UnderlayIPAnnotation: "10.250.0.1", PodCIDRAnnotation: "10.244.1.0/24", UnderlayIPv6Annotation: tc.annotation}}}
		got, ok := nodeOf(n)
		if !ok || got.IPv6.String() != tc.want {
			t.Errorf("annotation %q: IPv6 %s (usable %t), want %s", tc.annotation, got.IPv6, ok, tc.want)
		}
	}
}
