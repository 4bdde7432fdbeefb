package kube

import (
	"regexp"
	"testing"
)

// The build script's default version is the one the lab runs (make deps-kubernetes runs the
// script without the lab telling it).
func TestBuildScriptVersion(t *testing.T) {
	m := regexp.MustCompile(`(?m)^k8s_version=\$\{EBPFNET_K8S_VERSION:-(v[0-9.]+)\}`).FindSubmatch(buildScript)
	if m == nil {
		t.Fatal("build.sh sets no k8s_version default")
	}
	if string(m[1]) != Version {
		t.Errorf("build.sh builds %s by default; the lab runs %s", m[1], Version)
	}
}

// The build script builds the CoreDNS the cluster DNS image expects.
func TestBuildScriptCoreDNSVersion(t *testing.T) {
	m := regexp.MustCompile(`(?m)^coredns_version=(v[0-9.]+)\b`).FindSubmatch(buildScript)
	if m == nil {
		t.Fatal("build.sh sets no coredns_version")
	}
	if string(m[1]) != CoreDNSVersion {
		t.Errorf("build.sh builds CoreDNS %s; the lab's image expects %s", m[1], CoreDNSVersion)
	}
}
