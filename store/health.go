package store

import "context"

// Pinger is a KV whose backend can go away (etcd, the Kubernetes API server): Ping asks it
// for an answer, cheaply, and fails when none comes. A local store has nothing to ask.
type Pinger interface {
	Ping(ctx context.Context) error
}
