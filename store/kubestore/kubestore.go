// Package kubestore keeps ebpfnet's state in the Kubernetes API. Nodes, pods, namespaces,
// NetworkPolicies, Services and EndpointSlices are Kubernetes' own objects, read from shared
// informers; what Kubernetes has no object for (identities, address leases, endpoints, pod
// CIDR claims, node status) lives in ebpfnet's custom resources. It implements store.KV, so
// nothing above the store knows that the API server is behind it.
package kubestore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ebpfnet/ebpfnet/store"
)

// KV is the Kubernetes API seen as an ebpfnet store.
type KV struct {
	core    kubernetes.Interface
	dyn     dynamic.Interface
	cancel  context.CancelFunc
	classes []*class
	watches store.Fanout
	synced  chan struct{}   // closed once every informer has listed
	runCtx  context.Context // the informers run until it ends (Close)
}

// Open connects with kubeconfig (in-cluster configuration when empty), installs ebpfnet's
// custom resource definitions if they are missing, and returns once every informer has listed.
func Open(ctx context.Context, kubeconfig string) (*KV, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	return OpenConfig(ctx, cfg)
}

// OpenConfig is Open with a client configuration already made.
func OpenConfig(ctx context.Context, cfg *rest.Config) (*KV, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 50, 100
	cfg.UserAgent = "ebpfnet-agent"
	core, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	probe, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := core.CoreV1().Namespaces().List(probe, listOne); err != nil {
		return nil, fmt.Errorf("kubernetes API server %s does not answer: %w", cfg.Host, err)
	}
	if err := installCRDs(ctx, dyn); err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.Background())
	k := &KV{core: core, dyn: dyn, cancel: stop, synced: make(chan struct{})}
	k.runCtx = runCtx
	if k.classes, err = k.newClasses(runCtx); err != nil {
		stop()
		return nil, err
	}
	if err := k.waitSynced(ctx); err != nil {
		stop()
		return nil, err
	}
	return k, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes in-cluster configuration (set store.kubeconfig outside a pod): %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// waitSynced waits for every informer's first list, then announces it to the watchers.
func (k *KV) waitSynced(ctx context.Context) error {
	deadline, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, c := range k.classes {
		for !c.synced() {
			select {
			case <-deadline.Done():
				return fmt.Errorf("kubernetes informers did not sync: %s: %w", c.prefix, deadline.Err())
			case <-time.After(20 * time.Millisecond): // polling the informer's first list
			}
		}
	}
	close(k.synced)
	return nil
}

// classOf returns the class that holds key.
func (k *KV) classOf(key string) (*class, error) {
	for _, c := range k.classes {
		if c.prefix != "" && strings.HasPrefix(key, c.prefix) {
			return c, nil
		}
	}
	if !strings.HasPrefix(key, store.Prefix) {
		return nil, fmt.Errorf("key %q is outside %s", key, store.Prefix)
	}
	return k.classes[len(k.classes)-1], nil // records take everything else
}

// Get reads a Kubernetes object from its informer; records and identities are read from the
// API server itself, so that allocation decisions never rest on a stale cache.
func (k *KV) Get(ctx context.Context, key string) ([]byte, bool, error) {
	c, err := k.classOf(key)
	if err != nil {
		return nil, false, err
	}
	v, ok, err := c.get(ctx, key)
	if err != nil {
		return nil, false, fmt.Errorf("get %s: %w", key, err)
	}
	return v, ok, nil
}

// List reads every key under prefix from the informers' caches.
func (k *KV) List(_ context.Context, prefix string) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, c := range k.classes {
		if !c.overlaps(prefix) {
			continue
		}
		for _, obj := range c.store().List() {
			key, val, ok := c.encode(obj)
			if ok && strings.HasPrefix(key, prefix) {
				out[key] = val
			}
		}
	}
	return out, nil
}

// Put writes key; ttl is ignored (Kubernetes objects have owners, not leases).
func (k *KV) Put(ctx context.Context, key string, val []byte, _ time.Duration) error {
	c, err := k.classOf(key)
	if err != nil {
		return err
	}
	if c.put == nil {
		return fmt.Errorf("put %s: the kubernetes store does not write these; use kubectl", key)
	}
	if err := c.put(ctx, key, val); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// Create writes key only if no object holds it yet: the API server's create is the arbiter.
func (k *KV) Create(ctx context.Context, key string, val []byte) (bool, error) {
	c, err := k.classOf(key)
	if err != nil {
		return false, err
	}
	if c.create == nil {
		return false, fmt.Errorf("create %s: the kubernetes store does not create these; use kubectl", key)
	}
	err = c.create(ctx, key, val)
	if apierrors.IsAlreadyExists(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("create %s: %w", key, err)
	}
	return true, nil
}

// Delete removes key; a missing object is not an error.
func (k *KV) Delete(ctx context.Context, key string) error {
	c, err := k.classOf(key)
	if err != nil {
		return err
	}
	if c.del == nil {
		return fmt.Errorf("delete %s: the kubernetes store does not delete these; use kubectl", key)
	}
	if err := c.del(ctx, key); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// Close stops the informers.
func (k *KV) Close() error {
	k.cancel()
	return nil
}

var errNoKey = errors.New("malformed key")

// Ping asks the API server whether it is ready to serve.
// Rewatch replaces every informer with one that lists and watches afresh: after the API
// server was away the informers' own retries wait up to 30 s, and a change made meanwhile (a
// policy deleted) would wait with them.
func (k *KV) Rewatch(ctx context.Context) error {
	var errs []error
	for _, c := range k.classes {
		if err := c.start(k.runCtx, ctx, k.handler(c)); err != nil {
			errs = append(errs, fmt.Errorf("rewatch %s: %w", c.name(), err))
		}
	}
	return errors.Join(errs...)
}

func (k *KV) Ping(ctx context.Context) error {
	if err := k.core.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error(); err != nil {
		return fmt.Errorf("kubernetes API server does not answer: %w", err)
	}
	return nil
}
