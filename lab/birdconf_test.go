package lab

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBirdConfig: the router's config has one session per node on the right leg, the
// next-hop and AS-path handling of eBGP and of a route reflector, and BIRD parses it.
func TestBirdConfig(t *testing.T) {
	for _, tc := range []struct {
		name, bgp string
		want      []string
		not       []string
	}{
		{"ebgp", "bgp: {asn: 64512, routerASN: 64500, password: pw, holdTime: 30s, restartTime: 90s}", []string{
			"router id 10.250.0.253;",
			"export where source = RTS_BGP;",
			"hold time 30;\n\tkeepalive time 10;",
			"graceful restart on;\n\tgraceful restart time 90;",
			`password "pw";`,
			"protocol bgp node_node1 from lab_node {\n\tlocal 10.250.1.254 as 64500;\n\tneighbor 10.250.1.1 as 64512;",
			"protocol bgp node_node3 from lab_node {\n\tlocal 10.250.2.254 as 64500;\n\tneighbor 10.250.2.1 as 64512;",
			"neighbor 10.250.2.1 as 64512;\n\tipv4 { import all; export all; };",
		}, []string{"rr client", "bgp_next_hop", "protocol static", "protocol direct", "learn"}},
		{"route reflector", "bgp: {asn: 64512, routerASN: 64512}", []string{
			"hold time 9;\n\tkeepalive time 3;",
			"graceful restart time 60;",
			"neighbor 10.250.2.1 as 64512;\n\trr client;",
			"if defined(bgp_next_hop) && bgp_next_hop ~ 10.250.2.0/24 then accept;\n\t\t\tbgp_next_hop = 10.250.2.254;",
		}, []string{"password", "export all"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := planFile(t, racksFile+tc.bgp+"\n")
			conf := st.birdConfig()
			for _, w := range tc.want {
				if !strings.Contains(conf, w) {
					t.Errorf("bird.conf lacks %q:\n%s", w, conf)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(conf, w) {
					t.Errorf("bird.conf has %q:\n%s", w, conf)
				}
			}
			if n := strings.Count(conf, "protocol bgp "); n != 3 {
				t.Errorf("%d BGP sessions, want 3", n)
			}
			parses(t, conf)
		})
	}
}

// TestBirdConfigAnnounced: the router's own prefixes are a static protocol of blackholes, gone
// again once the list is empty.
func TestBirdConfigAnnounced(t *testing.T) {
	st := planFile(t, "mode: native\nnodes: [{name: node-1}]\nbgp: {asn: 64512, routerASN: 64500}\n")
	st.Router.Announced = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("192.0.2.0/24")}
	conf := st.birdConfig()
	for _, w := range []string{"protocol static announced {", "route 10.244.0.0/16 blackhole;", "route 192.0.2.0/24 blackhole;",
		"protocol bgp node_node_1 from lab_node {\n\tlocal 10.250.0.253 as 64500;\n\tneighbor 10.250.0.1 as 64512;"} {
		if !strings.Contains(conf, w) {
			t.Errorf("bird.conf lacks %q:\n%s", w, conf)
		}
	}
	parses(t, conf)
	st.Router.Announced = nil
	if conf := st.birdConfig(); strings.Contains(conf, "protocol static") {
		t.Fatalf("announcements withdrawn, but:\n%s", conf)
	}
}

// parses has BIRD itself check conf.
func parses(t *testing.T, conf string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bird.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkBirdConfig(context.Background(), path); err != nil {
		t.Fatalf("%v\n%s", err, conf)
	}
}
