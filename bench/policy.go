package bench

import (
	"context"
	"fmt"
	"math/rand"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// PolicyScale is from_pod's per-packet cost for a new flow that policy must judge, by the
// number of entries in the policy map.
type PolicyScale struct {
	Entries   int     `json:"entries"`
	DeniedNs  float64 `json:"deniedNs"`  // a new flow no rule allows: every lookup runs
	AllowedNs float64 `json:"allowedNs"` // a packet of an allowed, tracked flow
}

// PolicyCost is everything the policy benchmark reports.
type PolicyCost struct {
	Scale          []PolicyScale `json:"scale"`
	CompilePods    int           `json:"compilePods"`
	CompilePols    int           `json:"compilePolicies"`
	CompileMs      float64       `json:"compileMs"`
	CompileEntries int           `json:"compileEntries"`
	ProgramMs      float64       `json:"programMs"`
	ApplyP50ms     float64       `json:"applyToEnforcedP50ms"`
	ApplyMaxMs     float64       `json:"applyToEnforcedMaxMs"`
}

// MeasurePolicyScale fills the policy map with n unrelated entries and times from_pod.
func MeasurePolicyScale(sizes []int, repeat int) ([]PolicyScale, error) {
	var out []PolicyScale
	for _, n := range sizes {
		dp, err := loader.Load(loader.Config{Unpinned: true, Sizes: maps.Sizes{Policy: uint32(n + 1024)}})
		if err != nil {
			return nil, err
		}
		s, err := scaleOne(dp, n, repeat)
		dp.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func scaleOne(dp *loader.Datapath, n, repeat int) (PolicyScale, error) {
	macA, macB := packet.MAC("02:00:00:00:00:0a"), packet.MAC("02:00:00:00:00:0b")
	a, b := netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("10.0.0.11")
	for _, ep := range []maps.Endpoint{
		{IP: a, Ifindex: 1, ID: 1, Identity: 300, Local: true, MAC: macA, NodeMAC: macB},
		{IP: b, Ifindex: 1, ID: 2, Identity: 400, Local: true, IngressEnforced: true, MAC: macB, NodeMAC: macA},
	} {
		if err := dp.Endpoints().Upsert(ep); err != nil {
			return PolicyScale{}, err
		}
	}
	if err := dp.IPCache().Upsert(maps.IPCacheEntry{Prefix: netip.PrefixFrom(a, 32), Identity: 300}); err != nil {
		return PolicyScale{}, err
	}
	r := rand.New(rand.NewSource(1))
	pol := dp.Policy()
	for i := 0; i < n; i++ {
		e := maps.PolicyEntry{Endpoint: uint32(3 + r.Intn(5000)), Peer: uint32(256 + r.Intn(100000)), Direction: maps.Ingress,
			Protocol: 6, Port: uint16(1 + r.Intn(65535)), PortBits: 16}
		if err := pol.Put(e); err != nil {
			return PolicyScale{}, err
		}
	}
	// The allowed flow: A may reach B on TCP/80.
	if err := pol.Put(maps.PolicyEntry{Endpoint: 2, Peer: 300, Direction: maps.Ingress, Protocol: 6, Port: 80, PortBits: 16}); err != nil {
		return PolicyScale{}, err
	}
	frame := func(dport uint16) []byte {
		return packet.Eth(macB, macA, packet.EtherIPv4, packet.IPv4{Src: a, Dst: b, Proto: packet.ProtoTCP}.Marshal(packet.TCP(40000, dport)))
	}
	s := PolicyScale{Entries: n}
	for _, m := range []struct {
		pkt  []byte
		into *float64
	}{{frame(81), &s.DeniedNs}, {frame(80), &s.AllowedNs}} {
		var samples []float64
		for i := 0; i < 5; i++ {
			_, d, err := dp.FromPod.Benchmark(m.pkt, repeat, nil)
			if err != nil {
				return s, err
			}
			samples = append(samples, float64(d.Nanoseconds()))
		}
		*m.into = median(samples)
	}
	return s, nil
}

// MeasureCompile compiles npol policies over npods pods across 10 nodes and programs node0's
// share into a datapath.
func MeasureCompile(npods, npol int) (ms float64, entries int, programMs float64, err error) {
	r := rand.New(rand.NewSource(2))
	in := policy.Input{Self: "node0", Namespaces: map[string]map[string]string{}}
	for i := 0; i < 10; i++ {
		in.Nodes = append(in.Nodes, policy.Node{Name: fmt.Sprintf("node%d", i), IP: netip.AddrFrom4([4]byte{10, 250, 0, byte(i + 1)})})
	}
	for i := 0; i < 20; i++ {
		in.Namespaces[fmt.Sprintf("ns%d", i)] = map[string]string{"team": fmt.Sprintf("t%d", i%4)}
	}
	for i := 0; i < npods; i++ {
		in.Pods = append(in.Pods, policy.Pod{Namespace: fmt.Sprintf("ns%d", i%20), Name: fmt.Sprintf("p%d", i),
			Labels: map[string]string{"app": fmt.Sprintf("app%d", i%50), "tier": fmt.Sprintf("t%d", i%3)},
			IP:     netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(i%250 + 2)}), Node: fmt.Sprintf("node%d", i%10),
			EndpointID: uint32(i + 1), Ports: []policy.NamedPort{{Name: "http", Port: 8080, Protocol: "TCP"}}})
	}
	ids := map[string]uint32{}
	in.Identity = func(k string) (uint32, error) {
		if id, ok := ids[k]; ok {
			return id, nil
		}
		ids[k] = uint32(256 + len(ids))
		return ids[k], nil
	}
	tcp := corev1.ProtocolTCP
	for i := 0; i < npol; i++ {
		port := intstrPort(8000 + r.Intn(100))
		in.Policies = append(in.Policies, &networkingv1.NetworkPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns%d", i%20), Name: fmt.Sprintf("pol%d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", r.Intn(50))}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{
						PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"tier": fmt.Sprintf("t%d", r.Intn(3))}},
						NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", r.Intn(4))}},
					}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
				}},
			},
		})
	}
	start := time.Now()
	out, err := policy.Compile(in)
	if err != nil {
		return 0, 0, 0, err
	}
	ms = float64(time.Since(start).Microseconds()) / 1000
	dp, err := loader.Load(loader.Config{Unpinned: true})
	if err != nil {
		return 0, 0, 0, err
	}
	defer dp.Close()
	start = time.Now()
	for _, e := range out.IPCache {
		if err := dp.IPCache().Upsert(e); err != nil {
			return 0, 0, 0, err
		}
	}
	for _, e := range out.Policy {
		if err := dp.Policy().Put(e); err != nil {
			return 0, 0, 0, err
		}
	}
	programMs = float64(time.Since(start).Microseconds()) / 1000
	return ms, len(out.Policy), programMs, nil
}

// MeasureApply times `policy apply` until every node of a three-node lab enforces it (the
// call returns then), and checks that it does.
func MeasureApply(rounds int) (p50, max float64, err error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, 0, err
	}
	spec := &lab.Spec{Mode: "vxlan", Nodes: []lab.NodeSpec{{Name: "n1"}, {Name: "n2"}, {Name: "n3"}},
		Namespaces: []lab.Namespace{{Name: "x"}},
		Pods: []lab.PodSpec{{Namespace: "x", Name: "a", Node: "n1", Labels: map[string]string{"pod": "a"}, Ports: []lab.Port{{Port: 80}}},
			{Namespace: "x", Name: "b", Node: "n2", Labels: map[string]string{"pod": "b"}, Ports: []lab.Port{{Port: 80}}},
			{Namespace: "x", Name: "c", Node: "n3", Labels: map[string]string{"pod": "c"}, Ports: []lab.Port{{Port: 80}}}}}
	if err := spec.Validate(); err != nil {
		return 0, 0, err
	}
	name := fmt.Sprintf("bp%d", time.Now().UnixNano()%10000)
	defer downLab(name)
	st, err := lab.Up(context.Background(), name, spec, lab.Options{Exe: filepath.Join(filepath.Dir(exe), "ebpfnet")})
	if err != nil {
		return 0, 0, err
	}
	deny := []byte("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress: []\n")
	var took []float64
	ctx := context.Background()
	for i := 0; i < rounds; i++ {
		start := time.Now()
		if _, err := st.Client().ApplyPolicies(ctx, deny); err != nil {
			return 0, 0, err
		}
		took = append(took, float64(time.Since(start).Microseconds())/1000)
		if err := st.Probe("x/a", "x/b", 80, "TCP"); err == nil {
			return 0, 0, fmt.Errorf("policy apply returned before the deny was enforced")
		}
		if err := st.Client().DeletePolicy(ctx, "x", "deny"); err != nil {
			return 0, 0, err
		}
	}
	sort.Float64s(took)
	return median(took), took[len(took)-1], nil
}

// iptablesRules loads n non-matching FORWARD rules in front of an ACCEPT, in one restore.
func iptablesRules(ns string, n int) error {
	var b strings.Builder
	b.WriteString("*filter\n:FORWARD ACCEPT [0:0]\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "-A FORWARD -s 192.0.%d.%d/32 -p tcp --dport %d -j DROP\n", (i/250)%250, i%250+1, 1000+i%50000)
	}
	b.WriteString("-A FORWARD -j ACCEPT\nCOMMIT\n")
	cmd := exec.Command("ip", "netns", "exec", ns, "iptables-restore")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore: %w: %s", err, out)
	}
	return nil
}

// PolicyThroughput are the setups of the policy throughput suite.
func PolicyThroughput() []Builder {
	return []Builder{
		{"kernel-route+10k-iptables", func(p string) (*Topology, error) {
			t, err := buildRouted(p, "kernel-route+10k-iptables", false, IPv4)
			if err != nil {
				return nil, err
			}
			return t, iptablesRules(p+"-n", 10000)
		}},
		{"ebpfnet+10k-rules", func(p string) (*Topology, error) {
			t, err := buildRouted(p, "ebpfnet+10k-rules", true, IPv4)
			if err != nil {
				return nil, err
			}
			return t, loadRules(p, t, 10000)
		}},
	}
}

// loadRules enforces ingress on the server with 10k unrelated entries and one that allows
// the client.
func loadRules(prefix string, t *Topology, n int) error {
	m, err := openPinnedPolicy(prefix)
	if err != nil {
		return err
	}
	defer m.close()
	r := rand.New(rand.NewSource(3))
	for i := 0; i < n; i++ {
		if err := m.pol.Put(maps.PolicyEntry{Endpoint: uint32(100 + r.Intn(5000)), Peer: uint32(256 + r.Intn(100000)),
			Direction: maps.Ingress, Protocol: 6, Port: uint16(1 + r.Intn(65535)), PortBits: 16}); err != nil {
			return err
		}
	}
	srv, ok, err := m.eps.Lookup(t.ServerIP)
	if err != nil || !ok {
		return fmt.Errorf("server endpoint: %w", err)
	}
	for _, port := range []uint16{iperfPort, latencyPort} {
		if err := m.pol.Put(maps.PolicyEntry{Endpoint: srv.ID, Peer: maps.IdentityAny, Direction: maps.Ingress, Protocol: 6, Port: port, PortBits: 16}); err != nil {
			return err
		}
	}
	srv.IngressEnforced = true
	return m.eps.Upsert(srv)
}

func intstrPort(p int) intstr.IntOrString { return intstr.FromInt32(int32(p)) }
