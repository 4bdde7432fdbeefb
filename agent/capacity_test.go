package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/store"
)

func TestMapFullError(t *testing.T) {
	e := &MapFullError{Map: "policy", Need: 70000, Capacity: 65536}
	if want := "policy map full: the change needs 70000 entries, the map holds 65536 (mapSizes.policy)"; e.Error() != want {
		t.Fatalf("%q, want %q", e, want)
	}
	e.Node = "node2"
	if want := "policy map full on node node2: the change needs 70000 entries, the map holds 65536 (mapSizes.policy)"; e.Error() != want {
		t.Fatalf("%q, want %q", e, want)
	}
}

func TestValidateMapSizes(t *testing.T) {
	base := Config{NodeName: "n1", UnderlayInterface: "eth0", ClusterCIDR: "10.244.0.0/16", Mode: "vxlan",
		Store: StoreConfig{Type: "local", Path: "/tmp/x.db"}}
	good := base
	good.MapSizes = maps.Sizes{Endpoints: 16, Policy: 1 << 24, Conntrack: MinFlowEntries(), NAT: MinFlowEntries(), Metrics: 1024, Events: 1 << 16}
	if _, err := good.validate(); err != nil {
		t.Fatalf("valid sizes refused: %v", err)
	}
	if _, err := base.validate(); err != nil {
		t.Fatalf("default sizes refused: %v", err)
	}
	metricsMin := len(maps.ReasonNames) * len(maps.DirectionNames)
	for want, sizes := range map[string]maps.Sizes{
		"mapSizes.endpoints: 15 must be between 16 and 16777216 (0 keeps the default 65536)":                                                {Endpoints: 15},
		"mapSizes.policy: 16777217 must be between 16 and 16777216 (0 keeps the default":                                                    {Policy: 1<<24 + 1},
		"mapSizes.ipcache: 1 must be between 16":                                                                                            {IPCache: 1},
		fmt.Sprintf("mapSizes.conntrack: 512 must be between %d (2048 per CPU: smaller LRU maps evict flows in use) and", MinFlowEntries()): {Conntrack: 512},
		fmt.Sprintf("mapSizes.nat: %d must be between %d (2048 per CPU", MinFlowEntries()-1, MinFlowEntries()):                              {NAT: MinFlowEntries() - 1},
		"mapSizes.noMasquerade: 4294967295 must be between 16":                                                                              {NoMasquerade: ^uint32(0)},
		fmt.Sprintf("mapSizes.metrics: 16 must be between %d (one entry per reason and hook)", metricsMin):                                  {Metrics: 16},
		"mapSizes.events: 5000 bytes must be a power of two":                                                                                {Events: 5000},
		"mapSizes.events: 1024 bytes must be a power of two between the page size":                                                          {Events: 1024},
	} {
		c := base
		c.MapSizes = sizes
		_, err := c.validate()
		if err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%+v: %v, want one line starting %q", sizes, err, want)
		}
	}
}

// capacityAgent is an agent of a local store holding two nodes: n1 (this agent's) with pods
// x/a and x/b, n2 with x/c.
func capacityAgent(t *testing.T) (*Agent, *store.Cluster) {
	t.Helper()
	ctx := context.Background()
	kv, err := store.OpenLocal(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	c := &store.Cluster{KV: kv}
	a := &Agent{cfg: &settled{Config: Config{Store: StoreConfig{Type: "local"}}}, cluster: c, kick: make(chan struct{}, 1), log: slog.Default(),
		node: store.Node{Name: "n1", IP: netip.MustParseAddr("10.250.0.1"), PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}}
	a.metrics = newAgentMetrics(a)
	for _, n := range []store.Node{a.node, {Name: "n2", IP: netip.MustParseAddr("10.250.0.2"), PodCIDR: netip.MustParsePrefix("10.244.2.0/24")}} {
		if err := c.PutNode(ctx, n, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PutNamespace(ctx, "x", map[string]string{}); err != nil {
		t.Fatal(err)
	}
	for i, p := range []struct{ name, node, ip string }{{"a", "n1", "10.244.1.2"}, {"b", "n1", "10.244.1.3"}, {"c", "n2", "10.244.2.2"}} {
		e := store.Endpoint{ContainerID: p.name, IfName: "eth0", Node: p.node, Namespace: "x", Pod: p.name,
			IP: netip.MustParseAddr(p.ip), Labels: map[string]string{"app": p.name}, ID: uint32(i + 2)}
		if err := c.PutEndpoint(ctx, e); err != nil {
			t.Fatal(err)
		}
		// The pods' identities exist, as after a reconcile.
		if _, err := c.Identity(ctx, policy.LabelKey("x", e.Labels, map[string]string{"kubernetes.io/metadata.name": "x"})); err != nil {
			t.Fatal(err)
		}
	}
	return a, c
}

// widePolicy lets every pod of x reach the pods labelled app=SELECTS on any TCP port: 16 port
// blocks for each of the three identities, 48 policy entries per selected pod.
func widePolicy(t *testing.T, selects string) *policy.Input {
	t.Helper()
	nps, err := policy.Parse([]byte(fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: wide-%s, namespace: x}
spec:
  podSelector: {matchLabels: {app: %s}}
  ingress: [{from: [{podSelector: {}}], ports: [{port: 1, endPort: 65535}]}]
`, selects, selects)))
	if err != nil {
		t.Fatal(err)
	}
	return &policy.Input{Policies: nps}
}

func TestCheckChange(t *testing.T) {
	ctx := context.Background()
	a, c := capacityAgent(t)
	roomy := capacity{endpoints: 64, ipcache: 64, policy: 64}
	idsBefore, err := c.Identities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	onB, onC := widePolicy(t, "b").Policies, widePolicy(t, "c").Policies
	cases := []struct {
		name      string
		caps      capacity
		everyNode bool
		edit      func(*policy.Input)
		want      string
	}{
		{"fits", roomy, true, withPolicies(onB), ""},
		{"policy map of this node", capacity{64, 64, 47}, true, withPolicies(onB),
			"policy map full: the change needs 48 entries, the map holds 47 (mapSizes.policy)"},
		{"policy map of another node", capacity{64, 64, 47}, true, withPolicies(onC),
			"policy map full on node n2: the change needs 48 entries, the map holds 47 (mapSizes.policy)"},
		{"another node's left to it", capacity{64, 64, 47}, false, withPolicies(onC), ""},
		// Two node addresses and three pods.
		{"ipcache", capacity{64, 4, 64}, true, nil, "ipcache map full: the change needs 5 entries, the map holds 4 (mapSizes.ipcache)"},
	}
	for _, tc := range cases {
		err := a.checkChange(ctx, tc.caps, tc.everyNode, tc.edit)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || err.Error() != tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// With the policy stored, a label change that makes x/a selected too doubles n1's entries
	// (x/a's new label set is a third identity beside b's and c's: it has none yet, and the
	// check allocates none).
	if err := c.PutPolicy(ctx, onB[0]); err != nil {
		t.Fatal(err)
	}
	relabel := withLabels(agentapi.LabelRequest{Kind: "pod", Namespace: "x", Name: "a", Set: map[string]string{"app": "b", "new": "yes"}})
	want := "policy map full: the change needs 96 entries, the map holds 95 (mapSizes.policy)"
	if err := a.checkChange(ctx, capacity{64, 64, 95}, true, relabel); err == nil || err.Error() != want {
		t.Fatalf("label change: %v, want %q", err, want)
	}
	if err := a.checkChange(ctx, capacity{64, 64, 96}, true, relabel); err != nil {
		t.Fatalf("label change that fits: %v", err)
	}
	if ids, _ := c.Identities(ctx); len(ids) != len(idsBefore) {
		t.Fatalf("checks allocated identities: %d, before %d", len(ids), len(idsBefore))
	}
	// A new pod on this node with x/b's labels: 48 entries more (its own; its identity is x/b's),
	// and one ipcache entry more.
	pod := store.Endpoint{Namespace: "x", Pod: "d", Labels: map[string]string{"app": "b"}, Node: "n1", IP: a.node.PodCIDR.Addr()}
	if err := a.checkChange(ctx, capacity{64, 64, 95}, false, nil, pod); err == nil || !strings.Contains(err.Error(), "needs 96 entries") {
		t.Fatalf("a new pod: %v, want the policy map to need 96 entries", err)
	}
	if err := a.checkChange(ctx, capacity{64, 5, 96}, false, nil, pod); err == nil || !strings.Contains(err.Error(), "ipcache map full: the change needs 6 entries") {
		t.Fatalf("a new pod: %v, want the ipcache to need 6 entries", err)
	}
}

// TestRefuseCounts: a refused change answers CNI's "try again later" and is counted by map.
func TestRefuseCounts(t *testing.T) {
	a, _ := capacityAgent(t)
	err := a.refuse("test", &MapFullError{Map: maps.EndpointsName, Need: 17, Capacity: 16})
	var ae *agentapi.APIError
	if !errors.As(err, &ae) || ae.Code != agentapi.CodeTryAgainLater || ae.Message != "endpoints map full: the change needs 17 entries, the map holds 16 (mapSizes.endpoints)" {
		t.Fatalf("refusal %#v", err)
	}
	other := fmt.Errorf("store down")
	if a.refuse("test", other) != other { //nolint:errorlint // the very error, not one wrapping it
		t.Fatal("an error that is not a full map changed")
	}
	reg := prometheus.NewRegistry() // the agent's own would read the datapath, which is not here
	reg.MustRegister(a.metrics.mapRefusals)
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 {
		t.Fatal(mfs, err)
	}
	got := map[string]float64{}
	for _, m := range mfs[0].Metric {
		got[m.Label[0].GetValue()] = m.Counter.GetValue()
	}
	if got["endpoints"] != 1 || got["policy"] != 0 || got["ipcache"] != 0 || len(got) != 3 {
		t.Fatalf("refusals %v, want endpoints 1 and ipcache and policy 0", got)
	}
}

func TestHoldBack(t *testing.T) {
	var h holdBack
	over := []*MapFullError{{Map: "policy", Need: 80, Capacity: 64}}
	if !h.hold(10, over) || h.hold(10, over) || h.hold(11, over) {
		t.Fatal("a hold is news once, not again for each generation that needs the same")
	}
	if !h.hold(11, []*MapFullError{{Map: "policy", Need: 81, Capacity: 64}}) {
		t.Fatal("a hold that needs more is news")
	}
	if !h.full("policy") || h.full("ipcache") {
		t.Fatal("full names the held map only")
	}
	if h.heldSince(11) == nil || h.heldSince(5) == nil || h.heldSince(12) != nil {
		t.Fatal("a wait for generation 12 must not see generation 11's hold")
	}
	h.release()
	if h.full("policy") || h.heldSince(1) != nil {
		t.Fatal("released, nothing is held")
	}
}

// TestApplyPolicyNearlyFull: when the policy map cannot hold the old entries and the new ones
// at once, the stale ones leave first and the change still goes in whole.
func TestApplyPolicyNearlyFull(t *testing.T) {
	dp, err := loader.Load(loader.Config{Unpinned: true, Sizes: maps.Sizes{Policy: 16}})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	a := &Agent{dp: dp}
	entries := func(peer uint32) *policy.Output {
		out := &policy.Output{}
		for ep := uint32(1); ep <= 12; ep++ {
			out.Policy = append(out.Policy, maps.PolicyEntry{Endpoint: ep, Peer: peer, Direction: maps.Ingress, Rule: 1})
		}
		return out
	}
	for _, peer := range []uint32{300, 301, 300} {
		stale, err := a.applyPolicy(entries(peer))
		if err != nil {
			t.Fatalf("peer %d: %v", peer, err)
		}
		if err := a.removePolicy(stale); err != nil {
			t.Fatal(err)
		}
		have, err := dp.Policy().List()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range have {
			if e.Peer != peer {
				t.Fatalf("after the change to peer %d the map holds %+v", peer, e)
			}
		}
		if len(have) != 12 {
			t.Fatalf("after the change to peer %d the map holds %d entries, want 12", peer, len(have))
		}
	}
}

// The incremental capacity check of a CNI ADD (podRoom) refuses exactly where compiling the
// whole cluster with the pod does, map by map, as pods come and go: from the counted demand
// of a compiled state when the pod's label set is known, by compiling when it is new.
func TestIncrementalRoomRefusesLikeTheFullCheck(t *testing.T) {
	ctx := context.Background()
	a, c := capacityAgent(t)
	if err := c.PutPolicy(ctx, widePolicy(t, "b").Policies[0]); err != nil { // 48 entries per pod app=b of n1
		t.Fatal(err)
	}
	a.roomBase.Store(nil)
	// Each step checks a pod for n1 with the labels app=APP, then stores it on NODE (labelled
	// app=STORED if given) as an ADD there would.
	steps := []struct {
		app, node   string
		incremental bool // whether the check may do without compiling the cluster
		del, stored string
		namedPort   bool // a policy naming a port is stored first
	}{
		{app: "b", node: "n1", incremental: true}, // x/b's label set: 48 more entries
		{app: "b", node: "n1", incremental: true},
		{app: "a", node: "n1", incremental: true},  // selected by nothing: the ipcache only
		{app: "c", node: "n2", incremental: false}, // x/c's label set is on no pod of n1 yet
		{app: "b", node: "n1", incremental: true},  // a pod of n2 came: the ipcache only
		{app: "b", node: "n2", incremental: true, stored: "remote"},
		{app: "b", node: "n1", incremental: true}, // n2's pod is a new peer of x/b's rule
		{app: "b", node: "n1", incremental: true, del: "p1"},
		{app: "new", node: "n1", incremental: false}, // a label set no pod has: compiled
		{app: "new", node: "n1", incremental: true},
		{app: "b", node: "n1", incremental: true},
		{app: "b", node: "n1", incremental: false, namedPort: true}, // resolved per pod: compiled
	}
	for i, s := range steps {
		if s.namedPort {
			nps, err := policy.Parse([]byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{ports: [{port: http}]}]
`))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.PutPolicy(ctx, nps[0]); err != nil {
				t.Fatal(err)
			}
		}
		if s.del != "" {
			if err := c.DeleteEndpoint(ctx, "n1", s.del+"/eth0"); err != nil {
				t.Fatal(err)
			}
		}
		pod := store.Endpoint{Namespace: "x", Pod: fmt.Sprintf("p%d", i), Labels: map[string]string{"app": s.app}, Node: "n1", IP: a.node.PodCIDR.Addr()}
		// Where the full check puts the limits: exactly the demand of the cluster with the pod.
		in, err := a.changedInput(ctx, nil, pod)
		if err != nil {
			t.Fatal(err)
		}
		out, err := policy.Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		ic, pol := demand(out)
		for _, caps := range []capacity{{64, ic, pol}, {64, ic - 1, pol}, {64, ic, pol - 1}, {64, ic - 1, pol - 1}, {64, ic + 1, pol + 1}} {
			full := a.checkChange(ctx, caps, false, nil, pod)
			incremental, got := a.podRoom(ctx, caps, pod)
			if fmt.Sprint(got) != fmt.Sprint(full) {
				t.Errorf("step %d (%s on %s), ipcache %d, policy %d: incremental %v, full %v", i, s.app, s.node, caps.ipcache, caps.policy, got, full)
			}
			if incremental != s.incremental {
				t.Errorf("step %d (%s on %s): incremental %v, want %v", i, s.app, s.node, incremental, s.incremental)
			}
		}
		t.Logf("step %d (%s on %s): ipcache %d, policy %d", i, s.app, s.node, ic, pol)
		// The ADD goes through: the pod is in the store with its address.
		e := store.Endpoint{ContainerID: pod.Pod, IfName: "eth0", Node: s.node, Namespace: "x", Pod: pod.Pod,
			IP: netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)}), Labels: pod.Labels, ID: uint32(10 + i)}
		if s.stored != "" {
			e.Labels = map[string]string{"app": s.stored}
		}
		if s.node == "n2" {
			e.IP = netip.AddrFrom4([4]byte{10, 244, 2, byte(10 + i)})
		}
		if err := c.PutEndpoint(ctx, e); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Identity(ctx, policy.LabelKey("x", e.Labels, map[string]string{"kubernetes.io/metadata.name": "x"})); err != nil {
			t.Fatal(err)
		}
	}
}
