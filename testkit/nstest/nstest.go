// Package nstest gives tests fresh network namespaces, veth pairs between them and bpffs pin
// dirs, all removed through tb.Cleanup even when the test fails.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/namespace"
)

// RequireRoot fails the test when it cannot do what it needs: these tests never skip.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatal("this test needs root, BPF and network namespaces: run it as root (make test)")
	}
}

// NS is a named network namespace (visible to `ip netns`) made for one test.
type NS struct {
	Name string
	Path string
	h    netns.NsHandle
	NL   *netlink.Handle
}

// Suffix returns n random hex characters, to keep parallel tests' names apart.
func Suffix(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)[:n]
}

// New makes a namespace named prefix-<random> with loopback up.
func New(tb testing.TB, prefix string) *NS {
	tb.Helper()
	RequireRoot(tb)
	name := prefix + "-" + Suffix(6)
	path, err := namespace.Create(name)
	if err != nil {
		tb.Fatal(err)
	}
	ns := &NS{Name: name, Path: path}
	tb.Cleanup(func() {
		if ns.NL != nil {
			ns.NL.Close()
		}
		ns.h.Close()
		if err := namespace.Delete(name); err != nil {
			tb.Error(err)
		}
	})
	if ns.h, err = netns.GetFromPath(path); err != nil {
		tb.Fatalf("open netns %s: %v", name, err)
	}
	if ns.NL, err = netlink.NewHandleAt(ns.h); err != nil {
		tb.Fatalf("netlink in %s: %v", name, err)
	}
	return ns
}

// Handle is the open namespace.
func (n *NS) Handle() netns.NsHandle { return n.h }

// Do runs fn inside the namespace and fails the test on error.
func (n *NS) Do(tb testing.TB, fn func() error) {
	tb.Helper()
	if err := namespace.DoHandle(n.h, fn); err != nil {
		tb.Fatalf("in netns %s: %v", n.Name, err)
	}
}

// Sysctl writes a net sysctl (e.g. "ipv4/ip_forward") inside the namespace.
func (n *NS) Sysctl(tb testing.TB, key, value string) {
	tb.Helper()
	n.Do(tb, func() error {
		return os.WriteFile(filepath.Join("/proc/sys/net", key), []byte(value), 0o644)
	})
}

// Command returns cmd prepared to run inside the namespace.
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command inside the namespace and fails the test when it fails.
func (n *NS) Run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), n.Name, err, out)
	}
	return string(out)
}

// Veth makes a veth pair with aName in a and bName in b, both up, with IPv6 off so that only
// the test's own packets cross it.
func Veth(tb testing.TB, a *NS, aName string, b *NS, bName string) (netlink.Link, netlink.Link) {
	tb.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName,
		PeerNamespace: netlink.NsFd(int(b.h))}
	if err := a.NL.LinkAdd(v); err != nil {
		tb.Fatalf("add veth %s/%s: %v", aName, bName, err)
	}
	la := up(tb, a, aName)
	lb := up(tb, b, bName)
	return la, lb
}

func up(tb testing.TB, n *NS, name string) netlink.Link {
	tb.Helper()
	n.Sysctl(tb, fmt.Sprintf("ipv6/conf/%s/disable_ipv6", name), "1")
	l, err := n.NL.LinkByName(name)
	if err == nil {
		err = n.NL.LinkSetUp(l)
	}
	if err != nil {
		tb.Fatalf("bring up %s in %s: %v", name, n.Name, err)
	}
	l, err = n.NL.LinkByName(name)
	if err != nil {
		tb.Fatalf("read %s in %s: %v", name, n.Name, err)
	}
	return l
}

// PinDir returns a fresh directory on bpffs for one test's pins; Cleanup removes what is left.
func PinDir(tb testing.TB) string {
	tb.Helper()
	RequireRoot(tb)
	if err := loader.MountBPFFS(); err != nil {
		tb.Fatal(err)
	}
	dir := filepath.Join("/sys/fs/bpf", "ebpfnet-test-"+Suffix(8))
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// InNetns runs fn inside the namespace at path with a netlink handle there.
func InNetns(tb testing.TB, path string, fn func(h *netlink.Handle)) {
	tb.Helper()
	err := namespace.Do(path, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		fn(h)
		return nil
	})
	if err != nil {
		tb.Fatalf("in %s: %v", path, err)
	}
}

// ProcessAlive reports whether pid runs (and is not a zombie).
func ProcessAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}
