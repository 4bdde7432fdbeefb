package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/ipam"
	"github.com/ebpfnet/ebpfnet/store"
)

var errCrash = errors.New("the agent was killed here")

// crashKV passes calls to a store until its crashAt-th write, which it drops; from then on
// every call fails, as if the agent had been killed at that point.
type crashKV struct {
	store.KV
	crashAt, writes int
	crashed         bool
}

func (c *crashKV) write() bool {
	if c.crashed {
		return false
	}
	c.writes++
	c.crashed = c.writes == c.crashAt
	return !c.crashed
}

func (c *crashKV) Get(ctx context.Context, key string) ([]byte, bool, error) {
	if c.crashed {
		return nil, false, errCrash
	}
	return c.KV.Get(ctx, key)
}

func (c *crashKV) List(ctx context.Context, prefix string) (map[string][]byte, error) {
	if c.crashed {
		return nil, errCrash
	}
	return c.KV.List(ctx, prefix)
}

func (c *crashKV) Put(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if !c.write() {
		return errCrash
	}
	return c.KV.Put(ctx, key, val, ttl)
}

func (c *crashKV) Create(ctx context.Context, key string, val []byte) (bool, error) {
	if !c.write() {
		return false, errCrash
	}
	return c.KV.Create(ctx, key, val)
}

func (c *crashKV) Delete(ctx context.Context, key string) error {
	if !c.write() {
		return errCrash
	}
	return c.KV.Delete(ctx, key)
}

func openLocal(t *testing.T) store.KV {
	t.Helper()
	kv, err := store.OpenLocal(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kv.Close() })
	return kv
}

// keysOf lists the node's IPAM keys that name owner, as key or value.
func keysOf(t *testing.T, kv store.KV, owner string) []string {
	t.Helper()
	all, err := kv.List(context.Background(), store.Prefix+"ipam/n1/")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for k, v := range all {
		if strings.HasSuffix(k, "/owners/"+owner) || string(v) == owner {
			out = append(out, k)
		}
	}
	return out
}

var cidr = netip.MustParsePrefix("10.9.0.0/28")

// An agent killed at any write of an ADD or a DEL leaves nothing that the retried DEL (or the
// collector of unknown owners) does not free, and a retried ADD gets an address nobody else
// holds. The crash points are counted, not guessed: the loop runs until an ADD completes
// without reaching its crash point.
func TestIPAMSurvivesACrashAtEveryWrite(t *testing.T) {
	ctx := context.Background()
	for _, op := range []string{"ADD", "DEL"} {
		for k := 1; ; k++ {
			kv := openLocal(t)
			otherIP, err := ipam.New(kv, "n1", cidr).Allocate(ctx, "other/eth0")
			if err != nil {
				t.Fatal(err)
			}
			ckv := &crashKV{KV: kv, crashAt: k}
			before := ipam.New(ckv, "n1", cidr)
			if op == "DEL" {
				ckv.crashAt = 0
				if _, err := before.Allocate(ctx, "pod/eth0"); err != nil {
					t.Fatal(err)
				}
				ckv.writes, ckv.crashAt = 0, k
				err = before.Release(ctx, "pod/eth0")
			} else {
				_, err = before.Allocate(ctx, "pod/eth0")
			}
			if !ckv.crashed {
				if err != nil {
					t.Fatalf("%s with no crash: %v", op, err)
				}
				if k == 1 {
					t.Fatalf("%s wrote nothing", op)
				}
				t.Logf("%s: %d crash points", op, k-1)
				break
			}
			after := ipam.New(kv, "n1", cidr) // the restarted agent
			// Whatever is left in the owner's name, the collector sees it.
			if left := keysOf(t, kv, "pod/eth0"); len(left) > 0 {
				leases, err := after.Leases(ctx)
				if _, ok := leases["pod/eth0"]; err != nil || !ok {
					t.Errorf("%s crashed at write %d left %v, which Leases (%v, %v) does not name", op, k, left, leases, err)
				}
			}
			if op == "ADD" {
				// A retried ADD: an address of its own, then given back.
				ip, err := after.Allocate(ctx, "pod/eth0")
				if err != nil || ip == otherIP || !cidr.Contains(ip) {
					t.Errorf("ADD crashed at write %d, then ADD again: %s (%v); other/eth0 holds %s", k, ip, err, otherIP)
				}
				if again, err := after.Allocate(ctx, "pod/eth0"); err != nil || again != ip {
					t.Errorf("ADD crashed at write %d: a third ADD got %s (%v), the second %s", k, again, err, ip)
				}
			}
			if err := after.Release(ctx, "pod/eth0"); err != nil {
				t.Fatalf("%s crashed at write %d, then DEL: %v", op, k, err)
			}
			if left := keysOf(t, kv, "pod/eth0"); len(left) > 0 {
				t.Errorf("%s crashed at write %d, then DEL: %v left", op, k, left)
			}
			if leases, err := after.Leases(ctx); err != nil || len(leases) != 1 || leases["other/eth0"] != otherIP {
				t.Errorf("%s crashed at write %d, then DEL: leases %v (%v), want only other/eth0's %s", op, k, leases, err, otherIP)
			}
		}
	}
}

// An owner key left naming an address that another owner now holds (an older version's crash
// between freeing the address and deleting the key) never hands that address out twice, and
// releasing it leaves the other owner's lease alone.
func TestIPAMIgnoresAStaleOwnerKey(t *testing.T) {
	ctx := context.Background()
	kv := openLocal(t)
	p := ipam.New(kv, "n1", cidr)
	otherIP, err := p.Allocate(ctx, "other/eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Put(ctx, store.Prefix+"ipam/n1/owners/pod/eth0", []byte(otherIP.String()), 0); err != nil {
		t.Fatal(err)
	}
	ip, err := p.Allocate(ctx, "pod/eth0")
	if err != nil || ip == otherIP {
		t.Fatalf("pod/eth0 got %s (%v); other/eth0 holds %s", ip, err, otherIP)
	}
	if err := kv.Put(ctx, store.Prefix+"ipam/n1/owners/pod/eth0", []byte(otherIP.String()), 0); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(ctx, "pod/eth0"); err != nil {
		t.Fatal(err)
	}
	leases, err := p.Leases(ctx)
	if err != nil || len(leases) != 1 || leases["other/eth0"] != otherIP {
		t.Fatalf("after releasing pod/eth0: %v (%v), want only other/eth0's %s", leases, err, otherIP)
	}
	if left := keysOf(t, kv, "pod/eth0"); len(left) > 0 {
		t.Fatalf("after releasing pod/eth0: %v left", left)
	}
}

// A dual-stack pod's IPv6 address is its IPv4 address's offset into the node's IPv6 pod CIDR:
// distinct IPv4 leases give distinct IPv6 addresses, and an IPv4-only node gives none.
func TestPairedIPv6(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")
	for _, c := range []struct{ ip, want string }{
		{"10.244.3.2", "fd00:10:244:3::2"},
		{"10.244.3.254", "fd00:10:244:3::fe"},
	} {
		if got := ipam.Paired(netip.MustParseAddr(c.ip), v4, v6); got != netip.MustParseAddr(c.want) {
			t.Errorf("Paired(%s) = %s, want %s", c.ip, got, c.want)
		}
	}
	wide := netip.MustParsePrefix("10.240.0.0/12")
	if got := ipam.Paired(netip.MustParseAddr("10.241.2.3"), wide, v6); got != netip.MustParseAddr("fd00:10:244:3::1:203") {
		t.Errorf("Paired in a /12 = %s, want fd00:10:244:3::1:203", got)
	}
	if got := ipam.Paired(netip.MustParseAddr("10.244.3.2"), v4, netip.Prefix{}); got.IsValid() {
		t.Errorf("an IPv4-only node paired %s", got)
	}
	if got := ipam.Paired(netip.MustParseAddr("10.9.9.9"), v4, v6); got.IsValid() {
		t.Errorf("an address outside the pod CIDR paired %s", got)
	}
}
