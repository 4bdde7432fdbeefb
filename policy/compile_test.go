package policy_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/policy"
)

func input(t *testing.T, yamlDocs string) policy.Input {
	t.Helper()
	nps, err := policy.Parse([]byte(yamlDocs))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]uint32{}
	in := policy.Input{Self: "n1", Policies: nps, Namespaces: map[string]map[string]string{"x": {}, "y": {"team": "blue"}},
		Nodes: []policy.Node{{Name: "n1", IP: netip.MustParseAddr("10.250.0.1"), IPv6: netip.MustParseAddr("fd00:10:250::1")},
			{Name: "n2", IP: netip.MustParseAddr("10.250.0.2"), IPv6: netip.MustParseAddr("fd00:10:250::2")}},
		Identity: func(k string) (uint32, error) {
			if _, ok := ids[k]; !ok {
				ids[k] = uint32(256 + len(ids))
			}
			return ids[k], nil
		}}
	for i, p := range []struct{ ns, name, node string }{{"x", "a", "n1"}, {"x", "b", "n2"}, {"y", "a", "n1"}} {
		in.Pods = append(in.Pods, policy.Pod{Namespace: p.ns, Name: p.name, Node: p.node, Labels: map[string]string{"pod": p.name},
			IP: netip.AddrFrom4([4]byte{10, 244, 0, byte(10 + i)}), EndpointID: uint32(i + 1),
			Ports: []policy.NamedPort{{Name: "http", Port: 8080}}})
	}
	return in
}

const ingressFromB = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {team: blue}}}]
      ports: [{port: http}, {port: 9000, endPort: 9003, protocol: UDP}]
`

func TestCompileIsDeterministicAndExact(t *testing.T) {
	in := input(t, ingressFromB)
	first, err := policy.Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	second, _ := policy.Compile(input(t, ingressFromB))
	if !reflect.DeepEqual(first.Policy, second.Policy) || !reflect.DeepEqual(first.IPCache, second.IPCache) {
		t.Fatal("the same input compiled twice gave different state")
	}
	xa, xb, ya := first.Identities["x/a"], first.Identities["x/b"], first.Identities["y/a"]
	got := map[string]bool{}
	for _, e := range first.Policy {
		got[fmt.Sprintf("ep%d peer%d %s proto%d %d/%d", e.Endpoint, e.Peer, e.Direction, e.Protocol, e.Port, e.PortBits)] = true
	}
	want := map[string]bool{}
	for _, peer := range []uint32{xb, ya} {
		want[fmt.Sprintf("ep1 peer%d ingress proto6 8080/16", peer)] = true  // named port of x/a
		want[fmt.Sprintf("ep1 peer%d ingress proto17 9000/14", peer)] = true // 9000-9003 in one block
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("entries %v, want %v", got, want)
	}
	if e := first.Endpoints[netip.MustParseAddr("10.244.0.10")]; !e.Ingress || e.Egress || e.Identity != xa {
		t.Fatalf("x/a enforcement %+v", e)
	}
	if _, remote := first.Endpoints[netip.MustParseAddr("10.244.0.11")]; remote {
		t.Fatal("a pod of another node got local enforcement")
	}
	ic := map[netip.Prefix]uint32{}
	for _, e := range first.IPCache {
		ic[e.Prefix] = e.Identity
	}
	if ic[netip.MustParsePrefix("10.250.0.1/32")] != maps.IdentityHost || ic[netip.MustParsePrefix("10.250.0.2/32")] != maps.IdentityRemoteNode ||
		ic[netip.MustParsePrefix("fd00:10:250::1/128")] != maps.IdentityHost || ic[netip.MustParsePrefix("fd00:10:250::2/128")] != maps.IdentityRemoteNode {
		t.Fatalf("node identities in the ipcache: %v", ic)
	}
}

func TestParseRefusesBadInput(t *testing.T) {
	for _, bad := range []string{
		"apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n",
		"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}, bogus: 1}\n",
		"",
	} {
		if _, err := policy.Parse([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}
