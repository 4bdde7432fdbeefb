package kubestore

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/tools/cache"

	"github.com/ebpfnet/ebpfnet/store"
)

// handler turns informer events into store events on the class's keys.
func (k *KV) handler(c *class) cache.ResourceEventHandler {
	send := func(obj any, deleted bool) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		key, val, ok := c.encode(obj)
		if key == "" {
			return
		}
		if !ok || deleted {
			val, deleted = nil, true
		}
		k.watches.Notify(store.Event{Key: key, Value: val, Deleted: deleted})
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { c.alive(obj); send(obj, false) },
		UpdateFunc: func(old, obj any) {
			c.alive(obj)
			// Kubelet rewrites pod and node status all the time; only what ebpfnet reads counts.
			ok, ov, oOK := c.encode(old)
			nk, nv, nOK := c.encode(obj)
			if ok == nk && oOK == nOK && bytes.Equal(ov, nv) {
				return
			}
			send(obj, false)
		},
		DeleteFunc: func(obj any) { c.buried(obj); send(obj, true) },
	}
}

// alive forgets an object's tombstone: it exists (again).
func (c *class) alive(obj any) {
	if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
		c.tombs.Delete(key)
	}
}

// buried records at which version the cache saw an object deleted: the deletion's own version,
// or, when the informer only found it gone on a fresh list, that list's.
func (c *class) buried(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	var rv uint64
	if _, unknown := obj.(cache.DeletedFinalStateUnknown); unknown {
		c.mu.RLock()
		rv, _ = strconv.ParseUint(c.informer.LastSyncResourceVersion(), 10, 64)
		c.mu.RUnlock()
	} else {
		rv = version(obj)
	}
	c.tombs.Store(key, rv)
}

// pruneTombs drops the tombstones no list at or after listRV can need: of objects deleted
// before it and not in it.
func (c *class) pruneTombs(live map[string]uint64, listRV uint64) {
	c.tombs.Range(func(k, v any) bool {
		if _, listed := live[k.(string)]; !listed && v.(uint64) < listRV {
			c.tombs.Delete(k)
		}
		return true
	})
}

// Watch reports changes under prefix. Its first, empty-keyed event comes once every informer
// has listed: state read after it is at least that fresh. The channel coalesces like the
// other stores'.
func (k *KV) Watch(ctx context.Context, prefix string) <-chan store.Event {
	return k.watches.Watch(ctx, prefix, k.synced)
}

// Sync returns once every informer holds at least what the API server held when it was
// called: each object listed live is cached at that version or newer, and each cached object
// the live list lacks is gone from the cache or newer than the list. An informer that has not
// caught up within syncGrace (its watch stalled, say after the API server restarted) is
// replaced by a new one, which lists afresh.
func (k *KV) Sync(ctx context.Context) error {
	for _, c := range k.classes {
		if err := k.syncClass(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

// syncGrace is how long an informer may lag the API server before it is replaced.
const syncGrace = 5 * time.Second

func (k *KV) syncClass(ctx context.Context, c *class) error {
	live, rv, err := listVersions(ctx, c)
	if err != nil {
		return fmt.Errorf("sync %s: %w", c.name(), err)
	}
	c.pruneTombs(live, rv)
	restarted := false
	deadline := time.Now().Add(syncGrace)
	for {
		behind := cacheBehind(c, live, rv)
		if behind == "" {
			return nil
		}
		if time.Now().After(deadline) {
			if restarted {
				return fmt.Errorf("sync %s: %s is not cached %s after a fresh list", c.name(), behind, syncGrace)
			}
			slog.Warn("kubernetes informer lags the API server; listing afresh", "kind", c.name(), "object", behind)
			lctx, cancel := context.WithTimeout(ctx, time.Minute)
			err := c.start(k.runCtx, lctx, k.handler(c))
			cancel()
			if err != nil {
				return fmt.Errorf("sync %s: list afresh: %w", c.name(), err)
			}
			restarted, deadline = true, time.Now().Add(syncGrace)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sync %s: %s is not cached yet: %w", c.name(), behind, ctx.Err())
		case <-time.After(5 * time.Millisecond): // polling the informer until it has caught up
		}
	}
}

func (c *class) name() string {
	if c.prefix == "" {
		return "records"
	}
	return strings.TrimSuffix(strings.TrimPrefix(c.prefix, store.Prefix), "/")
}

// cacheBehind names an object the cache does not hold at the listed version, or "".
func cacheBehind(c *class, live map[string]uint64, listRV uint64) string {
	seen := map[string]bool{}
	for _, obj := range c.store().List() {
		key, err := cache.MetaNamespaceKeyFunc(obj)
		if err != nil {
			continue
		}
		seen[key] = true
		v := version(obj)
		if want, ok := live[key]; ok && v < want {
			return key
		} else if !ok && v <= listRV {
			return key + " (deleted)"
		}
	}
	for key, want := range live {
		if seen[key] {
			continue
		}
		// Deleted since the list, at or after the version listed: the cache is ahead.
		if t, ok := c.tombs.Load(key); ok && t.(uint64) >= want {
			continue
		}
		return key
	}
	return ""
}

func version(obj any) uint64 {
	m, err := meta.Accessor(obj)
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseUint(m.GetResourceVersion(), 10, 64)
	return v
}

// WaitPod waits until the informer holds pod ns/name, for at most timeout.
func (k *KV) WaitPod(ctx context.Context, ns, name string, timeout time.Duration) error {
	pods := k.classes[1]
	deadline := time.Now().Add(timeout)
	for {
		if _, ok, _ := pods.store().GetByKey(ns + "/" + name); ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pod %s/%s is not in the Kubernetes API after %s", ns, name, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond): // polling the informer for the new Pod
		}
	}
}
