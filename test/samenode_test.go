// Package test holds ebpfnet's end-to-end tests: real BPF, real packets, network namespaces.
package test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/podnet"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
	"github.com/ebpfnet/ebpfnet/testkit/traffic"
)

// node is one node: a namespace with the datapath loaded and an address pods can reach.
type node struct {
	ns     *nstest.NS
	dp     *loader.Datapath
	ip     netip.Addr
	pinDir string
}

type pod struct {
	ns   *nstest.NS
	spec podnet.Pod
	res  podnet.Result
}

func newNode(t *testing.T, ip string) *node {
	t.Helper()
	n := &node{ns: nstest.New(t, "node"), pinDir: nstest.PinDir(t), ip: netip.MustParseAddr(ip)}
	t.Cleanup(func() {
		if err := loader.Uninstall(n.pinDir); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	dp, err := loader.Load(loader.Config{PinDir: n.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	n.dp = dp
	lo, _ := n.ns.NL.LinkByName("lo")
	if err := n.ns.NL.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: n.ip.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *node) addPod(t *testing.T, name, ip string) *pod {
	t.Helper()
	p := &pod{ns: nstest.New(t, name)}
	p.spec = podnet.Pod{NodeNetns: n.ns.Path, Netns: p.ns.Path, ContainerID: p.ns.Name,
		IP: netip.MustParseAddr(ip), EndpointID: uint32(len(name))}
	t.Cleanup(func() {
		if err := podnet.Unplumb(p.spec, n.dp); err != nil {
			t.Errorf("unplumb %s: %v", name, err)
		}
	})
	res, err := podnet.Plumb(p.spec, n.dp)
	if err != nil {
		t.Fatalf("plumb %s: %v", name, err)
	}
	p.res = res
	return p
}

func (n *node) counter(t *testing.T, r maps.Reason, d maps.Direction) uint64 {
	t.Helper()
	c, err := n.dp.Metrics().Get(r, d)
	if err != nil {
		t.Fatal(err)
	}
	return c.Packets
}

func threePods(t *testing.T) (*node, []*pod) {
	n := newNode(t, "10.210.255.1")
	pods := []*pod{n.addPod(t, "pod-a", "10.210.0.1"), n.addPod(t, "pod-b", "10.210.0.2"), n.addPod(t, "pod-c", "10.210.0.3")}
	for _, p := range pods {
		traffic.ServeTCP(t, p.ns, netip.AddrPortFrom(p.spec.IP, 8080))
		traffic.ServeUDP(t, p.ns, netip.AddrPortFrom(p.spec.IP, 8081))
	}
	return n, pods
}

// allPairs checks TCP, UDP and ICMP between every ordered pair of pods, in parallel.
func allPairs(t *testing.T, pods []*pod) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(pods)*len(pods)*3)
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				name := fmt.Sprintf("%s->%s", from.ns.Name, to.ns.Name)
				if err := traffic.TCPEcho(from.ns, netip.AddrPortFrom(to.spec.IP, 8080), []byte(strings.Repeat("x", 100000))); err != nil {
					errs <- fmt.Errorf("tcp %s: %w", name, err)
				}
				if err := traffic.UDPEcho(from.ns, netip.AddrPortFrom(to.spec.IP, 8081), []byte("ping")); err != nil {
					errs <- fmt.Errorf("udp %s: %w", name, err)
				}
				if err := traffic.Ping(from.ns, to.spec.IP, 2); err != nil {
					errs <- fmt.Errorf("icmp %s: %w", name, err)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Acceptance: three pods on one node reach each other over TCP, UDP and ICMP.
func TestSameNodePodsReachEachOther(t *testing.T) {
	t.Parallel()
	n, pods := threePods(t)
	before := n.counter(t, maps.ReasonForwardLocal, maps.DirFromPod)
	allPairs(t, pods)
	if n.counter(t, maps.ReasonForwardLocal, maps.DirFromPod) == before {
		t.Fatal("no packet was counted as forwarded by BPF")
	}
}

// Acceptance: with forwarding off and FORWARD dropping, pods still talk: BPF bypasses the stack.
func TestSameNodeBypassesHostStack(t *testing.T) {
	t.Parallel()
	n, pods := threePods(t)
	n.ns.Sysctl(t, "ipv4/ip_forward", "0")
	n.ns.Run(t, "iptables", "-w", "-P", "FORWARD", "DROP")
	n.ns.Run(t, "iptables", "-w", "-A", "FORWARD", "-j", "DROP")
	before := n.counter(t, maps.ReasonForwardLocal, maps.DirFromPod)
	const pings = 5
	if err := traffic.Ping(pods[0].ns, pods[1].spec.IP, pings); err != nil {
		t.Fatal(err)
	}
	allPairs(t, pods)
	// Requests and replies of the pings alone are 2*pings forwards.
	if got := n.counter(t, maps.ReasonForwardLocal, maps.DirFromPod) - before; got < 2*pings {
		t.Fatalf("BPF forwarded %d packets, want at least %d", got, 2*pings)
	}
	if out := n.ns.Run(t, "iptables", "-w", "-L", "FORWARD", "-v", "-x", "-n"); !strings.Contains(out, "policy DROP 0 packets") {
		t.Fatalf("the FORWARD chain saw packets; the host stack was not bypassed:\n%s", out)
	}
}

// Acceptance: a pod sending from an address that is not its own reaches no one, and every
// such packet is counted as spoofed.
func TestSpoofedSourceIsDroppedAndCounted(t *testing.T) {
	t.Parallel()
	n, pods := threePods(t)
	a, b := pods[0], pods[1]
	spoofed := netip.MustParseAddr("10.210.0.99")
	link, err := a.ns.NL.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.ns.NL.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: spoofed.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	// b counts what arrives on a port nobody else uses.
	var rx *net.UDPConn
	b.ns.Do(t, func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: b.spec.IP.AsSlice(), Port: 9100})
		return err
	})
	defer rx.Close()
	before := n.counter(t, maps.ReasonSpoofedSource, maps.DirFromPod)
	const sent = 50
	a.ns.Do(t, func() error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: spoofed.AsSlice()}, &net.UDPAddr{IP: b.spec.IP.AsSlice(), Port: 9100})
		if err != nil {
			return err
		}
		defer c.Close()
		for i := 0; i < sent; i++ {
			if _, err := c.Write([]byte("spoof")); err != nil {
				return err
			}
		}
		return nil
	})
	if got := n.counter(t, maps.ReasonSpoofedSource, maps.DirFromPod) - before; got != sent {
		t.Fatalf("spoof counter rose by %d, sent %d", got, sent)
	}
	// The same socket path with the pod's own address does arrive, so the check above is
	// about the source, not a broken path.
	if err := traffic.UDPEcho(a.ns, netip.AddrPortFrom(b.spec.IP, 8081), []byte("own")); err != nil {
		t.Fatal(err)
	}
	if err := rx.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if n, _, err := rx.ReadFrom(make([]byte, 64)); err == nil {
		t.Fatalf("a spoofed packet (%d bytes) reached pod b", n)
	}
}

// Acceptance: the node reaches its pods and each pod reaches the node.
func TestNodeAndPodsReachEachOther(t *testing.T) {
	t.Parallel()
	n, pods := threePods(t)
	traffic.ServeTCP(t, n.ns, netip.AddrPortFrom(n.ip, 8080))
	for _, p := range pods {
		if err := traffic.Ping(n.ns, p.spec.IP, 2); err != nil {
			t.Error(err)
		}
		if err := traffic.TCPEcho(n.ns, netip.AddrPortFrom(p.spec.IP, 8080), []byte("node->pod")); err != nil {
			t.Error(err)
		}
		if err := traffic.Ping(p.ns, n.ip, 2); err != nil {
			t.Error(err)
		}
		if err := traffic.TCPEcho(p.ns, netip.AddrPortFrom(n.ip, 8080), []byte("pod->node")); err != nil {
			t.Error(err)
		}
	}
	if n.counter(t, maps.ReasonDeliver, maps.DirToPod) == 0 {
		t.Error("to_pod counted nothing for node->pod traffic")
	}
}

// Plumbing twice is harmless; unplumbing removes everything and may be repeated.
func TestPlumbIsIdempotentAndUnplumbRemovesAll(t *testing.T) {
	t.Parallel()
	n := newNode(t, "10.211.255.1")
	p := n.addPod(t, "pod-i", "10.211.0.1")
	again, err := podnet.Plumb(p.spec, n.dp)
	if err != nil {
		t.Fatalf("second plumb: %v", err)
	}
	if again.HostIfindex != p.res.HostIfindex || again.PodMAC.String() != p.res.PodMAC.String() {
		t.Fatalf("second plumb made a different interface: %+v vs %+v", again, p.res)
	}
	// The pod's hooks are one tc filter each way, this datapath's, however often it is plumbed.
	n.ns.Do(t, func() error {
		for _, h := range loader.PodHooks {
			if err := n.dp.CheckAttached(p.res.HostIf, h); err != nil {
				return err
			}
		}
		return nil
	})
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := n.ns.NL.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: p.res.HostIfindex}}, parent)
		if err != nil || len(fs) != 1 || fs[0].Type() != "bpf" {
			t.Fatalf("filters on %s (parent %x): %v, %v; want one bpf filter", p.res.HostIf, parent, fs, err)
		}
	}
	if err := traffic.Ping(n.ns, p.spec.IP, 1); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := podnet.Unplumb(p.spec, n.dp); err != nil {
			t.Fatalf("unplumb #%d: %v", i+1, err)
		}
	}
	if _, err := n.ns.NL.LinkByName(p.res.HostIf); err == nil {
		t.Error("host veth still there")
	}
	if _, err := p.ns.NL.LinkByName("eth0"); err == nil {
		t.Error("pod eth0 still there")
	}
	if _, ok, _ := n.dp.Endpoints().Lookup(p.spec.IP); ok {
		t.Error("endpoint entry still there")
	}
	routes, _ := n.ns.NL.RouteGet(p.spec.IP.AsSlice())
	for _, r := range routes {
		if r.LinkIndex == p.res.HostIfindex {
			t.Errorf("route to the pod still via the removed veth: %v", r)
		}
	}
	for _, h := range loader.PodHooks { // pods have no pins now; those of an older version's go too
		if _, err := os.Stat(loader.LinkPinPath(n.pinDir, p.res.HostIf, h)); err == nil {
			t.Errorf("link pin for %s still there", h)
		}
	}
}

// A plumbing error leaves nothing behind.
func TestFailedPlumbLeavesNothing(t *testing.T) {
	t.Parallel()
	n := newNode(t, "10.212.255.1")
	podNS := nstest.New(t, "pod-f")
	// The pod already has an eth0: plumbing must refuse and leave no veth on the node.
	podNS.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
	spec := podnet.Pod{NodeNetns: n.ns.Path, Netns: podNS.Path, ContainerID: "c1", IP: netip.MustParseAddr("10.212.0.1")}
	if _, err := podnet.Plumb(spec, n.dp); err == nil || !strings.Contains(err.Error(), "eth0") {
		t.Fatalf("plumb into a pod with eth0: %v", err)
	}
	if _, err := n.ns.NL.LinkByName(podnet.HostIfName("c1", "eth0")); err == nil {
		t.Fatal("a host veth was left behind")
	}
	if eps, _ := n.dp.Endpoints().List(); len(eps) != 0 {
		t.Fatalf("endpoint entries left behind: %v", eps)
	}
}
