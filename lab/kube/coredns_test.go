package kube

import (
	"net/netip"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The cluster DNS manifest is valid YAML whose kube-dns Service sits on the address asked for
// and whose Deployment runs the image BuildImages writes.
func TestDNSManifest(t *testing.T) {
	ip := netip.MustParseAddr("10.96.0.10")
	m, err := DNSManifest(ip)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]map[string]any{}
	for _, doc := range strings.Split(m, "\n---\n") {
		var obj map[string]any
		if err := yaml.UnmarshalStrict([]byte(doc), &obj); err != nil {
			t.Fatalf("%v in:\n%s", err, doc)
		}
		kinds[obj["kind"].(string)] = obj
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service"} {
		if kinds[k] == nil {
			t.Errorf("no %s", k)
		}
	}
	if got := kinds["Service"]["spec"].(map[string]any)["clusterIP"]; got != "10.96.0.10" {
		t.Errorf("kube-dns clusterIP %v, want 10.96.0.10", got)
	}
	tmpl := kinds["Deployment"]["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	if img := tmpl["containers"].([]any)[0].(map[string]any)["image"]; img != "docker.io/ebpfnet/coredns:v1.12.4" {
		t.Errorf("image %v", img)
	}
	if cf := kinds["ConfigMap"]["data"].(map[string]any)["Corefile"].(string); !strings.Contains(cf, "kubernetes cluster.local ") {
		t.Errorf("the Corefile serves no cluster.local zone:\n%s", cf)
	}
}
