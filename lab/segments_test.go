package lab

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/agent"
)

func planFile(t *testing.T, file string) *State {
	t.Helper()
	s, err := readSpec(t, file)
	if err != nil {
		t.Fatal(err)
	}
	st, err := plan("t", s)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestPlanRacks: each rack is a segment of its own, the router has a leg in each, and nodes
// are numbered inside their rack, with ports unique across racks.
func TestPlanRacks(t *testing.T) {
	st := planFile(t, racksFile+"bgp: {asn: 64512, routerASN: 64500}\n")
	for i, want := range []struct{ ip, port, bridge, router string }{
		{"10.250.1.1", "r1n1", "rk1", "10.250.1.254"},
		{"10.250.1.2", "r1n2", "rk1", "10.250.1.254"},
		{"10.250.2.1", "r2n1", "rk2", "10.250.2.254"},
	} {
		n := &st.Nodes[i]
		bridge, router := st.segment(n)
		if n.IP.String() != want.ip || portName(n.IP) != want.port || bridge != want.bridge || router.String() != want.router {
			t.Errorf("node %s: %s port %s on %s via %s, want %+v", n.Name, n.IP, portName(n.IP), bridge, router, want)
		}
	}
	if len(st.Racks) != 2 || st.Racks[0].Name != "a" || st.Racks[1].Subnet != netip.MustParsePrefix("10.250.2.0/24") {
		t.Fatalf("racks %+v", st.Racks)
	}
	var legs []string
	for _, l := range st.Router.Legs {
		legs = append(legs, l.Interface+"="+l.Address.String()+"@"+l.BridgePort())
	}
	if want := "[to-br0=10.250.0.253/24@rt-br0 to-rk1=10.250.1.254/24@rt-rk1 to-rk2=10.250.2.254/24@rt-rk2]"; fmt.Sprint(legs) != want {
		t.Fatalf("router legs %s, want %s", fmt.Sprint(legs), want)
	}
	// Joining later: into a rack the lab has, or a new one after the last.
	n, err := st.placeNode(NodeSpec{Name: "node4", Rack: "a"})
	if err != nil || n.IP.String() != "10.250.1.3" {
		t.Fatalf("node4 in rack a: %v %v", n.IP, err)
	}
	n, err = st.placeNode(NodeSpec{Name: "node5", Rack: "c"})
	if err != nil || n.IP.String() != "10.250.3.1" || st.rack("c").Bridge != "rk3" || len(st.Router.Legs) != 4 {
		t.Fatalf("node5 in new rack c: %v %v, racks %+v", n.IP, err, st.Racks)
	}
	st.Nodes = append(st.Nodes, n)
	for _, tc := range []struct{ rack, want string }{{"", "has racks"}, {"B", "not a DNS label"}} {
		if err := st.checkRack(tc.rack); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("rack %q: %v, want %q", tc.rack, err, tc.want)
		}
	}
}

// TestPlanRouterWithoutRacks: the nodes and the router share br0, as a lab without BGP does.
func TestPlanRouterWithoutRacks(t *testing.T) {
	st := planFile(t, "mode: native\nnodes: [{name: n1}, {name: n2}]\nbgp: {asn: 64512, routerASN: 64512}\n")
	bridge, router := st.segment(&st.Nodes[1])
	if st.Nodes[1].IP.String() != "10.250.0.2" || portName(st.Nodes[1].IP) != "n2" || bridge != "br0" || router != routerIP {
		t.Fatalf("n2: %s port %s on %s via %s", st.Nodes[1].IP, portName(st.Nodes[1].IP), bridge, router)
	}
	if len(st.Router.Legs) != 1 || len(st.Racks) != 0 {
		t.Fatalf("router legs %+v, racks %+v", st.Router.Legs, st.Racks)
	}
	if err := st.checkRack("a"); err == nil || !strings.Contains(err.Error(), "has no racks") {
		t.Fatalf("a rack in a lab without: %v", err)
	}
	if st := planFile(t, "mode: native\nnodes: [{name: n1}]\n"); st.Router != nil || st.BGP != nil {
		t.Fatalf("a lab without bgp has a router: %+v", st.Router)
	}
}

// TestAgentConfigBGP: every agent speaks BGP to the router's address in its own segment, and
// its config is one the agent accepts.
func TestAgentConfigBGP(t *testing.T) {
	st := planFile(t, racksFile+"bgp: {asn: 64512, routerASN: 64500, password: pw}\n")
	for i, router := range []string{"10.250.1.254", "10.250.1.254", "10.250.2.254"} {
		cfg := readBackAgentConfig(t, st, &st.Nodes[i])
		b := cfg.BGP
		if cfg.Routing != agent.RoutingBGP || b == nil || b.ASN != 64512 || len(b.Peers) != 1 || b.MeshNodes ||
			b.HoldTime != "9s" || b.GracefulRestart == nil || b.GracefulRestart.RestartTime != "60s" {
			t.Fatalf("node %s: routing %s, bgp %+v", st.Nodes[i].Name, cfg.Routing, b)
		}
		if p := b.Peers[0]; p.Address != router || p.ASN != 64500 || p.Password != "pw" {
			t.Fatalf("node %s's peer %+v, want %s", st.Nodes[i].Name, p, router)
		}
	}
	st = planFile(t, "mode: native\nnodes: [{name: n1}, {name: n2}]\nbgp: {asn: 64512, meshNodes: true, password: pw}\n")
	if b := readBackAgentConfig(t, st, &st.Nodes[0]).BGP; len(b.Peers) != 0 || !b.MeshNodes || b.MeshPassword != "pw" {
		t.Fatalf("mesh: %+v", b)
	}
	plain := planFile(t, labFile)
	if cfg := plain.agentConfig(&plain.Nodes[0], agent.StoreConfig{}); cfg.Routing != "" || cfg.BGP != nil {
		t.Fatalf("a lab without bgp: routing %q, bgp %+v", cfg.Routing, cfg.BGP)
	}
}

func readBackAgentConfig(t *testing.T, st *State, n *Node) *agent.Config {
	t.Helper()
	data, err := yaml.Marshal(st.agentConfig(n, agent.StoreConfig{Type: "etcd", Endpoints: []string{st.EtcdURL}}))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := agent.ReadConfig(path)
	if err != nil {
		t.Fatalf("node %s's agent config: %v", n.Name, err)
	}
	return cfg
}
