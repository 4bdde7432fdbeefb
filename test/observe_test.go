package test

import (
	"bufio"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/maps"
)

const allowAToB = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: a}}}]
      ports: [{port: 80}]
`

// Acceptance (issue 7): `ebpfnet monitor` prints one event for a denied probe naming both
// pods, the port, the protocol and the reason; `policy explain` names the allowing policy for
// an allowed pair and says none for a denied one; bpftool dumps show field names.
func TestMonitorExplainAndBTF(t *testing.T) {
	t.Parallel()
	spec := twoNodes("vxlan")
	spec.Pods[0].Labels = map[string]string{"pod": "a"}
	spec.Pods[1].Labels = map[string]string{"pod": "b"}
	spec.Pods = append(spec.Pods, lab.PodSpec{Namespace: "x", Name: "c", Node: "node1", Labels: map[string]string{"pod": "c"}})
	st := upLab(t, "ob", spec)
	if _, err := st.Client().ApplyPolicies(context.Background(), []byte(allowAToB)); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	events := startMonitor(t, ctx, st.Name, "drop")
	verdicts := startMonitor(t, ctx, st.Name, "verdict")
	if err := st.Probe("x/c", "x/b", 80, "TCP"); err == nil {
		t.Fatal("x/c reached x/b through a policy that allows only x/a")
	}
	if err := st.Probe("x/a", "x/b", 80, "TCP"); err != nil {
		t.Fatalf("x/a, which the policy allows, does not reach x/b: %v", err)
	}
	select {
	case ev := <-verdicts:
		if ev.Type != "verdict" || ev.Reason != "policy-allowed" || ev.Src.Pod != "x/a" || ev.Dst.Pod != "x/b" || ev.Dst.Port != 80 {
			t.Fatalf("verdict event %+v; want x/a -> x/b TCP/80 policy-allowed", ev)
		}
	case <-ctx.Done():
		t.Fatal("no verdict event within 30s")
	}
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("monitor ended without an event")
		}
		if ev.Src.Pod != "x/c" || ev.Dst.Pod != "x/b" || ev.Dst.Port != 80 || ev.Protocol != "TCP" ||
			ev.Reason != "policy-denied-ingress" || ev.Node != "node2" {
			t.Fatalf("event %+v; want x/c -> x/b TCP/80 policy-denied-ingress on node2", ev)
		}
	case <-ctx.Done():
		t.Fatal("no drop event within 30s")
	}

	out, code := ebpfnet(t, "policy", "explain", "x/a", "x/b", "--port", "80", "--protocol", "TCP", "--lab", st.Name)
	if code != 0 || !strings.Contains(out, "ALLOWED") || !strings.Contains(out, "allowed by x/b-from-a ingress rule 0") {
		t.Errorf("explain of the allowed pair: %s", out)
	}
	out, code = ebpfnet(t, "policy", "explain", "x/c", "x/b", "--port", "80", "--protocol", "TCP", "--lab", st.Name)
	if code != 0 || !strings.Contains(out, "DENIED") || !strings.Contains(out, "no rule allows it: none") {
		t.Errorf("explain of the denied pair: %s", out)
	}

	for name, fields := range map[string][]string{
		maps.EndpointsName: {`"ifindex"`, `"identity"`, `"node_mac"`},
		maps.PolicyName:    {`"endpoint"`, `"peer"`, `"direction"`, `"rule"`},
		maps.ConntrackName: {`"saddr"`, `"dport"`, `"expires"`, `"packets"`},
	} {
		var dump []byte
		for _, n := range st.Nodes { // entries live where their pods do: look at both nodes
			d, err := exec.Command("bpftool", "map", "dump", "pinned", filepath.Join(n.PinDir, name)).CombinedOutput()
			if err != nil {
				t.Fatalf("bpftool dump %s: %v %s", name, err, d)
			}
			dump = append(dump, d...)
		}
		for _, f := range fields {
			if !strings.Contains(string(dump), f) {
				t.Errorf("bpftool dump of %s lacks field %s:\n%.400s", name, f, dump)
			}
		}
	}
}

// startMonitor runs `ebpfnet monitor --type kind -o json` on the lab until ctx ends and
// returns its events once it is listening on every node.
func startMonitor(t *testing.T, ctx context.Context, labName, kind string) <-chan agentapi.MonitorEvent {
	t.Helper()
	mon := exec.CommandContext(ctx, ebpfnetBin, "monitor", "--lab", labName, "--type", kind, "-o", "json")
	stdout, _ := mon.StdoutPipe()
	stderr, _ := mon.StderrPipe()
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mon.Process.Kill(); _ = mon.Wait() }) // killed: its status says nothing
	if line, _ := bufio.NewReader(stderr).ReadString('\n'); !strings.Contains(line, "monitoring "+kind+" events on 2 node") {
		t.Fatalf("monitor did not start: %q", line)
	}
	events := make(chan agentapi.MonitorEvent, 64)
	go func() {
		defer close(events)
		dec := json.NewDecoder(stdout)
		for {
			var ev agentapi.MonitorEvent
			if dec.Decode(&ev) != nil {
				return
			}
			events <- ev
		}
	}()
	return events
}
