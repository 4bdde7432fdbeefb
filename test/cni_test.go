package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/types/create"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/netlinksafe"
	"github.com/ebpfnet/ebpfnet/netnsfile"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// twoNodes is a two-node lab with one echo pod per node.
func twoNodes(mode string) *lab.Spec {
	ports := []lab.Port{{Port: 80, Protocol: "TCP"}, {Port: 81, Protocol: "UDP"}}
	return &lab.Spec{Mode: mode, Nodes: []lab.NodeSpec{{Name: "node1"}, {Name: "node2"}},
		Namespaces: []lab.Namespace{{Name: "x"}},
		Pods: []lab.PodSpec{{Namespace: "x", Name: "a", Node: "node1", Ports: ports},
			{Namespace: "x", Name: "b", Node: "node2", Ports: ports}}}
}

func labOpts() lab.Options { return lab.Options{Exe: ebpfnetBin} }

// conflistDir writes the example conflist, pointed at socket, into a directory cnitool reads.
func conflistDir(t *testing.T, socket string) string {
	t.Helper()
	data, err := os.ReadFile("../examples/cni/10-ebpfnet.conflist")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	data = bytes.Replace(data, []byte(agentapi.DefaultSocket), []byte(socket), 1)
	if err := os.WriteFile(filepath.Join(dir, "10-ebpfnet.conflist"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// conflistAt is conflistDir with the conflist's cniVersion and network name replaced (libcni
// caches results per network name, so parallel tests keep apart by name).
func conflistAt(t *testing.T, socket, version, name string) string {
	t.Helper()
	dir := conflistDir(t, socket)
	file := filepath.Join(dir, "10-ebpfnet.conflist")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	conf["cniVersion"], conf["name"] = version, name
	if data, err = json.Marshal(conf); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// cnitool runs cnitool in the node's namespace, as a runtime on that node would.
func cnitool(t *testing.T, node *lab.Node, confDir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + node.Netns, "--", filepath.Join(binDir, "cnitool")}, args...)...)
	cmd.Env = append(os.Environ(), "NETCONFPATH="+confDir, "CNI_PATH="+binDir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// nodeState is what a node holds for pods: host veths, leases/endpoints, map entries, link pins.
type nodeState struct {
	veths, endpoints, mapEntries, pins int
}

func stateOf(t *testing.T, n *lab.Node) nodeState {
	t.Helper()
	var s nodeState
	nstest.InNetns(t, n.Netns, func(h *netlink.Handle) {
		links, err := netlinksafe.NewHandle(h).LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			// Pods' veths; not the agent's own devices (ebpfnet_host and its peer).
			if name := l.Attrs().Name; strings.HasPrefix(name, "eb") && !strings.HasPrefix(name, "ebpfnet_") && l.Type() == "veth" {
				s.veths++
			}
		}
	})
	var eps []json.RawMessage
	if err := agentapi.NewClient(n.Socket).Get(context.Background(), "/v1/endpoints?node="+n.Name, &eps); err != nil {
		t.Fatal(err)
	}
	s.endpoints = len(eps)
	out, code := ebpfnet(t, "--pin-dir", n.PinDir, "endpoint", "list", "-o", "json")
	if code != 0 {
		t.Fatal(out)
	}
	var entries []json.RawMessage
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatal(err)
	}
	s.mapEntries = len(entries)
	pins, _ := filepath.Glob(filepath.Join(n.PinDir, "links", "*-pod@eb*"))
	s.pins = len(pins)
	return s
}

// Acceptance: cnitool with the example conflist: ADD gives a fresh namespace an address and
// connectivity; CHECK passes; DEL twice succeeds; GC removes attachments not listed as valid.
func TestCNIToolLifecycle(t *testing.T) {
	t.Parallel()
	st := upLab(t, "cn", twoNodes("vxlan"))
	node1, _ := st.Node("node1")
	b, _ := st.Pod("x/b")
	conf := conflistDir(t, node1.Socket)
	before := stateOf(t, node1)

	fresh := nstest.New(t, "cni-fresh")
	out, err := cnitool(t, node1, conf, "add", "ebpfnet", fresh.Path)
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	var res types100.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("cnitool add printed %q (%v)", out, err)
	}
	if !node1.PodCIDR.Contains(mustAddr(t, res.IPs[0].Address.IP)) {
		t.Fatalf("address %s is not in node1's pod CIDR %s", res.IPs[0].Address.IP, node1.PodCIDR)
	}
	// node2 learns of the new pod through the store: the reply finds its way once it has.
	eventually(t, 20*time.Second, "the new pod reaches x/b on node2", func() (bool, string) {
		err := labProbe(fresh.Path, b, 80, "TCP")
		return err == nil, fmt.Sprint(err)
	})
	if out, err := cnitool(t, node1, conf, "check", "ebpfnet", fresh.Path); err != nil {
		t.Fatalf("cnitool check: %v\n%s", err, out)
	}
	for i := 0; i < 2; i++ {
		if out, err := cnitool(t, node1, conf, "del", "ebpfnet", fresh.Path); err != nil {
			t.Fatalf("cnitool del #%d: %v\n%s", i+1, err, out)
		}
	}
	if got := stateOf(t, node1); got != before {
		t.Fatalf("after DEL node1 holds %+v, before ADD %+v", got, before)
	}

	// GC: of two attachments, the one listed as valid stays and the other goes. GC exists from
	// CNI 1.1.0 on; the example conflist is at 1.0.0 (containerd 1.6 takes no 1.1.0 results).
	conf = conflistAt(t, node1.Socket, "1.1.0", "ebpfnet")
	keep, drop := nstest.New(t, "cni-keep"), nstest.New(t, "cni-drop")
	for _, ns := range []*nstest.NS{keep, drop} {
		if out, err := cnitool(t, node1, conf, "add", "ebpfnet", ns.Path); err != nil {
			t.Fatalf("cnitool add: %v\n%s", err, out)
		}
	}
	a, _ := st.Pod("x/a")
	gc(t, node1, conf, []string{a.ContainerID, cnitoolContainerID(keep.Path)})
	if got := stateOf(t, node1); got.endpoints != before.endpoints+1 || got.veths != before.veths+1 {
		t.Fatalf("after GC keeping one: %+v, want one attachment more than %+v", got, before)
	}
	if out, err := cnitool(t, node1, conf, "check", "ebpfnet", keep.Path); err != nil {
		t.Fatalf("the attachment GC was told to keep fails CHECK: %v\n%s", err, out)
	}
	// cnitool's own gc lists nothing as valid: every attachment of node1 goes.
	if out, err := cnitool(t, node1, conf, "gc", "ebpfnet", keep.Path); err != nil {
		t.Fatalf("cnitool gc: %v\n%s", err, out)
	}
	if got := stateOf(t, node1); got != (nodeState{}) {
		t.Fatalf("after cnitool gc node1 still holds %+v", got)
	}
}

// gc calls the plugin's GC through libcni, as a runtime does, with the given valid containers.
func gc(t *testing.T, node *lab.Node, confDir string, valid []string) {
	t.Helper()
	conf, err := libcni.LoadNetworkConf(confDir, "ebpfnet")
	if err != nil {
		t.Fatal(err)
	}
	var atts []types.GCAttachment
	for _, id := range valid {
		atts = append(atts, types.GCAttachment{ContainerID: id, IfName: "eth0"})
	}
	nstest.InNetns(t, node.Netns, func(*netlink.Handle) {
		cni := libcni.NewCNIConfig([]string{binDir}, nil)
		if err := cni.GCNetworkList(context.Background(), conf, &libcni.GCArgs{ValidAttachments: atts}); err != nil {
			t.Fatalf("GC: %v", err)
		}
	})
}

// hiddenNetns makes a network namespace that no path names: only the returned file holds it.
// Path is how this process reaches it (/proc/PID/fd/N).
func hiddenNetns(t *testing.T) (f *os.File, path string) {
	t.Helper()
	nstest.RequireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // stays in the new namespace: the runtime retires this thread
		t.Fatalf("leave the new namespace: %v", err)
	}
	f = os.NewFile(uintptr(h), "hidden-netns")
	t.Cleanup(func() { f.Close() })
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatal(err)
	}
	return f, fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd())
}

// runtimeNetns is a pod namespace as a runtime in its own mount namespace holds it: bound at
// Path only there. Here, as in the agent's mount namespace, Path is an empty file.
type runtimeNetns struct {
	Path string // e.g. /var/run/netns/cni-1a2b3c
	src  string // this process's way to the namespace
}

func newRuntimeNetns(t *testing.T, src string) *runtimeNetns {
	t.Helper()
	path := filepath.Join(namespace.Dir, "cni-"+nstest.Suffix(8))
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(path) })
	return &runtimeNetns{Path: path, src: src}
}

// cnitool runs cnitool on node in a private mount namespace where the pod's namespace is
// bound at r.Path, as a runtime in its own mount namespace runs the plugin.
func (r *runtimeNetns) cnitool(t *testing.T, node *lab.Node, confDir string, args ...string) (string, error) {
	t.Helper()
	script := `mount --bind "$1" "$2" && shift 2 && exec "$@"`
	argv := append([]string{"--net=" + node.Netns, "--", "unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", script, "sh", r.src, r.Path, filepath.Join(binDir, "cnitool")}, args...)
	cmd := exec.Command("nsenter", argv...)
	cmd.Env = append(os.Environ(), "NETCONFPATH="+confDir, "CNI_PATH="+binDir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Acceptance (issue 10): the agent works without seeing the runtime's netns bind mounts. The
// plugin runs in a mount namespace of its own where the pod's namespace is bound; where the
// agent runs the same path is an empty file (a mount that did not propagate). ADD, traffic,
// CHECK and DEL all work, DEL also once the namespace is gone, and nothing is left.
func TestCNIAgentDoesNotSeeRuntimeMounts(t *testing.T) {
	t.Parallel()
	st := upLab(t, "cm", twoNodes("vxlan"))
	node1, _ := st.Node("node1")
	b, _ := st.Pod("x/b")
	conf := conflistAt(t, node1.Socket, "1.0.0", "ebpfnet-mnt")
	before := stateOf(t, node1)
	podNs, podPath := hiddenNetns(t)
	rt := newRuntimeNetns(t, podPath)
	if f, err := netnsfile.Open(rt.Path); err == nil {
		f.Close()
		t.Fatalf("%s is a network namespace in the agent's mount namespace: the test proves nothing", rt.Path)
	}

	out, err := rt.cnitool(t, node1, conf, "add", "ebpfnet-mnt", rt.Path)
	if err != nil {
		t.Fatalf("ADD: %v\n%s", err, out)
	}
	var res types100.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("ADD printed %q (%v)", out, err)
	}
	if !node1.PodCIDR.Contains(mustAddr(t, res.IPs[0].Address.IP)) {
		t.Fatalf("address %s is not in node1's pod CIDR %s", res.IPs[0].Address.IP, node1.PodCIDR)
	}
	// node2 learns of the pod through the store: the reply finds its way once it has.
	eventually(t, 20*time.Second, "the pod reaches x/b on node2", func() (bool, string) {
		err := labProbe(podPath, b, 80, "TCP")
		return err == nil, fmt.Sprint(err)
	})
	if out, err := rt.cnitool(t, node1, conf, "check", "ebpfnet-mnt", rt.Path); err != nil {
		t.Fatalf("CHECK: %v\n%s", err, out)
	}
	if out, err := rt.cnitool(t, node1, conf, "del", "ebpfnet-mnt", rt.Path); err != nil {
		t.Fatalf("DEL: %v\n%s", err, out)
	}
	if got := stateOf(t, node1); got != before {
		t.Fatalf("after DEL node1 holds %+v, before ADD %+v", got, before)
	}
	nl, err := netlink.NewHandleAt(netns.NsHandle(podNs.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	if _, err := nl.LinkByName("eth0"); err == nil {
		t.Fatal("DEL left eth0 in the pod")
	}
	// The runtime's mount is gone (an empty file stays) and then the file too: DEL succeeds.
	for _, gone := range []string{"unmounted", "removed"} {
		if gone == "removed" {
			os.Remove(rt.Path)
		}
		if out, err := cnitool(t, node1, conf, "del", "ebpfnet-mnt", rt.Path); err != nil {
			t.Fatalf("DEL with the namespace %s: %v\n%s", gone, err, out)
		}
	}
}

// Acceptance (issue 10): with the conflist at each supported cniVersion, ADD answers in that
// version and shape, CHECK/STATUS/GC are refused with code 1 where that version lacks them,
// and ADD/CHECK/DEL leave nothing.
func TestCNIResultVersions(t *testing.T) {
	t.Parallel()
	st := upLab(t, "cv", twoNodes("vxlan"))
	node1, _ := st.Node("node1")
	b, _ := st.Pod("x/b")
	before := stateOf(t, node1)
	t.Run("versions", func(t *testing.T) {
		for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
			t.Run(v, func(t *testing.T) {
				t.Parallel()
				cniVersionLifecycle(t, node1, b, v)
			})
		}
	})
	if got := stateOf(t, node1); got != before {
		t.Fatalf("after every version's DEL node1 holds %+v, before %+v", got, before)
	}
}

func cniVersionLifecycle(t *testing.T, node *lab.Node, peer *lab.Pod, v string) {
	name := "ebpfnet-v" + strings.ReplaceAll(v, ".", "")
	conf := conflistAt(t, node.Socket, v, name)
	pod := nstest.New(t, "cni-v")
	out, err := cnitool(t, node, conf, "add", name, pod.Path)
	if err != nil {
		t.Fatalf("ADD: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := cnitool(t, node, conf, "del", name, pod.Path); err != nil {
			t.Errorf("DEL: %v\n%s", err, out)
		}
	})
	checkResult(t, v, out, pod.Path)
	// The other node learns of the pod through the store: on a loaded machine a moment later.
	eventually(t, 20*time.Second, "the pod reaches x/b", func() (bool, string) {
		err := labProbe(pod.Path, peer, 80, "TCP")
		return err == nil, fmt.Sprint(err)
	})
	old := v == "0.3.1"
	out, err = cnitool(t, node, conf, "check", name, pod.Path)
	if (err != nil) != old || (old && !strings.Contains(out, "does not support the CHECK command")) {
		t.Fatalf("CHECK at %s: %v\n%s", v, err, out)
	}
	// The plugin itself refuses, with code 1, what the version does not have.
	stdin := fmt.Sprintf(`{"cniVersion": %q, "name": %q, "type": "ebpfnet-cni", "socket": %q}`, v, name, node.Socket)
	refused := map[string]bool{"CHECK": old, "STATUS": v != "1.1.0", "GC": v != "1.1.0"}
	for _, cmd := range []string{"CHECK", "STATUS", "GC"} {
		if cmd == "GC" && !refused[cmd] {
			continue // a real GC here would remove the parallel versions' pods
		}
		out, exit := plugin(t, node, cniEnv(cmd, cnitoolContainerID(pod.Path), pod.Path), stdin)
		var e struct {
			Code int `json:"code"`
		}
		if exit != 0 {
			_ = json.Unmarshal([]byte(out), &e) // not the spec's error: e stays empty and the checks below fail
		}
		if (exit != 0) != refused[cmd] || refused[cmd] && e.Code != 1 {
			t.Errorf("%s at %s: exit %d %s; want refused %v with code 1", cmd, v, exit, out, refused[cmd])
		}
	}
	if out, err := cnitool(t, node, conf, "del", name, pod.Path); err != nil {
		t.Fatalf("DEL: %v\n%s", err, out)
	}
	if _, err := pod.NL.LinkByName("eth0"); err == nil {
		t.Fatal("DEL left eth0 in the pod")
	}
}

// checkResult checks that ADD's printed result is a result of version v, in its shape.
func checkResult(t *testing.T, v, out, netnsPath string) {
	t.Helper()
	var raw struct {
		CNIVersion string           `json:"cniVersion"`
		Interfaces []map[string]any `json:"interfaces"`
		IPs        []map[string]any `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("ADD printed %q: %v", out, err)
	}
	if raw.CNIVersion != v || len(raw.Interfaces) != 2 || len(raw.IPs) != 1 {
		t.Fatalf("ADD at %s printed %s", v, out)
	}
	_, mtu := raw.Interfaces[1]["mtu"]
	if mtu != (v == "1.1.0") {
		t.Fatalf("ADD at %s: interfaces[1].mtu present %v (a 1.1.0 field)\n%s", v, mtu, out)
	}
	res, err := create.Create(v, []byte(out))
	if err != nil {
		t.Fatalf("ADD's result does not parse as %s: %v\n%s", v, err, out)
	}
	switch r := res.(type) {
	case *types040.Result:
		if !strings.HasPrefix(v, "0.") || r.IPs[0].Version != "4" || *r.IPs[0].Interface != 1 || r.Interfaces[1].Sandbox != netnsPath {
			t.Fatalf("ADD at %s gave %T %s", v, res, out)
		}
	case *types100.Result:
		if strings.HasPrefix(v, "0.") || *r.IPs[0].Interface != 1 || r.Interfaces[1].Sandbox != netnsPath {
			t.Fatalf("ADD at %s gave %T %s", v, res, out)
		}
	default:
		t.Fatalf("ADD at %s gave a %T", v, res)
	}
}

// agentFDs counts the descriptors an agent holds, and of them the namespaces (nsfs files).
func agentFDs(pid int) (all, namespaces int, err error) {
	var nsfs unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &nsfs); err != nil {
		return 0, 0, err
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range ents {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(dir, e.Name()), &st) == nil && st.Dev == nsfs.Dev {
			namespaces++
		}
	}
	return len(ents), namespaces, nil
}

// Acceptance (issue 10): the namespace descriptors passed for ADD, CHECK and DEL are all
// closed: 50 cycles leave the agent with no more descriptors than before.
func TestCNIAgentLeaksNoDescriptors(t *testing.T) {
	t.Parallel()
	st := upLab(t, "cf", &lab.Spec{Mode: "vxlan", Nodes: []lab.NodeSpec{{Name: "node1"}}})
	node1, _ := st.Node("node1")
	pod := nstest.New(t, "cni-fd")
	conf := cniConf(node1.Socket, "")
	cycle := func(i int) {
		id := fmt.Sprintf("fd-%d", i)
		for _, cmd := range []string{"ADD", "CHECK", "DEL"} {
			netnsPath := pod.Path
			if cmd == "DEL" && i%5 == 0 {
				netnsPath = "" // DEL without a namespace: nothing is passed
			}
			if out, code := plugin(t, node1, cniEnv(cmd, id, netnsPath), conf); code != 0 {
				t.Fatalf("%s #%d: %s", cmd, i, out)
			}
		}
	}
	cycle(0) // the first requests open what the agent keeps (netlink, program fds)
	var all, nsFDs int
	eventually(t, 10*time.Second, "agent descriptors to settle", func() (bool, string) {
		a, n, err := agentFDs(node1.AgentPID)
		settled := err == nil && a == all && n == nsFDs
		all, nsFDs = a, n
		return settled, fmt.Sprintf("%d descriptors, %d namespaces (%v)", a, n, err)
	})
	for i := 1; i <= 50; i++ {
		cycle(i)
	}
	eventually(t, 10*time.Second, "the agent to hold no more descriptors than before 50 ADD/CHECK/DEL", func() (bool, string) {
		a, n, err := agentFDs(node1.AgentPID)
		return err == nil && a <= all && n <= nsFDs, fmt.Sprintf("%d descriptors (%d before), %d namespaces (%d before) %v", a, all, n, nsFDs, err)
	})
}
