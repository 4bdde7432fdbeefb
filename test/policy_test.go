package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/lab"
)

const clientPolicies = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-deny-ingress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{}]
`

func ping(from *lab.Pod, to *lab.Pod) error {
	return exec.Command("ip", "netns", "exec", filepath.Base(from.Netns), "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", to.IP.String()).Run()
}

// Acceptance: with only an egress-allow policy and a default-deny ingress on a client, its own
// connections work (replies pass) and unsolicited inbound ones do not: TCP, UDP and ICMP.
func TestStatefulPolicy(t *testing.T) {
	for _, mode := range []string{"vxlan", "native", "ipip"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			spec := twoNodes(mode)
			spec.Pods[0].Labels = map[string]string{"pod": "a"}
			spec.Pods = append(spec.Pods, lab.PodSpec{Namespace: "x", Name: "c", Node: "node1",
				Ports: []lab.Port{{Port: 80, Protocol: "TCP"}, {Port: 81, Protocol: "UDP"}}})
			st := upLab(t, "sf", spec)
			if _, err := st.Client().ApplyPolicies(context.Background(), []byte(clientPolicies)); err != nil {
				t.Fatal(err)
			}
			a, _ := st.Pod("x/a")
			for _, server := range []string{"x/b", "x/c"} { // another node, the same node
				srv, _ := st.Pod(server)
				if err := st.Probe(a.Key(), server, 80, "TCP"); err != nil {
					t.Errorf("TCP from the client to %s: %v", server, err)
				}
				if err := st.Probe(a.Key(), server, 81, "UDP"); err != nil {
					t.Errorf("UDP from the client to %s: %v", server, err)
				}
				if err := ping(a, srv); err != nil {
					t.Errorf("ICMP from the client to %s: %v", server, err)
				}
				if err := st.Probe(server, a.Key(), 80, "TCP"); err == nil {
					t.Errorf("TCP from %s into the client passed a default-deny ingress", server)
				}
				if err := st.Probe(server, a.Key(), 81, "UDP"); err == nil {
					t.Errorf("UDP from %s into the client passed a default-deny ingress", server)
				}
				if err := ping(srv, a); err == nil {
					t.Errorf("ICMP from %s into the client passed a default-deny ingress", server)
				}
			}
		})
	}
}

// Acceptance: malformed policies are refused with the field named, and what is in force stays.
func TestMalformedPoliciesChangeNothing(t *testing.T) {
	t.Parallel()
	spec := twoNodes("vxlan")
	spec.Pods[1].Labels = map[string]string{"pod": "b"}
	st := upLab(t, "mp", spec)
	deny := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: []
`
	write := func(body string) string {
		f := filepath.Join(t.TempDir(), "p.yaml")
		if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	if out, code := ebpfnet(t, "policy", "apply", "-f", write(deny), "--lab", st.Name); code != 0 {
		t.Fatalf("apply a valid policy: %s", out)
	}
	good := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: fine, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]
`
	bad := strings.ReplaceAll
	cases := []struct{ name, body, want string }{
		{"unknown field", bad(good, "ingress: [{}]", "ingress: [{}]\n  extra: 1"), `unknown field "extra"`},
		{"bad selector operator", bad(good, "podSelector: {}", "podSelector: {matchExpressions: [{key: a, operator: Near, values: [b]}]}"), "spec.podSelector"},
		{"bad cidr", bad(good, "ingress: [{}]", "ingress: [{from: [{ipBlock: {cidr: 10.0.0.300/8}}]}]"), "spec.ingress[0].from[0].ipBlock.cidr"},
		{"except outside cidr", bad(good, "ingress: [{}]", "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]"), "spec.ingress[0].from[0].ipBlock.except[0]"},
		{"bad port", bad(good, "ingress: [{}]", "ingress: [{ports: [{port: 70000}]}]"), "spec.ingress[0].ports[0].port: 70000"},
		{"endPort without port", bad(good, "ingress: [{}]", "ingress: [{ports: [{endPort: 90}]}]"), "spec.ingress[0].ports[0].endPort"},
		{"bad protocol", bad(good, "ingress: [{}]", "ingress: [{ports: [{port: 80, protocol: ICMP}]}]"), "spec.ingress[0].ports[0].protocol"},
		{"ipBlock and selector in one peer", bad(good, "ingress: [{}]", "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]"), "spec.ingress[0].from[0]"},
		{"wrong apiVersion", bad(good, "networking.k8s.io/v1", "extensions/v1beta1"), "apiVersion"},
		{"one bad document among good ones", good + "---\n" + bad(good, "name: fine", "name: Not_Valid"), "metadata.name"},
	}
	for _, c := range cases {
		out, code := ebpfnet(t, "policy", "apply", "-f", write(c.body), "--lab", st.Name)
		if code == 0 || !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("%s: exit %d, %q; want a one-line error naming %q", c.name, code, out, c.want)
		}
	}
	if err := st.Probe("x/b", "x/a", 80, "TCP"); err != nil {
		t.Fatalf("x/a is not selected by anything, yet unreachable: %v", err)
	}
	out, _ := ebpfnet(t, "policy", "list", "--lab", st.Name, "-o", "json")
	if !strings.Contains(out, `"name": "deny"`) || strings.Contains(out, `"name": "fine"`) {
		t.Fatalf("policies in force changed: %s", out)
	}
	if err := st.Probe("x/a", "x/b", 80, "TCP"); err == nil {
		t.Fatal("the policy in force no longer denies")
	}
}
