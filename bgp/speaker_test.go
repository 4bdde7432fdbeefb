package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// pair starts two speakers of one AS on loopback addresses: a (127.0.0.1) dials b
// (127.0.0.2); with password set, the session needs TCP MD5.
func pair(t *testing.T, password string) (a, b *Speaker) {
	return pairOf(t, password, false, 11179, 12179)
}

// pairOf is pair with IPv6 unicast on or off, on the given ports.
func pairOf(t *testing.T, password string, ipv6 bool, portA, portB int) (a, b *Speaker) {
	t.Helper()
	nstest.RequireRoot(t)
	ctx := context.Background()
	start := func(id string, port int) *Speaker {
		s, err := Start(ctx, Config{ASN: 64512, RouterID: netip.MustParseAddr(id), ListenPort: port,
			HoldTime: 9 * time.Second, RestartTime: 30 * time.Second, IPv6: ipv6}, func() {})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
		return s
	}
	a, b = start("127.0.0.1", portA), start("127.0.0.2", portB)
	if err := a.SetNeighbors(ctx, []Neighbor{{Address: netip.MustParseAddr("127.0.0.2"), ASN: 64512, Port: portB, Password: password}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetNeighbors(ctx, []Neighbor{{Address: netip.MustParseAddr("127.0.0.1"), ASN: 64512, Port: portA, Password: password, Node: "a"}}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

func TestSpeakerAdvertisesAndWithdraws(t *testing.T) {
	for _, password := range []string{"", "s3cret"} {
		t.Run("md5="+password, func(t *testing.T) {
			a, b := pair(t, password)
			pfx, nh := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParseAddr("10.250.0.1")
			if err := a.Advertise(map[netip.Prefix]netip.Addr{pfx: nh}); err != nil {
				t.Fatal(err)
			}
			nstest.Eventually(t, 30*time.Second, "b to learn a's prefix", func() (bool, string) {
				paths, err := b.Paths()
				if err != nil {
					return false, err.Error()
				}
				for _, p := range paths {
					if p.Prefix == pfx && p.NextHop == nh && p.Peer == netip.MustParseAddr("127.0.0.1") && p.Best && len(p.ASPath) == 0 {
						return true, ""
					}
				}
				return false, "paths " + formatPaths(paths)
			})
			peers, err := b.Peers(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(peers) != 1 || peers[0].State != Established || peers[0].Received != 1 || peers[0].Node != "a" ||
				peers[0].MD5 != (password != "") || peers[0].Since.IsZero() {
				t.Fatalf("b's peers: %+v", peers)
			}
			if err := a.Advertise(nil); err != nil {
				t.Fatal(err)
			}
			nstest.Eventually(t, 30*time.Second, "the withdrawal to reach b", func() (bool, string) {
				paths, err := b.Paths()
				return err == nil && len(paths) == 0, fmt.Sprintf("%s (%v)", formatPaths(paths), err)
			})
			// A neighbour removed takes its routes with it.
			if err := a.Advertise(map[netip.Prefix]netip.Addr{pfx: nh}); err != nil {
				t.Fatal(err)
			}
			nstest.Eventually(t, 30*time.Second, "b to learn it again", func() (bool, string) {
				paths, err := b.Paths()
				return err == nil && len(paths) == 1, fmt.Sprintf("%s (%v)", formatPaths(paths), err)
			})
			if err := b.SetNeighbors(context.Background(), nil); err != nil {
				t.Fatal(err)
			}
			if paths, err := b.Paths(); err != nil || len(paths) != 0 {
				t.Fatalf("after deleting the neighbour b still has %s (%v)", formatPaths(paths), err)
			}
		})
	}
}

// A dual-stack speaker announces its IPv6 pod CIDR beside the IPv4 one: with its IPv6 address
// as next hop, or, for a node without one, its IPv4 address, which the neighbour reads back
// from its IPv4-mapped form.
func TestSpeakerAdvertisesIPv6(t *testing.T) {
	a, b := pairOf(t, "", true, 13179, 14179)
	v4, v6 := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")
	nh4, nh6 := netip.MustParseAddr("10.250.0.1"), netip.MustParseAddr("fd00:10:250::1")
	learn := func(what string, want map[netip.Prefix]netip.Addr) {
		t.Helper()
		if err := a.Advertise(want); err != nil {
			t.Fatal(err)
		}
		nstest.Eventually(t, 30*time.Second, what, func() (bool, string) {
			paths, err := b.Paths()
			if err != nil {
				return false, err.Error()
			}
			found := 0
			for _, p := range paths {
				if nh, ok := want[p.Prefix]; ok && p.NextHop == nh && p.Best {
					found++
				}
			}
			return found == len(want) && len(paths) == len(want), "paths " + formatPaths(paths)
		})
	}
	learn("b to learn both prefixes, IPv6 by an IPv4 next hop", map[netip.Prefix]netip.Addr{v4: nh4, v6: nh4})
	learn("b to learn the IPv6 prefix by an IPv6 next hop", map[netip.Prefix]netip.Addr{v4: nh4, v6: nh6})
	learn("the IPv6 withdrawal to reach b", map[netip.Prefix]netip.Addr{v4: nh4})
}

func formatPaths(ps []Path) string {
	s := ""
	for _, p := range ps {
		s += p.Prefix.String() + " via " + p.NextHop.String() + " from " + p.Peer.String() + "; "
	}
	return s
}
