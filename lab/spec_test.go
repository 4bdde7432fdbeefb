package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/testkit/yamlbomb"
)

// labFile is a lab with two namespaces and a pod serving port 80, to which each case adds its
// services: block.
const labFile = `
mode: vxlan
nodes: [{name: node1}, {name: node2}]
namespaces: [{name: s}, {name: t}]
pods:
  - {namespace: s, name: web1, node: node1, labels: {app: web}, ports: [{name: http, port: 80}]}
  - {namespace: s, name: web2, node: node2, labels: {app: web}, ports: [{port: 80}]}
`

func readSpec(t *testing.T, yaml string) (*Spec, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lab.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return ReadSpec(path)
}

func TestSpecServices(t *testing.T) {
	s, err := readSpec(t, labFile+`
services:
  - {namespace: s, name: web, type: NodePort, selector: {app: web}, ports: [{name: http, port: 8080, targetPort: 80, protocol: TCP, nodePort: 30080}]}
  - namespace: s
    name: named
    selector: {app: web}
    sessionAffinity: ClientIP
    internalTrafficPolicy: Local
    ports: [{name: a, port: 80, targetPort: http}, {name: b, port: 81, targetPort: metrics, protocol: UDP}]
  - {namespace: t, name: headless, clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
  - {namespace: t, name: fixed, clusterIP: 10.96.0.53, ports: [{port: 53, protocol: UDP}]}
`)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Services) != 4 {
		t.Fatalf("%d services, want 4", len(s.Services))
	}
	web, named := s.Services[0], s.Services[1]
	if web.Ports[0].TargetPort != intstr.FromInt32(80) || web.Ports[0].NodePort != 30080 {
		t.Fatalf("web's port %+v", web.Ports[0])
	}
	// A port name no selected pod declares is fine: those pods just do not serve it.
	if named.Type != "ClusterIP" || named.Ports[0].Protocol != "TCP" || named.Ports[1].TargetPort != intstr.FromString("metrics") {
		t.Fatalf("defaults or named ports not kept: %+v", named)
	}
	obj := named.Object()
	if obj.Kind != "Service" || obj.Namespace != "s" || string(obj.Spec.SessionAffinity) != "ClientIP" ||
		obj.Spec.InternalTrafficPolicy == nil || string(*obj.Spec.InternalTrafficPolicy) != "Local" ||
		obj.Spec.Ports[1].Protocol != "UDP" || obj.Spec.Ports[0].TargetPort != intstr.FromString("http") {
		t.Fatalf("Service object %+v", obj)
	}
}

func TestSpecServicesRefused(t *testing.T) {
	for _, tc := range []struct{ name, services, want string }{
		{"unknown field", `[{namespace: s, name: web, selecter: {app: web}, ports: [{port: 80}]}]`, `unknown field "selecter"`},
		{"unknown port field", `[{namespace: s, name: web, ports: [{port: 80, target: 8080}]}]`, `unknown field "target"`},
		{"bad protocol", `[{namespace: s, name: web, ports: [{port: 80, protocol: ICMP}]}]`, `services[0].ports[0].protocol: "ICMP" must be TCP, UDP or SCTP`},
		{"node port out of range", `[{namespace: s, name: web, type: NodePort, ports: [{port: 80, nodePort: 8080}]}]`, `services[0].ports[0].nodePort: 8080 is not in 30000-32767`},
		{"node port on ClusterIP", `[{namespace: s, name: web, ports: [{port: 80, nodePort: 30080}]}]`, `services[0].ports[0].nodePort: only for type NodePort`},
		{"node port taken", `[{namespace: s, name: a, type: NodePort, ports: [{port: 80, nodePort: 30080}]}, {namespace: t, name: b, type: NodePort, ports: [{port: 81, nodePort: 30080}]}]`, `services[1].ports[0].nodePort: 30080/TCP is taken`},
		{"undeclared namespace", `[{namespace: u, name: web, ports: [{port: 80}]}]`, `services[0].namespace: "u" is not a declared namespace`},
		{"bad name", `[{namespace: s, name: 9web, ports: [{port: 80}]}]`, `services[0].name: "9web"`},
		{"duplicate", `[{namespace: s, name: web, ports: [{port: 80}]}, {namespace: s, name: web, ports: [{port: 81}]}]`, `services[1]: duplicate service s/web`},
		{"bad type", `[{namespace: s, name: web, type: ExternalName, ports: [{port: 80}]}]`, `services[0].type`},
		{"no ports", `[{namespace: s, name: web}]`, `services[0].ports: at least one port`},
		{"port 0", `[{namespace: s, name: web, ports: [{port: 0}]}]`, `services[0].ports[0].port: 0 is not in 1-65535`},
		{"unnamed ports", `[{namespace: s, name: web, ports: [{port: 80}, {name: b, port: 81}]}]`, `services[0].ports[0].name: needed`},
		{"duplicate port names", `[{namespace: s, name: web, ports: [{name: a, port: 80}, {name: a, port: 81}]}]`, `services[0].ports[1].name: duplicate`},
		{"bad target port", `[{namespace: s, name: web, ports: [{port: 80, targetPort: no_such}]}]`, `services[0].ports[0].targetPort`},
		{"target port out of range", `[{namespace: s, name: web, ports: [{port: 80, targetPort: 70000}]}]`, `services[0].ports[0].targetPort: 70000`},
		{"cluster IP outside", `[{namespace: s, name: web, clusterIP: 10.97.0.1, ports: [{port: 80}]}]`, `services[0].clusterIP: "10.97.0.1"`},
		{"cluster IP twice", `[{namespace: s, name: a, clusterIP: 10.96.0.9, ports: [{port: 80}]}, {namespace: s, name: b, clusterIP: 10.96.0.9, ports: [{port: 80}]}]`, `services[1].clusterIP: 10.96.0.9 is s/a's too`},
		{"headless node port", `[{namespace: s, name: web, type: NodePort, clusterIP: None, ports: [{port: 80}]}]`, `services[0].clusterIP: None`},
		{"affinity", `[{namespace: s, name: web, sessionAffinity: Sticky, ports: [{port: 80}]}]`, `services[0].sessionAffinity`},
		{"external policy on ClusterIP", `[{namespace: s, name: web, externalTrafficPolicy: Local, ports: [{port: 80}]}]`, `services[0].externalTrafficPolicy: only for`},
		{"internal policy", `[{namespace: s, name: web, internalTrafficPolicy: Near, ports: [{port: 80}]}]`, `services[0].internalTrafficPolicy`},
		{"bad selector", `[{namespace: s, name: web, selector: {"a b": x}, ports: [{port: 80}]}]`, `services[0].selector`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readSpec(t, labFile+"services: "+tc.services+"\n")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestSpecClusterCIDRClearOfServices(t *testing.T) {
	_, err := readSpec(t, "mode: vxlan\nclusterCIDR: 10.96.0.0/12\nnodes: [{name: n1}]\n")
	if err == nil || !strings.Contains(err.Error(), "overlaps the lab's service CIDR") {
		t.Fatalf("a cluster CIDR over the service CIDR: %v", err)
	}
}

// TestSpecMasquerade: masquerade and noMasqueradeCIDRs reach every node's agent config, as
// the agent reads it.
func TestSpecMasquerade(t *testing.T) {
	s, err := readSpec(t, labFile+"masquerade: false\nnoMasqueradeCIDRs: [192.168.0.0/16, 172.16.0.1/12]\n")
	if err != nil {
		t.Fatal(err)
	}
	st, err := plan("t", s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range st.Nodes {
		data, err := yaml.Marshal(st.agentConfig(&st.Nodes[i], agent.StoreConfig{Type: "etcd", Endpoints: []string{st.EtcdURL}}))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "agent.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := agent.ReadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Masquerade == nil || *cfg.Masquerade || strings.Join(cfg.NoMasqueradeCIDRs, " ") != "192.168.0.0/16 172.16.0.1/12" {
			t.Fatalf("node %s's agent config: masquerade %v, noMasqueradeCIDRs %v", st.Nodes[i].Name, cfg.Masquerade, cfg.NoMasqueradeCIDRs)
		}
	}
	// Left out, the agents' default (masquerade) holds.
	if s, err = readSpec(t, labFile); err != nil {
		t.Fatal(err)
	}
	if st, err = plan("t", s); err != nil {
		t.Fatal(err)
	}
	if cfg := st.agentConfig(&st.Nodes[0], agent.StoreConfig{Type: "etcd"}); cfg.Masquerade != nil || cfg.NoMasqueradeCIDRs != nil {
		t.Fatalf("default agent config: masquerade %v, noMasqueradeCIDRs %v", cfg.Masquerade, cfg.NoMasqueradeCIDRs)
	}
	for _, tc := range []struct{ name, lines, want string }{
		{"unknown field", "masqerade: false\n", `unknown field "masqerade"`},
		{"not a bool", "masquerade: sometimes\n", "masquerade"},
		{"bad CIDR", "noMasqueradeCIDRs: [10.0.0.0/8, 192.168.0.0/33]\n", `noMasqueradeCIDRs[1]: "192.168.0.0/33" is not an IPv4 CIDR`},
		{"IPv6 CIDR", "noMasqueradeCIDRs: [fd00::/8]\n", `noMasqueradeCIDRs[0]: "fd00::/8" is not an IPv4 CIDR`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := readSpec(t, labFile+tc.lines); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// racksFile is two racks of native nodes and a router, to which cases add lines.
const racksFile = `
mode: native
nodes: [{name: node1, rack: a}, {name: node2, rack: a}, {name: node3, rack: b}]
namespaces: [{name: s}]
`

func TestSpecBGP(t *testing.T) {
	s, err := readSpec(t, racksFile+"bgp: {asn: 64512, routerASN: 64500}\n")
	if err != nil {
		t.Fatal(err)
	}
	if b := s.BGP; b.ASN != 64512 || b.RouterASN != 64500 || b.HoldTime != "9s" || b.RestartTime != "60s" || !b.HasRouter() {
		t.Fatalf("bgp with defaults: %+v", *b)
	}
	if s.Nodes[2].Rack != "b" {
		t.Fatalf("node3's rack %q, want b", s.Nodes[2].Rack)
	}
	// A full mesh needs no router, nor racks.
	if _, err := readSpec(t, "mode: native\nnodes: [{name: n1}, {name: n2}]\nbgp: {asn: 4294967295, meshNodes: true, password: s3cret, holdTime: 30s, restartTime: 2m}\n"); err != nil {
		t.Fatal(err)
	}
}

func TestSpecBGPRefused(t *testing.T) {
	const flat = "mode: native\nnodes: [{name: n1}, {name: n2}]\n"
	for _, tc := range []struct{ name, file, want string }{
		{"unknown field", flat + "bgp: {asn: 64512, routerAS: 64500}\n", `unknown field "routerAS"`},
		{"not native", "mode: vxlan\nnodes: [{name: n1}]\nbgp: {asn: 64512, routerASN: 64500}\n", "bgp: needs mode: native (mode is vxlan)"},
		{"kubernetes", flat + "kubernetes: true\nbgp: {asn: 64512, routerASN: 64500}\n", "bgp: not in a kubernetes lab yet"},
		{"no asn", flat + "bgp: {routerASN: 64500}\n", "bgp.asn: 0 is not in 1-4294967295"},
		{"asn too big", flat + "bgp: {asn: 4294967296, routerASN: 64500}\n", "bgp.asn: 4294967296 is not in 1-4294967295"},
		{"router asn too big", flat + "bgp: {asn: 64512, routerASN: 4294967296}\n", "bgp.routerASN: 4294967296 is not in 1-4294967295"},
		{"negative router asn", flat + "bgp: {asn: 64512, routerASN: -1}\n", "bgp.routerASN: -1 is not in"},
		{"no one to peer with", flat + "bgp: {asn: 64512}\n", "bgp: give a routerASN (the lab's router) or meshNodes: true"},
		{"hold time", flat + "bgp: {asn: 64512, routerASN: 64500, holdTime: 2s}\n", `bgp.holdTime: "2s" must be whole seconds between 3s and 65535s`},
		{"hold time fraction", flat + "bgp: {asn: 64512, routerASN: 64500, holdTime: 9.5s}\n", `bgp.holdTime: "9.5s"`},
		{"restart time", flat + "bgp: {asn: 64512, routerASN: 64500, restartTime: 2h}\n", `bgp.restartTime: "2h" must be whole seconds between 1s and 4095s`},
		{"password quote", flat + `bgp: {asn: 64512, routerASN: 64500, password: 'a"b'}` + "\n", "bgp.password: must be printable ASCII"},
		{"password long", flat + "bgp: {asn: 64512, routerASN: 64500, password: " + strings.Repeat("x", 81) + "}\n", "bgp.password: longer than TCP MD5's 80 bytes"},
		{"racks without bgp", racksFile, "nodes[0].rack: racks need bgp with a routerASN"},
		{"racks without router", racksFile + "bgp: {asn: 64512, meshNodes: true}\n", "nodes[0].rack: racks need bgp with a routerASN"},
		{"rack missing", "mode: native\nnodes: [{name: n1, rack: a}, {name: n2}]\nbgp: {asn: 64512, routerASN: 64500}\n",
			"nodes[1].rack: missing: when one node has a rack every node needs one"},
		{"bad rack", "mode: native\nnodes: [{name: n1, rack: A_1}]\nbgp: {asn: 64512, routerASN: 64500}\n", `nodes[0].rack: "A_1" is not a DNS label`},
		{"node named router", "mode: native\nnodes: [{name: router}]\nbgp: {asn: 64512, routerASN: 64500}\n", `nodes[0].name: "router" must be`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := readSpec(t, tc.file); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	// `lab up --kubernetes` sets kubernetes after the file is read: plan refuses it too.
	s, err := readSpec(t, racksFile+"bgp: {asn: 64512, routerASN: 64500}\n")
	if err != nil {
		t.Fatal(err)
	}
	s.Kubernetes = true
	if _, err := plan("t", s); err == nil || !strings.Contains(err.Error(), "bgp: not in a kubernetes lab yet") {
		t.Fatalf("plan of a kubernetes lab with bgp: %v", err)
	}
}

// TestSpecMapSizes: mapSizes reach every node's agent config; a size out of bounds is refused
// by field, as the agent would.
func TestSpecMapSizes(t *testing.T) {
	s, err := readSpec(t, labFile+fmt.Sprintf("mapSizes: {conntrack: %d, policy: 64}\n", agent.MinFlowEntries()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := plan("t", s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range st.Nodes {
		if cfg := st.agentConfig(&st.Nodes[i], agent.StoreConfig{Type: "etcd"}); cfg.MapSizes.Conntrack != agent.MinFlowEntries() || cfg.MapSizes.Policy != 64 {
			t.Fatalf("node %s's agent config: mapSizes %+v", st.Nodes[i].Name, cfg.MapSizes)
		}
	}
	for _, tc := range []struct{ lines, want string }{
		{"mapSizes: {policy: 8}\n", ": mapSizes.policy: 8 must be between 16 and 16777216"},
		{"mapSizes: {contrack: 4096}\n", `unknown field "contrack"`},
	} {
		if _, err := readSpec(t, labFile+tc.lines); err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line containing %q", tc.lines, err, tc.want)
		}
	}
}

// A lab file is checked by the YAML guard before it is decoded: an alias bomb is refused with
// the guard's reason and the file's name.
func TestSpecRefusesAliasBomb(t *testing.T) {
	bomb := labFile + yamlbomb.Repeated(100<<10, 20)
	_, err := readSpec(t, bomb)
	if err == nil || !strings.Contains(err.Error(), "its aliases expand it past the 1 MiB a document may have") || !strings.Contains(err.Error(), "lab file ") {
		t.Errorf("an alias bomb: %v, want the lab file refused for its aliases", err)
	}
}

// cni: ebpfnet by default; cilium, the peer, only in a kubernetes lab and in Cilium's modes.
func TestSpecCNI(t *testing.T) {
	const nodes = "nodes: [{name: n1}, {name: n2}]\n"
	s, err := readSpec(t, "mode: vxlan\n"+nodes)
	if err != nil {
		t.Fatal(err)
	}
	if s.CNI != CNIEbpfnet {
		t.Errorf("cni %q by default, want ebpfnet", s.CNI)
	}
	for _, mode := range []string{"vxlan", "native"} {
		if _, err := readSpec(t, "mode: "+mode+"\nkubernetes: true\ncni: cilium\n"+nodes); err != nil {
			t.Errorf("cilium in mode %s: %v", mode, err)
		}
	}
	for _, tc := range []struct{ name, file, want string }{
		{"not kubernetes", "mode: vxlan\ncni: cilium\n" + nodes, "cni: cilium runs only in a kubernetes lab (kubernetes: true)"},
		{"ipip", "mode: ipip\nkubernetes: true\ncni: cilium\n" + nodes, `cni: cilium runs in mode vxlan or native, not "ipip"`},
		{"map sizes", "mode: vxlan\nkubernetes: true\ncni: cilium\nmapSizes: {conntrack: 4096}\n" + nodes, "cni: cilium: bgp and mapSizes are ebpfnet's settings"},
		{"unknown", "mode: vxlan\nkubernetes: true\ncni: calico\n" + nodes, `cni: "calico" is not ebpfnet or cilium`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := readSpec(t, tc.file); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
