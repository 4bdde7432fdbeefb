// Package store keeps the cluster's desired state: nodes, endpoints, IPAM leases and pod CIDRs,
// in an embedded bbolt file for one node or in etcd for several, behind one small KV interface.
package store

import (
	"context"
	"errors"
	"time"
)

// KV is what both backends provide. Keys are strings under Prefix.
type KV interface {
	// Get returns the value of key and whether it exists.
	Get(ctx context.Context, key string) ([]byte, bool, error)
	// List returns every key under prefix.
	List(ctx context.Context, prefix string) (map[string][]byte, error)
	// Put writes key; with ttl > 0 the key goes away ttl after the writer stops renewing it
	// (etcd leases; the local store keeps it).
	Put(ctx context.Context, key string, val []byte, ttl time.Duration) error
	// Create writes key only if it does not exist, and reports whether it did.
	Create(ctx context.Context, key string, val []byte) (bool, error)
	// Delete removes key; a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// Watch reports changes under prefix until ctx ends. Events may be coalesced. The first
	// event has an empty Key and says the watch is live: state read before it may have
	// missed changes, so callers read again on it.
	Watch(ctx context.Context, prefix string) <-chan Event
	Close() error
}

// Event is one change seen by Watch.
type Event struct {
	Key     string
	Value   []byte // nil for a delete
	Deleted bool
}

// Prefix is the root of every key ebpfnet writes.
const Prefix = "/ebpfnet/"

// ErrClosed is returned after Close.
var ErrClosed = errors.New("store is closed")
