package test

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/conformance"
	"github.com/ebpfnet/ebpfnet/lab"
)

// upstreamSubset is the short part of `make conformance` that `make test` runs, so that CI
// catches a break of the upstream suites: one Netpol test over TCP ports, and three Services
// [Conformance] tests (several ports, ClientIP affinity, NodePort). The whole suites take 30
// minutes a mode; these, about one.
var upstreamSubset = []struct {
	suite string
	test  string // matches exactly one test of the suite, after its prefix (Suite.Focus)
}{
	{"netpol", `NetworkPolicy between server and client should enforce policy based on Ports `},
	{"services", `should serve multiport endpoints from pods `},
	{"services", `should have session affinity work for service with type clusterIP `},
	{"services", `should be able to create a functioning NodePort service `},
}

// checkUpstreamSubset runs upstreamSubset with Kubernetes' own e2e.test (built by make
// deps-e2e) in the kubernetes lab st: every test must run and pass.
func checkUpstreamSubset(t *testing.T, st *lab.State) {
	var only []string
	want := map[string]int{}
	cfg := conformance.Config{Out: t.TempDir(), Log: testLog{t}}
	for _, s := range upstreamSubset {
		only = append(only, s.test)
		if want[s.suite] == 0 {
			suite, err := conformance.SuiteByName(s.suite)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Suites = append(cfg.Suites, suite)
		}
		want[s.suite]++
	}
	cfg.Only = "(" + strings.Join(only, "|") + ")"
	namespaces := func() []string {
		return strings.Fields(kubectl(t, st, "", "get", "namespaces", "-o", "jsonpath={.items[*].metadata.name}"))
	}
	before := namespaces()
	counts, err := conformance.RunIn(context.Background(), st, cfg)
	// e2e.test deletes its namespaces without waiting for them to go: the tests after this one
	// count the lab's pods, so it waits.
	for _, ns := range namespaces() {
		if !slices.Contains(before, ns) {
			waitDeleted(t, st, "namespace/"+ns)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range counts {
		t.Logf("%s: %d passed, %d failed, %d skipped in %.0f s", c.Name, c.Passed, c.Failed, c.Skipped, c.Seconds)
		for _, f := range c.Failures {
			t.Errorf("%s: FAIL %s", c.Name, f)
		}
		if c.Passed != want[c.Name] {
			t.Errorf("%s: %d tests passed, want %d (%d failed)", c.Name, c.Passed, want[c.Name], c.Failed)
		}
		delete(want, c.Name)
	}
	if len(want) > 0 {
		t.Errorf("suites that did not run: %v", want)
	}
}

// waitDeleted waits until the object is gone; gone already is fine.
func waitDeleted(t *testing.T, st *lab.State, object string) {
	t.Helper()
	out, err := exec.Command(ebpfnetBin, "lab", "kubectl", "--name", st.Name, "--", "wait", "--for=delete", object, "--timeout=5m").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "NotFound") && !strings.Contains(string(out), "not found") {
		t.Fatalf("kubectl wait --for=delete %s: %v: %s", object, err, out)
	}
}

// testLog writes the runner's progress lines to the test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
