package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucket = []byte("ebpfnet")

// Local is a KV in a bbolt file, for a single node. One process (the agent) owns the file.
type Local struct {
	db      *bolt.DB
	watches Fanout
}

// OpenLocal opens (or makes) the store file at path.
func OpenLocal(path string) (*Local, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("make store dir: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open local store %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("init local store: %w", err)
	}
	return &Local{db: db}, nil
}

func (l *Local) Get(_ context.Context, key string) ([]byte, bool, error) {
	var out []byte
	err := l.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucket).Get([]byte(key)); v != nil {
			out = append([]byte(nil), v...)
		}
		return nil
	})
	return out, out != nil, err
}

func (l *Local) List(_ context.Context, prefix string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := l.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		for k, v := c.Seek([]byte(prefix)); k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Next() {
			out[string(k)] = append([]byte(nil), v...)
		}
		return nil
	})
	return out, err
}

func (l *Local) Put(_ context.Context, key string, val []byte, _ time.Duration) error {
	if err := l.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(key), val) }); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	l.notify(Event{Key: key, Value: val})
	return nil
}

func (l *Local) Create(_ context.Context, key string, val []byte) (bool, error) {
	created := false
	err := l.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b.Get([]byte(key)) != nil {
			return nil
		}
		created = true
		return b.Put([]byte(key), val)
	})
	if err != nil {
		return false, fmt.Errorf("create %s: %w", key, err)
	}
	if created {
		l.notify(Event{Key: key, Value: val})
	}
	return created, nil
}

func (l *Local) Delete(_ context.Context, key string) error {
	existed := false
	err := l.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		existed = b.Get([]byte(key)) != nil
		return b.Delete([]byte(key))
	})
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if existed {
		l.notify(Event{Key: key, Deleted: true})
	}
	return nil
}

// Watch delivers changes made through this Local. The channel is buffered and coalesces:
// when the reader is behind, it still gets at least one event after every change.
func (l *Local) Watch(ctx context.Context, prefix string) <-chan Event {
	return l.watches.Watch(ctx, prefix, nil)
}

func (l *Local) notify(ev Event) { l.watches.Notify(ev) }

func (l *Local) Close() error { return l.db.Close() }
