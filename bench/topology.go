// Package bench measures ebpfnet against kernel baselines on the same machine in one run:
// topologies made of network namespaces, iperf3 and sockperf between a client and a server.
package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/namespace"
)

// Topology is a client and a server namespace joined one particular way.
type Topology struct {
	Name     string
	Client   string // netns name
	Server   string // netns name
	ServerIP netip.Addr
	// Target is what the client dials when it is not ServerIP itself (a Service's ClusterIP).
	Target netip.Addr
	undo   []func() error
	procs  []*exec.Cmd
}

// Close stops the topology's processes and removes what it made, newest first.
func (t *Topology) Close() error {
	for _, p := range t.procs {
		if p.Process != nil {
			// Killed: neither an exit already past nor the signal's status is news.
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}
	var errs []error
	for i := len(t.undo) - 1; i >= 0; i-- {
		errs = append(errs, t.undo[i]())
	}
	return errors.Join(errs...)
}

// target is the address the client dials.
func (t *Topology) target() netip.Addr {
	if t.Target.IsValid() {
		return t.Target
	}
	return t.ServerIP
}

// netns makes a namespace that Close removes.
func (t *Topology) netns(name string) (string, error) {
	path, err := namespace.Create(name)
	if err != nil {
		return "", err
	}
	t.undo = append(t.undo, func() error { return namespace.Delete(name) })
	return path, nil
}

// exec runs a command in a namespace and returns its error with its output.
func execIn(ns string, name string, args ...string) error {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v in %s: %w: %s", name, args, ns, err, out)
	}
	return nil
}

// sysctl writes a net sysctl inside a namespace.
func sysctl(nsPath, key, value string) error {
	return namespace.Do(nsPath, func() error {
		return os.WriteFile(filepath.Join("/proc/sys/net", key), []byte(value), 0o644)
	})
}

// start runs a long-lived process in a namespace; Close kills it.
func (t *Topology) start(ns string, name string, args ...string) error {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s in %s: %w", name, ns, err)
	}
	t.procs = append(t.procs, cmd)
	return nil
}

// vethPair joins two namespaces with names a (in na) and b (in nb), both up, IPv6 off.
func vethPair(na, a, nb, b string, mtu int) (netlink.Link, netlink.Link, error) {
	ha, err := handle(na)
	if err != nil {
		return nil, nil, err
	}
	defer ha.Close()
	hb, err := handle(nb)
	if err != nil {
		return nil, nil, err
	}
	defer hb.Close()
	nbFd, err := os.Open(namespace.Path(nb))
	if err != nil {
		return nil, nil, err
	}
	defer nbFd.Close()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a, MTU: mtu}, PeerName: b, PeerMTU: uint32(mtu),
		PeerNamespace: netlink.NsFd(int(nbFd.Fd()))}
	if err := ha.LinkAdd(v); err != nil {
		return nil, nil, fmt.Errorf("add veth %s/%s: %w", a, b, err)
	}
	la, err := upNoIPv6(ha, na, a)
	if err != nil {
		return nil, nil, err
	}
	lb, err := upNoIPv6(hb, nb, b)
	return la, lb, err
}

func handle(ns string) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := namespace.Do(namespace.Path(ns), func() (err error) {
		h, err = netlink.NewHandle()
		return err
	})
	return h, err
}

func upNoIPv6(h *netlink.Handle, ns, name string) (netlink.Link, error) {
	if err := sysctl(namespace.Path(ns), "ipv6/conf/"+name+"/disable_ipv6", "1"); err != nil {
		return nil, err
	}
	l, err := h.LinkByName(name)
	if err == nil {
		err = h.LinkSetUp(l)
	}
	if err != nil {
		return nil, fmt.Errorf("bring up %s in %s: %w", name, ns, err)
	}
	return l, nil
}

func addAddr(ns string, l netlink.Link, prefix string) error {
	h, err := handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	addr, err := netlink.ParseAddr(prefix)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("add %s in %s: %w", prefix, ns, err)
	}
	return nil
}

func nsName(path string) string { return filepath.Base(path) }
