package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/store"
)

func TestParseServices(t *testing.T) {
	good := `
# a comment-only document first
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: s}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {ports: [{port: 1}]}}
  - {apiVersion: v1, kind: Service, metadata: {name: b}, spec: {ports: [{port: 2, targetPort: 8080}]}}
`
	objs, err := ParseServices([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	svcs := objs.Services
	var names []string
	for _, s := range svcs {
		names = append(names, s.Namespace+"/"+s.Name)
	}
	if strings.Join(names, " ") != "s/web /a /b" {
		t.Fatalf("parsed %v", names)
	}
	if tp := svcs[0].Spec.Ports[0].TargetPort; tp != intstr.FromString("http") {
		t.Fatalf("targetPort %v", tp)
	}
	slices := `
apiVersion: v1
kind: Service
metadata: {name: db}
spec: {ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 15432}]
endpoints:
  - addresses: [10.1.0.1]
    nodeName: n1
  - addresses: [10.1.0.2]
    conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: v1
kind: List
items:
  - {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: db-2, labels: {kubernetes.io/service-name: db}}, addressType: IPv4, endpoints: []}
`
	if objs, err = ParseServices([]byte(slices)); err != nil {
		t.Fatal(err)
	}
	if len(objs.Services) != 1 || len(objs.EndpointSlices) != 2 || objs.EndpointSlices[1].Name != "db-2" {
		t.Fatalf("parsed %+v", objs)
	}
	if c := objs.EndpointSlices[0].Endpoints[1].Conditions; c.Ready == nil || *c.Ready || c.Terminating == nil || !*c.Terminating {
		t.Fatalf("conditions %+v", c)
	}
	for _, tc := range []struct{ name, doc, want string }{
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {prots: []}", `document 1: unknown field "prots"`},
		{"unknown field in a list item", "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Service, metadata: {name: a}, spec: {x: 1}}]", `document 1: items[0]: unknown field "x"`},
		{"unknown field in a slice", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\nendpoints: [{adresses: [10.1.0.1]}]", `document 1: unknown field "adresses"`},
		{"a slice of another version", "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: a}", `want v1 Service or discovery.k8s.io/v1 EndpointSlice`},
		{"not a service", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}", `want v1 Service`},
		{"nothing", "# only a comment\n", "no Service or EndpointSlice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseServices([]byte(tc.doc)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func svcOf(mod func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "s"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	if mod != nil {
		mod(s)
	}
	return s
}

func TestValidateService(t *testing.T) {
	two := func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	}
	for _, tc := range []struct {
		name string
		mod  func(*corev1.Service)
		want string // "" when valid
	}{
		{"plain", nil, ""},
		{"two named ports", two, ""},
		{"node port", func(s *corev1.Service) { s.Spec.Type, s.Spec.Ports[0].NodePort = corev1.ServiceTypeNodePort, 30080 }, ""},
		{"load balancer", func(s *corev1.Service) {
			s.Spec.Type, s.Spec.ExternalTrafficPolicy = corev1.ServiceTypeLoadBalancer, corev1.ServiceExternalTrafficPolicyLocal
		}, ""},
		{"headless", func(s *corev1.Service) { s.Spec.ClusterIP = "None" }, ""},
		{"external name", func(s *corev1.Service) {
			s.Spec.Type, s.Spec.ExternalName, s.Spec.Ports = corev1.ServiceTypeExternalName, "db.example.com", nil
		}, ""},
		{"named target port", func(s *corev1.Service) { s.Spec.Ports[0].TargetPort = intstr.FromString("web") }, ""},
		{"bad name", func(s *corev1.Service) { s.Name = "1web" }, "service s/1web: metadata.name"},
		{"bad type", func(s *corev1.Service) { s.Spec.Type = "Magic" }, "spec.type"},
		{"bad protocol", func(s *corev1.Service) { s.Spec.Ports[0].Protocol = "ICMP" }, "spec.ports[0].protocol"},
		{"udp", func(s *corev1.Service) { s.Spec.Ports[0].Protocol = corev1.ProtocolUDP }, ""},
		{"sctp", func(s *corev1.Service) { s.Spec.Ports[0].Protocol = corev1.ProtocolSCTP },
			"service s/web: spec.ports[0].protocol: SCTP is not supported by ebpfnet's datapath"},
		{"sctp second port", func(s *corev1.Service) { two(s); s.Spec.Ports[1].Protocol = corev1.ProtocolSCTP },
			"service s/web: spec.ports[1].protocol: SCTP is not supported by ebpfnet's datapath"},
		{"port 0", func(s *corev1.Service) { s.Spec.Ports[0].Port = 0 }, "spec.ports[0].port"},
		{"no ports", func(s *corev1.Service) { s.Spec.Ports = nil }, "spec.ports: at least one"},
		{"unnamed second port", func(s *corev1.Service) { two(s); s.Spec.Ports[1].Name = "" }, "spec.ports[1].name: required"},
		{"duplicate names", func(s *corev1.Service) { two(s); s.Spec.Ports[1].Name = "http" }, "spec.ports[1].name: duplicate"},
		{"node port out of range", func(s *corev1.Service) { s.Spec.Type, s.Spec.Ports[0].NodePort = corev1.ServiceTypeNodePort, 8080 }, "spec.ports[0].nodePort: 8080 is not in 30000-32767"},
		{"node port on ClusterIP", func(s *corev1.Service) { s.Spec.Ports[0].NodePort = 30080 }, "spec.ports[0].nodePort: only for"},
		{"affinity", func(s *corev1.Service) { s.Spec.SessionAffinity = "Sticky" }, "spec.sessionAffinity"},
		{"external policy", func(s *corev1.Service) {
			s.Spec.Type, s.Spec.ExternalTrafficPolicy = corev1.ServiceTypeNodePort, "Near"
		}, "spec.externalTrafficPolicy"},
		{"internal policy", func(s *corev1.Service) {
			p := corev1.ServiceInternalTrafficPolicy("Near")
			s.Spec.InternalTrafficPolicy = &p
		}, "spec.internalTrafficPolicy"},
		{"cluster IP", func(s *corev1.Service) { s.Spec.ClusterIP = "10.96.0.256" }, "spec.clusterIP"},
		{"IPv6 cluster IP", func(s *corev1.Service) { s.Spec.ClusterIP = "fd00:10:96::a" }, ""},
		{"clusterIPs not led by clusterIP", func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.10", []string{"fd00:10:96::a", "10.96.0.10"}
		}, "spec.clusterIPs: [fd00:10:96::a 10.96.0.10] must start with spec.clusterIP"},
		{"two IPv4 cluster IPs", func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.10", []string{"10.96.0.10", "10.96.0.11"}
		}, "two addresses of one family"},
		{"dual stack without a policy", func(s *corev1.Service) {
			s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
		}, "spec.ipFamilyPolicy: two families need"},
		{"dual stack, single-stack policy", func(s *corev1.Service) {
			s.Spec.IPFamilies, s.Spec.IPFamilyPolicy = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}, ptr(corev1.IPFamilyPolicySingleStack)
		}, "spec.ipFamilyPolicy: SingleStack, but two"},
		{"unknown family", func(s *corev1.Service) { s.Spec.IPFamilies = []corev1.IPFamily{"IPv5"} }, `spec.ipFamilies[0]: "IPv5"`},
		{"families out of the cluster IPs' order", func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.10", []string{"10.96.0.10", "fd00:10:96::a"}
			s.Spec.IPFamilies, s.Spec.IPFamilyPolicy = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}, ptr(corev1.IPFamilyPolicyRequireDualStack)
		}, "spec.ipFamilies[0]: IPv6, but spec.clusterIPs[0] is IPv4"},
		{"unknown policy", func(s *corev1.Service) { s.Spec.IPFamilyPolicy = ptr(corev1.IPFamilyPolicy("Both")) }, `spec.ipFamilyPolicy: "Both"`},
		{"headless node port", func(s *corev1.Service) { s.Spec.Type, s.Spec.ClusterIP = corev1.ServiceTypeNodePort, "None" }, "spec.clusterIP: None"},
		{"bad target port name", func(s *corev1.Service) { s.Spec.Ports[0].TargetPort = intstr.FromString("no_such") }, "spec.ports[0].targetPort"},
		{"bad selector", func(s *corev1.Service) { s.Spec.Selector = map[string]string{"app": "a b"} }, "spec.selector"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := svcOf(tc.mod)
			NormalizeService(s)
			err := ValidateService(s)
			if tc.want == "" && err != nil {
				t.Fatalf("valid service refused: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Fatalf("error spans lines: %q", err)
			}
		})
	}
}

// applySvcs applies services alone.
func applySvcs(a *Agent, svcs ...corev1.Service) ([]corev1.Service, error) {
	got, err := a.applyServices(context.Background(), ServiceObjects{Services: svcs})
	return got.Services, err
}

// serviceAgent is an agent of a local store, with nothing but what the Service API uses.
func serviceAgent(t *testing.T, cidr string) (*Agent, *store.Cluster) {
	t.Helper()
	kv, err := store.OpenLocal(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	c := &store.Cluster{KV: kv}
	a := &Agent{cfg: &settled{Config: Config{Store: StoreConfig{Type: "local"}}, serviceCIDR: netip.MustParsePrefix(cidr)},
		cluster: c, kick: make(chan struct{}, 1), log: slog.Default(), node: store.Node{Name: "n1", IP: netip.MustParseAddr("10.250.0.1")}}
	return a, c
}

func TestApplyServices(t *testing.T) {
	ctx := context.Background()
	a, c := serviceAgent(t, "10.96.0.0/28")
	np := svcOf(func(s *corev1.Service) {
		s.Name, s.Spec.Type = "np", corev1.ServiceTypeNodePort
		s.Spec.Ports = []corev1.ServicePort{{Name: "http", Port: 80, NodePort: 30080}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}
	})
	got, err := applySvcs(a, *svcOf(nil), *np)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Spec.ClusterIP != "10.96.0.2" || got[1].Spec.ClusterIP != "10.96.0.3" {
		t.Fatalf("cluster IPs %s %s, want 10.96.0.2 and 10.96.0.3", got[0].Spec.ClusterIP, got[1].Spec.ClusterIP)
	}
	if p := got[1].Spec.Ports; p[0].NodePort != 30080 || p[1].NodePort != store.MinNodePort {
		t.Fatalf("node ports %d %d", p[0].NodePort, p[1].NodePort)
	}
	if tp := got[0].Spec.Ports[0].TargetPort; tp != intstr.FromInt32(80) {
		t.Fatalf("targetPort defaulted to %v", tp)
	}
	// Applying the same file again keeps what was allocated.
	again, err := applySvcs(a, *np)
	if err != nil || !reflect.DeepEqual(again[0].Spec, got[1].Spec) {
		t.Fatalf("re-applied: %+v (%v), want %+v", again[0].Spec, err, got[1].Spec)
	}
	// All or nothing: the second service's cluster IP belongs to s/web, so the first one's
	// fresh allocation is released.
	fresh := svcOf(func(s *corev1.Service) { s.Name = "fresh" })
	thief := svcOf(func(s *corev1.Service) { s.Name, s.Spec.ClusterIP = "thief", "10.96.0.2" })
	if _, err := applySvcs(a, *fresh, *thief); err == nil || !strings.Contains(err.Error(), "s/web") {
		t.Fatalf("stealing a cluster IP: %v, want an error naming s/web", err)
	}
	if cl, err := c.ServiceClaims(ctx, "s/fresh"); err != nil || len(cl.IPs) != 0 {
		t.Fatalf("a failed request kept its allocation %v (%v)", cl.IPs, err)
	}
	if _, ok, err := c.ServiceObject(ctx, "s", "fresh"); err != nil || ok {
		t.Fatalf("a failed request stored a service (%v)", err)
	}
	twin := svcOf(func(s *corev1.Service) { s.Name, s.Spec.ClusterIP = "twin", "10.96.0.9" })
	twin2 := svcOf(func(s *corev1.Service) { s.Name, s.Spec.ClusterIP = "twin2", "10.96.0.9" })
	if _, err := applySvcs(a, *fresh, *twin, *twin2); err == nil || !strings.Contains(err.Error(), "service s/twin2: spec.clusterIP: service IP 10.96.0.9 is held by service s/twin") {
		t.Fatalf("a cluster IP given twice: %v", err)
	}
	for _, owner := range []string{"s/fresh", "s/twin", "s/twin2"} {
		if cl, err := c.ServiceClaims(ctx, owner); err != nil || len(cl.IPs) != 0 {
			t.Fatalf("a failed request kept %s's allocation %v (%v)", owner, cl.IPs, err)
		}
	}
	for _, tc := range []struct {
		svc  *corev1.Service
		want string
	}{
		{svcOf(func(s *corev1.Service) { s.Spec.ClusterIP = "10.97.0.1" }), "not in the service CIDR 10.96.0.0/28"},
		{svcOf(func(s *corev1.Service) { s.Spec.ClusterIP = "10.96.0.9" }), "may not change from 10.96.0.2"},
		{svcOf(func(s *corev1.Service) { s.Name, s.Spec.ClusterIP = "x", "10.96.0.15" }), "broadcast"},
	} {
		if _, err := applySvcs(a, *tc.svc); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.svc.Spec.ClusterIP, err, tc.want)
		}
	}
	// An update that drops a node port frees it.
	np.Spec.Ports = np.Spec.Ports[:1]
	if _, err := applySvcs(a, *np); err != nil {
		t.Fatal(err)
	}
	if cl, err := c.ServiceClaims(ctx, "s/np"); err != nil || len(cl.NodePorts) != 1 || cl.NodePorts[0].Port != 30080 {
		t.Fatalf("after dropping the UDP port s/np holds %+v (%v)", cl.NodePorts, err)
	}
}

func TestServiceViewsAndDelete(t *testing.T) {
	ctx := context.Background()
	a, c := serviceAgent(t, "10.96.0.0/24")
	if err := c.PutNode(ctx, store.Node{Name: "n1", IP: netip.MustParseAddr("10.250.0.1"), PodCIDR: netip.MustParsePrefix("10.244.0.0/24")}, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.PutEndpoint(ctx, store.Endpoint{ContainerID: "c1", IfName: "eth0", Node: "n1", Namespace: "s", Pod: "a",
		IP: netip.MustParseAddr("10.244.0.2")}); err != nil {
		t.Fatal(err)
	}
	if err := c.PutPod(ctx, "s", "a", store.PodMeta{Labels: map[string]string{"app": "web"}}); err != nil {
		t.Fatal(err)
	}
	np := svcOf(func(s *corev1.Service) {
		s.Spec.Type, s.Spec.ClusterIP = corev1.ServiceTypeNodePort, "10.96.0.10"
		s.Spec.Ports = []corev1.ServicePort{{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(80), NodePort: 30080}}
	})
	ext := svcOf(func(s *corev1.Service) {
		s.Name, s.Spec.Type, s.Spec.ExternalName, s.Spec.Ports = "ext", corev1.ServiceTypeExternalName, "db.example.com", nil
	})
	if _, err := applySvcs(a, *np, *ext); err != nil {
		t.Fatal(err)
	}
	views, err := a.serviceViews(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []agentapi.ServiceView{
		{Namespace: "s", Name: "ext", Type: "ExternalName", Ports: []agentapi.ServicePort{}, Frontends: []string{}, Backends: []agentapi.BackendView{}},
		{Namespace: "s", Name: "web", Type: "NodePort", ClusterIP: "10.96.0.10",
			Ports:     []agentapi.ServicePort{{Name: "http", Protocol: "TCP", Port: 8080, NodePort: 30080}},
			Frontends: []string{"10.96.0.10:8080/TCP", "10.250.0.1:30080/TCP"},
			Backends:  []agentapi.BackendView{{IP: "10.244.0.2", Node: "n1", Ports: map[string]int{"http": 80}, State: "ready"}}},
	}
	if !reflect.DeepEqual(views, want) {
		b1, _ := json.Marshal(views)
		b2, _ := json.Marshal(want)
		t.Fatalf("views\n got %s\nwant %s", b1, b2)
	}
	mux := http.NewServeMux()
	a.serviceRoutes(mux)
	for _, want := range []int{http.StatusOK, http.StatusNotFound} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("DELETE", "/v1/services/s/web", nil))
		if rec.Code != want {
			t.Fatalf("DELETE: %d %s, want %d", rec.Code, rec.Body, want)
		}
		if want == http.StatusNotFound && !strings.Contains(rec.Body.String(), "service s/web not found") {
			t.Fatalf("DELETE of a missing service: %s", rec.Body)
		}
	}
	if cl, err := c.ServiceClaims(ctx, "s/web"); err != nil || len(cl.IPs)+len(cl.NodePorts) != 0 {
		t.Fatalf("a deleted service still holds %+v (%v)", cl, err)
	}
}

func sliceOf(mod func(*discoveryv1.EndpointSlice)) *discoveryv1.EndpointSlice {
	port, name, no, yes := int32(15432), "pg", false, true
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "db-1", Namespace: "s", Labels: map[string]string{discoveryv1.LabelServiceName: "db"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.1.0.1"}, NodeName: ptr("n1")},
			{Addresses: []string{"10.1.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes}},
			{Addresses: []string{"10.1.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &no, Terminating: &yes}},
		},
		Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
	}
	if mod != nil {
		mod(es)
	}
	return es
}

func ptr[T any](v T) *T { return &v }

func TestValidateEndpointSlice(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*discoveryv1.EndpointSlice)
		want string // "" when valid
	}{
		{"plain", nil, ""},
		{"no namespace", func(es *discoveryv1.EndpointSlice) { es.Namespace = "" }, ""},
		{"no endpoints", func(es *discoveryv1.EndpointSlice) { es.Endpoints = nil }, ""},
		{"unnamed UDP port", func(es *discoveryv1.EndpointSlice) {
			es.Ports = []discoveryv1.EndpointPort{{Port: ptr(int32(53)), Protocol: ptr(corev1.ProtocolUDP)}}
		}, ""},
		{"bad name", func(es *discoveryv1.EndpointSlice) { es.Name = "DB" }, "endpointslice s/DB: metadata.name"},
		{"bad namespace", func(es *discoveryv1.EndpointSlice) { es.Namespace = "s_1" }, "metadata.namespace"},
		{"no service label", func(es *discoveryv1.EndpointSlice) { es.Labels = nil }, "metadata.labels: kubernetes.io/service-name is required"},
		{"bad service label", func(es *discoveryv1.EndpointSlice) { es.Labels[discoveryv1.LabelServiceName] = "9db" }, "metadata.labels[kubernetes.io/service-name]"},
		{"no address type", func(es *discoveryv1.EndpointSlice) { es.AddressType = "" }, "addressType: required"},
		{"IPv6 slice of IPv4 addresses", func(es *discoveryv1.EndpointSlice) { es.AddressType = discoveryv1.AddressTypeIPv6 }, `endpoints[0].addresses[0]: "10.1.0.1" is not an IPv6 address`},
		{"FQDN", func(es *discoveryv1.EndpointSlice) { es.AddressType = discoveryv1.AddressTypeFQDN }, `addressType: "FQDN" is not served`},
		{"no address", func(es *discoveryv1.EndpointSlice) { es.Endpoints[1].Addresses = nil }, "endpoints[1].addresses: at least one"},
		{"IPv6 address", func(es *discoveryv1.EndpointSlice) { es.Endpoints[2].Addresses = []string{"fd00::1"} }, `endpoints[2].addresses[0]: "fd00::1" is not an IPv4 address`},
		{"bad address", func(es *discoveryv1.EndpointSlice) { es.Endpoints[0].Addresses = []string{"10.1.0.256"} }, "endpoints[0].addresses[0]"},
		{"bad node name", func(es *discoveryv1.EndpointSlice) { es.Endpoints[0].NodeName = ptr("N 1") }, "endpoints[0].nodeName"},
		{"port 0", func(es *discoveryv1.EndpointSlice) { es.Ports[0].Port = ptr(int32(0)) }, "ports[0].port: 0 is not in 1-65535"},
		{"port too big", func(es *discoveryv1.EndpointSlice) { es.Ports[0].Port = ptr(int32(65536)) }, "ports[0].port: 65536"},
		{"no port number", func(es *discoveryv1.EndpointSlice) { es.Ports[0].Port = nil }, "ports[0].port: required"},
		{"bad protocol", func(es *discoveryv1.EndpointSlice) { es.Ports[0].Protocol = ptr(corev1.Protocol("ICMP")) }, `ports[0].protocol: "ICMP" must be TCP, UDP or SCTP`},
		{"duplicate port names", func(es *discoveryv1.EndpointSlice) { es.Ports = append(es.Ports, es.Ports[0]) }, `ports[1].name: duplicate port name "pg"`},
		{"bad port name", func(es *discoveryv1.EndpointSlice) { es.Ports[0].Name = ptr("P G") }, "ports[0].name"},
		{"other kind", func(es *discoveryv1.EndpointSlice) { es.Kind = "Endpoints" }, "kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			es := sliceOf(tc.mod)
			NormalizeEndpointSlice(es)
			err := ValidateEndpointSlice(es)
			if tc.want == "" && err != nil {
				t.Fatalf("valid slice refused: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Fatalf("error spans lines: %q", err)
			}
		})
	}
}

// TestApplyEndpointSlices: a selectorless service served by a hand-written EndpointSlice,
// through the HTTP API as the CLI sends it; all or nothing with the services; delete.
func TestApplyEndpointSlices(t *testing.T) {
	ctx := context.Background()
	a, c := serviceAgent(t, "10.96.0.0/24")
	mux := http.NewServeMux()
	a.serviceRoutes(mux)
	do := func(method, path string, body any) *httptest.ResponseRecorder {
		t.Helper()
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(method, path, bytes.NewReader(b)))
		return rec
	}
	db := svcOf(func(s *corev1.Service) {
		s.Name, s.Spec.Selector, s.Spec.ClusterIP = "db", nil, "10.96.0.20"
		s.Spec.Ports = []corev1.ServicePort{{Name: "pg", Port: 5432}}
	})
	gen0, err := c.Generation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec := do("POST", "/v1/services", ServiceObjects{Services: []corev1.Service{*db}, EndpointSlices: []discoveryv1.EndpointSlice{*sliceOf(nil)}})
	if rec.Code != http.StatusOK {
		t.Fatalf("POST: %d %s", rec.Code, rec.Body)
	}
	var stored ServiceObjects
	if err := json.Unmarshal(rec.Body.Bytes(), &stored); err != nil {
		t.Fatal(err)
	}
	if len(stored.EndpointSlices) != 1 || *stored.EndpointSlices[0].Ports[0].Protocol != corev1.ProtocolTCP || stored.EndpointSlices[0].Kind != "EndpointSlice" {
		t.Fatalf("stored slices %+v", stored.EndpointSlices)
	}
	if gen, err := c.Generation(ctx); err != nil || gen <= gen0 {
		t.Fatalf("generation %d (%v) after apply, was %d", gen, err, gen0)
	}
	views, err := a.serviceViews(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []agentapi.BackendView{
		{IP: "10.1.0.1", Node: "n1", Ports: map[string]int{"pg": 15432}, State: "ready"},
		{IP: "10.1.0.2", Ports: map[string]int{"pg": 15432}, State: "serving"},
		{IP: "10.1.0.3", Ports: map[string]int{"pg": 15432}, State: "terminating"},
	}
	if len(views) != 1 || !reflect.DeepEqual(views[0].Backends, want) {
		t.Fatalf("views %+v, want backends %+v", views, want)
	}

	// All or nothing: a bad slice keeps a good service out, and a bad service a good slice.
	fresh := svcOf(func(s *corev1.Service) { s.Name, s.Spec.Selector = "fresh", nil })
	bad := sliceOf(func(es *discoveryv1.EndpointSlice) {
		es.Name, es.Endpoints[0].Addresses = "fresh-1", []string{"fd00::1"}
	})
	if _, err := a.applyServices(ctx, ServiceObjects{Services: []corev1.Service{*fresh}, EndpointSlices: []discoveryv1.EndpointSlice{*bad}}); err == nil ||
		!strings.Contains(err.Error(), "endpointslice s/fresh-1: endpoints[0].addresses[0]") {
		t.Fatalf("a bad slice: %v", err)
	}
	good := sliceOf(func(es *discoveryv1.EndpointSlice) { es.Name = "fresh-1" })
	if _, err := a.applyServices(ctx, ServiceObjects{Services: []corev1.Service{*svcOf(func(s *corev1.Service) { s.Name = "9fresh" })},
		EndpointSlices: []discoveryv1.EndpointSlice{*good}}); err == nil || !strings.Contains(err.Error(), "metadata.name") {
		t.Fatalf("a bad service: %v", err)
	}
	if _, ok, err := c.ServiceObject(ctx, "s", "fresh"); err != nil || ok {
		t.Fatalf("a failed request stored a service (%v)", err)
	}
	if cl, err := c.ServiceClaims(ctx, "s/fresh"); err != nil || len(cl.IPs) != 0 {
		t.Fatalf("a failed request kept its allocation %v (%v)", cl.IPs, err)
	}
	if rec := do("DELETE", "/v1/endpointslices/s/fresh-1", nil); rec.Code != http.StatusNotFound {
		t.Fatalf("a failed request stored a slice: DELETE answered %d %s", rec.Code, rec.Body)
	}
	if _, err := a.applyServices(ctx, ServiceObjects{EndpointSlices: []discoveryv1.EndpointSlice{*good, *good}}); err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Fatalf("a slice given twice: %v", err)
	}

	// Delete: the service keeps no backend; a second delete is a 404.
	gen1, err := c.Generation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, code := range []int{http.StatusOK, http.StatusNotFound} {
		rec := do("DELETE", "/v1/endpointslices/s/db-1", nil)
		if rec.Code != code {
			t.Fatalf("DELETE: %d %s, want %d", rec.Code, rec.Body, code)
		}
		if code == http.StatusNotFound && !strings.Contains(rec.Body.String(), "endpointslice s/db-1 not found") {
			t.Fatalf("DELETE of a missing slice: %s", rec.Body)
		}
	}
	if gen, err := c.Generation(ctx); err != nil || gen <= gen1 {
		t.Fatalf("generation %d (%v) after delete, was %d", gen, err, gen1)
	}
	if views, err = a.serviceViews(ctx); err != nil || len(views) != 1 || len(views[0].Backends) != 0 {
		t.Fatalf("after the slice's delete: %+v (%v)", views, err)
	}

	// With the kubernetes store, EndpointSlices are kubectl's to write.
	a.cfg.Store.Type = "kubernetes"
	if _, err := a.applyServices(ctx, ServiceObjects{EndpointSlices: []discoveryv1.EndpointSlice{*sliceOf(nil)}}); err == nil || !strings.Contains(err.Error(), "use kubectl") {
		t.Fatalf("a slice under the kubernetes store: %v", err)
	}
	if rec := do("DELETE", "/v1/endpointslices/s/db-1", nil); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "use kubectl") {
		t.Fatalf("DELETE under the kubernetes store: %d %s", rec.Code, rec.Body)
	}
}

// countingKV counts the calls made to the KV it wraps, by method.
type countingKV struct {
	store.KV
	mu    sync.Mutex
	calls map[string]int
}

func (k *countingKV) count(method string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls[method]++
}

// take returns the calls counted, and counts from zero again.
func (k *countingKV) take() map[string]int {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := k.calls
	k.calls = map[string]int{}
	return out
}

func (k *countingKV) Get(ctx context.Context, key string) ([]byte, bool, error) {
	k.count("Get")
	return k.KV.Get(ctx, key)
}

func (k *countingKV) List(ctx context.Context, prefix string) (map[string][]byte, error) {
	k.count("List")
	return k.KV.List(ctx, prefix)
}

func (k *countingKV) Put(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	k.count("Put")
	return k.KV.Put(ctx, key, val, ttl)
}

func (k *countingKV) Create(ctx context.Context, key string, val []byte) (bool, error) {
	k.count("Create")
	return k.KV.Create(ctx, key, val)
}

func (k *countingKV) Delete(ctx context.Context, key string) error {
	k.count("Delete")
	return k.KV.Delete(ctx, key)
}

// TestApplyManyServices: one request of many services reads the store a fixed number of
// times, then makes one Create per claim and one Put per service; applying it again keeps
// every allocation and claims nothing.
func TestApplyManyServices(t *testing.T) {
	a, c := serviceAgent(t, "10.96.0.0/16")
	kv := &countingKV{KV: c.KV, calls: map[string]int{}}
	a.cluster = &store.Cluster{KV: kv}
	const n = 300
	var svcs []corev1.Service
	for i := range n {
		svcs = append(svcs, *svcOf(func(s *corev1.Service) {
			s.Name = fmt.Sprintf("s%d", i)
			if i%3 == 0 {
				s.Spec.Type = corev1.ServiceTypeNodePort
			}
		}))
	}
	got, err := applySvcs(a, svcs...)
	if err != nil {
		t.Fatal(err)
	}
	ips, ports := map[string]bool{}, map[int32]bool{}
	for _, s := range got {
		if ips[s.Spec.ClusterIP] || (s.Spec.Type == corev1.ServiceTypeNodePort && ports[s.Spec.Ports[0].NodePort]) {
			t.Fatalf("%s: cluster IP %s or node port %d handed out twice", s.Name, s.Spec.ClusterIP, s.Spec.Ports[0].NodePort)
		}
		ips[s.Spec.ClusterIP], ports[s.Spec.Ports[0].NodePort] = true, true
	}
	claims := n + n/3
	want := map[string]int{"List": 3, "Create": claims, "Put": n + 1} // + the generation
	if calls := kv.take(); !reflect.DeepEqual(calls, want) {
		t.Fatalf("applying %d services made %v, want %v", n, calls, want)
	}
	again, err := applySvcs(a, svcs...)
	if err != nil {
		t.Fatal(err)
	}
	for i := range again {
		if !reflect.DeepEqual(again[i].Spec, got[i].Spec) {
			t.Fatalf("re-applied %s: %+v, want %+v", again[i].Name, again[i].Spec, got[i].Spec)
		}
	}
	want = map[string]int{"List": 3, "Put": n + 1}
	if calls := kv.take(); !reflect.DeepEqual(calls, want) {
		t.Fatalf("re-applying %d services made %v, want %v", n, calls, want)
	}
}

// settleFamilies decides as the API server does for the cluster's families: an IPv6-only
// cluster's Services are IPv6 whatever their policy asks, and one that needs IPv4 is refused,
// saying the cluster is IPv6-only.
func TestSettleFamilies(t *testing.T) {
	v4, v6 := corev1.IPv4Protocol, corev1.IPv6Protocol
	single, prefer, require := corev1.IPFamilyPolicySingleStack, corev1.IPFamilyPolicyPreferDualStack, corev1.IPFamilyPolicyRequireDualStack
	cases := []struct {
		name    string
		cluster []corev1.IPFamily
		policy  *corev1.IPFamilyPolicy
		fams    []corev1.IPFamily
		want    []corev1.IPFamily
		err     string
	}{
		{"IPv4 cluster, nothing named", []corev1.IPFamily{v4}, nil, nil, []corev1.IPFamily{v4}, ""},
		{"dual stack, prefer", []corev1.IPFamily{v4, v6}, &prefer, nil, []corev1.IPFamily{v4, v6}, ""},
		{"IPv6 only, nothing named", []corev1.IPFamily{v6}, nil, nil, []corev1.IPFamily{v6}, ""},
		{"IPv6 only, single", []corev1.IPFamily{v6}, &single, nil, []corev1.IPFamily{v6}, ""},
		{"IPv6 only, prefer", []corev1.IPFamily{v6}, &prefer, nil, []corev1.IPFamily{v6}, ""},
		{"IPv6 only, require", []corev1.IPFamily{v6}, &require, nil, nil, "spec.ipFamilyPolicy: RequireDualStack, but the cluster is IPv6-only"},
		{"IPv6 only, IPv4 named", []corev1.IPFamily{v6}, nil, []corev1.IPFamily{v4}, nil, "spec.ipFamilies[0]: IPv4, but the cluster is IPv6-only"},
		{"IPv4 cluster, IPv6 named", []corev1.IPFamily{v4}, nil, []corev1.IPFamily{v6}, nil, "spec.ipFamilies[0]: IPv6, but the cluster has IPv4 services only"},
	}
	for _, c := range cases {
		s := &corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, IPFamilyPolicy: c.policy, IPFamilies: c.fams}}
		err := settleFamilies(s, c.cluster)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.err == "" && !reflect.DeepEqual(s.Spec.IPFamilies, c.want):
			t.Errorf("%s: families %v, want %v", c.name, s.Spec.IPFamilies, c.want)
		}
	}
}
