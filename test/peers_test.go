package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// Acceptance (issue 25, the peer in the lab): `lab up --cni cilium` brings up the standard
// kubernetes lab with Cilium, built from source, in ebpfnet's place: every pod Running and
// Ready with the address Cilium's IPAM gave it (a CiliumEndpoint of each), every pair
// reachable, the shared NetworkPolicy cases played through kubectl hold, and `lab down` leaves
// nothing. The peers benchmark measures both CNIs on this lab.
func TestCiliumLab(t *testing.T) {
	t.Parallel()
	nstest.RequireRoot(t)
	name := "kci" + nstest.Suffix(4)
	downed := false
	t.Cleanup(func() {
		if !downed {
			downLab(t, name)
		}
	})
	if out, code := ebpfnet(t, "lab", "up", "--name", name, "--cni", "cilium", "-f", writeSpec(t, standardLab(t, "vxlan"))); code != 0 {
		t.Fatalf("lab up --cni cilium: exit %d: %s", code, out)
	}
	st, err := lab.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("pods are Cilium's", func(t *testing.T) { checkCiliumPods(t, st) })
	t.Run("all pairs reachable", func(t *testing.T) { checkAllPairs(t, st) })
	t.Run("sockets of no lab are not Cilium's", func(t *testing.T) { checkOutsideSocketsUntouched(t, st) })
	if t.Failed() {
		return
	}
	t.Run("networkpolicy cases through kubectl", func(t *testing.T) { playCasesOnKube(t, st) })
	downed = true
	downKubeLabLeavingNothing(t, st)
}

// checkCiliumPods: every lab pod is Running and Ready on its node with the address the lab
// recorded, Cilium holds an endpoint with that address for it, and no ebpfnet agent runs or
// pins anything on any node.
func checkCiliumPods(t *testing.T, st *lab.State) {
	var pods struct {
		Items []struct {
			Metadata struct{ Namespace, Name string }
			Spec     struct{ NodeName string }
			Status   struct {
				Phase, PodIP string
				Conditions   []struct{ Type, Status string }
			}
		}
	}
	if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "pods", "-A", "-o", "json")), &pods); err != nil {
		t.Fatal(err)
	}
	var endpoints struct {
		Items []struct {
			Metadata struct{ Namespace, Name string }
			Status   struct {
				State      string
				Networking struct{ Addressing []struct{ IPv4 string } }
			}
		}
	}
	if err := json.Unmarshal([]byte(kubectl(t, st, "", "get", "ciliumendpoints", "-A", "-o", "json")), &endpoints); err != nil {
		t.Fatal(err)
	}
	ciliumIP := map[string]string{}
	for _, e := range endpoints.Items {
		if len(e.Status.Networking.Addressing) > 0 && e.Status.State == "ready" {
			ciliumIP[e.Metadata.Namespace+"/"+e.Metadata.Name] = e.Status.Networking.Addressing[0].IPv4
		}
	}
	seen := 0
	for _, it := range pods.Items {
		key := it.Metadata.Namespace + "/" + it.Metadata.Name
		p, err := st.Pod(key)
		if err != nil {
			continue
		}
		seen++
		ready := false
		for _, c := range it.Status.Conditions {
			ready = ready || c.Type == "Ready" && c.Status == "True"
		}
		if it.Status.Phase != "Running" || !ready || it.Spec.NodeName != p.Node || it.Status.PodIP != p.IP.String() {
			t.Errorf("%s: phase %s ready %v node %s ip %s; want Running and Ready on %s with %s", key, it.Status.Phase, ready,
				it.Spec.NodeName, it.Status.PodIP, p.Node, p.IP)
		}
		if ciliumIP[key] != p.IP.String() {
			t.Errorf("%s: Cilium's ready endpoint has address %q, the pod %s", key, ciliumIP[key], p.IP)
		}
	}
	if seen != len(st.Pods) {
		t.Errorf("the API server holds %d of the lab's %d pods", seen, len(st.Pods))
	}
	for _, n := range st.Nodes {
		if pids := agentProcesses(t, n); len(pids) > 0 {
			t.Errorf("%s runs ebpfnet agents %v in a Cilium lab", n.Name, pids)
		}
		bpffs := st.NodeHostPath(n.Name, kube.NodeBPFFS)
		if _, err := os.Stat(filepath.Join(bpffs, "ebpfnet")); !os.IsNotExist(err) {
			t.Errorf("%s: ebpfnet pins in a Cilium lab (%v)", n.Name, err)
		}
		if _, err := os.Stat(filepath.Join(bpffs, "tc", "globals")); err != nil {
			t.Errorf("%s: Cilium pinned nothing in the node's bpffs: %v", n.Name, err)
		}
	}
}

// checkAllPairs: every pod reaches every other on port 80, TCP and UDP.
func checkAllPairs(t *testing.T, st *lab.State) {
	for _, proto := range []string{"TCP", "UDP"} {
		m, err := st.Matrix(80, proto)
		if err != nil {
			t.Fatal(err)
		}
		for _, from := range m.Keys() {
			for _, to := range m.Keys() {
				if from == to || m[from][to] {
					continue
				}
				src, err := st.Pod(from)
				if err != nil {
					t.Fatal(err)
				}
				dst, err := st.Pod(to)
				if err != nil {
					t.Fatal(err)
				}
				err = probeAgain(src.Netns, netip.AddrPortFrom(dst.IP, 80), proto)
				t.Logf("%s %s->%s asked again: %v", proto, from, to, err)
				if err != nil {
					t.Errorf("%s %s->%s unreachable: %v\n%s", proto, from, to, err, m)
				}
			}
		}
	}
}

// checkOutsideSocketsUntouched: Cilium attaches its socket programs to the cgroup root, which
// every process on this machine shares. A socket in a namespace of no lab that connects to
// what the lab serves as kube-dns's cluster IP must still reach its own listener there, not be
// sent to the lab's DNS pods (with Cilium's socket LB for every namespace, it was: "network is
// unreachable", and ebpfnet's labs beside it had their Services answered by Cilium's).
func checkOutsideSocketsUntouched(t *testing.T, st *lab.State) {
	vip, err := netip.ParseAddr(strings.TrimSpace(kubectl(t, st, "", "get", "service", "kube-dns", "-n", "kube-system", "-o", "jsonpath={.spec.clusterIP}")))
	if err != nil {
		t.Fatalf("kube-dns's cluster IP: %v", err)
	}
	name := "sock" + nstest.Suffix(4)
	path, err := namespace.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := namespace.Delete(name); err != nil {
			t.Error(err)
		}
	})
	target := netip.AddrPortFrom(vip, 53)
	err = namespace.Do(path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		// The address is this namespace's own, as 127.0.0.0/8 is: its listener takes it.
		route := &netlink.Route{Type: unix.RTN_LOCAL, Table: unix.RT_TABLE_LOCAL, Scope: netlink.SCOPE_HOST,
			LinkIndex: lo.Attrs().Index, Dst: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := netlink.RouteAdd(route); err != nil {
			return fmt.Errorf("route %s to lo: %w", vip, err)
		}
		ln, err := net.Listen("tcp", target.String())
		if err != nil {
			return err
		}
		defer ln.Close()
		go lab.EchoTCP(ln)
		c, err := net.DialTimeout("tcp", target.String(), 5*time.Second)
		if err != nil {
			return fmt.Errorf("connect to %s from a namespace of no lab: %w", target, err)
		}
		defer c.Close()
		if got := c.RemoteAddr().String(); got != target.String() {
			return fmt.Errorf("connected to %s, want %s (the namespace's own listener)", got, target)
		}
		if _, err := c.Write([]byte(lab.WhoRequest)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		answer := make([]byte, 128)
		n, err := io.ReadAtLeast(c, answer, 1)
		if err != nil {
			return err
		}
		if server, _, _ := strings.Cut(string(answer[:n]), " "); server != vip.String() {
			return fmt.Errorf("answered by %q, want this namespace's listener at %s", answer[:n], vip)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
