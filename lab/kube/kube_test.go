package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/store/etcdserver"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// The underlay of the test: the control plane (and etcd) on .1, the node on .2.
var (
	cpIP   = netip.MustParseAddr("10.77.0.1")
	nodeIP = netip.MustParseAddr("10.77.0.2")
)

// echoPod runs the echo image on the node's own network (no CNI needed).
const echoPod = `apiVersion: v1
kind: Pod
metadata:
  name: echo
  namespace: default
spec:
  nodeName: node1
  hostNetwork: true
  terminationGracePeriodSeconds: 0
  containers:
  - name: echo
    image: ` + EchoImage + `
    imagePullPolicy: Never
    command: ["/ebpfnet", "lab", "serve", "--ports", "80/TCP,81/UDP", "--ready", "/tmp/ready"]
`

// loopbackConflist makes the node Ready without any pod network.
const loopbackConflist = `{"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]}`

func TestClusterRunsHostNetworkPod(t *testing.T) {
	nstest.RequireRoot(t)
	if err := CheckBinaries(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	underlay, nodeNS := nstest.New(t, "kcp"), nstest.New(t, "knode")
	link(t, underlay, "u0", cpIP, nodeNS, "n0", nodeIP)
	etcdURL := startEtcd(t, underlay.Path)

	base := t.TempDir()
	t.Cleanup(func() {
		if err := Teardown(base); err != nil {
			t.Error(err)
		}
	})
	dumpLogsOnFailure(t, base)
	images, err := BuildImages(filepath.Join(base, "images"), staticEbpfnet(t))
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	cp, err := StartControlPlane(ctx, ControlPlaneConfig{
		Dir: filepath.Join(base, "cp"), Netns: underlay.Path, EtcdURL: etcdURL, AdvertiseIP: cpIP,
		ServiceCIDR: "10.96.0.0/16", ClusterCIDR: "10.244.0.0/16",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("StartControlPlane took %v", time.Since(start).Round(time.Millisecond))

	nodeDir := filepath.Join(base, "node1")
	confDir := NodeHostPath(nodeDir, NodeCNIConf)
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "10-lo.conflist"), []byte(loopbackConflist), 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	node, err := StartNode(ctx, cp, NodeConfig{
		Name: "node1", Dir: nodeDir, Netns: nodeNS.Path, IP: nodeIP,
		ClusterDNS: netip.MustParseAddr("10.96.0.10"), CNIPlugins: []string{filepath.Join(CNIPluginsDir(), "loopback")}, Images: images,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("StartNode took %v", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := cp.WaitNodeReady(ctx, "node1"); err != nil {
		t.Fatal(err)
	}
	t.Logf("node Ready %v after StartNode returned", time.Since(start).Round(time.Millisecond))
	checkInternalIP(t, ctx, cp, "node1", nodeIP)

	start = time.Now()
	apply := cp.KubectlCommand(ctx, "apply", "-f", "-")
	apply.Stdin = strings.NewReader(echoPod)
	if out, err := apply.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, out)
	}
	waitPodRunning(t, ctx, cp, "default", "echo")
	t.Logf("pod Running %v after kubectl apply", time.Since(start).Round(time.Millisecond))
	waitEcho(t, ctx, nodeNS.Path, netip.AddrPortFrom(nodeIP, 80))
	t.Logf("pod answering TCP %v after kubectl apply", time.Since(start).Round(time.Millisecond))
	checkOOMScores(t, node)
	shims := shimSockets(t, node.Dir)

	start = time.Now()
	if err := Teardown(base); err != nil {
		t.Fatal(err)
	}
	t.Logf("Teardown took %v", time.Since(start).Round(time.Millisecond))
	checkNothingLeft(t, base, node.CgroupRoot, shims)
}

// dumpLogsOnFailure logs the end of every component's log when the test has failed, before
// Teardown removes them.
func dumpLogsOnFailure(t *testing.T, base string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		logs, _ := filepath.Glob(filepath.Join(base, "*", "*.log"))
		for _, l := range logs {
			t.Logf("%s:\n%s", l, strings.ReplaceAll(logTail(l, 15), " | ", "\n"))
		}
	})
}

// link joins a and b with a veth pair carrying aIP/24 and bIP/24.
func link(t *testing.T, a *nstest.NS, aName string, aIP netip.Addr, b *nstest.NS, bName string, bIP netip.Addr) {
	t.Helper()
	la, lb := nstest.Veth(t, a, aName, b, bName)
	for _, x := range []struct {
		ns   *nstest.NS
		link netlink.Link
		ip   netip.Addr
	}{{a, la, aIP}, {b, lb, bIP}} {
		addr, _ := netlink.ParseAddr(x.ip.String() + "/24")
		if err := x.ns.NL.AddrAdd(x.link, addr); err != nil {
			t.Fatalf("address %s: %v", x.ip, err)
		}
	}
}

// startEtcd runs an embedded etcd listening in the namespace at netns.
func startEtcd(t *testing.T, netns string) string {
	t.Helper()
	url := "http://" + net.JoinHostPort(cpIP.String(), "2379")
	var srv *etcdserver.Server
	err := namespace.Do(netns, func() (err error) {
		srv, err = etcdserver.Start(t.TempDir(), url, "http://"+net.JoinHostPort(cpIP.String(), "2380"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return url
}

// staticEbpfnet builds cmd/ebpfnet without cgo, as the echo image needs.
func staticEbpfnet(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ebpfnet")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/ebpfnet")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build ebpfnet: %v: %s", err, b)
	}
	return out
}

// getJSON GETs an API path as the admin and decodes it into v.
func getJSON(ctx context.Context, cp *ControlPlane, path string, v any) error {
	c, err := cp.client()
	if err != nil {
		return err
	}
	defer c.close()
	code, body, err := c.get(ctx, path)
	if err != nil {
		return err
	}
	if code != 200 {
		return fmt.Errorf("GET %s: %d %s", path, code, body)
	}
	return json.Unmarshal(body, v)
}

func checkInternalIP(t *testing.T, ctx context.Context, cp *ControlPlane, name string, want netip.Addr) {
	t.Helper()
	var node struct {
		Status struct {
			Addresses []struct{ Type, Address string }
		}
	}
	if err := getJSON(ctx, cp, "/api/v1/nodes/"+name, &node); err != nil {
		t.Fatal(err)
	}
	for _, a := range node.Status.Addresses {
		if a.Type == "InternalIP" && a.Address == want.String() {
			return
		}
	}
	t.Errorf("node %s addresses %+v lack InternalIP %s", name, node.Status.Addresses, want)
}

func waitPodRunning(t *testing.T, ctx context.Context, cp *ControlPlane, ns, name string) {
	t.Helper()
	err := waitFor(ctx, "pod "+ns+"/"+name+" to run", func() (bool, string, error) {
		var pod struct {
			Status struct {
				Phase             string
				ContainerStatuses []struct{ State map[string]any }
			}
		}
		if err := getJSON(ctx, cp, "/api/v1/namespaces/"+ns+"/pods/"+name, &pod); err != nil {
			return false, err.Error(), nil //nolint:nilerr // not made yet: waitFor tries again
		}
		return pod.Status.Phase == "Running", fmt.Sprintf("%+v", pod.Status), nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitEcho dials addr from inside netns until a line comes back.
func waitEcho(t *testing.T, ctx context.Context, netns string, addr netip.AddrPort) {
	t.Helper()
	err := waitFor(ctx, "echo on "+addr.String(), func() (bool, string, error) {
		var reply string
		err := namespace.Do(netns, func() error {
			c, err := net.DialTimeout("tcp", addr.String(), time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.WriteString(c, "ping\n"); err != nil {
				return err
			}
			b := make([]byte, 5)
			_, err = io.ReadFull(c, b)
			reply = string(b)
			return err
		})
		if err != nil {
			return false, err.Error(), nil //nolint:nilerr // not answering yet: waitFor tries again
		}
		return reply == "ping\n", "reply " + strconv.Quote(reply), nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// checkOOMScores checks oom_score_adj against what this machine allows, probed here apart from
// the code under test: containerd was started with a config that clamps the CRI's negative
// oom_score_adj exactly when the machine refuses one, and the pod's processes (sandbox
// included) hold a negative one (the sandbox's -998 from the kubelet) exactly when it allows it.
func checkOOMScores(t *testing.T, n *Node) {
	t.Helper()
	refused := negativeOOMScoreRefused(t)
	path, conf := containerdConfigInUse(t, n)
	if want := fmt.Sprintf("restrict_oom_score_adj = %v", refused); !strings.Contains(conf, want) {
		t.Errorf("containerd runs with %s, which lacks %q, on a machine where a negative oom_score_adj is refused: %v", path, want, refused)
	}
	pids := cgroupPids(n.CgroupRoot)
	if len(pids) < 2 {
		t.Fatalf("pod cgroups under %s hold %v, want the sandbox and the container", n.CgroupRoot, pids)
	}
	adjs := map[int]int{}
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
		if os.IsNotExist(err) {
			continue // exited meanwhile
		}
		if err != nil {
			t.Fatal(err)
		}
		if adjs[pid], err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			t.Fatalf("pid %d: oom_score_adj %q: %v", pid, b, err)
		}
	}
	negative := false
	for _, adj := range adjs {
		negative = negative || adj < 0
	}
	if negative == refused {
		t.Errorf("pod processes' oom_score_adj %v on a machine where a negative one is refused: %v", adjs, refused)
	}
	t.Logf("negative oom_score_adj refused: %v; containerd's config %s; pod processes' oom_score_adj %v", refused, path, adjs)
}

// negativeOOMScoreRefused asks the kernel whether this process may give a child a negative
// oom_score_adj.
func negativeOOMScoreRefused(t *testing.T) bool {
	t.Helper()
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = child.Process.Kill()
		_ = child.Wait() // killed: its status says nothing
	}()
	return os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", child.Process.Pid), []byte("-1"), 0) != nil
}

// containerdConfigInUse returns the path and text of the config file the node's running
// containerd was started with (its --config argument).
func containerdConfigInUse(t *testing.T, n *Node) (string, string) {
	t.Helper()
	for _, pid := range processesUnder(n.Dir) {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue // exited meanwhile
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if filepath.Base(args[0]) != "containerd" {
			continue
		}
		if i := slices.Index(args, "--config"); i >= 0 && i+1 < len(args) {
			b, err := os.ReadFile(args[i+1])
			if err != nil {
				t.Fatal(err)
			}
			return args[i+1], string(b)
		}
	}
	t.Fatalf("no containerd with a --config runs for node %s", n.Name)
	return "", ""
}

// checkNothingLeft asserts that no process, mount, cgroup, shim socket or file of base remains.
func checkNothingLeft(t *testing.T, base, cgroupRoot string, shims []string) {
	t.Helper()
	if pids := processesUnder(base); len(pids) > 0 {
		t.Errorf("processes left: %v", pids)
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mountinfo), "\n") {
		if strings.Contains(l, base) {
			t.Errorf("mount left: %s", l)
		}
	}
	if dirs := cgroupDirs(cgroupRoot); len(dirs) > 0 {
		t.Errorf("cgroups left: %v", dirs)
	}
	if _, err := os.Stat(base); !os.IsNotExist(err) {
		t.Errorf("%s still exists (%v)", base, err)
	}
	if _, err := os.Stat(devicePluginSocket); err == nil && len(kubeletsOnHost()) == 0 {
		t.Errorf("%s left behind", devicePluginSocket)
	}
	for _, s := range shims {
		if _, err := os.Stat(s); !os.IsNotExist(err) {
			t.Errorf("shim socket left: %s (%v)", s, err)
		}
	}
}

// shimSockets returns the sockets of the shims the node's containerd runs, as Teardown finds
// them (nodeState). They live in the host-wide /run/containerd/s beside those of other
// containerds, so the test names its own. Each must exist now: a check that they are gone
// later means nothing otherwise.
func shimSockets(t *testing.T, nodeDir string) []string {
	t.Helper()
	_, sockets := nodeState(nodeDir)
	if len(sockets) == 0 {
		t.Fatalf("no shim address under %s while a pod runs", nodeDir)
	}
	for _, s := range sockets {
		if _, err := os.Stat(s); err != nil {
			t.Fatalf("shim socket of a running pod: %v", err)
		}
	}
	return sockets
}

func TestBuildImagesRefusesDynamicBinary(t *testing.T) {
	_, err := BuildImages(t.TempDir(), "/usr/bin/ls") // Debian's ls is linked against libc
	if err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("BuildImages(dynamic binary) = %v, want an error naming CGO_ENABLED=0", err)
	}
}

func TestTeardownOfMissingDirIsHarmless(t *testing.T) {
	if err := Teardown(filepath.Join(t.TempDir(), "never-made")); err != nil {
		t.Fatal(err)
	}
}
