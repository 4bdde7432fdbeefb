package conformance

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// A ginkgo v2 JUnit report as e2e.test writes it: every test of the binary, the unfocused ones
// skipped, each name prefixed with its node type.
const report = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="7" disabled="0" errors="0" failures="1" time="95.2">
  <testsuite name="Kubernetes e2e suite" package="/" tests="7" disabled="0" skipped="4" errors="0" failures="1" time="95.2" timestamp="2026-12-06T17:00:00">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1.0"></testcase>
    <testcase name="[It] [sig-network] Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]" classname="Kubernetes e2e suite" status="passed" time="40.1"></testcase>
    <testcase name="[It] [sig-network] Netpol NetworkPolicy between server and client should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector [Feature:NetworkPolicy]" classname="Kubernetes e2e suite" status="failed" time="50.0"><failure message="unexpected reachability" type="failed">reachability</failure></testcase>
    <testcase name="[It] [sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should support a 'default-deny-ingress' policy" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-network] Netpol NetworkPolicy between server and client should work with Ingress, Egress specified together [Feature:NetworkPolicy]" classname="Kubernetes e2e suite" status="skipped" time="0.1"><skipped message="skipped - needs two schedulable nodes"></skipped></testcase>
    <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods [Conformance]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-storage] EmptyDir volumes should support (root,0644,tmpfs) [Conformance]" classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
  </testsuite>
</testsuites>`

func TestCountJUnit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "junit.xml")
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	ex, err := Exclusions()
	if err != nil {
		t.Fatal(err)
	}
	netpol, _ := SuiteByName("netpol")
	c, err := countJUnit(path, netpol, netpol.Focus(""), ex)
	if err != nil {
		t.Fatal(err)
	}
	if c.Passed != 1 || c.Failed != 1 || c.Skipped != 1 || c.Excluded != 1 {
		t.Errorf("netpol: %+v; want 1 passed, 1 failed, 1 skipped, 1 excluded", c)
	}
	if len(c.Failures) != 1 || !strings.Contains(c.Failures[0], "different namespace based on PodSelector") {
		t.Errorf("failures %q", c.Failures)
	}
	services, _ := SuiteByName("services")
	if c, err := countJUnit(path, services, services.Focus(""), ex); err != nil || c.Passed+c.Failed+c.Skipped+c.Excluded != 1 {
		t.Errorf("services: %+v %v; want the one Services [Conformance] test, skipped", c, err)
	}
}

// Every exclusion names its reason and matches a test name of the form e2e.test uses, and
// none swallows a whole suite.
func TestExclusions(t *testing.T) {
	ex, err := Exclusions()
	if err != nil {
		t.Fatal(err)
	}
	if len(ex) == 0 {
		t.Fatal("no exclusions read")
	}
	skip := regexp.MustCompile(skipRegexp(ex))
	for _, name := range []string{
		"[It] [sig-network] Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]",
		"[It] [sig-network] Netpol NetworkPolicy between server and client should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP [Feature:NetworkPolicy]",
		"[It] [sig-network] Services should serve a basic endpoint from pods [Conformance]",
		"[It] [sig-network] DNS should provide DNS for services [Conformance]",
	} {
		if skip.MatchString(name) {
			t.Errorf("excluded, but needs nothing this machine lacks: %s", name)
		}
	}
	if !skip.MatchString("[It] [sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should support a 'default-deny-ingress' policy") {
		t.Error("the SCTP connectivity tests are not excluded")
	}
}

// Focus with only selects the named test of its own suite and nothing else.
func TestFocusOnly(t *testing.T) {
	services, _ := SuiteByName("services")
	netpol, _ := SuiteByName("netpol")
	const multiport = "[It] [sig-network] Services should serve multiport endpoints from pods [Conformance] [sig-network, Conformance]"
	for _, c := range []struct {
		suite Suite
		only  string
		name  string
		want  bool
	}{
		{services, "", multiport, true},
		{services, "should serve multiport endpoints from pods ", multiport, true},
		{services, "should serve a basic endpoint from pods ", multiport, false},
		{services, "should serve multiport endpoints from pods ", "[It] [sig-network] Services should serve multiport endpoints from pods [sig-network]", false},
		{netpol, "should serve multiport endpoints from pods ", multiport, false},
		{netpol, "client should enforce policy based on Ports ", "[It] [sig-network] Netpol NetworkPolicy between server and client should enforce policy based on Ports [Feature:NetworkPolicy]", true},
		{netpol, "client should enforce policy based on Ports ", "[It] [sig-network] Netpol [LinuxOnly] NetworkPolicy between server and client using UDP should enforce policy based on Ports [Feature:NetworkPolicy]", false},
	} {
		if got := regexp.MustCompile(c.suite.Focus(c.only)).MatchString(c.name); got != c.want {
			t.Errorf("%s.Focus(%q) matches %q: %v, want %v", c.suite.Name, c.only, c.name, got, c.want)
		}
	}
}
