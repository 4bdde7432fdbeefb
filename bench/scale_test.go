package bench

import (
	"maps"
	"math"
	"testing"

	"github.com/ebpfnet/ebpfnet/policy"
)

func TestScaleSpec(t *testing.T) {
	spec, err := ScaleSpec(5, 1000, 10)
	if err != nil {
		t.Fatal(err)
	}
	perNode, serving, names := map[string]int{}, 0, map[string]bool{}
	for _, p := range spec.Pods {
		perNode[p.Node]++
		if len(p.Ports) > 0 {
			serving++
		}
		if names[p.Key()] {
			t.Errorf("pod %s twice", p.Key())
		}
		names[p.Key()] = true
	}
	if len(spec.Pods) != 1000 || len(spec.Nodes) != 5 || spec.Mode != "vxlan" {
		t.Errorf("%d pods on %d nodes in mode %s, want 1000 on 5 in vxlan", len(spec.Pods), len(spec.Nodes), spec.Mode)
	}
	if want := map[string]int{"n1": 200, "n2": 200, "n3": 200, "n4": 200, "n5": 200}; !maps.Equal(perNode, want) {
		t.Errorf("pods a node %v, want %v", perNode, want)
	}
	if serving != 2 {
		t.Errorf("%d pods serve, want the two probed servers only", serving)
	}
	small, err := ScaleSpec(5, 10, 10)
	if err != nil {
		t.Fatal(err)
	}
	// The suite's own pods are the same, on the same nodes, in both labs.
	for i, r := range scaleRoles {
		if a, b := spec.Pods[i], small.Pods[i]; a.Key() != scaleNS+"/"+r.name || a.Key() != b.Key() || a.Node != b.Node || a.Node != scaleNode(r.node) {
			t.Errorf("role %s: large %s on %s, small %s on %s", r.name, a.Key(), a.Node, b.Key(), b.Node)
		}
	}
	for _, bad := range [][3]int{{5, 1001, 10}, {5, 5, 10}, {3, 9, 1}, {5, 10, 0}} {
		if _, err := ScaleSpec(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("ScaleSpec%v succeeded", bad)
		}
	}
}

func TestScalePolicies(t *testing.T) {
	docs, names, err := scalePolicies(10, 10)
	if err != nil {
		t.Fatal(err)
	}
	nps, err := policy.Parse(docs)
	if err != nil {
		t.Fatal(err)
	}
	if len(nps) != 10 || len(names) != 10 {
		t.Fatalf("%d policies, %d names, want 10", len(nps), len(names))
	}
	for i, np := range nps {
		if got := np.Namespace + "/" + np.Name; got != names[i] {
			t.Errorf("policy %d is %s, named %s", i, got, names[i])
		}
	}
	if deny := nps[0]; deny.Spec.PodSelector.MatchLabels["role"] != "denied" || len(deny.Spec.Ingress) != 0 {
		t.Errorf("first policy %s does not deny the denied server all ingress", deny.Name)
	}
}

func TestCNIStats(t *testing.T) {
	adds := make([]float64, 20)
	for i := range adds {
		adds[i] = float64(i + 1)
	}
	c := cniStats(adds)
	if c.Adds != 20 || c.P50ms != 10.5 || c.P99ms != 20 || c.MaxMs != 20 || c.FirstP50ms != 1.5 || c.LastP50ms != 19.5 {
		t.Errorf("cniStats = %+v", c)
	}
	if c := cniStats(nil); c.Adds != 0 {
		t.Errorf("cniStats(nil) = %+v", c)
	}
}

func TestBucketQuantile(t *testing.T) {
	b := []bucket{{0.001, 50}, {0.01, 98}, {0.1, 99}, {math.Inf(1), 100}}
	for _, c := range []struct{ q, want float64 }{{0.5, 0.001}, {0.9, 0.01}, {0.99, 0.1}, {1, 0.1}} {
		if got := bucketQuantile(b, 100, c.q); got != c.want {
			t.Errorf("bucketQuantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
}
