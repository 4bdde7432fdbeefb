// Package bench measures ebpfnet against kernel baselines on the same machine in one run:
// topologies made of network namespaces, iperf3 and sockperf (over IPv6, the Go TCP_RR
// client) between a client and a server.
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
	// Nodes are the namespaces of the nodes between client and server, where a builder says.
	Nodes []string
	undo  []func() error
	procs []*exec.Cmd
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

// Family is the address family a topology's client reaches its server in. An IPv6 topology is
// its IPv4 one in dual stack: beside each IPv4 address, its counterpart (sixOf).
type Family string

const (
	IPv4 Family = "IPv4"
	IPv6 Family = "IPv6"
)

// of is a topology's IPv4 address ip in family f.
func (f Family) of(ip netip.Addr) netip.Addr {
	if f == IPv6 {
		return sixOf(ip)
	}
	return ip
}

// only6 is ip's IPv6 counterpart in an IPv6 topology, and no address in an IPv4 one.
func (f Family) only6(ip netip.Addr) netip.Addr {
	if f == IPv6 {
		return sixOf(ip)
	}
	return netip.Addr{}
}

// sixOf is the IPv6 counterpart of a topology's IPv4 address a.b.c.d: fd00:a:b:c::d, its
// decimal digits kept (10.100.0.2 is fd00:10:100:0::2), so that a.b.c.0/24 is fd00:a:b:c::/64.
func sixOf(ip netip.Addr) netip.Addr {
	b := ip.As4()
	return netip.MustParseAddr(fmt.Sprintf("fd00:%d:%d:%d::%d", b[0], b[1], b[2], b[3]))
}

// addAddrs gives l ip/24 and, in an IPv6 topology, its counterpart/64 with IPv6 turned on.
func addAddrs(ns string, l netlink.Link, ip netip.Addr, f Family) error {
	if err := addAddr(ns, l, ip.String()+"/24"); err != nil {
		return err
	}
	if f == IPv4 {
		return nil
	}
	if err := enableIPv6(ns, l.Attrs().Name); err != nil {
		return err
	}
	return addAddr(ns, l, sixOf(ip).String()+"/64")
}

// enableIPv6 turns IPv6 back on for an interface vethPair made, for static addresses only: no
// duplicate address detection, no router advertisements taken.
func enableIPv6(ns, name string) error {
	for _, kv := range [][2]string{{"accept_ra", "0"}, {"accept_dad", "0"}, {"disable_ipv6", "0"}} {
		if err := sysctl(namespace.Path(ns), "ipv6/conf/"+name+"/"+kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// forward makes the node at nodePath route between its pods: IPv4, and IPv6 too in an IPv6
// topology.
func forward(nodePath string, f Family) error {
	if err := sysctl(nodePath, "ipv4/ip_forward", "1"); err != nil {
		return err
	}
	if f == IPv4 {
		return nil
	}
	return sysctl(nodePath, "ipv6/conf/all/forwarding", "1")
}
