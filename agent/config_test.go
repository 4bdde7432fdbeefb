package agent

import (
	"net/netip"
	"strings"
	"testing"
)

// The IPv6 fields of a dual-stack node: nodeIPv6 and IPv6 noMasqueradeCIDRs need
// clusterCIDRv6, and nodeIPv6 must be a global unicast address.
func TestConfigNodeIPv6(t *testing.T) {
	base := Config{NodeName: "n1", UnderlayInterface: "eth0", ClusterCIDR: "10.244.0.0/16", Mode: "vxlan",
		Store: StoreConfig{Type: "local", Path: "/tmp/x.db"}}
	dual := base
	dual.ClusterCIDRv6 = "fd00:10:244::/56"
	cases := []struct {
		name string
		cfg  Config
		edit func(*Config)
		want string // "" = accepted
	}{
		{"global address", dual, func(c *Config) { c.NodeIPv6 = "fd00:10::11" }, ""},
		{"without clusterCIDRv6", base, func(c *Config) { c.NodeIPv6 = "fd00:10::11" }, "nodeIPv6: needs clusterCIDRv6"},
		{"link-local", dual, func(c *Config) { c.NodeIPv6 = "fe80::1" }, `nodeIPv6: "fe80::1" is not a global IPv6 address`},
		{"IPv4", dual, func(c *Config) { c.NodeIPv6 = "10.0.0.1" }, `nodeIPv6: "10.0.0.1" is not a global IPv6 address`},
		{"IPv4-mapped", dual, func(c *Config) { c.NodeIPv6 = "::ffff:10.0.0.1" }, `nodeIPv6: "::ffff:10.0.0.1" is not a global IPv6 address`},
		{"IPv6 noMasqueradeCIDR", dual, func(c *Config) { c.NoMasqueradeCIDRs = []string{"10.0.0.0/8", "fd00:99::/32"} }, ""},
		{"IPv6 noMasqueradeCIDR, IPv4 cluster", base, func(c *Config) { c.NoMasqueradeCIDRs = []string{"fd00:99::/32"} },
			`noMasqueradeCIDRs: "fd00:99::/32" is not an IPv4 CIDR (or IPv6, in a dual-stack cluster)`},
	}
	for _, c := range cases {
		cfg := c.cfg
		c.edit(&cfg)
		s, err := cfg.validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		case c.want == "" && cfg.NodeIPv6 != "" && s.nodeIPv6 != netip.MustParseAddr(cfg.NodeIPv6):
			t.Errorf("%s: nodeIPv6 settled as %s", c.name, s.nodeIPv6)
		case c.want == "" && len(cfg.NoMasqueradeCIDRs) == 2 && s.noMasquerade[1] != netip.MustParsePrefix("fd00:99::/32"):
			t.Errorf("%s: noMasqueradeCIDRs settled as %v", c.name, s.noMasquerade)
		}
	}
}
