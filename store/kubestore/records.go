package kubestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/ebpfnet/ebpfnet/store"
)

// The custom resources (deploy/crds.yaml).
var (
	identitiesGVR = schema.GroupVersionResource{Group: "ebpfnet.io", Version: "v1", Resource: "ebpfnetidentities"}
	recordsGVR    = schema.GroupVersionResource{Group: "ebpfnet.io", Version: "v1", Resource: "ebpfnetrecords"}
)

// identityIDsPrefix holds identity number -> label key; each is an EbpfnetIdentity named by its number.
const identityIDsPrefix = store.Prefix + "identity-ids/"

// kindLabel says which kind of record an EbpfnetRecord is (its key's first part), for kubectl -l.
const kindLabel = "ebpfnet.io/kind"

// class is one kind of key: where it lives in the API and how it reads and writes.
type class struct {
	prefix string // "" for the records, which take every key no other class does
	// newInformer makes the class's informer; a class whose cache stops following the API
	// server replaces it (see Sync).
	newInformer func() cache.SharedIndexInformer
	mu          sync.RWMutex
	informer    cache.SharedIndexInformer
	stop        context.CancelFunc
	encode      func(obj any) (key string, val []byte, ok bool)
	get         func(ctx context.Context, key string) ([]byte, bool, error)
	put         func(ctx context.Context, key string, val []byte) error
	create      func(ctx context.Context, key string, val []byte) error
	del         func(ctx context.Context, key string) error
	lister      func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) // live, for Sync
	// tombs holds, by informer key, the resource version at which the cache saw an object
	// deleted: for Sync, an object listed live and missing from the cache may be gone since.
	tombs sync.Map
}

func (c *class) overlaps(prefix string) bool {
	return c.prefix == "" || strings.HasPrefix(c.prefix, prefix) || strings.HasPrefix(prefix, c.prefix)
}

func (k *KV) dynamicInformer(gvr schema.GroupVersionResource) func() cache.SharedIndexInformer {
	return func() cache.SharedIndexInformer {
		inf := dynamicinformer.NewFilteredDynamicInformer(k.dyn, gvr, "", 0, cache.Indexers{}, nil).Informer()
		_ = inf.SetTransform(stripManaged) // fails only on a started informer; this one is new
		return inf
	}
}

// start runs a new informer for the class until runCtx ends. One that replaces another takes
// over only once it has listed (waiting at most until waitCtx ends), so that readers never see
// an empty cache; the old one is then stopped.
func (c *class) start(runCtx, waitCtx context.Context, h cache.ResourceEventHandler) error {
	inf := c.newInformer()
	if _, err := inf.AddEventHandler(h); err != nil {
		return fmt.Errorf("%s informer: %w", c.prefix, err)
	}
	run, stop := context.WithCancel(runCtx)
	go inf.Run(run.Done())
	c.mu.RLock()
	replacing := c.informer != nil
	c.mu.RUnlock()
	if replacing && !cache.WaitForCacheSync(waitCtx.Done(), inf.HasSynced) {
		stop()
		return fmt.Errorf("new informer did not list: %w", waitCtx.Err())
	}
	c.mu.Lock()
	old := c.stop
	c.informer, c.stop = inf, stop
	c.mu.Unlock()
	if old != nil {
		old()
	}
	return nil
}

// store is the class's cache.
func (c *class) store() cache.Store {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.informer.GetStore()
}

// synced says whether the class's informer has listed.
func (c *class) synced() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.informer.HasSynced()
}

// identityClass keeps identity-ids/N as the EbpfnetIdentity named N.
func (k *KV) identityClass() *class {
	api := k.dyn.Resource(identitiesGVR)
	c := &class{prefix: identityIDsPrefix, newInformer: k.dynamicInformer(identitiesGVR), lister: dynLister(api)}
	c.encode = func(obj any) (string, []byte, bool) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return "", nil, false
		}
		labels, _, _ := unstructured.NestedString(u.Object, "spec", "labels")
		return identityIDsPrefix + u.GetName(), []byte(labels), true
	}
	name := func(key string) string { return strings.TrimPrefix(key, identityIDsPrefix) }
	object := func(key string, val []byte) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"labels": string(val)}}}
		u.SetAPIVersion("ebpfnet.io/v1")
		u.SetKind("EbpfnetIdentity")
		u.SetName(name(key))
		return u
	}
	c.get = func(ctx context.Context, key string) ([]byte, bool, error) {
		return getLive(ctx, api, name(key), c.encode)
	}
	c.create = func(ctx context.Context, key string, val []byte) error {
		_, err := api.Create(ctx, object(key, val), metav1.CreateOptions{})
		return err
	}
	c.put = func(ctx context.Context, key string, val []byte) error { return upsert(ctx, api, object(key, val)) }
	c.del = func(ctx context.Context, key string) error { return api.Delete(ctx, name(key), metav1.DeleteOptions{}) }
	return c
}

// recordClass keeps every other key in an EbpfnetRecord named by a hash of the key.
func (k *KV) recordClass() *class {
	api := k.dyn.Resource(recordsGVR)
	c := &class{newInformer: k.dynamicInformer(recordsGVR), lister: dynLister(api)}
	c.encode = func(obj any) (string, []byte, bool) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return "", nil, false
		}
		key, _, _ := unstructured.NestedString(u.Object, "spec", "key")
		val, _, _ := unstructured.NestedString(u.Object, "spec", "value")
		return key, []byte(val), key != ""
	}
	object := func(key string, val []byte) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"key": key, "value": string(val)}}}
		u.SetAPIVersion("ebpfnet.io/v1")
		u.SetKind("EbpfnetRecord")
		u.SetName(RecordName(key))
		u.SetLabels(map[string]string{kindLabel: recordKind(key)})
		return u
	}
	c.get = func(ctx context.Context, key string) ([]byte, bool, error) {
		return getLive(ctx, api, RecordName(key), c.encode)
	}
	c.create = func(ctx context.Context, key string, val []byte) error {
		_, err := api.Create(ctx, object(key, val), metav1.CreateOptions{})
		return err
	}
	c.put = func(ctx context.Context, key string, val []byte) error { return upsert(ctx, api, object(key, val)) }
	c.del = func(ctx context.Context, key string) error {
		return api.Delete(ctx, RecordName(key), metav1.DeleteOptions{})
	}
	return c
}

// RecordName is the EbpfnetRecord name of a key: its kind and a hash, a valid object name
// whatever the key holds.
func RecordName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return recordKind(key) + "-" + hex.EncodeToString(sum[:12])
}

// recordKind is a key's first part after the prefix, as a label value ("ipam", "endpoints", …).
func recordKind(key string) string {
	kind, _, _ := strings.Cut(strings.TrimPrefix(key, store.Prefix), "/")
	kind = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return -1
	}, strings.ToLower(kind))
	if kind == "" {
		kind = "record"
	}
	return kind
}

func getLive(ctx context.Context, api dynamic.NamespaceableResourceInterface, name string,
	encode func(any) (string, []byte, bool)) ([]byte, bool, error) {
	u, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	_, val, ok := encode(u)
	return val, ok, nil
}

// upsert creates u or replaces the object of its name, retrying lost races.
func upsert(ctx context.Context, api dynamic.NamespaceableResourceInterface, u *unstructured.Unstructured) error {
	for attempt := 0; ; attempt++ {
		old, err := api.Get(ctx, u.GetName(), metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = api.Create(ctx, u, metav1.CreateOptions{})
		case err == nil:
			u.SetResourceVersion(old.GetResourceVersion())
			_, err = api.Update(ctx, u, metav1.UpdateOptions{})
		}
		if err == nil || attempt >= 5 || !(apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 10 * time.Millisecond): // backing off a lost race
		}
	}
}

func dynLister(api dynamic.NamespaceableResourceInterface) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
	return func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) { return api.List(ctx, opts) }
}
