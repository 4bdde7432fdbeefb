package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/store"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// labEtcd is a client of a lab's etcd, dialled from the underlay namespace.
func labEtcd(t *testing.T, st *lab.State) *clientv3.Client {
	t.Helper()
	dial := func(ctx context.Context, addr string) (c net.Conn, err error) {
		err = namespace.Do(st.Underlay, func() error {
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{st.EtcdURL}, DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// run runs a command and fails the test with its output if it fails.
func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// Acceptance (issue 19): the kernel's own VXLAN, in a namespace on the lab's underlay that is
// no ebpfnet node, talks to a pod on an ebpfnet node whose VXLAN is BPF's. The kernel device
// is a collect-metadata one (it takes any VNI, as ebpfnet's carry identities) whose inner MAC
// is the tunnel MAC ebpfnet sends to (0e:00 and its IPv4 address); it sends with VNI 42.
// ebpfnet knows it as a node of the store with pod CIDR 10.99.0.0/24.
func TestVXLANInteropWithTheKernel(t *testing.T) {
	t.Parallel()
	st := upLab(t, "vi", twoNodes("vxlan"))
	node1, _ := st.Node("node1")
	pod, _ := st.Pod("x/a")
	kvIP := netip.MustParseAddr("10.250.0.77") // on br0 (10.250.0.0/24), which the lab leaves free
	kernelNet := netip.MustParsePrefix("10.99.0.0/24")
	kernelHost := netip.MustParseAddr("10.99.0.1")
	tunnelMAC := func(ip netip.Addr) string {
		b := ip.As4()
		return fmt.Sprintf("0e:00:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
	}

	// The kernel's side: a namespace on br0 with a VXLAN device on ebpfnet's port.
	kv := nstest.New(t, "kvx")
	port := "kvp" + nstest.Suffix(4)
	run(t, "ip", "link", "add", port, "netns", filepath.Base(st.Underlay), "type", "veth", "peer", "name", "eth0", "netns", kv.Name)
	run(t, "ip", "-n", filepath.Base(st.Underlay), "link", "set", port, "master", "br0", "up")
	in := func(args ...string) { run(t, "ip", append([]string{"-n", kv.Name}, args...)...) }
	in("addr", "add", kvIP.String()+"/24", "dev", "eth0")
	in("link", "set", "eth0", "up")
	in("link", "add", "kvx0", "address", tunnelMAC(kvIP), "mtu", "1450", "type", "vxlan", "external",
		"dstport", fmt.Sprint(st.VXLANPort), "nolearning")
	in("link", "set", "kvx0", "up")
	in("addr", "add", kernelHost.String()+"/24", "dev", "kvx0")
	// To node1's pods: VNI 42 to node1's address, through a gateway whose MAC is node1's
	// tunnel MAC.
	in("neigh", "add", "10.99.0.254", "lladdr", tunnelMAC(node1.IP), "dev", "kvx0", "nud", "permanent")
	in("route", "add", node1.PodCIDR.String(), "encap", "ip", "id", "42", "dst", node1.IP.String(),
		"via", "10.99.0.254", "dev", "kvx0", "onlink", "src", kernelHost.String())

	// The ebpfnet side: a node record, as an agent would write it.
	etcd := labEtcd(t, st)
	rec, _ := json.Marshal(store.Node{Name: "kernel-vxlan", IP: kvIP, PodCIDR: kernelNet})
	key := store.Prefix + "nodes/kernel-vxlan"
	if _, err := etcd.Put(context.Background(), key, string(rec)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = etcd.Delete(context.Background(), key) })

	// A TCP echo from the kernel's namespace to the pod, until node1 has the route back.
	echo := func() (string, error) {
		var c net.Conn
		err := namespace.Do(kv.Path, func() (err error) {
			d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: kernelHost.AsSlice()}}
			c, err = d.Dial("tcp4", netip.AddrPortFrom(pod.IP, 80).String())
			return err
		})
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("over the kernel's vxlan")); err != nil {
			return "", err
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return "", err
		}
		b, err := io.ReadAll(c)
		return string(b), err
	}
	eventually(t, 30*time.Second, "an echo from the kernel's VXLAN namespace through node1's pod", func() (bool, string) {
		got, err := echo()
		return got == "over the kernel's vxlan", fmt.Sprintf("%q, %v", got, err)
	})
	// Both ways were VXLAN on the wire, and ebpfnet's carried the pod's identity.
	pcap := filepath.Join(t.TempDir(), "interop.pcap")
	want := []string{kvIP.String() + ".", "vni 42", kernelHost.String() + ".", pod.IP.String() + ".80 > " + kernelHost.String()}
	decoded := decodeCapture(t, node1.Netns, pcap, fmt.Sprintf("udp port %d", st.VXLANPort), func() {
		if got, err := echo(); got != "over the kernel's vxlan" {
			t.Errorf("echo under capture: %q, %v", got, err)
		}
	}, want, "-T", "vxlan")
	for _, w := range want {
		if !strings.Contains(decoded, w) {
			t.Fatalf("capture on node1 does not show %q:\n%s", w, decoded)
		}
	}
}
