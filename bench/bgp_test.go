package bench

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestBirdPrefixes(t *testing.T) {
	out := `Table master4:
10.244.1.0/24        unicast [node_a1 04:16:52.123] * (100) [AS64512i]
	via 10.250.1.1 on to-rk1
10.244.2.0/24        unicast [node_b1 04:16:52.456] * (100) [AS64512i]
	via 10.250.2.1 on to-rk2
`
	got := fmt.Sprint(birdPrefixes(out))
	if want := fmt.Sprint([]netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.2.0/24")}); got != want {
		t.Errorf("birdPrefixes = %s, want %s", got, want)
	}
	if ps := birdPrefixes("Network not found\n"); len(ps) != 0 {
		t.Errorf("birdPrefixes of no route = %v", ps)
	}
}

func TestSpread(t *testing.T) {
	if got, want := spread([]float64{30, 10, 20, 400}), (Spread{P50ms: 25, MaxMs: 400}); got != want {
		t.Errorf("spread = %+v, want %+v", got, want)
	}
	if got := spread(nil); got != (Spread{}) {
		t.Errorf("spread of nothing = %+v", got)
	}
}

func TestBGPConvergenceMarkdown(t *testing.T) {
	r := &Report{BGP: &BGPConvergence{Joins: 5, RoutesConverged: Spread{P50ms: 1709.4, MaxMs: 1892}, Leave: Spread{P50ms: 144, MaxMs: 150}}}
	md := r.Markdown()
	for _, want := range []string{"## BGP route convergence", "node joins rack b and leaves, 5 times",
		"| routes converged | new agent ready | BIRD and rack a's node's routes map both hold it | 1709 ms | 1892 ms |",
		"| leave | RemoveNode starts |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}
