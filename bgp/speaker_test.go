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
	t.Helper()
	nstest.RequireRoot(t)
	ctx := context.Background()
	start := func(id string, port int) *Speaker {
		s, err := Start(ctx, Config{ASN: 64512, RouterID: netip.MustParseAddr(id), ListenPort: port,
			HoldTime: 9 * time.Second, RestartTime: 30 * time.Second}, func() {})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
		return s
	}
	a, b = start("127.0.0.1", 11179), start("127.0.0.2", 12179)
	if err := a.SetNeighbors(ctx, []Neighbor{{Address: netip.MustParseAddr("127.0.0.2"), ASN: 64512, Port: 12179, Password: password}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetNeighbors(ctx, []Neighbor{{Address: netip.MustParseAddr("127.0.0.1"), ASN: 64512, Port: 11179, Password: password, Node: "a"}}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

func TestSpeakerAdvertisesAndWithdraws(t *testing.T) {
	for _, password := range []string{"", "s3cret"} {
		t.Run("md5="+password, func(t *testing.T) {
			a, b := pair(t, password)
			pfx, nh := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParseAddr("10.250.0.1")
			if err := a.Advertise([]netip.Prefix{pfx}, nh); err != nil {
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
			if err := a.Advertise(nil, nh); err != nil {
				t.Fatal(err)
			}
			nstest.Eventually(t, 30*time.Second, "the withdrawal to reach b", func() (bool, string) {
				paths, err := b.Paths()
				return err == nil && len(paths) == 0, fmt.Sprintf("%s (%v)", formatPaths(paths), err)
			})
			// A neighbour removed takes its routes with it.
			if err := a.Advertise([]netip.Prefix{pfx}, nh); err != nil {
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

func formatPaths(ps []Path) string {
	s := ""
	for _, p := range ps {
		s += p.Prefix.String() + " via " + p.NextHop.String() + " from " + p.Peer.String() + "; "
	}
	return s
}
