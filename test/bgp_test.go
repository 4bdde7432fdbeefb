package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/bgp"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/netlinksafe"
)

// bgpLab is a native lab whose agents learn their routes over BGP, one echo pod per node
// (TCP 80, UDP 81: what startStream talks to).
func bgpLab(b *lab.BGPSpec, nodes ...lab.NodeSpec) *lab.Spec {
	ports := []lab.Port{{Port: 80, Protocol: "TCP"}, {Port: 81, Protocol: "UDP"}}
	s := &lab.Spec{Mode: "native", BGP: b, Nodes: nodes, Namespaces: []lab.Namespace{{Name: "x"}}}
	for i, n := range nodes {
		s.Pods = append(s.Pods, lab.PodSpec{Namespace: "x", Name: fmt.Sprintf("p%d", i+1), Node: n.Name,
			Labels: map[string]string{"app": "echo"}, Ports: ports})
	}
	return s
}

// birdRoutes is the set of prefixes in the router's BIRD (`show route`).
func birdRoutes(t *testing.T, st *lab.State) map[netip.Prefix]bool {
	t.Helper()
	out, err := st.Birdc(context.Background(), "show", "route")
	if err != nil {
		t.Fatalf("birdc show route: %v: %s", err, out)
	}
	got := map[netip.Prefix]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			if p, err := netip.ParsePrefix(f[0]); err == nil {
				got[p] = true
			}
		}
	}
	return got
}

// birdProtocolInfo is `birdc show protocols all`'s paragraph on node's session.
func birdProtocolInfo(t *testing.T, st *lab.State, node string) string {
	t.Helper()
	info, ok, all := birdSession(t, st, node)
	if !ok {
		t.Fatalf("birdc show protocols all has no session with %s: %s", node, all)
	}
	return info
}

// birdSession finds node's session in `birdc show protocols all` (all of which it returns too).
func birdSession(t *testing.T, st *lab.State, node string) (info string, ok bool, all string) {
	t.Helper()
	out, err := st.Birdc(context.Background(), "show", "protocols", "all")
	if err != nil {
		t.Fatalf("birdc show protocols all: %v: %s", err, out)
	}
	for _, p := range strings.Split(string(out), "\n\n") {
		if f := strings.Fields(p); len(f) > 0 && strings.HasSuffix(f[0], "_"+node) {
			return p, true, string(out)
		}
	}
	return "", false, string(out)
}

func podCIDRs(st *lab.State) map[netip.Prefix]bool {
	want := map[netip.Prefix]bool{}
	for _, n := range st.Nodes {
		want[n.PodCIDR] = true
	}
	return want
}

func bgpPeers(t *testing.T, n *lab.Node) []bgp.PeerStatus {
	t.Helper()
	var peers []bgp.PeerStatus
	if err := agentapi.NewClient(n.Socket).Get(context.Background(), "/v1/bgp/peers", &peers); err != nil {
		t.Fatalf("%s: bgp peers: %v", n.Name, err)
	}
	return peers
}

func bgpRoutes(t *testing.T, n *lab.Node) []agent.BGPRoute {
	t.Helper()
	var routes []agent.BGPRoute
	if err := agentapi.NewClient(n.Socket).Get(context.Background(), "/v1/bgp/routes", &routes); err != nil {
		t.Fatalf("%s: bgp routes: %v", n.Name, err)
	}
	return routes
}

// waitEstablished waits until every session of n is established and has had the
// neighbour's End-of-RIB.
func waitEstablished(t *testing.T, n *lab.Node, peers int) {
	t.Helper()
	eventually(t, 30*time.Second, n.Name+"'s BGP sessions", func() (bool, string) {
		ps := bgpPeers(t, n)
		ok := len(ps) == peers
		for _, p := range ps {
			ok = ok && p.State == bgp.Established && p.EndOfRIB
		}
		return ok, fmt.Sprintf("%+v", ps)
	})
}

// kernelRoutes lists node n's kernel routes that the agent owns (protocol 0xeb).
func kernelRoutes(t *testing.T, n *lab.Node) string {
	t.Helper()
	out, err := exec.Command("ip", "-n", filepath.Base(n.Netns), "route", "show", "proto", "235").CombinedOutput()
	if err != nil {
		t.Fatalf("ip route: %v: %s", err, out)
	}
	return string(out)
}

func allPodPairs(t *testing.T, st *lab.State, port int, protos ...string) {
	t.Helper()
	allPodPairsFamily(t, st, lab.FamilyIPv4, port, protos...)
}

// allPodPairsFamily is allPodPairs at the pods' addresses of family.
func allPodPairsFamily(t *testing.T, st *lab.State, family string, port int, protos ...string) {
	t.Helper()
	for _, proto := range protos {
		// Sessions come up and routes get installed a moment apart on a loaded machine: wait
		// until every pair answers, and name those that never do.
		eventually(t, 30*time.Second, family+" "+proto+" between all pods", func() (bool, string) {
			m, err := st.MatrixFamily(port, proto, family)
			if err != nil {
				t.Fatal(err)
			}
			if len(m) != len(st.Pods) {
				t.Fatalf("matrix has %d rows, want %d", len(m), len(st.Pods))
			}
			var wrong []string
			for from, row := range m {
				for to, ok := range row {
					if !ok && from != to {
						wrong = append(wrong, from+" does not reach "+to)
					}
				}
			}
			sort.Strings(wrong)
			return len(wrong) == 0, strings.Join(wrong, "; ")
		})
	}
}

// Acceptance (issue 12): two racks joined only by a BIRD router; native mode; every route
// learned over BGP (with TCP MD5). All pod pairs reach each other; BIRD holds exactly the pod
// CIDRs; the underlay carries plain pod IPv4; bogus announcements are refused and counted;
// an agent killed under traffic loses no UDP datagram while graceful restart holds its
// routes; a node that leaves is withdrawn.
func TestBGPRacks(t *testing.T) {
	t.Parallel()
	st := upLab(t, "bgr", bgpLab(&lab.BGPSpec{ASN: 64512, RouterASN: 64500, Password: "ebpfnet-md5"},
		lab.NodeSpec{Name: "node1", Rack: "a"}, lab.NodeSpec{Name: "node2", Rack: "a"}, lab.NodeSpec{Name: "node3", Rack: "b"}))
	node1, _ := st.Node("node1")
	node3, _ := st.Node("node3")
	p1, _ := st.Pod("x/p1")
	p3, _ := st.Pod("x/p3")
	ctx := context.Background()

	t.Run("all pairs", func(t *testing.T) { allPodPairs(t, st, 80, "TCP"); allPodPairs(t, st, 81, "UDP") })
	t.Run("BIRD holds exactly the pod CIDRs", func(t *testing.T) {
		if got, want := birdRoutes(t, st), podCIDRs(st); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("BIRD has %v, want %v", got, want)
		}
	})
	t.Run("plain IPv4 across the router", func(t *testing.T) {
		probe := func() { _ = st.Probe(p1.Key(), p3.Key(), 80, "TCP") } // only its packets count: seen looks for them
		filter := fmt.Sprintf("ip src %s and ip dst %s and tcp port 80", p1.IP, p3.IP)
		if !seen(t, node3.Netns, filter, probe) {
			t.Fatalf("no %q packets reached node3 (the other rack)", filter)
		}
		checkNotEncapsulated(t, st, node3.Netns, filter, probe)
		if !strings.Contains(kernelRoutes(t, node1), node3.PodCIDR.String()) {
			t.Fatalf("node1 has no kernel route to node3's pods: %s", kernelRoutes(t, node1))
		}
	})
	t.Run("bgp peers", func(t *testing.T) {
		waitEstablished(t, node1, 1)
		p := bgpPeers(t, node1)[0]
		if p.ASN != 64500 || !p.MD5 || p.Received != 2 || p.Advertised != 1 || p.Node != "" {
			t.Fatalf("node1's session with the router: %+v", p)
		}
		out, code := ebpfnet(t, "bgp", "peers", "--socket", node1.Socket)
		if code != 0 || !strings.Contains(out, p.Address.String()) || !strings.Contains(out, "established") {
			t.Fatalf("bgp peers: %s", out)
		}
		expo := scrape(t, node1)
		if v := sample(t, expo, "ebpfnet_bgp_session_up", map[string]string{"peer": p.Address.String()}); v != 1 {
			t.Errorf("ebpfnet_bgp_session_up = %v", v)
		}
		if v := sample(t, expo, "ebpfnet_bgp_routes_installed", nil); v != 2 {
			t.Errorf("ebpfnet_bgp_routes_installed = %v, want 2", v)
		}
		if v := sample(t, expo, "ebpfnet_bgp_prefixes_received", map[string]string{"peer": p.Address.String()}); v != 2 {
			t.Errorf("ebpfnet_bgp_prefixes_received = %v, want 2", v)
		}
	})
	t.Run("bogus announcements refused and counted", func(t *testing.T) { checkBogusAnnouncements(t, st) })
	t.Run("agent SIGKILL under traffic", func(t *testing.T) {
		s := startStream(t, p1, p3)
		defer s.stop()
		s.progress(t, 64<<10, "before the kill")
		if err := st.StopAgent("node3"); err != nil {
			t.Fatal(err)
		}
		// The router sees node3's session end (the kernel closed the killed agent's socket)
		// and, by graceful restart, keeps node3's routes: node1 keeps its route to node3, and
		// traffic flows on while the router holds them as stale.
		eventually(t, 30*time.Second, "BIRD to see node3's session end and hold its routes for a graceful restart", func() (bool, string) {
			info := birdProtocolInfo(t, st, "node3")
			return !strings.Contains(info, "Established") && strings.Contains(info, "Neighbor graceful restart active"), info
		})
		for range 3 {
			if !birdRoutes(t, st)[node3.PodCIDR] {
				t.Fatalf("BIRD dropped node3's %s after its agent died: %s", node3.PodCIDR, birdProtocolInfo(t, st, "node3"))
			}
			s.progress(t, 32<<10, "while node3's agent is down")
			s.udpProgress(t, 100, "while node3's agent is down")
		}
		waitRoute(t, node1, node3.PodCIDR, true)
		if err := st.StartAgent(ctx, "node3", labOpts()); err != nil {
			t.Fatal(err)
		}
		waitEstablished(t, node3, 1)
		eventually(t, 30*time.Second, "BIRD's session with node3", func() (bool, string) {
			out, _ := st.Birdc(ctx, "show", "protocols")
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, "node3") {
					return strings.Contains(l, "Established"), l
				}
			}
			return false, string(out)
		})
		s.progress(t, 64<<10, "after the restart")
		s.finish(t)
		if got, want := birdRoutes(t, st), podCIDRs(st); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("after the restart BIRD has %v, want %v", got, want)
		}
		t.Logf("TCP %d KiB echoed, UDP %d/%d datagrams echoed across node3's agent kill and restart",
			s.tcpBytes.Load()>>10, s.udpEchos.Load(), s.udpSent.Load())
	})
	t.Run("a node that leaves is withdrawn", func(t *testing.T) {
		node2, _ := st.Node("node2")
		gone := node2.PodCIDR
		stay := []lab.Node{*node1, *node3} // RemoveNode reshapes st.Nodes: keep copies
		if err := st.RemoveNode(ctx, "node2"); err != nil {
			t.Fatal(err)
		}
		// RemoveNode takes node2 out of the router's configuration: the router withdraws its
		// routes with its session, waiting for no timer (no graceful restart keeps them).
		eventually(t, 30*time.Second, "BIRD to withdraw node2's pod CIDR", func() (bool, string) {
			return !birdRoutes(t, st)[gone], fmt.Sprint(birdRoutes(t, st))
		})
		if info, ok, _ := birdSession(t, st, "node2"); ok {
			t.Errorf("BIRD keeps a session with node2, which left: %s", info)
		}
		for _, n := range stay {
			waitRoute(t, &n, gone, false)
			// The kernel's route goes in the same pass as the map's entry, a moment later.
			eventually(t, 10*time.Second, n.Name+" to drop its kernel route to "+gone.String(), func() (bool, string) {
				kernel := kernelRoutes(t, &n)
				return !strings.Contains(kernel, gone.String()), kernel
			})
		}
		if err := st.Probe(p1.Key(), p3.Key(), 80, "TCP"); err != nil {
			t.Fatalf("node1 to node3 after node2 left: %v", err)
		}
	})
}

// checkBogusAnnouncements has the router originate a prefix outside the cluster, part of
// node3's pod CIDR, a CIDR no node owns and node2's whole CIDR (from the router's own AS):
// node1 installs none of them, counts each by reason, and gets node2's route back after.
func checkBogusAnnouncements(t *testing.T, st *lab.State) {
	ctx := context.Background()
	node1, _ := st.Node("node1")
	node2, _ := st.Node("node2")
	node3, _ := st.Node("node3")
	part := netip.PrefixFrom(node3.PodCIDR.Addr(), node3.PodCIDR.Bits()+1)
	bogus := map[netip.Prefix]string{
		netip.MustParsePrefix("192.0.2.0/24"):    "outside-cluster-cidr",
		part:                                     "not-a-node-pod-cidr",
		netip.MustParsePrefix("10.244.250.0/24"): "not-a-node-pod-cidr",
		node2.PodCIDR:                            "foreign-origin",
	}
	before := scrape(t, node1)
	if err := st.AnnounceFromRouter(ctx, slices.Collect(mapsKeys(bogus))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "node1 to judge the router's announcements", func() (bool, string) {
		found := 0
		for _, r := range bgpRoutes(t, node1) {
			if want, ok := bogus[r.Prefix]; ok && r.Verdict == "refused" && r.Reason == want && r.ASPath[len(r.ASPath)-1] == 64500 {
				found++
			}
		}
		return found == len(bogus), fmt.Sprintf("%d of %d refused", found, len(bogus))
	})
	// The routes reconciler acts on the verdicts after they are given: node2's own route, which
	// the router no longer passes on, goes from the map and the kernel a moment later.
	eventually(t, 20*time.Second, "node1 to hold none of the refused prefixes", func() (bool, string) {
		var routes []maps.Route
		if err := agentapi.NewClient(node1.Socket).Get(ctx, "/v1/routes", &routes); err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if _, ok := bogus[r.Prefix]; ok {
				return false, "node1's routes map holds " + r.Prefix.String()
			}
		}
		kernel := kernelRoutes(t, node1)
		for p := range bogus {
			if strings.Contains(kernel, p.String()+" ") {
				return false, fmt.Sprintf("node1's kernel routes hold %s:\n%s", p, kernel)
			}
		}
		return true, ""
	})
	after := scrape(t, node1)
	for reason, n := range map[string]float64{"outside-cluster-cidr": 1, "not-a-node-pod-cidr": 2, "foreign-origin": 1} {
		l := map[string]string{"reason": reason}
		if d := counterDelta(t, before, after, "ebpfnet_bgp_routes_refused_total", l); d != n {
			t.Errorf("ebpfnet_bgp_routes_refused_total{reason=%q} rose by %v, want %v", reason, d, n)
		}
	}
	out, code := ebpfnet(t, "bgp", "routes", "--socket", node1.Socket)
	if code != 0 || !strings.Contains(out, "refused (outside-cluster-cidr)") || !strings.Contains(out, "installed") {
		t.Fatalf("bgp routes: %s", out)
	}
	if err := st.AnnounceFromRouter(ctx, nil); err != nil {
		t.Fatal(err)
	}
	waitRoute(t, node1, node2.PodCIDR, true)
	eventually(t, 20*time.Second, "the refused paths to go", func() (bool, string) {
		rs := bgpRoutes(t, node1)
		for _, r := range rs {
			if r.Verdict != "installed" {
				return false, fmt.Sprintf("%+v", r)
			}
		}
		return len(rs) == 2, fmt.Sprintf("%d routes", len(rs))
	})
	// The kernel route is back; the datapath's route and the neighbour follow it.
	eventually(t, 20*time.Second, "node1 to reach node2 after the hijack was withdrawn", func() (bool, string) {
		err := st.Probe("x/p1", "x/p2", 80, "TCP")
		return err == nil, fmt.Sprint(err)
	})
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// Acceptance (issue 12): one segment, no router, a full iBGP mesh among the nodes found
// through the store (MD5 on every session): all pairs reach each other, and a node that joins
// is peered with and reached.
func TestBGPMesh(t *testing.T) {
	t.Parallel()
	st := upLab(t, "bgm", bgpLab(&lab.BGPSpec{ASN: 64512, MeshNodes: true, Password: "mesh"},
		lab.NodeSpec{Name: "node1"}, lab.NodeSpec{Name: "node2"}, lab.NodeSpec{Name: "node3"}))
	allPodPairs(t, st, 80, "TCP")
	node1, _ := st.Node("node1")
	waitEstablished(t, node1, 2)
	for _, p := range bgpPeers(t, node1) {
		if p.ASN != 64512 || !p.MD5 || p.Node == "" || p.Received != 1 {
			t.Errorf("node1's mesh session: %+v", p)
		}
	}
	for _, r := range bgpRoutes(t, node1) {
		if r.Verdict != "installed" || len(r.ASPath) != 0 {
			t.Errorf("node1 learned %+v", r)
		}
	}
	ctx := context.Background()
	if _, err := st.AddNode(ctx, lab.NodeSpec{Name: "node4"}, labOpts()); err != nil {
		t.Fatal(err)
	}
	p4, err := st.AddPod(ctx, lab.PodSpec{Namespace: "x", Name: "p4", Node: "node4", Ports: []lab.Port{{Port: 80}}}, labOpts())
	if err != nil {
		t.Fatal(err)
	}
	node4, _ := st.Node("node4")
	waitEstablished(t, node1, 3)
	waitRoute(t, node1, node4.PodCIDR, true)
	eventually(t, 20*time.Second, "x/p1 to reach the new node's pod", func() (bool, string) {
		err := st.Probe("x/p1", p4.Key(), 80, "TCP")
		return err == nil, fmt.Sprint(err)
	})
}

// Acceptance (issue 12): BIRD as an iBGP route reflector for two racks: the nodes learn each
// other's routes through it, originator kept, and reach each other's pods.
func TestBGPRouteReflector(t *testing.T) {
	t.Parallel()
	st := upLab(t, "bgrr", bgpLab(&lab.BGPSpec{ASN: 64512, RouterASN: 64512},
		lab.NodeSpec{Name: "node1", Rack: "a"}, lab.NodeSpec{Name: "node2", Rack: "b"}))
	allPodPairs(t, st, 80, "TCP")
	if got, want := birdRoutes(t, st), podCIDRs(st); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("BIRD has %v, want %v", got, want)
	}
	node1, _ := st.Node("node1")
	node2, _ := st.Node("node2")
	rs := bgpRoutes(t, node1)
	if len(rs) != 1 || rs[0].Prefix != node2.PodCIDR || rs[0].Verdict != "installed" || rs[0].OriginatorID != node2.IP || len(rs[0].ASPath) != 0 {
		b, _ := json.Marshal(rs)
		t.Fatalf("node1 learned %s; want node2's %s reflected with originator %s", b, node2.PodCIDR, node2.IP)
	}
}

// Acceptance (issue 20): a dual-stack lab in two racks, routes over BGP, and an IPv6-only one
// (ipFamilies [IPv6]: the one pod CIDR of each node is IPv6). Each node announces
// its IPv6 pod CIDR too, with its IPv6 underlay address as the next hop: the BIRD router
// learns every node's IPv6 pod CIDR, installs it in its kernel by that next hop and passes it
// on, every node installs the others', and all pods reach each other over IPv6, across racks
// through the router.
func TestBGPDualStack(t *testing.T) {
	for _, families := range [][]string{{lab.FamilyIPv4, lab.FamilyIPv6}, {lab.FamilyIPv6}} {
		t.Run(strings.Join(families, "+"), func(t *testing.T) {
			t.Parallel()
			spec := bgpLab(&lab.BGPSpec{ASN: 64512, RouterASN: 64500},
				lab.NodeSpec{Name: "node1", Rack: "a"}, lab.NodeSpec{Name: "node2", Rack: "a"}, lab.NodeSpec{Name: "node3", Rack: "b"})
			spec.IPFamilies = families
			checkBGPIPv6(t, upLab(t, "bg"+fmt.Sprint(len(families)), spec))
		})
	}
}

// podCIDRv6 is n's IPv6 pod CIDR: its second in a dual-stack lab, its only one in an
// IPv6-only lab.
func podCIDRv6(n *lab.Node) netip.Prefix {
	if n.PodCIDR.Addr().Is6() {
		return n.PodCIDR
	}
	return n.PodCIDRv6
}

// checkBGPIPv6: BIRD learns every node's IPv6 pod CIDR and routes it to the node's IPv6
// address; the nodes install each other's; every pair of pods talks over IPv6, and over IPv4
// in a dual-stack lab.
func checkBGPIPv6(t *testing.T, st *lab.State) {
	t.Run("BIRD learns every IPv6 pod CIDR", func(t *testing.T) {
		eventually(t, 30*time.Second, "every node's IPv6 pod CIDR in BIRD", func() (bool, string) {
			got := birdRoutes(t, st)
			var missing []string
			for _, n := range st.Nodes {
				if !podCIDRv6(&n).IsValid() || !got[podCIDRv6(&n)] {
					missing = append(missing, fmt.Sprintf("%s's %v", n.Name, podCIDRv6(&n)))
				}
			}
			return len(missing) == 0, fmt.Sprintf("missing %v; BIRD has %v", missing, got)
		})
	})
	t.Run("nodes install each other's IPv6 pod CIDRs", func(t *testing.T) {
		for _, n := range st.Nodes {
			eventually(t, 30*time.Second, n.Name+"'s IPv6 routes from BGP", func() (bool, string) {
				installed := map[netip.Prefix]string{}
				for _, r := range bgpRoutes(t, &n) {
					if r.Verdict == "installed" {
						installed[r.Prefix] = r.Node
					}
				}
				for _, other := range st.Nodes {
					if other.Name != n.Name && installed[podCIDRv6(&other)] != other.Name {
						return false, fmt.Sprintf("%s's %s not installed: %v", other.Name, podCIDRv6(&other), installed)
					}
				}
				return true, ""
			})
		}
	})
	t.Run("the router routes each IPv6 pod CIDR to its node", func(t *testing.T) {
		eventually(t, 30*time.Second, "the router's kernel routes", func() (bool, string) {
			via := map[netip.Prefix]netip.Addr{}
			err := namespace.Do(st.Router.Netns, func() error {
				routes, err := netlinksafe.RouteList(nil, netlink.FAMILY_V6)
				for _, r := range routes {
					if r.Dst != nil && r.Gw != nil {
						p, _ := netip.AddrFromSlice(r.Dst.IP)
						bits, _ := r.Dst.Mask.Size()
						via[netip.PrefixFrom(p, bits)], _ = netip.AddrFromSlice(r.Gw)
					}
				}
				return err
			})
			if err != nil {
				return false, err.Error()
			}
			for _, n := range st.Nodes {
				if via[podCIDRv6(&n)] != n.IPv6 {
					return false, fmt.Sprintf("%s via %v, want via %s's %s; routes %v", podCIDRv6(&n), via[podCIDRv6(&n)], n.Name, n.IPv6, via)
				}
			}
			return true, ""
		})
	})
	t.Run("all pairs over IPv6", func(t *testing.T) {
		allPodPairsFamily(t, st, lab.FamilyIPv6, 80, "TCP")
		allPodPairsFamily(t, st, lab.FamilyIPv6, 81, "UDP")
	})
	if st.DualStack() {
		t.Run("all pairs over IPv4", func(t *testing.T) { allPodPairs(t, st, 80, "TCP") })
	}
}
