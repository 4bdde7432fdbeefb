package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// upgradeFrom is the commit the upgrade test starts from: the last one before conntrack
// entries recorded when their flow began, a layout change an upgrade must carry them across.
const upgradeFrom = "a9c22a2d62fc13eb9ab02eab1162b36c9a53be4e"

// buildAt builds ebpfnet and ebpfnet-cni as they were at commit, from git history.
func buildAt(t *testing.T, commit string) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	archive := exec.Command("sh", "-c", fmt.Sprintf("git -C .. archive %s | tar -x -C %s", commit, src))
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("check out %s from git history: %v: %s", commit, err, out)
	}
	build := exec.Command("go", "build", "-o", dir+"/", "./cmd/ebpfnet", "./cmd/ebpfnet-cni")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v: %s", commit, err, out)
	}
	return filepath.Join(dir, "ebpfnet")
}

// pinnedEntries dumps a pinned map as key → value, both hex.
func pinnedEntries(t *testing.T, node *lab.Node, name string) (map[string]string, uint32) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(maps.PinPath(node.PinDir, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	k, v := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	out := map[string]string{}
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[fmt.Sprintf("%x", k)] = fmt.Sprintf("%x", v)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out, m.ValueSize()
}

// Acceptance (issue 13): a lab runs the datapath of an earlier commit, whose conntrack layout
// differs from today's, with pinned entries and established flows under a policy that lets
// the client's replies in only as replies (conntrack). Every agent is upgraded to this build:
// the flows go on (conntrack carried into the new layout), no UDP datagram of a running
// stream is lost, and every endpoint, route, ipcache and policy entry is still there.
func TestUpgradeCarriesStateAcrossALayoutChange(t *testing.T) {
	t.Parallel()
	nstest.RequireRoot(t)
	old := buildAt(t, upgradeFrom)
	name := "up" + nstest.Suffix(4)
	t.Cleanup(func() {
		if err := lab.Down(name); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	ctx := context.Background()
	spec := twoNodes("vxlan")
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := lab.Up(ctx, name, spec, lab.Options{Exe: old})
	if err != nil {
		t.Fatalf("lab up with %s's ebpfnet: %v", upgradeFrom[:7], err)
	}
	a, _ := st.Pod("x/a")
	b, _ := st.Pod("x/b")
	// a takes no connection; b takes a's. a's replies from b pass only as conntrack replies.
	const policies = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-closed, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: a}}}]
`
	if err := st.Label(ctx, "pod", "x/a", map[string]string{"pod": "a"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := st.Label(ctx, "pod", "x/b", map[string]string{"pod": "b"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Client().ApplyPolicies(ctx, []byte(policies)); err != nil {
		t.Fatal(err)
	}
	if err := st.Probe("x/b", "x/a", 80, "TCP"); err == nil {
		t.Fatal("b reaches a: the policy that makes conntrack matter is not enforced")
	}
	s := startStream(t, a, b)
	defer s.stop()
	s.progress(t, 64<<10, "before the upgrade")
	kept := []string{maps.EndpointsName, maps.RoutesName, maps.IPCacheName, maps.PolicyName}
	before := map[string]map[string]string{}
	for _, n := range st.Nodes {
		for _, m := range kept {
			before[n.Name+"/"+m], _ = pinnedEntries(t, &n, m)
		}
		if ct, size := pinnedEntries(t, &n, maps.ConntrackName); size != 32 || len(ct) == 0 {
			t.Fatalf("%s's conntrack before the upgrade: value size %d, %d flows; want the old layout (32) with flows", n.Name, size, len(ct))
		}
	}
	for _, n := range st.Nodes {
		flowsBefore, _ := pinnedEntries(t, &n, maps.ConntrackName)
		if err := st.StopAgent(n.Name); err != nil {
			t.Fatal(err)
		}
		if err := st.StartAgent(ctx, n.Name, labOpts()); err != nil {
			t.Fatalf("upgrade %s: %v", n.Name, err)
		}
		s.progress(t, 64<<10, "after upgrading "+n.Name)
		s.udpProgress(t, 100, "after upgrading "+n.Name)
		flows, size := pinnedEntries(t, &n, maps.ConntrackName)
		if size != 56 {
			t.Fatalf("%s's conntrack after the upgrade has value size %d, want 56", n.Name, size)
		}
		var lost []string
		for k := range flowsBefore {
			if _, ok := flows[k]; !ok {
				lost = append(lost, k)
			}
		}
		if len(lost) > 0 {
			t.Errorf("%s: %d of %d flows not carried: %v", n.Name, len(lost), len(flowsBefore), lost)
		}
	}
	for _, n := range st.Nodes {
		for _, m := range kept {
			after, _ := pinnedEntries(t, &n, m)
			if want := before[n.Name+"/"+m]; fmt.Sprint(after) != fmt.Sprint(want) {
				t.Errorf("%s's %s changed across the upgrade:\nbefore %v\nafter  %v", n.Name, m, want, after)
			}
		}
	}
	s.progress(t, 64<<10, "after the upgrade")
	s.finish(t)
	if err := st.Probe("x/b", "x/a", 80, "TCP"); err == nil {
		t.Error("after the upgrade b reaches a: the policy is not enforced")
	}
	out, code := ebpfnet(t, "--pin-dir", st.Nodes[0].PinDir, "ct", "list")
	if code != 0 || !strings.Contains(out, "AGE") || !slices.ContainsFunc(strings.Split(out, "\n"), func(l string) bool {
		return strings.Contains(l, b.IP.String()+":80") && strings.Contains(l, " - ")
	}) {
		t.Errorf("ct list does not show the carried flow with an unknown age:\n%s", out)
	}
	t.Logf("TCP %d KiB echoed, UDP %d/%d datagrams echoed across both agents' upgrade from %s",
		s.tcpBytes.Load()>>10, s.udpEchos.Load(), s.udpSent.Load(), upgradeFrom[:7])
}
