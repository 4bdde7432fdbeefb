package kube

import (
	"net/netip"
	"slices"
	"testing"
)

// A dual-stack control plane gets both families in --service-cluster-ip-range (API server and
// controller manager) and --cluster-cidr, IPv4 first; an IPv4 one keeps one of each.
func TestControlPlaneFamilies(t *testing.T) {
	cp := &ControlPlane{Dir: "/cp", pki: "/cp/pki", CAFile: "/cp/pki/ca.crt"}
	base := ControlPlaneConfig{EtcdURL: "http://10.0.0.1:2379", AdvertiseIP: netip.MustParseAddr("10.0.0.1"),
		ServiceCIDR: "10.96.0.0/16", ClusterCIDR: "10.244.0.0/16"}
	dual := base
	dual.ServiceCIDRv6, dual.ClusterCIDRv6 = "fd00:10:96::/112", "fd00:10:244::/56"
	for _, tc := range []struct {
		name              string
		cfg               ControlPlaneConfig
		services, cluster string
	}{
		{"IPv4", base, "10.96.0.0/16", "10.244.0.0/16"},
		{"dual stack", dual, "10.96.0.0/16,fd00:10:96::/112", "10.244.0.0/16,fd00:10:244::/56"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api, cm := cp.apiserverArgs(tc.cfg), cp.controllerManagerArgs(tc.cfg)
			for _, want := range []struct {
				args []string
				flag string
			}{
				{api, "--service-cluster-ip-range=" + tc.services},
				{cm, "--service-cluster-ip-range=" + tc.services},
				{cm, "--cluster-cidr=" + tc.cluster},
				{cm, "--allocate-node-cidrs=false"},
			} {
				if !slices.Contains(want.args, want.flag) {
					t.Errorf("no %s in %q", want.flag, want.args)
				}
			}
		})
	}
}
