package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/policy"
)

// TestNetworkPolicyCaseFiles reads every case TestNetworkPolicyCases would play (test/netpol
// and the folders in $EBPFNET_NETPOL_CASES) and checks each without a lab: its lab file is
// valid, its policies are NetworkPolicies ebpfnet accepts, its steps name the lab's pods.
func TestNetworkPolicyCaseFiles(t *testing.T) {
	cases := readCases(t)
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			checkCase(t, c)
		})
	}
}

// checkCase is what a case must satisfy before a lab is worth making for it.
func checkCase(t *testing.T, c *netpolCase) {
	t.Helper()
	spec := c.Lab
	spec.Mode = "vxlan"
	if err := spec.Validate(); err != nil {
		t.Errorf("lab: %v", err)
	}
	for _, m := range c.Modes {
		if m != "vxlan" && m != "native-bgp-racks" && m != "ipip" {
			t.Errorf("modes: %q is not vxlan, native-bgp-racks or ipip", m)
		}
	}
	pods, namespaces := map[string]bool{}, map[string]bool{}
	for _, p := range c.Lab.Pods {
		pods[p.Key()] = true
	}
	for _, ns := range c.Lab.Namespaces {
		namespaces[ns.Name] = true
	}
	if len(c.Steps) == 0 {
		t.Error("no steps")
	}
	for i, step := range c.Steps {
		for j, obj := range step.Apply {
			doc, err := yaml.Marshal(obj)
			if err != nil {
				t.Fatal(err)
			}
			// Placeholders stand for the lab's addresses: check they name lab pods, then
			// give them a fixed address so the policy can be parsed.
			doc = placeholder.ReplaceAllFunc(doc, func(m []byte) []byte {
				parts := placeholder.FindSubmatch(m)
				if !pods[string(parts[2])] {
					t.Errorf("step %d apply %d: %s names no pod of the lab", i+1, j+1, m)
				}
				if string(parts[1]) == "IP" {
					return []byte("10.0.0.1")
				}
				return []byte("0.0.0.0/4")
			})
			if _, err := policy.Parse(doc); err != nil {
				t.Errorf("step %d apply %d: %v", i+1, j+1, err)
			}
		}
		for _, l := range step.Labels {
			if (l.Pod == "") == (l.Namespace == "") {
				t.Errorf("step %d labels: give a pod or a namespace, not both or neither", i+1)
			}
			if l.Pod != "" && !pods[l.Pod] || l.Namespace != "" && !namespaces[l.Namespace] {
				t.Errorf("step %d labels: %q%q is not in the lab", i+1, l.Pod, l.Namespace)
			}
		}
		for _, e := range step.Expect {
			if e.Port < 1 || e.Port > 65535 {
				t.Errorf("step %d expect: port %d", i+1, e.Port)
			}
			for _, b := range e.Blocked {
				if from, to, ok := strings.Cut(b, "->"); !ok || from == "" || to == "" {
					t.Errorf("step %d expect: blocked %q is not FROM->TO", i+1, b)
				}
			}
		}
	}
}

// TestNetworkPolicyCaseFolders checks how $EBPFNET_NETPOL_CASES folders are read: a folder's
// cases are loaded under its parent's name, and a folder that is missing, empty, or not a
// folder, or a case named twice, is an error.
func TestNetworkPolicyCaseFolders(t *testing.T) {
	own, err := os.ReadFile(filepath.Join(ownCasesDir, "ingress-port.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	good := filepath.Join(tmp, "extra", "netpol")
	empty := filepath.Join(tmp, "empty")
	for _, d := range []string{good, empty} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(good, "one.yaml"), own, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(empty, "README.md"), []byte("no cases"), 0o644); err != nil {
		t.Fatal(err)
	}

	cases, err := loadCases(ownCasesDir, good)
	if err != nil {
		t.Fatalf("load %s: %v", good, err)
	}
	ownOnly, err := loadCases(ownCasesDir, "")
	if err != nil {
		t.Fatalf("load test/netpol alone: %v", err)
	}
	if c := cases["extra-one"]; c == nil || c.Name != "ingress-numeric-port" {
		t.Errorf("the case in %s is not loaded as extra-one (got %v)", good, c)
	}
	if len(cases) != len(ownOnly)+1 {
		t.Errorf("with one extra case: %d cases, want %d", len(cases), len(ownOnly)+1)
	}

	for _, bad := range []struct{ list, want string }{
		{filepath.Join(tmp, "missing"), "no such file"},
		{empty, "holds no NetworkPolicy case"},
		{filepath.Join(empty, "README.md"), "is not a folder"},
		{good + ":" + empty, "holds no NetworkPolicy case"},
		{good + ":" + good, `a case named "extra-one" is already loaded`},
	} {
		_, err := loadCases(ownCasesDir, bad.list)
		if err == nil || !strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), casesEnv) {
			t.Errorf("%s=%s: error %v, want one naming %s and saying %q", casesEnv, bad.list, err, casesEnv, bad.want)
		}
	}
}
