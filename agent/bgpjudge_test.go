package agent

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/bgp"
	"github.com/ebpfnet/ebpfnet/store"
)

func TestJudgePaths(t *testing.T) {
	pfx, ip := netip.MustParsePrefix, netip.MustParseAddr
	nodes := []store.Node{
		{Name: "n1", IP: ip("10.250.1.1"), PodCIDR: pfx("10.244.0.0/24")},
		{Name: "n2", IP: ip("10.250.1.2"), PodCIDR: pfx("10.244.1.0/24")},
		{Name: "n3", IP: ip("10.250.2.1"), PodCIDR: pfx("10.244.2.0/24")},
	}
	self, cluster, asn := nodes[0], pfx("10.244.0.0/16"), uint32(64512)
	router := ip("10.250.1.254")
	cases := []struct {
		name         string
		path         bgp.Path
		verdict, why string
		node         string
	}{
		{"through an eBGP router", bgp.Path{Prefix: pfx("10.244.2.0/24"), NextHop: router, Peer: router, ASPath: []uint32{64500, 64512}}, pathInstalled, "", "n3"},
		{"from a mesh peer", bgp.Path{Prefix: pfx("10.244.1.0/24"), NextHop: ip("10.250.1.2"), Peer: ip("10.250.1.2")}, pathInstalled, "", "n2"},
		{"reflected", bgp.Path{Prefix: pfx("10.244.2.0/24"), NextHop: ip("10.250.2.1"), Peer: router, OriginatorID: ip("10.250.2.1")}, pathInstalled, "", "n3"},
		{"outside the cluster", bgp.Path{Prefix: pfx("192.0.2.0/24"), NextHop: router, Peer: router, ASPath: []uint32{64500}}, pathRefused, refuseOutsideCluster, ""},
		{"wider than the cluster", bgp.Path{Prefix: pfx("10.0.0.0/8"), NextHop: router, Peer: router, ASPath: []uint32{64500, 64512}}, pathRefused, refuseOutsideCluster, ""},
		{"this node's own", bgp.Path{Prefix: pfx("10.244.0.0/24"), NextHop: router, Peer: router, ASPath: []uint32{64500, 64512}}, pathRefused, refuseOwnCIDR, ""},
		{"more specific of another node's", bgp.Path{Prefix: pfx("10.244.2.128/25"), NextHop: router, Peer: router, ASPath: []uint32{64500, 64512}}, pathRefused, refuseNotNodeCIDR, ""},
		{"no node's", bgp.Path{Prefix: pfx("10.244.9.0/24"), NextHop: router, Peer: router, ASPath: []uint32{64500, 64512}}, pathRefused, refuseNotNodeCIDR, ""},
		{"a node's, originated by the router", bgp.Path{Prefix: pfx("10.244.2.0/24"), NextHop: router, Peer: router, ASPath: []uint32{64500}}, pathRefused, refuseForeignOrigin, ""},
		{"n2 announcing n3's", bgp.Path{Prefix: pfx("10.244.2.0/24"), NextHop: ip("10.250.1.2"), Peer: ip("10.250.1.2")}, pathRefused, refuseWrongNode, ""},
		{"reflected with the wrong originator", bgp.Path{Prefix: pfx("10.244.2.0/24"), NextHop: router, Peer: router, OriginatorID: ip("10.250.1.2")}, pathRefused, refuseWrongNode, ""},
		{"a node's, originated by a route reflector", bgp.Path{Prefix: pfx("10.244.2.0/24"), NextHop: router, Peer: router}, pathRefused, refuseForeignOrigin, ""},
		{"no next hop", bgp.Path{Prefix: pfx("10.244.2.0/24"), Peer: router, ASPath: []uint32{64500, 64512}}, pathRefused, refuseNoNextHop, ""},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			got := judgePaths([]bgp.Path{c.path}, nodes, self, []netip.Prefix{cluster}, asn)
			if len(got) != 1 || got[0].Verdict != c.verdict || got[0].Reason != c.why || got[0].Node != c.node {
				t.Fatalf("got %+v, want verdict %s reason %q node %q", got, c.verdict, c.why, c.node)
			}
		})
	}
	// Dual stack: IPv6 pod CIDRs are judged against the IPv6 cluster CIDR, with the owner's
	// IPv4 next hop.
	nodes6 := append([]store.Node(nil), nodes...)
	for i := range nodes6 {
		nodes6[i].PodCIDRv6 = pfx("fd00:10:244:" + string(rune('0'+i)) + "::/64")
		nodes6[i].IPv6 = ip("fd00:10:250::" + string(rune('1'+i)))
	}
	clusters := []netip.Prefix{cluster, pfx("fd00:10:244::/56")}
	for _, c := range []struct {
		name         string
		path         bgp.Path
		verdict, why string
		node         string
	}{
		{"IPv6 from a mesh peer", bgp.Path{Prefix: pfx("fd00:10:244:1::/64"), NextHop: ip("10.250.1.2"), Peer: ip("10.250.1.2")}, pathInstalled, "", "n2"},
		{"IPv6 through an eBGP router", bgp.Path{Prefix: pfx("fd00:10:244:2::/64"), NextHop: router, Peer: router, ASPath: []uint32{64500, 64512}}, pathInstalled, "", "n3"},
		{"IPv6 of this node", bgp.Path{Prefix: pfx("fd00:10:244::/64"), NextHop: router, Peer: router, ASPath: []uint32{64500, 64512}}, pathRefused, refuseOwnCIDR, ""},
		{"IPv6 outside the cluster", bgp.Path{Prefix: pfx("fd00:99::/64"), NextHop: router, Peer: router, ASPath: []uint32{64500, 64512}}, pathRefused, refuseOutsideCluster, ""},
		{"IPv6 announced by the wrong node", bgp.Path{Prefix: pfx("fd00:10:244:2::/64"), NextHop: ip("10.250.1.2"), Peer: ip("10.250.1.2")}, pathRefused, refuseWrongNode, ""},
		{"IPv6 by the owner's IPv6 next hop", bgp.Path{Prefix: pfx("fd00:10:244:1::/64"), NextHop: ip("fd00:10:250::2"), Peer: ip("10.250.1.2")}, pathInstalled, "", "n2"},
		{"IPv6 by another node's IPv6 next hop", bgp.Path{Prefix: pfx("fd00:10:244:1::/64"), NextHop: ip("fd00:10:250::3"), Peer: router, ASPath: []uint32{64500, 64512}}, pathRefused, refuseWrongNode, ""},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			got := judgePaths([]bgp.Path{c.path}, nodes6, nodes6[0], clusters, asn)
			if len(got) != 1 || got[0].Verdict != c.verdict || got[0].Reason != c.why || got[0].Node != c.node {
				t.Fatalf("got %+v, want verdict %s reason %q node %q", got, c.verdict, c.why, c.node)
			}
		})
	}
	// An IPv4-only cluster refuses IPv6 pod CIDRs.
	if got := judgePaths([]bgp.Path{{Prefix: pfx("fd00:10:244:1::/64"), NextHop: ip("10.250.1.2"), Peer: ip("10.250.1.2")}},
		nodes6, nodes6[0], []netip.Prefix{cluster}, asn); got[0].Reason != refuseOutsideCluster {
		t.Fatalf("an IPv4 cluster judged an IPv6 path %+v", got[0])
	}
	// The first acceptable path of a prefix is installed, the next stands by; a refused best
	// path does not hide an acceptable one behind it.
	paths := []bgp.Path{
		{Prefix: pfx("10.244.2.0/24"), NextHop: router, Peer: router, ASPath: []uint32{64500}, Best: true},
		{Prefix: pfx("10.244.2.0/24"), NextHop: ip("10.250.2.1"), Peer: ip("10.250.2.1")},
		{Prefix: pfx("10.244.2.0/24"), NextHop: router, Peer: ip("10.250.1.253"), ASPath: []uint32{64500, 64512}},
	}
	got := judgePaths(paths, nodes, self, []netip.Prefix{cluster}, asn)
	if got[0].Verdict != pathRefused || got[1].Verdict != pathInstalled || got[2].Verdict != pathStandby {
		t.Fatalf("verdicts %s, %s, %s; want refused, installed, standby", got[0].Verdict, got[1].Verdict, got[2].Verdict)
	}
}

func TestValidateRouting(t *testing.T) {
	base := func() Config {
		return Config{NodeName: "n1", UnderlayInterface: "eth0", ClusterCIDR: "10.244.0.0/16", Mode: "native",
			Store: StoreConfig{Type: "local", Path: "/tmp/x.db"}}
	}
	good := base()
	good.Routing = "bgp"
	good.BGP = &BGPConfig{ASN: 64512, Peers: []BGPPeer{{Address: "10.250.1.254", ASN: 64500, Password: "x"}},
		HoldTime: "9s", GracefulRestart: &BGPGracefulRestart{RestartTime: "60s"}}
	s, err := good.validate()
	if err != nil {
		t.Fatal(err)
	}
	if s.bgp.holdTime.Seconds() != 9 || s.bgp.restartTime.Seconds() != 60 || s.bgp.ListenPort != 179 || len(s.bgp.peers) != 1 {
		t.Fatalf("settled %+v", s.bgp)
	}
	if s, err := base().validate(); err != nil || s.Routing != RoutingStore || s.bgp != nil {
		t.Fatalf("default routing: %v %+v", err, s)
	}
	bad := map[string]func(c *Config){
		`routing: "ospf" must be store or bgp`:                  func(c *Config) { c.Routing = "ospf" },
		"routing: bgp distributes native routes":                func(c *Config) { c.Mode = "vxlan" },
		"bgp: routing is bgp but the bgp section is missing":    func(c *Config) { c.BGP = nil },
		"bgp.asn: must be set":                                  func(c *Config) { c.BGP.ASN = 0 },
		`bgp.routerID: "x" is not an IPv4 address`:              func(c *Config) { c.BGP.RouterID = "x" },
		`bgp.holdTime: "1s" must be a duration between`:         func(c *Config) { c.BGP.HoldTime = "1s" },
		`bgp.gracefulRestart.restartTime: "soon"`:               func(c *Config) { c.BGP.GracefulRestart.RestartTime = "soon" },
		"bgp: no peers and meshNodes is false":                  func(c *Config) { c.BGP.Peers = nil },
		`bgp.peers[0].address: "10.0.0.300" is not an IPv4`:     func(c *Config) { c.BGP.Peers[0].Address = "10.0.0.300" },
		"bgp.peers[0].asn: must be set":                         func(c *Config) { c.BGP.Peers[0].ASN = 0 },
		"bgp.peers[0].password: longer than TCP MD5's 80 bytes": func(c *Config) { c.BGP.Peers[0].Password = strings.Repeat("x", 81) },
		"bgp.peers[1].address: 10.250.1.254 is listed twice": func(c *Config) {
			c.BGP.Peers = append(c.BGP.Peers, c.BGP.Peers[0])
		},
		"bgp: set, but routing is store": func(c *Config) { c.Routing = "" },
	}
	for want, mutate := range bad {
		c := good
		b := *good.BGP
		b.Peers = append([]BGPPeer(nil), good.BGP.Peers...)
		gr := *good.BGP.GracefulRestart
		b.GracefulRestart = &gr
		c.BGP = &b
		mutate(&c)
		if _, err := c.validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error with %q, got %v", want, err)
		}
	}
}
