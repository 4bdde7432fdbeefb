package kubestore

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/ebpfnet/ebpfnet/store"
)

// Annotations the agent writes on its Node.
const (
	// UnderlayIPAnnotation is the address other nodes tunnel or route to (the node's InternalIP
	// when absent).
	UnderlayIPAnnotation = "ebpfnet.io/underlay-ip"
	// UnderlayIPv6Annotation is the node's IPv6 underlay address in a dual-stack cluster, if
	// it has one.
	UnderlayIPv6Annotation = "ebpfnet.io/underlay-ipv6"
	// PodCIDRAnnotation is the pod CIDR ebpfnet claimed for the node when spec.podCIDR was unset.
	PodCIDRAnnotation = "ebpfnet.io/pod-cidr"
	// PodCIDRv6Annotation is the node's IPv6 pod CIDR in a dual-stack cluster: what
	// spec.podCIDRs could not take when it was set with an IPv4 CIDR only.
	PodCIDRv6Annotation = "ebpfnet.io/pod-cidr-v6"
)

var listOne = metav1.ListOptions{Limit: 1}

// stripManaged drops managed fields from cached objects: nobody here reads them.
func stripManaged(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// newClasses builds one class per kind of key, the records last (they take what is left).
func (k *KV) newClasses(ctx context.Context) ([]*class, error) {
	classes := []*class{k.nodeClass(), k.podClass(), k.namespaceClass(), k.policyClass(), k.serviceClass(),
		k.endpointSliceClass(), k.identityClass(), k.recordClass()}
	for _, c := range classes {
		// The first informers replace none, so start does not wait: waitSynced waits for them.
		if err := c.start(ctx, ctx, k.handler(c)); err != nil {
			return nil, err
		}
	}
	return classes, nil
}

// typed makes informers of one kind, each from a factory of its own, so that a class can
// replace its informer.
func (k *KV) typed(pick func(informers.SharedInformerFactory) cache.SharedIndexInformer) func() cache.SharedIndexInformer {
	return func() cache.SharedIndexInformer {
		return pick(informers.NewSharedInformerFactoryWithOptions(k.core, 0, informers.WithTransform(stripManaged)))
	}
}

func (k *KV) nodeClass() *class {
	inf := k.typed(func(f informers.SharedInformerFactory) cache.SharedIndexInformer {
		return f.Core().V1().Nodes().Informer()
	})
	c := &class{prefix: store.NodesPrefix, newInformer: inf, lister: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return k.core.CoreV1().Nodes().List(ctx, o)
	}}
	c.encode = func(obj any) (string, []byte, bool) {
		n, ok := obj.(*corev1.Node)
		if !ok {
			return "", nil, false
		}
		sn, ok := nodeOf(n)
		if !ok {
			return store.NodesPrefix + n.Name, nil, false
		}
		b, _ := json.Marshal(sn)
		return store.NodesPrefix + n.Name, b, true
	}
	c.get = c.fromCache(func(key string) string { return strings.TrimPrefix(key, store.NodesPrefix) })
	c.put = k.putNode
	c.del = func(ctx context.Context, key string) error {
		return k.core.CoreV1().Nodes().Delete(ctx, strings.TrimPrefix(key, store.NodesPrefix), metav1.DeleteOptions{})
	}
	return c
}

// nodeOf is a Node as ebpfnet sees it: usable once it has an underlay address and a pod CIDR.
// Its pod CIDRs are spec.podCIDRs (one of each family), else the annotations the agent wrote.
// A Node with an IPv6 pod CIDR alone is of an IPv6-only cluster: that is its PodCIDR.
func nodeOf(n *corev1.Node) (store.Node, bool) {
	out := store.Node{Name: n.Name}
	ip := n.Annotations[UnderlayIPAnnotation]
	if ip == "" {
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				if addr, err := netip.ParseAddr(a.Address); err == nil && addr.Is4() {
					ip = a.Address
					break
				}
			}
		}
	}
	v4, v6 := specPodCIDRs(n)
	if !v4.IsValid() {
		if p, err := netip.ParsePrefix(n.Annotations[PodCIDRAnnotation]); err == nil && p.Addr().Is4() {
			v4 = p
		}
	}
	if !v6.IsValid() {
		if p, err := netip.ParsePrefix(n.Annotations[PodCIDRv6Annotation]); err == nil && p.Addr().Is6() {
			v6 = p
		}
	}
	if ip6, err := netip.ParseAddr(n.Annotations[UnderlayIPv6Annotation]); err == nil && ip6.Is6() {
		out.IPv6 = ip6
	}
	var err error
	out.IP, err = netip.ParseAddr(ip)
	out.PodCIDR, out.PodCIDRv6 = v4, v6
	if !v4.IsValid() {
		out.PodCIDR, out.PodCIDRv6 = v6, netip.Prefix{}
	}
	return out, err == nil && out.PodCIDR.IsValid()
}

// specPodCIDRs is the Node's spec.podCIDRs by family (spec.podCIDR is its first), each
// invalid when absent.
func specPodCIDRs(n *corev1.Node) (v4, v6 netip.Prefix) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		switch {
		case err != nil:
		case p.Addr().Is4() && !v4.IsValid():
			v4 = p
		case p.Addr().Is6() && !v6.IsValid():
			v6 = p
		}
	}
	return v4, v6
}

// putNode records on the Node the underlay address and pod CIDRs the agent uses, setting
// spec.podCIDR and spec.podCIDRs (IPv4 first, then IPv6 in a dual-stack cluster) when they
// are unset: the API server takes them once. It waits for kubelet to register the Node.
func (k *KV) putNode(ctx context.Context, key string, val []byte) error {
	var want store.Node
	if err := json.Unmarshal(val, &want); err != nil {
		return err
	}
	name := strings.TrimPrefix(key, store.NodesPrefix)
	var n *corev1.Node
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var err error
		n, err = k.core.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsNotFound(err) || time.Now().After(deadline) {
			return fmt.Errorf("node %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond): // waiting for kubelet to register the Node
		}
	}
	annotations := map[string]any{UnderlayIPAnnotation: want.IP.String(), PodCIDRAnnotation: want.PodCIDR.String()}
	if want.PodCIDRv6.IsValid() {
		annotations[PodCIDRv6Annotation] = want.PodCIDRv6.String()
	} else if _, ok := n.Annotations[PodCIDRv6Annotation]; ok {
		annotations[PodCIDRv6Annotation] = nil // the cluster is IPv4 only now
	}
	if want.IPv6.IsValid() {
		annotations[UnderlayIPv6Annotation] = want.IPv6.String()
	} else if _, ok := n.Annotations[UnderlayIPv6Annotation]; ok {
		annotations[UnderlayIPv6Annotation] = nil
	}
	patch := map[string]any{"metadata": map[string]any{"annotations": annotations}}
	have4, have6 := specPodCIDRs(n)
	havePrimary := have4
	if want.PodCIDR.Addr().Is6() { // an IPv6-only cluster
		havePrimary = have6
	}
	switch {
	case !have4.IsValid() && !have6.IsValid():
		cidrs := []string{want.PodCIDR.String()}
		if want.PodCIDRv6.IsValid() {
			cidrs = append(cidrs, want.PodCIDRv6.String())
		}
		patch["spec"] = map[string]any{"podCIDR": cidrs[0], "podCIDRs": cidrs}
	case havePrimary != want.PodCIDR:
		return fmt.Errorf("node %s has spec.podCIDRs %v, not %s", name, n.Spec.PodCIDRs, want.PodCIDR)
	case have6.IsValid() && want.PodCIDRv6.IsValid() && have6 != want.PodCIDRv6:
		return fmt.Errorf("node %s has spec.podCIDRs %v, not %s", name, n.Spec.PodCIDRs, want.PodCIDRv6)
	}
	// A spec.podCIDRs of IPv4 only stays so (the API server refuses to change it): the
	// annotation carries the IPv6 pod CIDR.
	b, _ := json.Marshal(patch)
	_, err := k.core.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, b, metav1.PatchOptions{})
	return err
}

func (k *KV) podClass() *class {
	inf := k.typed(func(f informers.SharedInformerFactory) cache.SharedIndexInformer {
		return f.Core().V1().Pods().Informer()
	})
	c := &class{prefix: store.PodsPrefix, newInformer: inf, lister: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return k.core.CoreV1().Pods("").List(ctx, o)
	}}
	c.encode = func(obj any) (string, []byte, bool) {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return "", nil, false
		}
		m := store.PodMeta{Labels: p.Labels}
		for _, ct := range p.Spec.Containers {
			for _, pt := range ct.Ports {
				m.Ports = append(m.Ports, store.PodPort{Name: pt.Name, Port: int(pt.ContainerPort), Protocol: string(pt.Protocol)})
			}
		}
		b, _ := json.Marshal(m)
		return store.PodsPrefix + p.Namespace + "/" + p.Name, b, true
	}
	c.get = c.fromCache(func(key string) string { return strings.TrimPrefix(key, store.PodsPrefix) })
	c.put = func(ctx context.Context, key string, val []byte) error {
		var m store.PodMeta
		if err := json.Unmarshal(val, &m); err != nil {
			return err
		}
		ns, name, ok := strings.Cut(strings.TrimPrefix(key, store.PodsPrefix), "/")
		if !ok {
			return errNoKey
		}
		old, err := k.core.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		_, err = k.core.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, labelPatch(old.Labels, m.Labels), metav1.PatchOptions{})
		return err
	}
	return c
}

// labelPatch is a merge patch that turns labels have into want.
func labelPatch(have, want map[string]string) []byte {
	l := map[string]any{}
	for k := range have {
		if _, ok := want[k]; !ok {
			l[k] = nil
		}
	}
	for k, v := range want {
		l[k] = v
	}
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": l}})
	return b
}

func (k *KV) namespaceClass() *class {
	inf := k.typed(func(f informers.SharedInformerFactory) cache.SharedIndexInformer {
		return f.Core().V1().Namespaces().Informer()
	})
	c := &class{prefix: store.NamespacesPrefix, newInformer: inf, lister: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return k.core.CoreV1().Namespaces().List(ctx, o)
	}}
	c.encode = func(obj any) (string, []byte, bool) {
		n, ok := obj.(*corev1.Namespace)
		if !ok {
			return "", nil, false
		}
		l := n.Labels
		if l == nil {
			l = map[string]string{}
		}
		b, _ := json.Marshal(l)
		return store.NamespacesPrefix + n.Name, b, true
	}
	c.get = c.fromCache(func(key string) string { return strings.TrimPrefix(key, store.NamespacesPrefix) })
	c.put = func(ctx context.Context, key string, val []byte) error {
		var want map[string]string
		if err := json.Unmarshal(val, &want); err != nil {
			return err
		}
		name := strings.TrimPrefix(key, store.NamespacesPrefix)
		nsAPI := k.core.CoreV1().Namespaces()
		old, err := nsAPI.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = nsAPI.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: want}}, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		// Kubernetes keeps kubernetes.io/metadata.name on every namespace.
		want = withName(want, name)
		_, err = nsAPI.Patch(ctx, name, types.MergePatchType, labelPatch(old.Labels, want), metav1.PatchOptions{})
		return err
	}
	return c
}

func withName(l map[string]string, name string) map[string]string {
	out := map[string]string{"kubernetes.io/metadata.name": name}
	for k, v := range l {
		out[k] = v
	}
	return out
}

func (k *KV) policyClass() *class {
	inf := k.typed(func(f informers.SharedInformerFactory) cache.SharedIndexInformer {
		return f.Networking().V1().NetworkPolicies().Informer()
	})
	c := &class{prefix: store.PoliciesPrefix, newInformer: inf, lister: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return k.core.NetworkingV1().NetworkPolicies("").List(ctx, o)
	}}
	c.encode = func(obj any) (string, []byte, bool) {
		np, ok := obj.(*networkingv1.NetworkPolicy)
		if !ok {
			return "", nil, false
		}
		b, _ := json.Marshal(np)
		return store.PoliciesPrefix + np.Namespace + "/" + np.Name, b, true
	}
	c.get = c.fromCache(func(key string) string { return strings.TrimPrefix(key, store.PoliciesPrefix) })
	decode := func(val []byte) (*networkingv1.NetworkPolicy, error) {
		np := &networkingv1.NetworkPolicy{}
		if err := json.Unmarshal(val, np); err != nil {
			return nil, err
		}
		np.ResourceVersion, np.UID, np.ManagedFields = "", "", nil
		return np, nil
	}
	c.create = func(ctx context.Context, _ string, val []byte) error {
		np, err := decode(val)
		if err != nil {
			return err
		}
		_, err = k.core.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{})
		return err
	}
	c.put = func(ctx context.Context, key string, val []byte) error {
		np, err := decode(val)
		if err != nil {
			return err
		}
		api := k.core.NetworkingV1().NetworkPolicies(np.Namespace)
		old, err := api.Get(ctx, np.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = api.Create(ctx, np, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		np.ResourceVersion = old.ResourceVersion
		_, err = api.Update(ctx, np, metav1.UpdateOptions{})
		return err
	}
	c.del = func(ctx context.Context, key string) error {
		ns, name, ok := strings.Cut(strings.TrimPrefix(key, store.PoliciesPrefix), "/")
		if !ok {
			return errNoKey
		}
		return k.core.NetworkingV1().NetworkPolicies(ns).Delete(ctx, name, metav1.DeleteOptions{})
	}
	return c
}

// fromCache reads a key from the class's informer, by the cache key keyOf gives.
func (c *class) fromCache(keyOf func(string) string) func(context.Context, string) ([]byte, bool, error) {
	return func(_ context.Context, key string) ([]byte, bool, error) {
		obj, ok, err := c.store().GetByKey(keyOf(key))
		if err != nil || !ok {
			return nil, false, err
		}
		_, val, ok := c.encode(obj)
		return val, ok, nil
	}
}
