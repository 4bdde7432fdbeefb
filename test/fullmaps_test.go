package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// pinnedMap opens one of a lab node's pinned maps for the test's lifetime.
func pinnedMap(t *testing.T, n *lab.Node, name string) *ebpf.Map {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(maps.PinPath(n.PinDir, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// mapEntries counts the entries of a lab node's pinned map.
func mapEntries(t *testing.T, n *lab.Node, name string) int {
	t.Helper()
	m := pinnedMap(t, n, name)
	key, next := make([]byte, m.KeySize()), make([]byte, m.KeySize())
	count := 0
	var cur any
	for {
		if err := m.NextKey(cur, next); errors.Is(err, ebpf.ErrKeyNotExist) {
			return count
		} else if err != nil {
			t.Fatal(err)
		}
		count++
		copy(key, next)
		cur = key
	}
}

// inIPCache says whether a lab node's ipcache holds prefix.
func inIPCache(t *testing.T, n *lab.Node, prefix netip.Prefix) bool {
	t.Helper()
	entries, err := maps.NewIPCache(pinnedMap(t, n, maps.IPCacheName)).List()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Prefix == prefix {
			return true
		}
	}
	return false
}

// wideIngress lets the peers reach every TCP and UDP port (and SCTP with sctp) of the pods
// labelled sel: one policy entry per peer identity for each of 16 port blocks per protocol.
func wideIngress(name, sel, peers string, sctp bool) string {
	ports := "[{protocol: TCP, port: 1, endPort: 65535}, {protocol: UDP, port: 1, endPort: 65535}"
	if sctp {
		ports += ", {protocol: SCTP, port: 1, endPort: 65535}"
	}
	return fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: %s, namespace: x}\n"+
		"spec:\n  podSelector: {matchLabels: {%s}}\n  ingress: [{from: %s, ports: %s]}]\n", name, sel, peers, ports)
}

// mapMetrics is what a node's metrics say of one map.
func mapMetrics(t *testing.T, n *lab.Node, name string) (full, refusals, pressure float64) {
	t.Helper()
	expo, l := scrape(t, n), map[string]string{"map": name}
	return sample(t, expo, "ebpfnet_bpf_map_full", l), sample(t, expo, "ebpfnet_map_refusals_total", l),
		sample(t, expo, "ebpfnet_bpf_map_pressure", l)
}

// Acceptance (issue 13, full maps): a policy apply or a label change whose entries the policy
// map cannot hold is refused whole with one line naming the map and the count; the store,
// the maps and the traffic stay as they were, and the refusal is counted by map.
func TestFullMapsPolicyRefused(t *testing.T) {
	t.Parallel()
	spec := twoNodes("vxlan")
	spec.Pods[0].Labels, spec.Pods[1].Labels = map[string]string{"pod": "a"}, map[string]string{"pod": "b"}
	spec.MapSizes = maps.Sizes{Policy: 64}
	st := upLab(t, "fp", spec)
	ctx := context.Background()
	node1, _ := st.Node("node1")
	node2, _ := st.Node("node2")
	a, _ := st.Pod("x/a")
	b, _ := st.Pod("x/b")
	if got := pinnedMap(t, node2, maps.PolicyName).MaxEntries(); got != 64 {
		t.Fatalf("node2's policy map holds %d entries, the lab asked for 64", got)
	}
	// Two entries on node2: x/a to 80/TCP and 81/UDP of x/b.
	small := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-a, namespace: x}\n" +
		"spec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80}, {port: 81, protocol: UDP}]}]\n"
	if _, err := st.Client().ApplyPolicies(ctx, []byte(small)); err != nil {
		t.Fatal(err)
	}
	policies := func() []string {
		var list agentapi.PolicyList
		if err := st.Client().Get(ctx, "/v1/policies", &list); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range list.Policies {
			out = append(out, fmt.Sprintf("%s/%s selects %v", p.Namespace, p.Name, p.Selects))
		}
		return out
	}
	cidr := netip.MustParsePrefix("192.0.2.0/24")
	before := fmt.Sprint(policies(), mapEntries(t, node1, maps.PolicyName), mapEntries(t, node2, maps.PolicyName),
		mapEntries(t, node1, maps.IPCacheName), mapEntries(t, node2, maps.IPCacheName))

	// x/a, x/b and the CIDR, each on 16 TCP and 16 UDP port blocks: 96 entries on node2 beside
	// allow-a's 2. Applied through node2's agent, whose own map it is.
	file := filepath.Join(t.TempDir(), "wide.yaml")
	wide := wideIngress("wide", "pod: b", "[{podSelector: {}}, {ipBlock: {cidr: "+cidr.String()+"}}]", false)
	if err := os.WriteFile(file, []byte(wide), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := ebpfnet(t, "policy", "apply", "--socket", node2.Socket, "-f", file)
	if want := "ebpfnet: policy map full: the change needs 98 entries, the map holds 64 (mapSizes.policy)\n"; code != 1 || out != want {
		t.Fatalf("policy apply of a policy too large: exit %d %q, want exit 1 %q", code, out, want)
	}
	after := fmt.Sprint(policies(), mapEntries(t, node1, maps.PolicyName), mapEntries(t, node2, maps.PolicyName),
		mapEntries(t, node1, maps.IPCacheName), mapEntries(t, node2, maps.IPCacheName))
	if after != before {
		t.Fatalf("a refused apply changed the store or the maps: %s, before %s", after, before)
	}
	if inIPCache(t, node1, cidr) || inIPCache(t, node2, cidr) {
		t.Fatal("a refused policy's CIDR reached an ipcache")
	}
	if full, refusals, _ := mapMetrics(t, node2, maps.PolicyName); full != 0 || refusals != 1 {
		t.Errorf("node2 after the refusal: ebpfnet_bpf_map_full{map=policy} %v (the map is not full), ebpfnet_map_refusals_total %v, want 0 and 1", full, refusals)
	}
	if err := labProbe(a.Netns, b, 80, "TCP"); err != nil {
		t.Fatalf("x/a to x/b:80 after the refusal: %v", err)
	}

	// A policy that selects no one yet takes no room; the label change that would select x/b
	// is refused by node1's agent (the lab's) on node2's behalf, and x/b keeps its labels.
	big := wideIngress("big", "big: \"yes\"", "[{podSelector: {}}, {ipBlock: {cidr: "+cidr.String()+"}}]", false)
	if _, err := st.Client().ApplyPolicies(ctx, []byte(big)); err != nil {
		t.Fatal(err)
	}
	err := st.Label(ctx, "pod", "x/b", map[string]string{"big": "yes"}, nil)
	if want := "policy map full on node node2: the change needs 98 entries, the map holds 64 (mapSizes.policy)"; err == nil || err.Error() != want {
		t.Fatalf("label change selecting x/b: %v, want %q", err, want)
	}
	if p, _ := st.Pod("x/b"); p.Labels["big"] != "" {
		t.Fatal("the lab recorded a refused label")
	}
	for _, p := range policies() {
		if strings.HasPrefix(p, "x/big ") && p != "x/big selects []" {
			t.Fatalf("after a refused label change %s", p)
		}
	}
	if got := mapEntries(t, node2, maps.PolicyName); got != 2 {
		t.Fatalf("node2's policy map holds %d entries after the refusal, want allow-a's 2", got)
	}
	if _, refusals, _ := mapMetrics(t, node1, maps.PolicyName); refusals != 1 {
		t.Errorf("node1 counted %v policy refusals, want 1", refusals)
	}
	// A change that fits still goes through.
	if err := st.Label(ctx, "pod", "x/b", map[string]string{"team": "blue"}, nil); err != nil {
		t.Fatalf("a label change that fits: %v", err)
	}
	if err := labProbe(a.Netns, b, 80, "TCP"); err != nil {
		t.Fatalf("x/a to x/b:80 after the label change: %v", err)
	}
}

// cniAddIP runs ADD for id in netns and returns the pod's address, or the CNI error.
func cniAddIP(t *testing.T, node *lab.Node, id, netns, conf string) (netip.Addr, int, string) {
	t.Helper()
	out, code := plugin(t, node, cniEnv("ADD", id, netns), conf)
	if code != 0 {
		return netip.Addr{}, code, out
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) == 0 {
		t.Fatalf("ADD %s: result %q: %v", id, out, err)
	}
	p, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		t.Fatal(err)
	}
	return p.Addr(), 0, out
}

// Acceptance (issue 13, full maps): once the endpoints map is full, CNI ADD fails with code
// 11 (try again later) naming the map and leaves nothing; the metrics say which map is full;
// a DEL makes room again.
func TestFullMapsCNIAdd(t *testing.T) {
	t.Parallel()
	spec := twoNodes("vxlan")
	spec.MapSizes = maps.Sizes{Endpoints: 16}
	st := upLab(t, "fe", spec)
	node1, _ := st.Node("node1")
	conf := cniConf(node1.Socket, "")
	room := 16 - len(endpointsOf(t, node1))
	ips := map[string]netip.Addr{}
	for i := 1; i <= room; i++ {
		id := fmt.Sprintf("full-%d", i)
		ip, code, out := cniAddIP(t, node1, id, nstest.New(t, "full").Path, conf)
		if code != 0 {
			t.Fatalf("ADD %s of %d while the map has room: exit %d %s", id, room, code, out)
		}
		ips[id] = ip
	}
	before := stateOf(t, node1)
	fresh := nstest.New(t, "full")
	out, code := plugin(t, node1, cniEnv("ADD", "refused", fresh.Path), conf)
	var cniErr struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	}
	if err := json.Unmarshal([]byte(out), &cniErr); err != nil {
		t.Fatalf("stdout %q is not CNI error JSON: %v", out, err)
	}
	if want := "endpoints map full: the change needs 17 entries, the map holds 16 (mapSizes.endpoints)"; code == 0 || cniErr.Code != 11 || cniErr.Msg != want {
		t.Fatalf("ADD into a full endpoints map: exit %d, error %+v; want code 11 %q", code, cniErr, want)
	}
	if got := stateOf(t, node1); got != before {
		t.Fatalf("the refused ADD left something on node1: %+v, before %+v", got, before)
	}
	if _, err := fresh.NL.LinkByName("eth0"); err == nil {
		t.Fatal("the refused ADD left eth0 in the pod")
	}
	if full, refusals, pressure := mapMetrics(t, node1, maps.EndpointsName); full != 1 || refusals != 1 || pressure != 1 {
		t.Errorf("node1's endpoints metrics: full %v, refusals %v, pressure %v; want 1, 1, 1", full, refusals, pressure)
	}
	// DEL makes room; the refused pod then gets the address DEL freed, the lowest free one:
	// the refusal held no lease of its own.
	if out, code := plugin(t, node1, cniEnv("DEL", "full-1", ""), conf); code != 0 {
		t.Fatalf("DEL: %s", out)
	}
	eventually(t, 5*time.Second, "ebpfnet_bpf_map_full{map=endpoints} back to 0", func() (bool, string) {
		full, _, _ := mapMetrics(t, node1, maps.EndpointsName)
		return full == 0, fmt.Sprint(full)
	})
	ip, code, out := cniAddIP(t, node1, "refused", fresh.Path, conf)
	if code != 0 || ip != ips["full-1"] {
		t.Fatalf("ADD after a DEL: exit %d %s, address %s; want %s, the one DEL freed", code, out, ip, ips["full-1"])
	}
	if _, refusals, _ := mapMetrics(t, node1, maps.EndpointsName); refusals != 1 {
		t.Errorf("node1 counted %v endpoints refusals, want 1", refusals)
	}
}

// Acceptance (issue 13, full maps): a pod attached on node1 whose identity would take node2
// past its policy map (node1's agent cannot refuse what only node2 lacks) is held back on
// node2 whole: its policy and ipcache stay as programmed, the metric says the policy map is
// full, a wait through node2 names the map; once the pod goes, node2 programs again.
func TestFullMapsHeldBack(t *testing.T) {
	t.Parallel()
	spec := twoNodes("vxlan")
	spec.Pods[0].Labels, spec.Pods[1].Labels = map[string]string{"role": "client"}, map[string]string{"pod": "b"}
	spec.MapSizes = maps.Sizes{Policy: 64}
	st := upLab(t, "fh", spec)
	ctx := context.Background()
	node1, _ := st.Node("node1")
	node2, _ := st.Node("node2")
	a, _ := st.Pod("x/a")
	b, _ := st.Pod("x/b")
	// Every client identity takes 48 entries on node2 (16 port blocks of TCP, UDP and SCTP).
	clients := wideIngress("clients", "pod: b", "[{podSelector: {matchLabels: {role: client}}}]", true)
	if _, err := st.Client().ApplyPolicies(ctx, []byte(clients)); err != nil {
		t.Fatal(err)
	}
	if got := mapEntries(t, node2, maps.PolicyName); got != 48 {
		t.Fatalf("node2's policy map holds %d entries, want 48", got)
	}
	c1 := nstest.New(t, "held")
	conf := cniConf(node1.Socket, `, "runtimeConfig": {"podLabels": {"role": "client", "pod": "c1"}}`)
	ip, code, out := cniAddIP(t, node1, "c1", c1.Path, conf)
	if code != 0 {
		t.Fatalf("ADD of a client on node1, which has room: exit %d %s", code, out)
	}
	eventually(t, 10*time.Second, "node2 to say its policy map is full", func() (bool, string) {
		full, refusals, _ := mapMetrics(t, node2, maps.PolicyName)
		return full == 1 && refusals == 1, fmt.Sprintf("full %v, refusals %v", full, refusals)
	})
	err := agentapi.NewClient(node2.Socket).Wait(ctx, 10*time.Second)
	want := "node node2 has not programmed the change: policy map full: the change needs 96 entries, the map holds 64 (mapSizes.policy)"
	if err == nil || err.Error() != want {
		t.Fatalf("wait through node2: %v, want %q", err, want)
	}
	host := netip.PrefixFrom(ip, 32)
	if got := mapEntries(t, node2, maps.PolicyName); got != 48 || inIPCache(t, node2, host) {
		t.Fatalf("node2 programmed part of what it holds back: %d policy entries (want 48), c1 in its ipcache %v", got, inIPCache(t, node2, host))
	}
	eventually(t, 10*time.Second, "node1, which has room, to program c1", func() (bool, string) {
		return inIPCache(t, node1, host), "not in node1's ipcache"
	})
	if err := labProbe(a.Netns, b, 80, "TCP"); err != nil {
		t.Fatalf("x/a to x/b:80 while node2 holds back: %v", err)
	}
	if err := labProbe(c1.Path, b, 80, "TCP"); err == nil {
		t.Fatal("c1 reached x/b although node2 holds back its entries")
	}
	if out, code := plugin(t, node1, cniEnv("DEL", "c1", ""), conf); code != 0 {
		t.Fatalf("DEL: %s", out)
	}
	if err := agentapi.NewClient(node2.Socket).Wait(ctx, 10*time.Second); err != nil {
		t.Fatalf("wait through node2 once c1 is gone: %v", err)
	}
	if full, refusals, _ := mapMetrics(t, node2, maps.PolicyName); full != 0 || refusals != 1 {
		t.Errorf("node2 after the release: full %v, refusals %v; want 0 and 1", full, refusals)
	}
	if err := labProbe(a.Netns, b, 80, "TCP"); err != nil {
		t.Fatalf("x/a to x/b:80 after the release: %v", err)
	}
}

// flow is a conntrack entry as `ct list -o json` prints it.
type flow struct {
	Src, Dst netip.AddrPort
	Protocol uint8
	Packets  uint64
}

func ctList(t *testing.T, n *lab.Node) []flow {
	t.Helper()
	out, code := ebpfnet(t, "--pin-dir", n.PinDir, "ct", "list", "-o", "json")
	if code != 0 {
		t.Fatal(out)
	}
	var flows []flow
	if err := json.Unmarshal([]byte(out), &flows); err != nil {
		t.Fatalf("ct list: %v", err)
	}
	return flows
}

// udpFlows sends one datagram from each source port of a pod to dst and waits briefly for
// its echo: one conntrack entry per port on each node the flow crosses.
func udpFlows(t *testing.T, from *lab.Pod, dst netip.AddrPort, ports []int) {
	t.Helper()
	if err := namespace.Do(from.Netns, func() error { return sendUDPFlows(dst, ports) }); err != nil {
		t.Fatal(err)
	}
}

// udpFlowsOnEveryCPU is udpFlows sent from each CPU in turn, an equal share each. The kernel's
// LRU map keeps each CPU's newest entries on a list of that CPU's, which only allocations on
// the same CPU move on to where they can be evicted: a flood from one CPU leaves the idle flows
// another CPU made alone.
func udpFlowsOnEveryCPU(t *testing.T, from *lab.Pod, dst netip.AddrPort, ports []int) {
	t.Helper()
	n := runtime.NumCPU()
	for cpu := range n {
		share := ports[cpu*len(ports)/n : (cpu+1)*len(ports)/n]
		err := namespace.Do(from.Netns, func() error {
			// Do holds this goroutine on its thread; the thread goes back as it came.
			var all, one unix.CPUSet
			if err := unix.SchedGetaffinity(0, &all); err != nil {
				return err
			}
			one.Set(cpu)
			if err := unix.SchedSetaffinity(0, &one); err != nil {
				return fmt.Errorf("run on CPU %d: %w", cpu, err)
			}
			defer unix.SchedSetaffinity(0, &all) //nolint:errcheck // best effort: the thread was on all
			return sendUDPFlows(dst, share)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// sendUDPFlows sends one datagram to dst from each of ports, each a flow of its own, and waits
// a little for each answer.
func sendUDPFlows(dst netip.AddrPort, ports []int) error {
	buf := make([]byte, 16)
	for _, p := range ports {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: p})
		if err != nil {
			return err
		}
		if _, err := c.WriteToUDPAddrPort([]byte("flow"), dst); err != nil {
			c.Close()
			return err
		}
		// The answer is not the point (the agent's staying up is): the read only waits a little
		// for it, well over what it takes.
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = c.Read(buf)
		c.Close()
	}
	return nil
}

func portRange(from, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = from + i
	}
	return out
}

// Acceptance (issue 13, conntrack pressure): with the smallest conntrack map the agent takes
// on each node, 4x as many short UDP flows evict the old idle flows, never the busy ones: a TCP
// and a UDP stream that x/b can only answer through conntrack (its egress is denied) keep
// flowing, none of their replies is dropped, their entries are never made anew, and new flows
// still work.
func TestConntrackPressure(t *testing.T) {
	t.Parallel()
	// The smallest conntrack map the agent takes here; below it the kernel's LRU evicts flows
	// in use (see agent.MinFlowEntriesPerCPU).
	ctSize := int(agent.MinFlowEntries())
	spec := twoNodes("vxlan")
	spec.Pods[1].Labels = map[string]string{"pod": "b"}
	spec.Pods = append(spec.Pods, lab.PodSpec{Namespace: "x", Name: "c", Node: "node2", Ports: []lab.Port{{Port: 81, Protocol: "UDP"}}})
	spec.MapSizes = maps.Sizes{Conntrack: uint32(ctSize)}
	st := upLab(t, "ct", spec)
	node1, _ := st.Node("node1")
	node2, _ := st.Node("node2")
	a, _ := st.Pod("x/a")
	b, _ := st.Pod("x/b")
	c, _ := st.Pod("x/c")
	for _, n := range []*lab.Node{node1, node2} {
		if got := pinnedMap(t, n, maps.ConntrackName).MaxEntries(); got != uint32(ctSize) {
			t.Fatalf("%s's conntrack map holds %d flows, the lab asked for %d", n.Name, got, ctSize)
		}
	}
	noEgress := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-no-egress, namespace: x}\n" +
		"spec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n"
	if _, err := st.Client().ApplyPolicies(context.Background(), []byte(noEgress)); err != nil {
		t.Fatal(err)
	}
	if err := labProbe(b.Netns, a, 80, "TCP"); err == nil {
		t.Fatal("x/b opened a connection although its egress is denied")
	}
	s := startStream(t, a, b)
	defer func() { s.stop(); s.wg.Wait() }()
	s.progress(t, 1<<20, "the TCP stream before the flood")
	s.udpProgress(t, 100, "the UDP stream before the flood")

	// Idle flows, then the busy streams' entries on both nodes.
	idle := portRange(9000, 100)
	udpFlows(t, a, netip.AddrPortFrom(c.IP, 81), idle)
	streamFlows := func(n *lab.Node) map[string]uint64 {
		got := map[string]uint64{}
		for _, f := range ctList(t, n) {
			if f.Src.Addr() == a.IP && f.Dst.Addr() == b.IP {
				got[f.Dst.String()] = f.Packets
			}
		}
		return got
	}
	idleLeft := func(n *lab.Node) int {
		left := 0
		for _, f := range ctList(t, n) {
			if f.Src.Addr() == a.IP && f.Src.Port() >= 9000 && f.Src.Port() < 9100 {
				left++
			}
		}
		return left
	}
	before := map[string]map[string]uint64{}
	for _, n := range []*lab.Node{node1, node2} {
		if got := idleLeft(n); got != len(idle) {
			t.Fatalf("%s tracks %d of the %d idle flows", n.Name, got, len(idle))
		}
		if before[n.Name] = streamFlows(n); len(before[n.Name]) != 2 {
			t.Fatalf("%s tracks the streams as %v, want a TCP and a UDP flow", n.Name, before[n.Name])
		}
	}
	denied := map[string]string{"direction": "from-pod", "reason": "policy-denied-egress"}
	deniedBefore := scrape(t, node2)

	udpFlowsOnEveryCPU(t, a, netip.AddrPortFrom(c.IP, 81), portRange(10000, 4*ctSize))
	s.progress(t, 1<<20, "the TCP stream after the flood")
	s.udpProgress(t, 100, "the UDP stream after the flood")

	if got := counterDelta(t, deniedBefore, scrape(t, node2), "ebpfnet_drop_packets_total", denied); got != 0 {
		t.Errorf("node2 dropped %v of x/b's replies to the streams: their conntrack entries were lost", got)
	}
	for _, n := range []*lab.Node{node1, node2} {
		after := streamFlows(n)
		for dst, pk := range before[n.Name] {
			if after[dst] <= pk {
				t.Errorf("%s: the stream to %s has %d packets in conntrack, %d before the flood: its entry was evicted and made anew", n.Name, dst, after[dst], pk)
			}
		}
		// The flood ran on every CPU, so it reached each CPU's list of new entries, where the
		// idle flows were made; the kernel's LRU stays approximate (it evicts in batches and
		// spares recently used entries once), so a few may outlive it. Most must go.
		if got := idleLeft(n); got > len(idle)/20 {
			t.Errorf("%s still tracks %d of the %d idle flows after %d newer ones", n.Name, got, len(idle), 4*ctSize)
		} else {
			t.Logf("%s: %d of the %d idle flows left after %d newer ones", n.Name, got, len(idle), 4*ctSize)
		}
		if got := mapEntries(t, n, maps.ConntrackName); got > ctSize {
			t.Errorf("%s's conntrack map holds %d entries, more than its %d", n.Name, got, ctSize)
		}
	}
	// New flows of both kinds still work.
	if err := labProbe(a.Netns, c, 81, "UDP"); err != nil {
		t.Fatalf("a new UDP flow after the flood: %v", err)
	}
	if err := labProbe(a.Netns, b, 80, "TCP"); err != nil {
		t.Fatalf("a new TCP connection after the flood: %v", err)
	}
}
