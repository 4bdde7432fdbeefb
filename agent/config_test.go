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

// An IPv6 clusterCIDR makes the cluster IPv6-only: nodes take /64s, Services come from an IPv6
// service CIDR (fd00:10:96::/112 by default) and are IPv6 alone; the dual-stack fields and
// IPv4 ones of the other family are refused, each naming what is wrong.
func TestConfigIPv6Only(t *testing.T) {
	base := Config{NodeName: "n1", UnderlayInterface: "eth0", ClusterCIDR: "fd00:10:244::/56", Mode: "vxlan",
		Store: StoreConfig{Type: "local", Path: "/tmp/x.db"}}
	s, err := base.validate()
	if err != nil {
		t.Fatal(err)
	}
	if !s.ipv6Only() || !s.hasIPv6() || s.PodCIDRBits != 64 || s.serviceCIDR != netip.MustParsePrefix(DefaultServiceCIDRv6) {
		t.Fatalf("settled: ipv6Only %v, hasIPv6 %v, podCIDRBits %d, serviceCIDR %s", s.ipv6Only(), s.hasIPv6(), s.PodCIDRBits, s.serviceCIDR)
	}
	if fams := s.serviceFamilies(); len(fams) != 1 || fams[0] != "IPv6" {
		t.Fatalf("service families %v, want [IPv6]", fams)
	}
	if c := s.serviceCIDRFor("IPv4"); c.IsValid() {
		t.Fatalf("IPv4 cluster IPs come from %s in an IPv6-only cluster", c)
	}
	cases := []struct {
		name string
		edit func(*Config)
		want string // "" = accepted
	}{
		{"pod CIDR", func(c *Config) { c.PodCIDR = "fd00:10:244:5::/64" }, ""},
		{"node IPv6 and IPv6 noMasquerade", func(c *Config) { c.NodeIPv6 = "fd00:10::11"; c.NoMasqueradeCIDRs = []string{"fd00:99::/32"} }, ""},
		{"service CIDR", func(c *Config) { c.ServiceCIDR = "fd00:20::/112" }, ""},
		{"a /72", func(c *Config) { c.ClusterCIDR = "fd00:10:244::/72" }, `clusterCIDR: "fd00:10:244::/72" is not an IPv4 network, or an IPv6 one of /64 or larger`},
		{"host bits", func(c *Config) { c.ClusterCIDR = "fd00:10:244::1/56" }, "clusterCIDR:"},
		{"podCIDRBits", func(c *Config) { c.PodCIDRBits = 24 }, "podCIDRBits: 24, but an IPv6 clusterCIDR gives each node a /64"},
		{"IPv4 pod CIDR", func(c *Config) { c.PodCIDR = "10.244.1.0/24" }, `podCIDR: "10.244.1.0/24" is not an IPv6 /64 network`},
		{"pod CIDR outside", func(c *Config) { c.PodCIDR = "fd00:11::/64" }, "podCIDR: fd00:11::/64 is not inside clusterCIDR"},
		{"clusterCIDRv6", func(c *Config) { c.ClusterCIDRv6 = "fd00:20::/56" }, "clusterCIDRv6: only beside an IPv4 clusterCIDR"},
		{"podCIDRv6", func(c *Config) { c.PodCIDRv6 = "fd00:10:244:1::/64" }, "podCIDRv6: only beside an IPv4 clusterCIDR"},
		{"IPv4 service CIDR", func(c *Config) { c.ServiceCIDR = "10.96.0.0/12" }, `serviceCIDR: "10.96.0.0/12" is not an IPv6 network`},
		{"serviceCIDRv6", func(c *Config) { c.ServiceCIDRv6 = "fd00:20::/112" }, "serviceCIDRv6: needs clusterCIDRv6"},
		{"IPv4 noMasquerade", func(c *Config) { c.NoMasqueradeCIDRs = []string{"10.0.0.0/8"} }, `noMasqueradeCIDRs: "10.0.0.0/8" is not an IPv6 CIDR (the cluster is IPv6-only)`},
	}
	for _, c := range cases {
		cfg := base
		c.edit(&cfg)
		_, err := cfg.validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}
