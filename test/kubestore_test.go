package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"

	"github.com/ebpfnet/ebpfnet/ipam"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/store"
	"github.com/ebpfnet/ebpfnet/store/kubestore"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// apiServer is one kube-apiserver (with its etcd) in a namespace of its own, shared by the
// tests that need a bare API server; TestMain tears it down.
var apiServer struct {
	once sync.Once
	err  error
	cfg  *rest.Config
	dir  string
	ns   string
	etcd *exec.Cmd
}

// sharedAPIServer starts the shared API server on first use and returns a client
// configuration that dials into its namespace.
func sharedAPIServer(t *testing.T) *rest.Config {
	t.Helper()
	nstest.RequireRoot(t)
	apiServer.once.Do(func() { apiServer.err = startAPIServer() })
	if apiServer.err != nil {
		t.Fatal(apiServer.err)
	}
	return rest.CopyConfig(apiServer.cfg)
}

func startAPIServer() error {
	if err := kube.CheckBinaries(); err != nil {
		return err
	}
	name := "kapi-" + nstest.Suffix(6)
	path, err := namespace.Create(name)
	if err != nil {
		return err
	}
	apiServer.ns = name
	if err := exec.Command("nsenter", "--net="+path, "--", "ip", "link", "set", "lo", "up").Run(); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	// A non-loopback address: the apiserver advertises it in the kubernetes Service.
	if out, err := exec.Command("nsenter", "--net="+path, "--", "ip", "addr", "add", "10.78.0.1/32", "dev", "lo").CombinedOutput(); err != nil {
		return fmt.Errorf("address: %w: %s", err, out)
	}
	if apiServer.dir, err = os.MkdirTemp("", "ebpfnet-kapi"); err != nil {
		return err
	}
	ready := filepath.Join(apiServer.dir, "etcd.ready")
	apiServer.etcd = exec.Command("nsenter", "--net="+path, "--", ebpfnetBin, "etcd", "--data-dir",
		filepath.Join(apiServer.dir, "etcd"), "--client-url", "http://127.0.0.1:2379", "--peer-url", "http://127.0.0.1:2380", "--ready", ready)
	if err := apiServer.etcd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd did not start")
		}
		time.Sleep(20 * time.Millisecond) // polling for etcd's ready file, bounded above
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := kube.StartControlPlane(ctx, kube.ControlPlaneConfig{Dir: filepath.Join(apiServer.dir, "cp"), Netns: path,
		EtcdURL: "http://127.0.0.1:2379", AdvertiseIP: netip.MustParseAddr("10.78.0.1"), ServiceCIDR: "10.96.0.0/16", ClusterCIDR: "10.244.0.0/16"})
	if err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.Dial = namespace.Dialer(path)
	apiServer.cfg = cfg
	return nil
}

// stopAPIServer removes the shared API server, if one was started.
func stopAPIServer() {
	if apiServer.dir != "" {
		if err := kube.Teardown(filepath.Join(apiServer.dir, "cp")); err != nil {
			fmt.Fprintln(os.Stderr, "shared API server teardown:", err)
		}
	}
	if apiServer.etcd != nil && apiServer.etcd.Process != nil {
		apiServer.etcd.Process.Kill()
		_ = apiServer.etcd.Wait() // killed: its status says nothing
	}
	if apiServer.dir != "" {
		os.RemoveAll(apiServer.dir)
	}
	if apiServer.ns != "" {
		if err := namespace.Delete(apiServer.ns); err != nil {
			fmt.Fprintln(os.Stderr, "shared API server namespace:", err)
		}
	}
}

func openKubeStore(t *testing.T, cfg *rest.Config) *kubestore.KV {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv, err := kubestore.OpenConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	return kv
}

// TestKubernetesStore drives the kubernetes store against a real API server: Kubernetes'
// own objects read through informers and written back, and ebpfnet's custom resources,
// with allocation that two agents can race on.
func TestKubernetesStore(t *testing.T) {
	cfg := sharedAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kv1, kv2 := openKubeStore(t, cfg), openKubeStore(t, cfg)
	c1, c2 := &store.Cluster{KV: kv1}, &store.Cluster{KV: kv2}
	api := kubernetes.NewForConfigOrDie(cfg)
	ns := "kvs-" + nstest.Suffix(4)

	t.Run("watch announces it is live", func(t *testing.T) {
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		select {
		case ev := <-kv1.Watch(wctx, store.Prefix):
			if ev.Key != "" {
				t.Fatalf("first event %q, want the empty live event", ev.Key)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no live event")
		}
	})

	t.Run("namespaces and pods come from the API", func(t *testing.T) {
		if err := c1.PutNamespace(ctx, ns, map[string]string{"team": "a"}); err != nil {
			t.Fatal(err)
		}
		got, err := api.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil || got.Labels["team"] != "a" {
			t.Fatalf("namespace in the API: %v %v", got.Labels, err)
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{NodeName: "no-such-node", Containers: []corev1.Container{{Name: "c", Image: "x",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}}}}
		if _, err := api.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c2.WaitPod(ctx, ns, "p"); err != nil {
			t.Fatal(err)
		}
		pods, err := c2.Pods(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := pods[ns+"/p"]
		if m.Labels["app"] != "web" || len(m.Ports) != 1 || m.Ports[0].Name != "http" || m.Ports[0].Port != 8080 {
			t.Fatalf("pod meta %+v", m)
		}
		m.Labels = map[string]string{"app": "db"}
		if err := c2.PutPod(ctx, ns, "p", m); err != nil {
			t.Fatal(err)
		}
		p, err := api.CoreV1().Pods(ns).Get(ctx, "p", metav1.GetOptions{})
		if err != nil || len(p.Labels) != 1 || p.Labels["app"] != "db" {
			t.Fatalf("pod labels in the API: %v %v", p.Labels, err)
		}
		if err := c1.WaitPod(ctx, ns, "absent"); err == nil {
			t.Fatal("waiting for a pod that never comes succeeded")
		}
	})

	t.Run("policies round-trip and Sync sees direct API writes", func(t *testing.T) {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny", Namespace: ns},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
		if _, err := api.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c1.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		nps, err := c1.Policies(ctx)
		if err != nil || !hasPolicy(nps, ns, "deny") {
			t.Fatalf("after Sync the store lacks the policy: %v", err)
		}
		np2 := np.DeepCopy()
		np2.Name = "through-store"
		if err := c1.PutPolicy(ctx, np2); err != nil {
			t.Fatal(err)
		}
		if _, err := api.NetworkingV1().NetworkPolicies(ns).Get(ctx, "through-store", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
		if ok, err := c1.DeletePolicy(ctx, ns, "through-store"); err != nil || !ok {
			t.Fatalf("delete: %v %v", ok, err)
		}
		if err := c2.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if nps, _ := c2.Policies(ctx); hasPolicy(nps, ns, "through-store") {
			t.Fatal("a deleted policy is still listed after Sync")
		}
	})

	t.Run("services through the store, backends from EndpointSlices", func(t *testing.T) {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns,
			Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "kvs-web"}, Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
				{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(5353), Protocol: corev1.ProtocolUDP}}}}
		if err := c1.PutService(ctx, svc); err != nil {
			t.Fatal(err)
		}
		made, err := api.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cip := netip.MustParseAddr(made.Spec.ClusterIP) // the API server allocated it
		ready, notReady := true, false
		es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "web-by-hand", Namespace: ns,
			Labels: map[string]string{discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: "ebpfnet-test"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{{Name: ptrTo("http"), Port: ptrTo(int32(8080)), Protocol: ptrTo(corev1.ProtocolTCP)},
				{Name: ptrTo("dns"), Port: ptrTo(int32(5353)), Protocol: ptrTo(corev1.ProtocolUDP)}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.244.7.2"}, NodeName: ptrTo("kvs-n1"), Conditions: discoveryv1.EndpointConditions{Ready: &ready}},
				{Addresses: []string{"10.244.7.3"}, Conditions: discoveryv1.EndpointConditions{Ready: &notReady, Serving: &ready, Terminating: &ready}}}}
		if _, err := api.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c2.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		svcs, err := c2.Services(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got *store.Service
		for i := range svcs {
			if svcs[i].Namespace == ns && svcs[i].Name == "web" {
				got = &svcs[i]
			}
		}
		want := store.Service{Namespace: ns, Name: "web", ClusterIP: cip,
			Ports: []store.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53}},
			Backends: []store.Backend{
				{IP: netip.MustParseAddr("10.244.7.2"), Node: "kvs-n1", Ports: map[string]int{"http": 8080, "dns": 5353}, Ready: true, Serving: true},
				{IP: netip.MustParseAddr("10.244.7.3"), Ports: map[string]int{"http": 8080, "dns": 5353}, Serving: true, Terminating: true}}}
		if got == nil || !reflect.DeepEqual(*got, want) {
			t.Fatalf("service as the store resolves it:\n got %+v\nwant %+v", got, want)
		}
		// The stored value carries neither managed fields nor kubectl's copy of the object.
		raw, ok, err := kv2.Get(ctx, store.ServicesPrefix+ns+"/web")
		if err != nil || !ok || strings.Contains(string(raw), "managedFields") || strings.Contains(string(raw), "last-applied") {
			t.Fatalf("stored service %s (%v %v)", raw, ok, err)
		}
		// Writing it again without a cluster IP keeps the allocated one; EndpointSlices are
		// read-only.
		svc.Spec.Ports = svc.Spec.Ports[:1]
		if err := c2.PutService(ctx, svc); err != nil {
			t.Fatal(err)
		}
		if again, err := api.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{}); err != nil || again.Spec.ClusterIP != cip.String() || len(again.Spec.Ports) != 1 {
			t.Fatalf("updated service: %+v %v", again, err)
		}
		if err := c1.PutEndpointSlice(ctx, es); err == nil || !strings.Contains(err.Error(), "EndpointSlices are Kubernetes'") {
			t.Fatalf("writing an EndpointSlice through the store: %v", err)
		}
		if ok, err := c1.DeleteService(ctx, ns, "web"); err != nil || !ok {
			t.Fatalf("delete: %v %v", ok, err)
		}
		if _, err := api.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("the deleted service is still in the API: %v", err)
		}
		if err := c2.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if objs, err := c2.ServiceObjects(ctx); err != nil || hasService(objs, ns, "web") {
			t.Fatalf("a deleted service is still listed after Sync (%v)", err)
		}
	})

	t.Run("nodes get a pod CIDR recorded on the Node", func(t *testing.T) {
		name := "kvs-node-" + nstest.Suffix(4)
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.78.9.9"}}}}
		created, err := api.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Anything may touch a new Node first: update the latest version until it takes.
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			latest, err := api.CoreV1().Nodes().Get(ctx, created.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			latest.Status = node.Status
			_, err = api.CoreV1().Nodes().UpdateStatus(ctx, latest, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := api.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
				t.Error(err)
			}
		})
		if err := c1.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := c1.Node(ctx, name); err != nil || ok {
			t.Fatalf("a node without a pod CIDR is usable: %v %v", ok, err)
		}
		cidr, err := c1.AllocatePodCIDR(ctx, name, netip.MustParsePrefix("10.250.0.0/16"), 24)
		if err != nil {
			t.Fatal(err)
		}
		if err := c1.PutNode(ctx, store.Node{Name: name, IP: netip.MustParseAddr("10.78.9.9"), PodCIDR: cidr}, 0); err != nil {
			t.Fatal(err)
		}
		got, err := api.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil || got.Spec.PodCIDR != cidr.String() {
			t.Fatalf("spec.podCIDR %q, want %s (%v)", got.Spec.PodCIDR, cidr, err)
		}
		if err := c2.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		n, ok, err := c2.Node(ctx, name)
		if err != nil || !ok || n.PodCIDR != cidr || n.IP != netip.MustParseAddr("10.78.9.9") {
			t.Fatalf("node as the other agent sees it: %+v %v %v", n, ok, err)
		}
		// Another node asking the same cluster CIDR gets another /24.
		other, err := c2.AllocatePodCIDR(ctx, name+"-b", netip.MustParsePrefix("10.250.0.0/16"), 24)
		if err != nil || other == cidr {
			t.Fatalf("second node got %s (%v), first %s", other, err, cidr)
		}
	})

	t.Run("dual-stack nodes get both pod CIDRs recorded on the Node", func(t *testing.T) {
		checkDualStackNodes(t, ctx, api, c1, c2)
	})
	t.Run("an IPv6-only node's one pod CIDR is recorded on the Node", func(t *testing.T) {
		checkIPv6OnlyNode(t, ctx, api, c1, c2)
	})
	t.Run("Rewatch lists and watches afresh, missing nothing", func(t *testing.T) {
		checkRewatch(t, ctx, api, kv1, ns)
	})

	t.Run("two agents racing for identities agree", func(t *testing.T) {
		keys := []string{"ns=" + ns + ";pod:app=x", "ns=" + ns + ";pod:app=y", "ns=" + ns + ";pod:app=z"}
		got := make([][]uint32, 2)
		var wg sync.WaitGroup
		for i, c := range []*store.Cluster{c1, c2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, k := range keys {
					id, err := c.Identity(ctx, k)
					if err != nil {
						t.Error(err)
						return
					}
					got[i] = append(got[i], id)
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		seen := map[uint32]bool{}
		for j := range keys {
			if got[0][j] != got[1][j] {
				t.Fatalf("label set %q: agents got %d and %d", keys[j], got[0][j], got[1][j])
			}
			if seen[got[0][j]] {
				t.Fatalf("identity %d given to two label sets", got[0][j])
			}
			seen[got[0][j]] = true
		}
		ids, err := c1.Identities(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for j, k := range keys {
			if ids[got[0][j]] != k {
				t.Fatalf("EbpfnetIdentity %d holds %q, want %q", got[0][j], ids[got[0][j]], k)
			}
		}
		if err := c1.DeleteIdentity(ctx, got[0][0], keys[0]); err != nil {
			t.Fatal(err)
		}
		if err := c2.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if ids, _ := c2.Identities(ctx); ids[got[0][0]] != "" {
			t.Fatalf("identity %d still listed after delete", got[0][0])
		}
	})

	t.Run("IPAM leases in records never collide", func(t *testing.T) {
		cidr := netip.MustParsePrefix("10.251.0.0/28")
		node := "kvs-ipam-" + nstest.Suffix(4)
		p1, p2 := ipam.New(kv1, node, cidr), ipam.New(kv2, node, cidr)
		var mu sync.Mutex
		ips := map[netip.Addr]string{}
		var wg sync.WaitGroup
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := p1
				if i%2 == 1 {
					p = p2
				}
				owner := fmt.Sprintf("c%d/eth0", i)
				ip, err := p.Allocate(ctx, owner)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if prev, dup := ips[ip]; dup {
					t.Errorf("%s given to %s and %s", ip, prev, owner)
				}
				ips[ip] = owner
			}()
		}
		wg.Wait()
		if len(ips) != 10 && !t.Failed() {
			t.Fatalf("%d addresses for 10 owners", len(ips))
		}
		// Lists come from the informers' caches: catch up first.
		if err := c1.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		leases, err := p1.Leases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for owner := range leases {
			if err := p1.Release(ctx, owner); err != nil {
				t.Fatal(err)
			}
		}
		// The record is gone from the API, not just the cache: a fresh read finds nothing.
		if v, ok, err := kv2.Get(ctx, store.Prefix+"ipam/"+node+"/owners/c0/eth0"); err != nil || ok {
			t.Fatalf("released lease still readable: %q %v %v", v, ok, err)
		}
		if b, _ := json.Marshal(leases); len(leases) != 10 {
			t.Fatalf("leases %s", b)
		}
	})
}

func hasPolicy(nps []*networkingv1.NetworkPolicy, ns, name string) bool {
	for _, np := range nps {
		if np.Namespace == ns && np.Name == name {
			return true
		}
	}
	return false
}

func hasService(svcs []*corev1.Service, ns, name string) bool {
	for _, s := range svcs {
		if s.Namespace == ns && s.Name == name {
			return true
		}
	}
	return false
}

func ptrTo[T any](v T) *T { return &v }

// checkDualStackNodes: a dual-stack agent's PutNode sets an unset spec.podCIDRs to its IPv4 and
// IPv6 pod CIDRs at once (the API server takes them once); where spec.podCIDRs already holds
// the IPv4 one only, the IPv6 one goes to an annotation. Either way another agent reads both.
func checkDualStackNodes(t *testing.T, ctx context.Context, api kubernetes.Interface, c1, c2 *store.Cluster) {
	ip := netip.MustParseAddr("10.78.9.10")
	cluster4, cluster6 := netip.MustParsePrefix("10.251.0.0/16"), netip.MustParsePrefix("fd00:77::/56")
	for _, preset := range []bool{false, true} {
		name := fmt.Sprintf("kvs-dual-%t-%s", preset, nstest.Suffix(4))
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}}}}
		created, err := api.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := api.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
				t.Error(err)
			}
		})
		v4, err := c1.AllocatePodCIDR(ctx, name, cluster4, 24)
		if err != nil {
			t.Fatal(err)
		}
		v6, err := c1.AllocatePodCIDR(ctx, name, cluster6, 64)
		if err != nil {
			t.Fatal(err)
		}
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			latest, err := api.CoreV1().Nodes().Get(ctx, created.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if preset { // an operator (or an IPv4-only IPAM) set spec.podCIDRs first
				latest.Spec.PodCIDR, latest.Spec.PodCIDRs = v4.String(), []string{v4.String()}
				if latest, err = api.CoreV1().Nodes().Update(ctx, latest, metav1.UpdateOptions{}); err != nil {
					return err
				}
			}
			latest.Status = node.Status
			_, err = api.CoreV1().Nodes().UpdateStatus(ctx, latest, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := c1.PutNode(ctx, store.Node{Name: name, IP: ip, PodCIDR: v4, PodCIDRv6: v6}, 0); err != nil {
			t.Fatalf("preset %t: %v", preset, err)
		}
		got, err := api.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{v4.String(), v6.String()}
		if preset {
			want = []string{v4.String()}
			if a := got.Annotations[kubestore.PodCIDRv6Annotation]; a != v6.String() {
				t.Errorf("node %s: annotation %s is %q, want %s", name, kubestore.PodCIDRv6Annotation, a, v6)
			}
		}
		if got.Spec.PodCIDR != v4.String() || fmt.Sprint(got.Spec.PodCIDRs) != fmt.Sprint(want) {
			t.Errorf("node %s: spec.podCIDR %q, podCIDRs %v; want %s and %v", name, got.Spec.PodCIDR, got.Spec.PodCIDRs, v4, want)
		}
		if err := c2.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		n, ok, err := c2.Node(ctx, name)
		if err != nil || !ok || n.PodCIDR != v4 || n.PodCIDRv6 != v6 || n.IP != ip {
			t.Errorf("node %s as the other agent sees it: %+v %v %v; want pod CIDRs %s and %s", name, n, ok, err, v4, v6)
		}
	}
}

// checkIPv6OnlyNode: an IPv6-only agent's PutNode sets spec.podCIDRs to its one, IPv6, pod
// CIDR, and another agent reads it back as the node's PodCIDR, with no second one.
func checkIPv6OnlyNode(t *testing.T, ctx context.Context, api kubernetes.Interface, c1, c2 *store.Cluster) {
	ip, cluster6 := netip.MustParseAddr("10.78.9.11"), netip.MustParsePrefix("fd00:78::/56")
	name := "kvs-v6only-" + nstest.Suffix(4)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}}}}
	if _, err := api.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := api.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	})
	v6, err := c1.AllocatePodCIDR(ctx, name, cluster6, 64)
	if err != nil {
		t.Fatal(err)
	}
	if err := c1.PutNode(ctx, store.Node{Name: name, IP: ip, PodCIDR: v6}, 0); err != nil {
		t.Fatal(err)
	}
	got, err := api.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.PodCIDR != v6.String() || fmt.Sprint(got.Spec.PodCIDRs) != fmt.Sprint([]string{v6.String()}) {
		t.Errorf("node %s: spec.podCIDR %q, podCIDRs %v; want %s alone", name, got.Spec.PodCIDR, got.Spec.PodCIDRs, v6)
	}
	// A second PutNode (an agent's restart) finds spec.podCIDRs set to its own.
	if err := c1.PutNode(ctx, store.Node{Name: name, IP: ip, PodCIDR: v6}, 0); err != nil {
		t.Fatalf("again: %v", err)
	}
	if err := c2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	n, ok, err := c2.Node(ctx, name)
	if err != nil || !ok || n.PodCIDR != v6 || n.PodCIDRv6.IsValid() || n.IP != ip {
		t.Errorf("node %s as the other agent sees it: %+v %v %v; want pod CIDR %s alone", name, n, ok, err, v6)
	}
}

// checkRewatch: after Rewatch (what an agent does when the API server answers again) the
// store's watch goes on: a policy created and one deleted through the API each come as an
// event, and the store reads the created one.
func checkRewatch(t *testing.T, ctx context.Context, api kubernetes.Interface, kv *kubestore.KV, ns string) {
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	events := kv.Watch(wctx, store.Prefix)
	if err := kv.Rewatch(ctx); err != nil {
		t.Fatal(err)
	}
	await := func(name string, deleted bool) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case ev := <-events:
				if strings.HasSuffix(ev.Key, "/"+ns+"/"+name) && ev.Deleted == deleted {
					return
				}
			case <-deadline:
				t.Fatalf("no event for policy %s/%s (deleted %t) after Rewatch", ns, name, deleted)
			}
		}
	}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "after-rewatch", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if _, err := api.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	await(np.Name, false)
	nps, err := (&store.Cluster{KV: kv}).Policies(ctx)
	if err != nil || !hasPolicy(nps, ns, np.Name) {
		t.Fatalf("after Rewatch the store reads %d policies without %s/%s (%v)", len(nps), ns, np.Name, err)
	}
	if err := api.NetworkingV1().NetworkPolicies(ns).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	await(np.Name, true)
}
