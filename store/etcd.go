package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Etcd is a KV in an etcd cluster, shared by every node.
type Etcd struct {
	c      *clientv3.Client
	mu     sync.Mutex
	leases map[time.Duration]clientv3.LeaseID
	cancel context.CancelFunc
	ctx    context.Context
}

// OpenEtcd connects to the etcd endpoints and checks that they answer.
func OpenEtcd(ctx context.Context, endpoints []string) (*Etcd, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 3 * time.Second,
		Logger: nopLogger()})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	probe, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Get(probe, Prefix+"probe"); err != nil {
		c.Close()
		return nil, fmt.Errorf("etcd %v does not answer: %w", endpoints, err)
	}
	lctx, lcancel := context.WithCancel(context.Background())
	return &Etcd{c: c, leases: map[time.Duration]clientv3.LeaseID{}, ctx: lctx, cancel: lcancel}, nil
}

func (e *Etcd) Get(ctx context.Context, key string) ([]byte, bool, error) {
	r, err := e.c.Get(ctx, key)
	if err != nil {
		return nil, false, fmt.Errorf("get %s: %w", key, err)
	}
	if len(r.Kvs) == 0 {
		return nil, false, nil
	}
	return r.Kvs[0].Value, true, nil
}

func (e *Etcd) List(ctx context.Context, prefix string) (map[string][]byte, error) {
	r, err := e.c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	out := make(map[string][]byte, len(r.Kvs))
	for _, kv := range r.Kvs {
		out[string(kv.Key)] = kv.Value
	}
	return out, nil
}

// lease returns a kept-alive lease of ttl, one per ttl for this client.
func (e *Etcd) lease(ctx context.Context, ttl time.Duration) (clientv3.LeaseID, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if id, ok := e.leases[ttl]; ok {
		return id, nil
	}
	g, err := e.c.Grant(ctx, int64(ttl.Seconds()))
	if err != nil {
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	ka, err := e.c.KeepAlive(e.ctx, g.ID)
	if err != nil {
		return 0, fmt.Errorf("keep lease alive: %w", err)
	}
	go func() {
		for range ka {
		}
	}()
	e.leases[ttl] = g.ID
	return g.ID, nil
}

func (e *Etcd) Put(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	var opts []clientv3.OpOption
	if ttl > 0 {
		id, err := e.lease(ctx, ttl)
		if err != nil {
			return err
		}
		opts = append(opts, clientv3.WithLease(id))
	}
	if _, err := e.c.Put(ctx, key, string(val), opts...); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

func (e *Etcd) Create(ctx context.Context, key string, val []byte) (bool, error) {
	r, err := e.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val))).Commit()
	if err != nil {
		return false, fmt.Errorf("create %s: %w", key, err)
	}
	return r.Succeeded, nil
}

func (e *Etcd) Delete(ctx context.Context, key string) error {
	if _, err := e.c.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

func (e *Etcd) Watch(ctx context.Context, prefix string) <-chan Event {
	out := make(chan Event, 256)
	wc := e.c.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	go func() {
		defer close(out)
		for resp := range wc {
			if resp.Created {
				select { // the server has the watch: changes from here on arrive
				case out <- Event{}:
				case <-ctx.Done():
					return
				}
			}
			for _, ev := range resp.Events {
				event := Event{Key: string(ev.Kv.Key), Value: ev.Kv.Value, Deleted: ev.Type == clientv3.EventTypeDelete}
				select {
				case out <- event:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

func (e *Etcd) Close() error {
	e.cancel()
	return e.c.Close()
}

// Ping reads one key (counting only): an answer from a quorum of the cluster.
func (e *Etcd) Ping(ctx context.Context) error {
	if _, err := e.c.Get(ctx, Prefix+"probe", clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd does not answer: %w", err)
	}
	return nil
}
