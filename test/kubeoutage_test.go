package test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// checkAgentRestartAndAPIOutage: the datapath outlives its control plane. A node's agent is
// killed while a policy and labels change, and enforces them once back; the API server is
// killed for 30 s under traffic, and every node keeps forwarding and enforcing meanwhile, then
// follows the API again. The lab is left as found.
func checkAgentRestartAndAPIOutage(t *testing.T, st *lab.State) {
	t.Run("agent restarted after changes", func(t *testing.T) { checkAgentRestart(t, st) })
	t.Run("API server down 30s", func(t *testing.T) { checkAPIServerOutage(t, st) })
}

// lockedPolicy admits into pods of x labelled locked=yes only pods of x labelled trusted=yes.
const lockedPolicy = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: locked, namespace: x}
spec:
  podSelector: {matchLabels: {locked: "yes"}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {trusted: "yes"}}}]
`

// checkAgentRestart kills node2's agent, then applies lockedPolicy and labels x/b (node2)
// locked=yes and x/c (node3) trusted=yes. While the agent is down, `policy wait` names node2 and
// node2's pods still reach and are reached by the others. Once it is back and `policy wait`
// returns, node2 enforces both changes: x/b admits x/c only.
func checkAgentRestart(t *testing.T, st *lab.State) {
	ctx := context.Background()
	pods := []string{"x/a", "x/b", "x/c", "y/a", "y/b", "z/b", "z/c"}
	var onNode2, others []string
	for _, key := range pods {
		p, err := st.Pod(key)
		if err != nil {
			t.Fatal(err)
		}
		if p.Node == "node2" {
			onNode2 = append(onNode2, key)
		} else {
			others = append(others, key)
		}
	}
	if !slices.Contains(onNode2, "x/b") || slices.Contains(onNode2, "x/c") {
		t.Fatalf("the check needs x/b on node2 and x/c elsewhere: node2 runs %v", onNode2)
	}
	expectAmong(t, st, "before", pods, nil)

	undone := false
	undo := func() {
		if undone {
			return
		}
		undone = true
		if n, _ := st.Node("node2"); n.AgentPID == 0 {
			if err := st.StartAgent(ctx, "node2", labOpts()); err != nil {
				t.Errorf("restart node2's agent: %v", err)
			}
		}
		kubectl(t, st, "", "delete", "networkpolicy", "-n", "x", "locked", "--ignore-not-found")
		kubectl(t, st, "", "label", "pod", "-n", "x", "b", "locked-")
		kubectl(t, st, "", "label", "pod", "-n", "x", "c", "trusted-")
		policyWait(t, st)
	}
	t.Cleanup(undo)

	if err := st.StopAgent("node2"); err != nil {
		t.Fatal(err)
	}
	kubectl(t, st, lockedPolicy, "apply", "-f", "-")
	kubectl(t, st, "", "label", "pod", "-n", "x", "b", "locked=yes")
	kubectl(t, st, "", "label", "pod", "-n", "x", "c", "trusted=yes")
	out, code := ebpfnet(t, "policy", "wait", "--lab", st.Name, "--timeout", "5s")
	if code == 0 || !strings.Contains(out, "node2") {
		t.Errorf("policy wait with node2's agent down: exit %d, want a failure naming node2: %s", code, out)
	}
	// Nothing reprograms node2 meanwhile: what it forwarded, it forwards. x/b is left out, as
	// the change is about it.
	var wrong []string
	for _, from := range others {
		for _, to := range onNode2 {
			for _, pair := range [][2]string{{from, to}, {to, from}} {
				if pair[0] == "x/b" || pair[1] == "x/b" {
					continue
				}
				if err := st.Probe(pair[0], pair[1], 80, "TCP"); err != nil {
					wrong = append(wrong, fmt.Sprintf("%s->%s: %v", pair[0], pair[1], err))
				}
			}
		}
	}
	if len(wrong) > 0 {
		t.Errorf("with node2's agent down, %d flows broke: %s", len(wrong), strings.Join(wrong, "; "))
	}

	start := time.Now()
	if err := st.StartAgent(ctx, "node2", labOpts()); err != nil {
		t.Fatal(err)
	}
	policyWait(t, st)
	t.Logf("node2's agent restarted and programmed the changes in %s", time.Since(start).Round(time.Millisecond))
	expectAmong(t, st, "after the restart", pods, func(from, to string) bool { return to == "x/b" && from != "x/c" })

	undo()
	expectAmong(t, st, "after the cleanup", pods, nil)
}

// outagePolicy admits into z/c only pods of namespaces y and z.
const outagePolicy = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: outage, namespace: z}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}
    - podSelector: {}
`

// apiOutage is how long the API server stays down (the store outage tests' length).
const apiOutage = storeOutage

// checkAPIServerOutage applies outagePolicy, kills the API server for apiOutage and probes all
// along: allowed pairs across all three nodes answer every time, x/a->z/c never does, and no
// agent dies. Once the API server is back, deleting the policy is enforced within `policy
// wait`'s 60 s: the agents' watches came back by themselves.
func checkAPIServerOutage(t *testing.T, st *lab.State) {
	ctx := context.Background()
	cp, err := st.ControlPlane()
	if err != nil {
		t.Fatal(err)
	}
	allowed := [][2]string{{"y/a", "z/c"}, {"z/a", "z/c"}, {"y/b", "z/c"}, {"x/a", "y/b"}, {"y/c", "x/a"}, {"z/b", "x/c"}, {"x/b", "z/a"}, {"z/c", "x/a"}}
	denied := [2]string{"x/a", "z/c"}
	pids := map[string]int{}
	for _, n := range st.Nodes {
		pids[n.Name] = n.AgentPID
	}

	apiDown := false
	undone := false
	undo := func() {
		if undone {
			return
		}
		undone = true
		if apiDown {
			if err := cp.StartAPIServer(ctx); err != nil {
				t.Fatalf("restart the API server: %v", err)
			}
			apiDown = false
		}
		kubectl(t, st, "", "delete", "networkpolicy", "-n", "z", "outage", "--ignore-not-found")
		policyWait(t, st)
	}
	t.Cleanup(undo)

	kubectl(t, st, outagePolicy, "apply", "-f", "-")
	policyWait(t, st)
	if bad := probePairs(st, allowed, denied); len(bad) > 0 {
		t.Fatalf("with the policy in force: %s", strings.Join(bad, "; "))
	}

	if err := cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	apiDown = true
	down := time.Now()
	kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	out, err := cp.Kubectl(kctx, "get", "namespaces", "--request-timeout=3s")
	cancel()
	if err == nil {
		t.Fatalf("kubectl still works with the API server killed: %s", out)
	}
	for _, n := range st.Nodes {
		eventually(t, 20*time.Second, n.Name+" to report not-ready", func() (bool, string) {
			stat, err := agentapi.NewClient(n.Socket).Status(ctx)
			return err == nil && !stat.Ready, fmt.Sprint(stat, err)
		})
	}
	rounds, failed := 0, map[string]int{}
	for time.Since(down) < apiOutage {
		for _, b := range probePairs(st, allowed, denied) {
			failed[b]++
		}
		rounds++
	}
	if len(failed) > 0 {
		var lines []string
		for b, n := range failed {
			lines = append(lines, fmt.Sprintf("%s (%d of %d rounds)", b, n, rounds))
		}
		slices.Sort(lines)
		t.Errorf("with the API server down: %s", strings.Join(lines, "; "))
	}
	for _, n := range st.Nodes {
		_, err := agentapi.NewClient(n.Socket).Status(ctx)
		if !nstest.ProcessAlive(pids[n.Name]) || err != nil {
			t.Errorf("%s's agent (pid %d) did not live through the outage: %v", n.Name, pids[n.Name], err)
		}
	}
	t.Logf("API server down %s: %d rounds of %d allowed and 1 denied probes", time.Since(down).Round(time.Millisecond), rounds, len(allowed))

	start := time.Now()
	if err := cp.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	apiDown = false
	for _, n := range st.Nodes {
		eventually(t, 30*time.Second, n.Name+" to report ready again", func() (bool, string) {
			stat, err := agentapi.NewClient(n.Socket).Status(ctx)
			return err == nil && stat.Ready, fmt.Sprint(stat, err)
		})
	}
	ready := time.Since(start)
	kubectl(t, st, "", "delete", "networkpolicy", "-n", "z", "outage")
	start = time.Now()
	policyWait(t, st)
	t.Logf("API server ready again in %s; the policy's deletion enforced %s after kubectl delete", ready.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	undone = true
	if err := st.Probe(denied[0], denied[1], 80, "TCP"); err != nil {
		t.Errorf("%s->%s once the policy is deleted: %v", denied[0], denied[1], err)
	}
	for _, n := range st.Nodes {
		if !nstest.ProcessAlive(pids[n.Name]) {
			t.Errorf("%s's agent (pid %d) is gone", n.Name, pids[n.Name])
		}
	}
}

// probePairs probes, in parallel, pairs that must answer and one that must not, over TCP/80,
// and lists what went otherwise.
func probePairs(st *lab.State, allowed [][2]string, denied [2]string) []string {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var bad []string
	for _, p := range append(slices.Clone(allowed), denied) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := st.Probe(p[0], p[1], 80, "TCP")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case p == denied && err == nil:
				bad = append(bad, p[0]+"->"+p[1]+" answered")
			case p != denied && err != nil:
				bad = append(bad, p[0]+"->"+p[1]+" unreachable")
			}
		}()
	}
	wg.Wait()
	slices.Sort(bad)
	return bad
}

// expectAmong probes every ordered pair of pods over TCP/80 and fails the test, naming them,
// for the pairs whose reachability is not !blocked(from, to) (blocked nil: all reach all).
func expectAmong(t *testing.T, st *lab.State, when string, pods []string, blocked func(from, to string) bool) {
	t.Helper()
	m := probeAmong(st, pods, 80, "TCP")
	var wrong []string
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			if want := blocked == nil || !blocked(from, to); m[from][to] != want {
				wrong = append(wrong, fmt.Sprintf("%s->%s reachable=%v want %v", from, to, m[from][to], want))
			}
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%s: %d pairs wrong: %s", when, len(wrong), strings.Join(wrong, "; "))
	}
}
