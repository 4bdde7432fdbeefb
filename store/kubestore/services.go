package kubestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/ebpfnet/ebpfnet/store"
)

// lastApplied is the annotation kubectl apply keeps the applied object in.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// stripBookkeeping drops managed fields and kubectl's copy of the applied object from cached
// objects, so that their encoding changes only when the object does.
func stripBookkeeping(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
		if a := m.GetAnnotations(); a[lastApplied] != "" {
			delete(a, lastApplied)
			m.SetAnnotations(a)
		}
	}
	return obj, nil
}

// typedBare is typed with stripBookkeeping for a transform.
func (k *KV) typedBare(pick func(informers.SharedInformerFactory) cache.SharedIndexInformer) func() cache.SharedIndexInformer {
	return func() cache.SharedIndexInformer {
		return pick(informers.NewSharedInformerFactoryWithOptions(k.core, 0, informers.WithTransform(stripBookkeeping)))
	}
}

// splitKey is a namespaced key's namespace and name.
func splitKey(key, prefix string) (string, string, error) {
	ns, name, ok := strings.Cut(strings.TrimPrefix(key, prefix), "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("%w: %q is not %sNAMESPACE/NAME", errNoKey, key, prefix)
	}
	return ns, name, nil
}

// serviceClass keeps services/NS/NAME as the Service, core/v1.
func (k *KV) serviceClass() *class {
	inf := k.typedBare(func(f informers.SharedInformerFactory) cache.SharedIndexInformer {
		return f.Core().V1().Services().Informer()
	})
	c := &class{prefix: store.ServicesPrefix, newInformer: inf, lister: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return k.core.CoreV1().Services("").List(ctx, o)
	}}
	c.encode = func(obj any) (string, []byte, bool) {
		s, ok := obj.(*corev1.Service)
		if !ok {
			return "", nil, false
		}
		out := *s // the cache's object is shared: a shallow copy to name its kind
		out.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}
		b, _ := json.Marshal(&out)
		return store.ServicesPrefix + s.Namespace + "/" + s.Name, b, true
	}
	c.get = c.fromCache(func(key string) string { return strings.TrimPrefix(key, store.ServicesPrefix) })
	decode := func(key string, val []byte) (*corev1.Service, error) {
		ns, name, err := splitKey(key, store.ServicesPrefix)
		if err != nil {
			return nil, err
		}
		s := &corev1.Service{}
		if err := json.Unmarshal(val, s); err != nil {
			return nil, err
		}
		if s.Namespace == "" {
			s.Namespace = ns
		}
		if s.Namespace != ns || s.Name != name {
			return nil, fmt.Errorf("the value is service %s/%s, the key names %s/%s", s.Namespace, s.Name, ns, name)
		}
		s.UID, s.ManagedFields, s.CreationTimestamp, s.Generation = "", nil, metav1.Time{}, 0
		s.Status = corev1.ServiceStatus{} // the status subresource's, not ours to write
		return s, nil
	}
	c.create = func(ctx context.Context, key string, val []byte) error {
		s, err := decode(key, val)
		if err != nil {
			return err
		}
		s.ResourceVersion = ""
		_, err = k.core.CoreV1().Services(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
		return err
	}
	c.put = func(ctx context.Context, key string, val []byte) error {
		s, err := decode(key, val)
		if err != nil {
			return err
		}
		return k.putService(ctx, s)
	}
	c.del = func(ctx context.Context, key string) error {
		ns, name, err := splitKey(key, store.ServicesPrefix)
		if err != nil {
			return err
		}
		return k.core.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{})
	}
	return c
}

// putService creates s or updates the Service of its name. A resource version in s makes the
// update conditional on it (a read-modify-write that lost a race fails with a conflict);
// without one the update replaces whatever version is current, retrying lost races. The API
// server allocates a cluster IP and node ports left empty, and keeps the ones it allocated
// before when an update leaves them empty.
func (k *KV) putService(ctx context.Context, s *corev1.Service) error {
	api := k.core.CoreV1().Services(s.Namespace)
	given := s.ResourceVersion
	for attempt := 0; ; attempt++ {
		old, err := api.Get(ctx, s.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			if given != "" {
				return fmt.Errorf("service %s/%s is gone (resource version %s was given)", s.Namespace, s.Name, given)
			}
			s.ResourceVersion = ""
			_, err = api.Create(ctx, s, metav1.CreateOptions{})
		case err == nil:
			if given == "" {
				s.ResourceVersion = old.ResourceVersion
			}
			_, err = api.Update(ctx, s, metav1.UpdateOptions{})
		}
		if err == nil || given != "" || attempt >= 5 || !(apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 10 * time.Millisecond): // backing off a lost race
		}
	}
}

// errSlicesReadOnly says who writes EndpointSlices.
var errSlicesReadOnly = errors.New("EndpointSlices are Kubernetes' (its controller manager writes them); ebpfnet only reads them")

// endpointSliceClass keeps endpointslices/NS/NAME as the EndpointSlice, discovery.k8s.io/v1,
// read-only.
func (k *KV) endpointSliceClass() *class {
	inf := k.typedBare(func(f informers.SharedInformerFactory) cache.SharedIndexInformer {
		return f.Discovery().V1().EndpointSlices().Informer()
	})
	c := &class{prefix: store.EndpointSlicesPrefix, newInformer: inf, lister: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return k.core.DiscoveryV1().EndpointSlices("").List(ctx, o)
	}}
	c.encode = func(obj any) (string, []byte, bool) {
		es, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok {
			return "", nil, false
		}
		out := *es
		out.TypeMeta = metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"}
		b, _ := json.Marshal(&out)
		return store.EndpointSlicesPrefix + es.Namespace + "/" + es.Name, b, true
	}
	c.get = c.fromCache(func(key string) string { return strings.TrimPrefix(key, store.EndpointSlicesPrefix) })
	refuse := func(context.Context, string, []byte) error { return errSlicesReadOnly }
	c.put, c.create = refuse, refuse
	c.del = func(context.Context, string) error { return errSlicesReadOnly }
	return c
}
