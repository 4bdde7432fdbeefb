package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/deploy"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/maps"
)

// checkAgentsAreTheDaemonSet: `kubectl get ds` shows one ready agent per node; on every node
// exactly one `ebpfnet daemon` runs, and it runs in a container (a pid namespace that is not
// the host's), so none runs beside kubelet as a host process; `kubectl logs` shows its log.
func checkAgentsAreTheDaemonSet(t *testing.T, st *lab.State) {
	var ds struct {
		Status struct{ DesiredNumberScheduled, NumberReady, UpdatedNumberScheduled int }
	}
	if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "ds", "-n", lab.AgentNamespace, lab.AgentDaemonSet, "-o", "json")), &ds); err != nil {
		t.Fatal(err)
	}
	if s := ds.Status; s.DesiredNumberScheduled != len(st.Nodes) || s.NumberReady != len(st.Nodes) {
		t.Errorf("daemonset ebpfnet: %d desired, %d ready; want %d and %d", s.DesiredNumberScheduled, s.NumberReady, len(st.Nodes), len(st.Nodes))
	}
	hostPidNS, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		agents := agentProcesses(t, n)
		if len(agents) != 1 {
			t.Errorf("%s runs %d agent processes %v, want 1", n.Name, len(agents), agents)
		}
		for _, pid := range agents {
			if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); ns == hostPidNS {
				t.Errorf("%s's agent (pid %d) runs outside a container", n.Name, pid)
			}
		}
	}
	logs := kubectl(t, st, "", "logs", "-n", lab.AgentNamespace, "ds/"+lab.AgentDaemonSet, "-c", "agent")
	if !strings.Contains(logs, `msg="agent ready"`) {
		t.Errorf("kubectl logs of the DaemonSet shows no agent log:\n%s", logs)
	}
}

// agentProcesses lists the `ebpfnet daemon` processes in node n's network namespace, whatever
// runs them: the host's own lab agents have `ebpfnet` as their program too.
func agentProcesses(t *testing.T, n lab.Node) []int {
	t.Helper()
	want, err := os.Stat(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		cmdline, err := os.ReadFile(p + "/cmdline")
		args := strings.Split(string(cmdline), "\x00")
		if err != nil || len(args) < 2 || filepath.Base(args[0]) != "ebpfnet" || args[1] != "daemon" {
			continue
		}
		if ns, err := os.Stat(p + "/ns/net"); err == nil && os.SameFile(ns, want) {
			pid, err := strconv.Atoi(filepath.Base(p))
			if err != nil {
				t.Fatal(err)
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

// daemonSetPolicy admits into z/c only pods of namespace y, so x/a->z/c is denied throughout.
const daemonSetPolicy = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ds-lifecycle, namespace: z}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]
`

// policyWatch probes an allowed and a denied pair over and over until stopped: the allowed one
// proves the probes work, the denied one must never answer.
type policyWatch struct {
	allowed, denied  [2]string
	answered, probed atomic.Int64
	failures         atomic.Int64
	stop             context.CancelFunc
	done             chan struct{}
}

func watchPolicy(st *lab.State, allowed, denied [2]string) *policyWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &policyWatch{allowed: allowed, denied: denied, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			if err := st.Probe(allowed[0], allowed[1], 80, "TCP"); err != nil {
				w.failures.Add(1)
			}
			if st.Probe(denied[0], denied[1], 80, "TCP") == nil {
				w.answered.Add(1)
			}
			w.probed.Add(1)
		}
	}()
	return w
}

// check stops the watch and fails the test if the denied pair ever answered or the allowed one
// ever did not.
func (w *policyWatch) check(t *testing.T, during string) {
	t.Helper()
	w.stop()
	<-w.done
	t.Logf("%s: %d probe rounds; %s->%s answered %d times, %s->%s failed %d times",
		during, w.probed.Load(), w.denied[0], w.denied[1], w.answered.Load(), w.allowed[0], w.allowed[1], w.failures.Load())
	if w.probed.Load() == 0 || w.answered.Load() > 0 || w.failures.Load() > 0 {
		t.Errorf("%s: the policy was not enforced throughout", during)
	}
}

// checkDaemonSetLifecycle: while a held TCP connection and a UDP echo stream cross each pair of
// nodes, and a policy denies x/a->z/c, the agents go through what a cluster puts them through:
// an image upgrade from main's build (the lab's start) to this one, whose conntrack map has
// another layout and, by the ConfigMap, half the capacity (every flow carried into the new
// map); `kubectl rollout restart`; and a SIGKILL that kubelet answers by starting the agent
// again. No echo is lost, every held connection still answers, the policy holds throughout, and
// `kubectl rollout status` completes each time.
func checkDaemonSetLifecycle(t *testing.T, st *lab.State) {
	ctx := context.Background()
	kubectl(t, st, daemonSetPolicy, "apply", "-f", "-")
	t.Cleanup(func() {
		kubectl(t, st, "", "delete", "networkpolicy", "-n", "z", "ds-lifecycle", "--ignore-not-found")
		policyWait(t, st)
	})
	policyWait(t, st)
	if st.Probe("x/a", "z/c", 80, "TCP") == nil {
		t.Fatal("x/a reaches z/c: the policy is not enforced before the checks")
	}
	// One stream per pair of nodes, each way round the ring node1 -> node2 -> node3 -> node1.
	var streams []*stream
	for _, pair := range [][2]string{{"x/a", "x/b"}, {"y/b", "z/c"}, {"z/c", "y/a"}} {
		from, to := must(st.Pod(pair[0])), must(st.Pod(pair[1]))
		if from.Node == to.Node {
			t.Fatalf("%s and %s share %s: the streams must cross nodes", pair[0], pair[1], from.Node)
		}
		s := startStream(t, from, to)
		defer s.stop()
		s.progress(t, 16<<10, pair[0]+"->"+pair[1]+" before")
		streams = append(streams, s)
	}
	step := func(name string, do func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			w := watchPolicy(st, [2]string{"y/a", "z/c"}, [2]string{"x/a", "z/c"})
			var from, drops []int64
			for _, s := range streams {
				drops = append(drops, s.socketDrops(t))
				from = append(from, s.udpSent.Load())
			}
			before, kernelBefore := nodeMetrics(t, st), readKernelCounters(t, st)
			do(t)
			lost := false
			for i, s := range streams {
				s.progress(t, 16<<10, "after "+name)
				s.udpProgress(t, 50, "after "+name)
				// Every datagram sent since the step began whose echo is missing while later
				// ones came back, less what a pod's full socket buffer dropped, was lost on the
				// way.
				n, upTo := s.lostSince(from[i])
				full := s.socketDrops(t) - drops[i]
				t.Logf("stream %d: datagrams %d to %d: %d unanswered, %d of them dropped by a full socket buffer",
					i+1, from[i], upTo, n, min(full, n))
				if n > full {
					t.Errorf("stream %d lost %d datagrams on the way during %s", i+1, n-full, name)
					lost = true
				}
			}
			if lost {
				t.Logf("datapath counters before %s:\n%s\nafter:\n%s", name, before, nodeMetrics(t, st))
				t.Logf("kernel drop counters that moved during %s:\n%s", name, readKernelCounters(t, st).since(kernelBefore))
			}
			w.check(t, name)
		})
	}

	// The lab came up on main's build, whose conntrack values are 40 bytes (layout 2): the
	// upgrade to this build carries every flow into layout 3 (56 bytes, replies counted apart)
	// and halves the map's capacity in the ConfigMap too.
	n1 := must(st.Node("node1"))
	capacity := conntrackLayout(t, n1).MaxEntries
	step("image upgrade from main's build with a layout change", func(t *testing.T) {
		for _, n := range st.Nodes {
			if got := conntrackLayout(t, &n); got.ValueSize != 40 || got.MaxEntries != capacity {
				t.Fatalf("%s's conntrack holds %d-byte values and %d entries before the upgrade, want main's 40 and %d",
					n.Name, got.ValueSize, got.MaxEntries, capacity)
			}
		}
		st.MapSizes.Conntrack = capacity / 2
		rollTo(t, st, "docker.io/ebpfnet/ebpfnet:upgrade", ebpfnetBin, filepath.Join(binDir, "ebpfnet-cni"))
		for _, n := range st.Nodes {
			if got := conntrackLayout(t, &n); got.ValueSize != 56 || got.MaxEntries != capacity/2 {
				t.Errorf("%s's conntrack holds %d-byte values and %d entries after the upgrade, want 56 and %d",
					n.Name, got.ValueSize, got.MaxEntries, capacity/2)
			}
		}
	})
	step("rollout restart", func(t *testing.T) {
		before := agentPIDs(t, st)
		kubectl(t, st, "", "rollout", "restart", "-n", lab.AgentNamespace, "ds/"+lab.AgentDaemonSet)
		if err := st.WaitAgents(ctx); err != nil {
			t.Fatal(err)
		}
		for node, pid := range agentPIDs(t, st) {
			if pid == before[node] {
				t.Errorf("%s's agent is still pid %d after the rollout", node, pid)
			}
		}
	})
	step("agent killed", func(t *testing.T) {
		for _, n := range st.Nodes {
			if err := st.KillAgent(ctx, n.Name); err != nil {
				t.Fatal(err)
			}
		}
		restarts := kubectl(t, st, "", "get", "pods", "-n", lab.AgentNamespace, "-l", "app.kubernetes.io/name="+lab.AgentDaemonSet,
			"-o", "jsonpath={.items[*].status.containerStatuses[0].restartCount}")
		if strings.Count(restarts, "1") != len(st.Nodes) {
			t.Errorf("restart counts %q: want each agent restarted once by kubelet", restarts)
		}
	})
	for i, s := range streams {
		s.finish(t)
		t.Logf("stream %d: TCP %d KiB echoed on one held connection, UDP %d of %d datagrams echoed",
			i+1, s.tcpBytes.Load()>>10, s.udpEchos.Load(), s.udpSent.Load())
	}
}

// agentPIDs is each node's agent process.
func agentPIDs(t *testing.T, st *lab.State) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, n := range st.Nodes {
		pids := agentProcesses(t, n)
		if len(pids) != 1 {
			t.Fatalf("%s runs agents %v, want one", n.Name, pids)
		}
		out[n.Name] = pids[0]
	}
	return out
}

// conntrackCapacity is the node's pinned conntrack map's max entries.
// deployUpgradeFrom is main's commit before the conntrack map's layout 3 (reply packets and
// bytes): the kubernetes lab's DaemonSet starts on its build and is upgraded to this one.
const deployUpgradeFrom = "9539297a0fa05e2a783309ded7cfe69925ef3afd"

// rollTo builds an image of image's name from exe and cni, imports it into every node and rolls
// the DaemonSet to it; each agent then runs it.
func rollTo(t *testing.T, st *lab.State, image, exe, cni string) {
	t.Helper()
	ctx := context.Background()
	archive, err := kube.BuildAgentImage(t.TempDir(), image, exe, cni)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.ImportImages(ctx, []string{archive}); err != nil {
		t.Fatal(err)
	}
	if err := st.ApplyAgents(ctx, image); err != nil {
		t.Fatal(err)
	}
	images := kubectl(t, st, "", "get", "pods", "-n", lab.AgentNamespace, "-l", "app.kubernetes.io/name="+lab.AgentDaemonSet,
		"-o", "jsonpath={.items[*].spec.containers[0].image}")
	if strings.Count(images, image) != len(st.Nodes) {
		t.Errorf("agents run %q after the rollout, want %s on every node", images, image)
	}
}

// conntrackLayout is node n's pinned conntrack map as the kernel describes it.
func conntrackLayout(t *testing.T, n *lab.Node) *ebpf.MapInfo {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(maps.PinPath(n.PinDir, maps.ConntrackName), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// checkDeleteAndUninstall: `kubectl delete` of the DaemonSet's manifest stops every agent and
// leaves the pods forwarding; `ebpfnet uninstall` on each node and `kubectl delete` of the CRDs
// then leave no pin, ebpfnet link or route, CNI file or ebpfnet object: each node has only
// what the lab gave it (lo and its underlay device, the loopback plugin).
func checkDeleteAndUninstall(t *testing.T, st *lab.State) {
	ctx := context.Background()
	manifest, err := st.AgentManifest(lab.LabAgentImage)
	if err != nil {
		t.Fatal(err)
	}
	cniFiles := func(n lab.Node) []string {
		dir := filepath.Join(lab.KubeDir(st.Name), "nodes", n.Name)
		return []string{kube.NodeHostPath(dir, filepath.Join(kube.NodeCNIBin, "ebpfnet-cni")),
			kube.NodeHostPath(dir, filepath.Join(kube.NodeCNIConf, "10-ebpfnet.conflist"))}
	}
	for _, n := range st.Nodes {
		fp := footprintOf(t, n, cniFiles(n)...)
		if len(fp.pins) == 0 || len(fp.routes) == 0 || len(fp.cniFiles) != 2 || !slices.Contains(fp.links, "ebpfnet_host") {
			t.Fatalf("%s before the removal: %+v; the check would see nothing", n.Name, fp)
		}
	}
	if objs := kubectl(t, st, "", "get", "ebpfnetrecords,ebpfnetidentities", "-A", "-o", "name"); !strings.Contains(objs, "ebpfnetrecord") || !strings.Contains(objs, "ebpfnetidentit") {
		t.Fatalf("ebpfnet's objects before the removal: %q; the check would see nothing", objs)
	}

	kubectl(t, st, string(manifest), "delete", "-f", "-", "--wait")
	kubectl(t, st, "", "wait", "--for=delete", "pod", "-n", lab.AgentNamespace, "-l", "app.kubernetes.io/name="+lab.AgentDaemonSet, "--timeout=2m")
	for _, n := range st.Nodes {
		if pids := agentProcesses(t, n); len(pids) > 0 {
			t.Fatalf("%s still runs agents %v after kubectl delete", n.Name, pids)
		}
	}
	if bad := probePairs(st, [][2]string{{"x/a", "y/b"}, {"y/b", "z/c"}, {"z/c", "x/a"}}, [2]string{}); len(bad) > 0 {
		t.Fatalf("with the agents deleted, pods stopped forwarding: %v", bad)
	}

	for _, n := range st.Nodes {
		dir := filepath.Join(lab.KubeDir(st.Name), "nodes", n.Name)
		cmd := exec.CommandContext(ctx, "nsenter", "--mount="+filepath.Join(dir, "mnt.ns"), "--net="+n.Netns, "--", ebpfnetBin, "uninstall")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ebpfnet uninstall on %s: %v: %s", n.Name, err, out)
		}
	}
	kubectl(t, st, string(deploy.CRDs), "delete", "-f", "-", "--wait")
	for _, n := range st.Nodes {
		fp := footprintOf(t, n, cniFiles(n)...)
		if !slices.Equal(fp.links, []string{"lo", lab.UnderlayIf}) {
			t.Errorf("%s's links after uninstall: %v, want only lo and %s", n.Name, fp.links, lab.UnderlayIf)
		}
		if left := slices.Concat(fp.routes, fp.pins, fp.cniFiles); len(left) > 0 {
			t.Errorf("uninstall left on %s: %v", n.Name, left)
		}
		dir := filepath.Join(lab.KubeDir(st.Name), "nodes", n.Name)
		if _, err := os.Stat(filepath.Join(kube.NodeHostPath(dir, kube.NodeCNIBin), "loopback")); err != nil {
			t.Errorf("uninstall removed %s's loopback plugin, which is not ebpfnet's: %v", n.Name, err)
		}
	}
	out, err := st.Kubectl(ctx, "get", "crd", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "ebpfnet.io") {
		t.Errorf("CRDs left after kubectl delete: %s", out)
	}
	if _, err := st.Kubectl(ctx, "get", "ebpfnetrecords,ebpfnetidentities", "-A"); err == nil || !strings.Contains(err.Error(), "the server doesn't have a resource type") && !strings.Contains(err.Error(), "NotFound") {
		t.Errorf("ebpfnet's objects still served after the CRDs' deletion: %v", err)
	}
}

// nodeMetrics is every node's `ebpfnet metrics`, for telling where datagrams went.
func nodeMetrics(t *testing.T, st *lab.State) string {
	t.Helper()
	var out []string
	for _, n := range st.Nodes {
		m, _ := ebpfnet(t, "--pin-dir", n.PinDir, "metrics")
		out = append(out, n.Name+":\n"+m)
	}
	return strings.Join(out, "\n")
}
