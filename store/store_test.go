package store_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/ipam"
	"github.com/ebpfnet/ebpfnet/store"
	"github.com/ebpfnet/ebpfnet/store/etcdserver"
)

// backends returns a fresh KV of each kind; each test runs against both.
func backends(t *testing.T) map[string]func(t *testing.T) store.KV {
	return map[string]func(t *testing.T) store.KV{
		"local": func(t *testing.T) store.KV {
			kv, err := store.OpenLocal(filepath.Join(t.TempDir(), "store.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { kv.Close() })
			return kv
		},
		"etcd": func(t *testing.T) store.KV {
			srv := startEtcd(t)
			kv, err := store.OpenEtcd(context.Background(), []string{srv.ClientURL})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { kv.Close() })
			return kv
		},
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startEtcd(t *testing.T) *etcdserver.Server {
	t.Helper()
	srv, err := etcdserver.Start(t.TempDir(), fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		fmt.Sprintf("http://127.0.0.1:%d", freePort(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

func TestIPAM(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			kv := open(t)
			ctx := context.Background()
			cidr := netip.MustParsePrefix("10.9.0.0/28") // .2 to .14: 13 addresses
			p := ipam.New(kv, "n1", cidr)
			seen := map[netip.Addr]string{}
			var mu sync.Mutex
			var wg sync.WaitGroup
			for i := 0; i < 13; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					owner := fmt.Sprintf("c%d/eth0", i)
					ip, err := p.Allocate(ctx, owner)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					defer mu.Unlock()
					if other, dup := seen[ip]; dup {
						t.Errorf("%s handed to %s and %s", ip, other, owner)
					}
					seen[ip] = owner
				}()
			}
			wg.Wait()
			if _, err := p.Allocate(ctx, "c99/eth0"); !errors.Is(err, ipam.ErrExhausted) {
				t.Fatalf("allocating from a full CIDR: %v", err)
			}
			// The same owner gets the same address back; release is idempotent and frees it.
			again, err := p.Allocate(ctx, "c3/eth0")
			if err != nil || seen[again] != "c3/eth0" {
				t.Fatalf("c3 asked again and got %s (%v)", again, err)
			}
			for i := 0; i < 2; i++ {
				if err := p.Release(ctx, "c3/eth0"); err != nil {
					t.Fatal(err)
				}
			}
			if ip, err := p.Allocate(ctx, "c99/eth0"); err != nil || ip != again {
				t.Fatalf("after release got %s (%v), want %s", ip, err, again)
			}
			// A second allocator over the same store (an agent restart) sees the same leases.
			leases, err := ipam.New(kv, "n1", cidr).Leases(ctx)
			if err != nil || len(leases) != 13 {
				t.Fatalf("after restart %d leases (%v), want 13", len(leases), err)
			}
		})
	}
}

func TestPodCIDRsAreNeverHandedOutTwice(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := &store.Cluster{KV: open(t)}
			ctx := context.Background()
			cluster := netip.MustParsePrefix("10.244.0.0/22")
			got := map[netip.Prefix]string{}
			for _, n := range []string{"a", "b", "c", "d"} {
				p, err := c.AllocatePodCIDR(ctx, n, cluster, 24)
				if err != nil {
					t.Fatal(err)
				}
				if other, dup := got[p]; dup {
					t.Fatalf("%s given to %s and %s", p, other, n)
				}
				got[p] = n
			}
			if _, err := c.AllocatePodCIDR(ctx, "e", cluster, 24); err == nil {
				t.Fatal("a fifth /24 came out of a /22")
			}
			if p, _ := c.AllocatePodCIDR(ctx, "b", cluster, 24); got[p] != "b" {
				t.Fatalf("b asked again and got %s", p)
			}
			if err := c.ClaimPodCIDR(ctx, "e", netip.MustParsePrefix("10.244.0.0/24")); err == nil {
				t.Fatal("e claimed a's CIDR")
			}
			if err := c.DeleteNode(ctx, "a"); err != nil {
				t.Fatal(err)
			}
			if p, err := c.AllocatePodCIDR(ctx, "e", cluster, 24); err != nil || got[p] != "a" {
				t.Fatalf("after a left, e got %s (%v), want a's old CIDR", p, err)
			}
		})
	}
}

// A dual-stack node holds a pod CIDR of each family: asking for one family never answers with
// the other, and IPv6 CIDRs come out of their cluster CIDR one after another, never twice.
func TestDualStackPodCIDRs(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := &store.Cluster{KV: open(t)}
			ctx := context.Background()
			v4, v6 := netip.MustParsePrefix("10.244.0.0/23"), netip.MustParsePrefix("fd00:10:244:fe::/63")
			want := map[string][2]string{"a": {"10.244.0.0/24", "fd00:10:244:fe::/64"}, "b": {"10.244.1.0/24", "fd00:10:244:ff::/64"}}
			for _, n := range []string{"a", "b", "a", "b"} { // the second round asks again
				p4, err4 := c.AllocatePodCIDR(ctx, n, v4, 24)
				p6, err6 := c.AllocatePodCIDR(ctx, n, v6, 64)
				if err4 != nil || err6 != nil || p4.String() != want[n][0] || p6.String() != want[n][1] {
					t.Fatalf("node %s got %s (%v) and %s (%v), want %v", n, p4, err4, p6, err6, want[n])
				}
			}
			if p, err := c.AllocatePodCIDR(ctx, "c", v6, 64); err == nil {
				t.Fatalf("a third /64 (%s) came out of a /63", p)
			}
		})
	}
}

func TestWatchSeesChanges(t *testing.T) {
	for name, open := range backends(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			kv := open(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ch := kv.Watch(ctx, store.NodesPrefix)
			select {
			case ev := <-ch:
				if ev.Key != "" {
					t.Fatalf("first event %+v, want the watch-is-live marker", ev)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the watch never said it was live")
			}
			c := &store.Cluster{KV: kv}
			n := store.Node{Name: "n1", IP: netip.MustParseAddr("10.0.0.1"), PodCIDR: netip.MustParsePrefix("10.244.0.0/24")}
			if err := c.PutNode(ctx, n, 0); err != nil {
				t.Fatal(err)
			}
			if err := c.DeleteNode(ctx, "n1"); err != nil {
				t.Fatal(err)
			}
			want := []bool{false, true}
			for i := range want {
				select {
				case ev := <-ch:
					if ev.Deleted != want[i] {
						t.Fatalf("event %d: deleted=%v, want %v", i, ev.Deleted, want[i])
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("no event %d", i)
				}
			}
		})
	}
}

// A node whose registration carries a lease disappears when its writer goes away.
func TestEtcdLeaseExpiryRemovesNode(t *testing.T) {
	t.Parallel()
	srv := startEtcd(t)
	ctx := context.Background()
	writer, err := store.OpenEtcd(ctx, []string{srv.ClientURL})
	if err != nil {
		t.Fatal(err)
	}
	reader, err := store.OpenEtcd(ctx, []string{srv.ClientURL})
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	n := store.Node{Name: "gone", IP: netip.MustParseAddr("10.0.0.9"), PodCIDR: netip.MustParsePrefix("10.244.9.0/24")}
	if err := (&store.Cluster{KV: writer}).PutNode(ctx, n, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	ch := reader.Watch(ctx, store.NodesPrefix)
	<-ch           // live
	writer.Close() // the agent died: nobody renews the lease
	select {
	case ev := <-ch:
		if !ev.Deleted {
			t.Fatalf("unexpected event %+v", ev)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the node's registration did not expire")
	}
}
