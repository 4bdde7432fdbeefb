package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

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
	svcs, err := ParseServices([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
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
	for _, tc := range []struct{ name, doc, want string }{
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {prots: []}", `document 1: unknown field "prots"`},
		{"unknown field in a list item", "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Service, metadata: {name: a}, spec: {x: 1}}]", `document 1: items[0]: unknown field "x"`},
		{"not a service", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}", `want v1 Service`},
		{"nothing", "# only a comment\n", "no Service"},
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
		{"cluster IP", func(s *corev1.Service) { s.Spec.ClusterIP = "fd00::1" }, "spec.clusterIP"},
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
		cluster: c, kick: make(chan struct{}, 1), node: store.Node{Name: "n1", IP: netip.MustParseAddr("10.250.0.1")}}
	return a, c
}

func TestApplyServices(t *testing.T) {
	ctx := context.Background()
	a, c := serviceAgent(t, "10.96.0.0/28")
	np := svcOf(func(s *corev1.Service) {
		s.Name, s.Spec.Type = "np", corev1.ServiceTypeNodePort
		s.Spec.Ports = []corev1.ServicePort{{Name: "http", Port: 80, NodePort: 30080}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}
	})
	got, err := a.applyServices(ctx, []corev1.Service{*svcOf(nil), *np})
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
	again, err := a.applyServices(ctx, []corev1.Service{*np})
	if err != nil || !reflect.DeepEqual(again[0].Spec, got[1].Spec) {
		t.Fatalf("re-applied: %+v (%v), want %+v", again[0].Spec, err, got[1].Spec)
	}
	// All or nothing: the second service's cluster IP belongs to s/web, so the first one's
	// fresh allocation is released.
	fresh := svcOf(func(s *corev1.Service) { s.Name = "fresh" })
	thief := svcOf(func(s *corev1.Service) { s.Name, s.Spec.ClusterIP = "thief", "10.96.0.2" })
	if _, err := a.applyServices(ctx, []corev1.Service{*fresh, *thief}); err == nil || !strings.Contains(err.Error(), "s/web") {
		t.Fatalf("stealing a cluster IP: %v, want an error naming s/web", err)
	}
	if cl, _ := c.ServiceClaims(ctx, "s/fresh"); len(cl.IPs) != 0 {
		t.Fatalf("a failed request kept its allocation %v", cl.IPs)
	}
	if _, ok, _ := c.ServiceObject(ctx, "s", "fresh"); ok {
		t.Fatal("a failed request stored a service")
	}
	for _, tc := range []struct {
		svc  *corev1.Service
		want string
	}{
		{svcOf(func(s *corev1.Service) { s.Spec.ClusterIP = "10.97.0.1" }), "not in the service CIDR 10.96.0.0/28"},
		{svcOf(func(s *corev1.Service) { s.Spec.ClusterIP = "10.96.0.9" }), "may not change from 10.96.0.2"},
		{svcOf(func(s *corev1.Service) { s.Name, s.Spec.ClusterIP = "x", "10.96.0.15" }), "broadcast"},
	} {
		if _, err := a.applyServices(ctx, []corev1.Service{*tc.svc}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.svc.Spec.ClusterIP, err, tc.want)
		}
	}
	// An update that drops a node port frees it.
	np.Spec.Ports = np.Spec.Ports[:1]
	if _, err := a.applyServices(ctx, []corev1.Service{*np}); err != nil {
		t.Fatal(err)
	}
	if cl, _ := c.ServiceClaims(ctx, "s/np"); len(cl.NodePorts) != 1 || cl.NodePorts[0].Port != 30080 {
		t.Fatalf("after dropping the UDP port s/np holds %+v", cl.NodePorts)
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
	if _, err := a.applyServices(ctx, []corev1.Service{*np, *ext}); err != nil {
		t.Fatal(err)
	}
	views, err := a.serviceViews(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []ServiceView{
		{Namespace: "s", Name: "ext", Type: "ExternalName", Ports: []store.ServicePort{}, Frontends: []string{}, Backends: []BackendView{}},
		{Namespace: "s", Name: "web", Type: "NodePort", ClusterIP: "10.96.0.10",
			Ports:     []store.ServicePort{{Name: "http", Protocol: "TCP", Port: 8080, NodePort: 30080}},
			Frontends: []string{"10.96.0.10:8080/TCP", "10.250.0.1:30080/TCP"},
			Backends:  []BackendView{{IP: "10.244.0.2", Node: "n1", Ports: map[string]int{"http": 80}, State: "ready"}}},
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
	if cl, _ := c.ServiceClaims(ctx, "s/web"); len(cl.IPs)+len(cl.NodePorts) != 0 {
		t.Fatalf("a deleted service still holds %+v", cl)
	}
}
