package store_test

import (
	"context"
	"fmt"
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

	"github.com/ebpfnet/ebpfnet/store"
)

func localCluster(t *testing.T) *store.Cluster {
	t.Helper()
	kv, err := store.OpenLocal(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	return &store.Cluster{KV: kv}
}

func ptr[T any](v T) *T { return &v }

func svc(ns, name string, mod func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	if mod != nil {
		mod(s)
	}
	return s
}

func slice(ns, name, service string, af discoveryv1.AddressType, ports map[string]int32, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		Labels: map[string]string{discoveryv1.LabelServiceName: service}}, AddressType: af, Endpoints: eps}
	for n, p := range ports {
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr(n), Port: ptr(p), Protocol: ptr(corev1.ProtocolTCP)})
	}
	return es
}

func ep(ip, node string, ready, serving, terminating *bool) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}}
	if node != "" {
		e.NodeName = ptr(node)
	}
	return e
}

// cluster is what a Services case puts in the store besides the services.
type cluster struct {
	slices []*discoveryv1.EndpointSlice
	nodes  []string
	pods   []pod
}

// pod is an attached pod: its endpoint and its metadata.
type pod struct {
	node, ns, name, ip string
	labels             map[string]string
	ports              []store.PodPort
}

func (cl cluster) put(t *testing.T, c *store.Cluster) {
	t.Helper()
	ctx := context.Background()
	for _, es := range cl.slices {
		if err := c.PutEndpointSlice(ctx, es); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range cl.nodes {
		node := store.Node{Name: n, IP: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}),
			PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)}
		if err := c.PutNode(ctx, node, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range cl.pods {
		e := store.Endpoint{ContainerID: "c-" + p.name, IfName: "eth0", Node: p.node, Namespace: p.ns, Pod: p.name,
			IP: netip.MustParseAddr(p.ip), Labels: map[string]string{"from": "cni"}}
		if err := c.PutEndpoint(ctx, e); err != nil {
			t.Fatal(err)
		}
		if err := c.PutPod(ctx, p.ns, p.name, store.PodMeta{Labels: p.labels, Ports: p.ports}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestServices(t *testing.T) {
	yes, no := ptr(true), ptr(false)
	web := map[string]string{"app": "web"}
	twoPorts := func(s *corev1.Service) {
		s.Spec.Ports = []corev1.ServicePort{
			{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")},
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(5353)},
			{Name: "plain", Protocol: corev1.ProtocolTCP, Port: 9000},
		}
	}
	namedPods := cluster{nodes: []string{"n1", "n2"}, pods: []pod{
		{node: "n1", ns: "s", name: "a", ip: "10.244.0.2", labels: web,
			ports: []store.PodPort{{Name: "web", Port: 8080, Protocol: "TCP"}}},
		{node: "n2", ns: "s", name: "b", ip: "10.244.1.2", labels: map[string]string{"app": "web", "v": "2"},
			ports: []store.PodPort{{Name: "web", Port: 8081}}}, // protocol defaults to TCP
		{node: "n2", ns: "s", name: "c", ip: "10.244.1.3", labels: web,
			ports: []store.PodPort{{Name: "web", Port: 8082, Protocol: "UDP"}}}, // not the TCP port named web
		{node: "n1", ns: "other", name: "d", ip: "10.244.0.9", labels: web}, // another namespace
		{node: "n1", ns: "s", name: "e", ip: "10.244.0.10", labels: map[string]string{"app": "db"}},
		{node: "gone", ns: "s", name: "f", ip: "10.244.5.2", labels: web}, // its node is not registered
	}}
	tests := []struct {
		name    string
		svcs    []*corev1.Service
		cluster cluster
		want    []store.Service
	}{{
		name: "backends from EndpointSlices",
		svcs: []*corev1.Service{svc("s", "web", func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "metrics", Protocol: corev1.ProtocolTCP, Port: 9090})
		})},
		cluster: cluster{
			nodes: []string{"n1"}, // a pod the selector matches is not used: the slices decide
			pods:  []pod{{node: "n1", ns: "s", name: "x", ip: "10.244.0.50", labels: web}},
			slices: []*discoveryv1.EndpointSlice{
				slice("s", "web-a", "web", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080, "metrics": 9100},
					ep("10.244.0.2", "n1", nil, nil, nil), // nil conditions: ready, serving
					ep("10.244.0.3", "n2", no, yes, yes),  // terminating but serving
					ep("10.244.0.4", "", no, nil, nil),    // not ready; serving follows ready
					ep("fd00::4", "n1", yes, yes, no)),    // no IPv4 address
				slice("s", "web-b", "web", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8081, "stale": 1},
					ep("10.244.1.2", "n2", yes, yes, no)),
				slice("s", "web-v6", "web", discoveryv1.AddressTypeIPv6, map[string]int32{"http": 8080},
					ep("fd00::5", "n1", nil, nil, nil)),
				slice("s", "other-a", "other", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 1},
					ep("10.244.9.9", "n1", nil, nil, nil)),
				slice("t", "web-a", "web", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 1},
					ep("10.244.9.8", "n1", nil, nil, nil)),
			}},
		want: []store.Service{{Namespace: "s", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
			Ports: []store.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}, {Name: "metrics", Protocol: "TCP", Port: 9090}},
			Backends: []store.Backend{
				{IP: netip.MustParseAddr("10.244.0.2"), Node: "n1", Ports: map[string]int{"http": 8080, "metrics": 9100}, Ready: true, Serving: true},
				{IP: netip.MustParseAddr("10.244.0.3"), Node: "n2", Ports: map[string]int{"http": 8080, "metrics": 9100}, Serving: true, Terminating: true},
				{IP: netip.MustParseAddr("10.244.0.4"), Ports: map[string]int{"http": 8080, "metrics": 9100}},
				{IP: netip.MustParseAddr("10.244.1.2"), Node: "n2", Ports: map[string]int{"http": 8081}, Ready: true, Serving: true},
				// An IPv6 slice's endpoint: the datapath gives it to the service's IPv6 frontends.
				{IP: netip.MustParseAddr("fd00::5"), Node: "n1", Ports: map[string]int{"http": 8080}, Ready: true, Serving: true},
			}}},
	}, {
		name:    "backends derived from pods, named target ports",
		svcs:    []*corev1.Service{svc("s", "web", twoPorts)},
		cluster: namedPods,
		want: []store.Service{{Namespace: "s", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
			Ports: []store.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53},
				{Name: "plain", Protocol: "TCP", Port: 9000}},
			Backends: []store.Backend{
				{IP: netip.MustParseAddr("10.244.0.2"), Node: "n1", Ports: map[string]int{"http": 8080, "dns": 5353, "plain": 9000}, Ready: true, Serving: true},
				{IP: netip.MustParseAddr("10.244.1.2"), Node: "n2", Ports: map[string]int{"http": 8081, "dns": 5353, "plain": 9000}, Ready: true, Serving: true},
				{IP: netip.MustParseAddr("10.244.1.3"), Node: "n2", Ports: map[string]int{"dns": 5353, "plain": 9000}, Ready: true, Serving: true},
			}}},
	}, {
		name: "no selector, empty selector, headless, ExternalName",
		svcs: []*corev1.Service{
			svc("s", "a-manual", func(s *corev1.Service) { s.Spec.Selector = nil }),
			svc("s", "b-empty", func(s *corev1.Service) { s.Spec.Selector = map[string]string{} }),
			svc("s", "c-headless", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }),
			svc("s", "d-external", func(s *corev1.Service) {
				s.Spec.Type, s.Spec.ClusterIP, s.Spec.ClusterIPs, s.Spec.ExternalName = corev1.ServiceTypeExternalName, "", nil, "example.com"
			}),
		},
		cluster: namedPods,
		want: []store.Service{
			{Namespace: "s", Name: "a-manual", ClusterIP: netip.MustParseAddr("10.96.0.10"),
				Ports: []store.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}}, Backends: []store.Backend{}},
			{Namespace: "s", Name: "b-empty", ClusterIP: netip.MustParseAddr("10.96.0.10"),
				Ports: []store.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}}, Backends: []store.Backend{}},
			{Namespace: "s", Name: "c-headless", Ports: []store.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}},
				Backends: []store.Backend{
					{IP: netip.MustParseAddr("10.244.0.2"), Node: "n1", Ports: map[string]int{"http": 8080}, Ready: true, Serving: true},
					{IP: netip.MustParseAddr("10.244.1.2"), Node: "n2", Ports: map[string]int{"http": 8080}, Ready: true, Serving: true},
					{IP: netip.MustParseAddr("10.244.1.3"), Node: "n2", Ports: map[string]int{"http": 8080}, Ready: true, Serving: true},
				}},
		},
	}, {
		name: "node ports, affinity and traffic policies",
		svcs: []*corev1.Service{
			svc("s", "affinity-default", func(s *corev1.Service) {
				s.Spec.Selector, s.Spec.SessionAffinity = nil, corev1.ServiceAffinityClientIP
			}),
			svc("s", "affinity-60", func(s *corev1.Service) {
				s.Spec.Selector, s.Spec.SessionAffinity = nil, corev1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr(int32(60))}}
			}),
			svc("s", "lb", func(s *corev1.Service) {
				s.Spec.Selector, s.Spec.Type = nil, corev1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
				s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal)
			}),
			svc("s", "np", func(s *corev1.Service) {
				s.Spec.Selector, s.Spec.Type = nil, corev1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort, s.Spec.Ports[0].Protocol = 30053, ""
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "fd00::10", []string{"fd00::10", "10.96.0.11"} // dual stack
			}),
		},
		want: []store.Service{
			{Namespace: "s", Name: "affinity-60", ClusterIP: netip.MustParseAddr("10.96.0.10"), ClientIPAffinity: time.Minute,
				Ports: []store.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}}, Backends: []store.Backend{}},
			{Namespace: "s", Name: "affinity-default", ClusterIP: netip.MustParseAddr("10.96.0.10"), ClientIPAffinity: 3 * time.Hour,
				Ports: []store.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}}, Backends: []store.Backend{}},
			{Namespace: "s", Name: "lb", ClusterIP: netip.MustParseAddr("10.96.0.10"), NodePort: true, ExternalLocal: true, InternalLocal: true,
				Ports: []store.ServicePort{{Name: "http", Protocol: "TCP", Port: 80, NodePort: 30080}}, Backends: []store.Backend{}},
			{Namespace: "s", Name: "np", ClusterIP: netip.MustParseAddr("10.96.0.11"), ClusterIPv6: netip.MustParseAddr("fd00::10"), NodePort: true,
				Ports: []store.ServicePort{{Name: "http", Protocol: "TCP", Port: 80, NodePort: 30053}}, Backends: []store.Backend{}},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := localCluster(t)
			ctx := context.Background()
			tc.cluster.put(t, c)
			for _, s := range tc.svcs {
				if err := c.PutService(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			got, err := c.Services(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("services:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestServiceObjects(t *testing.T) {
	c := localCluster(t)
	ctx := context.Background()
	for _, s := range []*corev1.Service{svc("b", "x", nil), svc("a", "y", nil), svc("a", "x", nil)} {
		if err := c.PutService(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PutService(ctx, svc("", "x", nil)); err == nil {
		t.Fatal("a service without a namespace was stored")
	}
	objs, err := c.ServiceObjects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range objs {
		names = append(names, o.Namespace+"/"+o.Name)
	}
	if strings.Join(names, " ") != "a/x a/y b/x" {
		t.Fatalf("services listed as %v", names)
	}
	if ok, err := c.DeleteService(ctx, "a", "y"); err != nil || !ok {
		t.Fatalf("delete a/y: %v %v", ok, err)
	}
	if ok, err := c.DeleteService(ctx, "a", "y"); err != nil || ok {
		t.Fatalf("delete a/y again: %v %v", ok, err)
	}
	if _, ok, err := c.ServiceObject(ctx, "a", "y"); err != nil || ok {
		t.Fatalf("a/y after delete: %v %v", ok, err)
	}
}

func TestServiceIPAllocation(t *testing.T) {
	c := localCluster(t)
	ctx := context.Background()
	cidr := netip.MustParsePrefix("10.96.0.0/28") // .2 to .14: 13 addresses
	got := map[netip.Addr]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 2 { // two agents racing
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 7 {
				if g == 1 && i == 6 {
					return // 13 in all
				}
				owner := fmt.Sprintf("ns/svc-%d-%d", g, i)
				ip, err := c.AllocateServiceIP(ctx, cidr, owner)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if other, dup := got[ip]; dup {
					t.Errorf("%s handed to %s and %s", ip, other, owner)
				}
				got[ip] = owner
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for ip := range got {
		if !cidr.Contains(ip) || ip == netip.MustParseAddr("10.96.0.0") || ip == netip.MustParseAddr("10.96.0.1") || ip == netip.MustParseAddr("10.96.0.15") {
			t.Errorf("allocated %s, which is reserved or outside %s", ip, cidr)
		}
	}
	if _, err := c.AllocateServiceIP(ctx, cidr, "ns/late"); err == nil {
		t.Fatal("allocated from a full CIDR")
	}
	owner := got[netip.MustParseAddr("10.96.0.5")]
	if ip, err := c.AllocateServiceIP(ctx, cidr, owner); err != nil || ip != netip.MustParseAddr("10.96.0.5") {
		t.Fatalf("%s asked again and got %s (%v)", owner, ip, err)
	}
	if err := c.ClaimServiceIP(ctx, netip.MustParseAddr("10.96.0.5"), owner); err != nil {
		t.Fatalf("claiming its own address: %v", err)
	}
	err := c.ClaimServiceIP(ctx, netip.MustParseAddr("10.96.0.5"), "ns/thief")
	if err == nil || !strings.Contains(err.Error(), owner) {
		t.Fatalf("claiming another's address: %v, want an error naming %s", err, owner)
	}
	if err := c.ReleaseService(ctx, owner); err != nil {
		t.Fatal(err)
	}
	if ip, err := c.AllocateServiceIP(ctx, cidr, "ns/late"); err != nil || ip != netip.MustParseAddr("10.96.0.5") {
		t.Fatalf("after release got %s (%v), want 10.96.0.5", ip, err)
	}
}

func TestNodePortAllocation(t *testing.T) {
	c := localCluster(t)
	ctx := context.Background()
	if err := c.ClaimNodePort(ctx, "TCP", 30000, "ns/fixed"); err != nil {
		t.Fatal(err)
	}
	ports := make([][]int, 2)
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				p, err := c.AllocateNodePort(ctx, "TCP", fmt.Sprintf("ns/svc-%d-%d", g, i))
				if err != nil {
					t.Error(err)
					return
				}
				ports[g] = append(ports[g], p)
			}
		}()
	}
	wg.Wait()
	seen := map[int]bool{30000: true}
	for _, ps := range ports {
		for _, p := range ps {
			if seen[p] || p < store.MinNodePort || p > store.MaxNodePort {
				t.Fatalf("node port %d handed out twice or out of range: %v", p, ports)
			}
			seen[p] = true
		}
	}
	// Protocols have ports of their own.
	if p, err := c.AllocateNodePort(ctx, "UDP", "ns/dns"); err != nil || p != 30000 {
		t.Fatalf("first UDP node port %d (%v), want 30000", p, err)
	}
	if err := c.ClaimNodePort(ctx, "TCP", 30000, "ns/other"); err == nil || !strings.Contains(err.Error(), "ns/fixed") {
		t.Fatalf("claiming a held node port: %v", err)
	}
	for _, bad := range []struct {
		proto string
		port  int
	}{{"TCP", 29999}, {"TCP", 32768}, {"ICMP", 30001}} {
		if err := c.ClaimNodePort(ctx, bad.proto, bad.port, "ns/x"); err == nil {
			t.Errorf("claimed %d/%s", bad.port, bad.proto)
		}
	}
	if err := c.ClaimServiceIP(ctx, netip.MustParseAddr("10.96.0.20"), "ns/fixed"); err != nil {
		t.Fatal(err)
	}
	claims, err := c.ServiceClaims(ctx, "ns/fixed")
	want := store.ServiceClaims{IPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")},
		NodePorts: []store.NodePortClaim{{Protocol: "TCP", Port: 30000}}}
	if err != nil || !reflect.DeepEqual(claims, want) {
		t.Fatalf("claims %+v (%v), want %+v", claims, err, want)
	}
	if err := c.ReleaseService(ctx, "ns/fixed"); err != nil {
		t.Fatal(err)
	}
	if claims, _ := c.ServiceClaims(ctx, "ns/fixed"); len(claims.IPs)+len(claims.NodePorts) != 0 {
		t.Fatalf("after release ns/fixed still holds %+v", claims)
	}
	if err := c.ClaimNodePort(ctx, "TCP", 30000, "ns/other"); err != nil {
		t.Fatalf("claiming a released node port: %v", err)
	}
	// Release frees only what the owner holds.
	if err := c.ReleaseClaims(ctx, "ns/fixed", store.ServiceClaims{NodePorts: []store.NodePortClaim{{Protocol: "TCP", Port: 30000}}}); err != nil {
		t.Fatal(err)
	}
	if claims, _ := c.ServiceClaims(ctx, "ns/other"); len(claims.NodePorts) != 1 {
		t.Fatalf("releasing another's claim freed it: %+v", claims)
	}
}

func TestClaimsOf(t *testing.T) {
	s := svc("s", "np", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports = []corev1.ServicePort{{Name: "a", Port: 80, NodePort: 30080}, {Name: "b", Protocol: corev1.ProtocolUDP, Port: 53, NodePort: 30053}}
	})
	got := store.ClaimsOf(s)
	want := store.ServiceClaims{IPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		NodePorts: []store.NodePortClaim{{Protocol: "TCP", Port: 30080}, {Protocol: "UDP", Port: 30053}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ClaimsOf %+v, want %+v", got, want)
	}
	less := got.Minus(store.ServiceClaims{NodePorts: []store.NodePortClaim{{Protocol: "UDP", Port: 30053}}})
	if len(less.IPs) != 1 || len(less.NodePorts) != 1 || less.NodePorts[0].Port != 30080 {
		t.Fatalf("Minus %+v", less)
	}
	if h := store.ClaimsOf(svc("s", "h", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} })); len(h.IPs) != 0 {
		t.Fatalf("a headless service claims %v", h.IPs)
	}
}

// memKV is a KV in memory that counts the calls made to it.
type memKV struct {
	mu    sync.Mutex
	m     map[string][]byte
	calls map[string]int
}

func newMemKV() *memKV { return &memKV{m: map[string][]byte{}, calls: map[string]int{}} }

// take returns the calls counted by method, and counts from zero again.
func (k *memKV) take() map[string]int {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := k.calls
	k.calls = map[string]int{}
	return out
}

func (k *memKV) Get(_ context.Context, key string) ([]byte, bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls["Get"]++
	v, ok := k.m[key]
	return v, ok, nil
}

func (k *memKV) List(_ context.Context, prefix string) (map[string][]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls["List"]++
	out := map[string][]byte{}
	for key, v := range k.m {
		if strings.HasPrefix(key, prefix) {
			out[key] = v
		}
	}
	return out, nil
}

func (k *memKV) Put(_ context.Context, key string, val []byte, _ time.Duration) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls["Put"]++
	k.m[key] = val
	return nil
}

func (k *memKV) Create(_ context.Context, key string, val []byte) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls["Create"]++
	if _, ok := k.m[key]; ok {
		return false, nil
	}
	k.m[key] = val
	return true, nil
}

func (k *memKV) Delete(_ context.Context, key string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls["Delete"]++
	delete(k.m, key)
	return nil
}

func (k *memKV) Watch(context.Context, string) <-chan store.Event {
	ch := make(chan store.Event)
	close(ch)
	return ch
}

func (k *memKV) Close() error { return nil }

// nth is the address n after the start of p.
func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) + uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// TestServiceClaimSetAtScale allocates for 2,000 services in one pass, as one request of the
// Service API does, with another agent's claims scattered in the range and another agent
// taking addresses between the read and the Creates: every claim is unique, and the store
// sees two Lists, one Create per claim (and per one lost), and one Delete per release.
func TestServiceClaimSetAtScale(t *testing.T) {
	ctx := context.Background()
	kv := newMemKV()
	c := &store.Cluster{KV: kv}
	cidr := netip.MustParsePrefix("10.96.0.0/20")
	others := map[netip.Addr]bool{} // another agent's
	for i := range 200 {
		ip := nth(cidr, 2+7*i)
		if err := c.ClaimServiceIP(ctx, ip, fmt.Sprintf("other/x%d", i)); err != nil {
			t.Fatal(err)
		}
		others[ip] = true
	}
	if err := c.ClaimNodePort(ctx, "TCP", 30001, "other/np"); err != nil {
		t.Fatal(err)
	}
	kept := nth(cidr, 3000) // s/svc-5 is re-applied: it keeps its address
	if err := c.ClaimServiceIP(ctx, kept, "s/svc-5"); err != nil {
		t.Fatal(err)
	}
	kv.take()

	set, err := c.LoadServiceClaims(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if calls := kv.take(); !reflect.DeepEqual(calls, map[string]int{"List": 2}) {
		t.Fatalf("loading made %v, want two Lists", calls)
	}
	// Another agent takes the addresses and the node port the set would hand out first.
	for _, ip := range []netip.Addr{nth(cidr, 3), nth(cidr, 4)} {
		if err := c.ClaimServiceIP(ctx, ip, "other/racer"); err != nil {
			t.Fatal(err)
		}
		others[ip] = true
	}
	if err := c.ClaimNodePort(ctx, "TCP", 30000, "other/racer"); err != nil {
		t.Fatal(err)
	}
	kv.take()

	const n = 2000
	var wants []store.ClaimWant
	for i := range n {
		owner := fmt.Sprintf("s/svc-%d", i)
		wants = append(wants, store.ClaimWant{Owner: owner, CIDR: cidr})
		if i%4 == 0 {
			wants = append(wants, store.ClaimWant{Owner: owner, NodePort: store.NodePortClaim{Protocol: "TCP"}})
		}
	}
	if i, err := set.ClaimAll(ctx, wants); err != nil {
		t.Fatalf("want %d: %v", i, err)
	}
	ips, ports := map[netip.Addr]string{}, map[int]string{}
	for _, w := range wants {
		if w.CIDR.IsValid() {
			if other, dup := ips[w.IP]; dup || others[w.IP] {
				t.Fatalf("%s handed to %s, held by %q", w.IP, w.Owner, other)
			}
			if !cidr.Contains(w.IP) || w.IP.Compare(nth(cidr, 2)) < 0 || w.IP == nth(cidr, 4095) {
				t.Fatalf("%s handed to %s: reserved or outside %s", w.IP, w.Owner, cidr)
			}
			ips[w.IP] = w.Owner
			continue
		}
		p := w.NodePort.Port
		if other, dup := ports[p]; dup || p == 30000 || p == 30001 || p < store.MinNodePort || p > store.MaxNodePort {
			t.Fatalf("node port %d handed to %s, held by %q", p, w.Owner, other)
		}
		ports[p] = w.Owner
	}
	if ips[kept] != "s/svc-5" || ips[nth(cidr, 5)] != "s/svc-2" {
		t.Fatalf("%s went to %s, %s to %s: want s/svc-5 to keep its own, s/svc-2 to have the first free one",
			kept, ips[kept], nth(cidr, 5), ips[nth(cidr, 5)])
	}
	newClaims := n - 1 + n/4
	if calls := kv.take(); !reflect.DeepEqual(calls, map[string]int{"Create": newClaims + 3}) {
		t.Fatalf("claiming made %v, want %d Creates (one per new claim, and three lost)", calls, newClaims+3)
	}
	for _, owner := range []string{"s/svc-0", "s/svc-5", "s/svc-1996"} {
		if got, err := c.ServiceClaims(ctx, owner); err != nil || !reflect.DeepEqual(got, set.Held(owner)) {
			t.Fatalf("%s holds %+v in the store (%v), %+v says the set", owner, got, err, set.Held(owner))
		}
	}
	kv.take()

	for i := range n {
		owner := fmt.Sprintf("s/svc-%d", i)
		if err := set.Release(ctx, owner, set.Held(owner)); err != nil {
			t.Fatal(err)
		}
	}
	if calls := kv.take(); !reflect.DeepEqual(calls, map[string]int{"Delete": newClaims + 1}) {
		t.Fatalf("releasing made %v, want %d Deletes", calls, newClaims+1)
	}
	if got, _ := c.ServiceClaims(ctx, "s/svc-0"); len(got.IPs)+len(got.NodePorts) != 0 {
		t.Fatalf("after release s/svc-0 holds %+v", got)
	}
	if got, _ := c.ServiceClaims(ctx, "other/racer"); len(got.IPs) != 2 || len(got.NodePorts) != 1 {
		t.Fatalf("releasing freed another's claims: other/racer holds %+v", got)
	}
	// Released addresses are handed out again, lowest first.
	if ip, err := set.AllocateIP(ctx, cidr, "s/late"); err != nil || ip != nth(cidr, 5) {
		t.Fatalf("after release got %s (%v), want %s", ip, err, nth(cidr, 5))
	}
}

// TestClaimAll: allocation goes around the addresses the request gives; a given address
// another service holds, or one given twice in the request, fails at its want, and what was
// claimed before it stays for the caller to release.
func TestClaimAll(t *testing.T) {
	ctx := context.Background()
	c := localCluster(t)
	cidr := netip.MustParsePrefix("10.96.0.0/24")
	if err := c.ClaimServiceIP(ctx, netip.MustParseAddr("10.96.0.3"), "s/web"); err != nil {
		t.Fatal(err)
	}
	set, err := c.LoadServiceClaims(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wants := []store.ClaimWant{{Owner: "s/a", CIDR: cidr}, {Owner: "s/b", IP: netip.MustParseAddr("10.96.0.5")},
		{Owner: "s/c", CIDR: cidr}, {Owner: "s/d", CIDR: cidr}, {Owner: "s/e", CIDR: cidr}, {Owner: "s/web", CIDR: cidr}}
	if i, err := set.ClaimAll(ctx, wants); err != nil {
		t.Fatalf("want %d: %v", i, err)
	}
	var got []string
	for _, w := range wants {
		got = append(got, w.IP.String())
	}
	if want := "10.96.0.2 10.96.0.5 10.96.0.4 10.96.0.6 10.96.0.7 10.96.0.3"; strings.Join(got, " ") != want {
		t.Fatalf("got %s, want %s", strings.Join(got, " "), want)
	}
	for _, w := range wants[:5] {
		if err := set.Release(ctx, w.Owner, set.Held(w.Owner)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		wants []store.ClaimWant
		fails int
		want  string
	}{
		{"held by another", []store.ClaimWant{{Owner: "s/a", CIDR: cidr}, {Owner: "s/b", IP: netip.MustParseAddr("10.96.0.3")}},
			1, "service IP 10.96.0.3 is held by service s/web"},
		{"given twice", []store.ClaimWant{{Owner: "s/a", IP: netip.MustParseAddr("10.96.0.7")}, {Owner: "s/b", IP: netip.MustParseAddr("10.96.0.7")}},
			1, "service IP 10.96.0.7 is held by service s/a"},
		{"node port given twice", []store.ClaimWant{
			{Owner: "s/a", NodePort: store.NodePortClaim{Protocol: "UDP", Port: 30053}},
			{Owner: "s/b", NodePort: store.NodePortClaim{Protocol: "UDP", Port: 30053}}},
			1, "node port 30053/UDP is held by service s/a"},
		{"bad protocol", []store.ClaimWant{{Owner: "s/a", CIDR: cidr}, {Owner: "s/a", NodePort: store.NodePortClaim{Protocol: "ICMP"}}},
			1, `protocol "ICMP"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := c.LoadServiceClaims(ctx)
			if err != nil {
				t.Fatal(err)
			}
			i, err := set.ClaimAll(ctx, tc.wants)
			if err == nil || i != tc.fails || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ClaimAll: want %d failed with %v, want want %d failing with %q", i, err, tc.fails, tc.want)
			}
			for _, owner := range []string{"s/a", "s/b"} {
				if err := set.Release(ctx, owner, set.Held(owner)); err != nil {
					t.Fatal(err)
				}
				if got, _ := c.ServiceClaims(ctx, owner); len(got.IPs)+len(got.NodePorts) != 0 {
					t.Fatalf("after release %s holds %+v", owner, got)
				}
			}
			if got, _ := c.ServiceClaims(ctx, "s/web"); len(got.IPs) != 1 {
				t.Fatalf("s/web holds %+v", got)
			}
		})
	}
}
