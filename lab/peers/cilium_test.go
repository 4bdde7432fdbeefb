package peers

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The build script's default version is the one the lab runs (make deps-cilium runs the script
// without the lab telling it).
func TestBuildScriptVersion(t *testing.T) {
	m := regexp.MustCompile(`(?m)^cilium_version=\$\{EBPFNET_CILIUM_VERSION:-(v[0-9.]+)\}`).FindSubmatch(buildScript)
	if m == nil {
		t.Fatal("build-cilium.sh sets no cilium_version default")
	}
	if string(m[1]) != CiliumVersion {
		t.Errorf("build-cilium.sh builds %s by default; the lab runs %s", m[1], CiliumVersion)
	}
}

// Each lab mode gets Cilium's own routing mode, with the lab's tunnel port or its cluster CIDR
// routed natively; IP-in-IP, which Cilium has not, is refused by name.
func TestCiliumArgsFollowTheMode(t *testing.T) {
	cluster := netip.MustParsePrefix("10.244.0.0/16")
	for _, c := range []struct {
		mode string
		want []string
	}{
		{"vxlan", []string{"--routing-mode=tunnel", "--tunnel-protocol=vxlan", "--tunnel-port=8472"}},
		{"native", []string{"--routing-mode=native", "--ipv4-native-routing-cidr=10.244.0.0/16", "--auto-direct-node-routes=true"}},
	} {
		args, err := CiliumArgs(CiliumNode{Mode: c.mode, ClusterCIDR: cluster, VXLANPort: 8472, Device: "eth0", Kubeconfig: "/k"})
		if err != nil {
			t.Fatalf("%s: %v", c.mode, err)
		}
		for _, w := range c.want {
			if !slices.Contains(args, w) {
				t.Errorf("%s: no %s in %v", c.mode, w, args)
			}
		}
		for _, w := range []string{"--kube-proxy-replacement=true", "--devices=eth0", "--k8s-kubeconfig-path=/k", "--ipam=kubernetes"} {
			if !slices.Contains(args, w) {
				t.Errorf("%s: no %s in %v", c.mode, w, args)
			}
		}
	}
	_, err := CiliumArgs(CiliumNode{Mode: "ipip", ClusterCIDR: cluster})
	if err == nil || !strings.Contains(err.Error(), `"ipip"`) {
		t.Errorf("mode ipip: %v, want it refused by name", err)
	}
}
