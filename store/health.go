package store

import "context"

// Pinger is a KV whose backend can go away (etcd, the Kubernetes API server): Ping asks it
// for an answer, cheaply, and fails when none comes. A local store has nothing to ask.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Rewatcher is a KV whose watches back off while its backend is away (client-go's informers,
// up to 30 s between tries): Rewatch lists and watches afresh, for when the backend answers
// again, so that what changes next is seen at once.
type Rewatcher interface {
	Rewatch(ctx context.Context) error
}
