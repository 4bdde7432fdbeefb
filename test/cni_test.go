package test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/test/nstest"
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
	data = bytes.Replace(data, []byte(agent.DefaultSocket), []byte(socket), 1)
	if err := os.WriteFile(filepath.Join(dir, "10-ebpfnet.conflist"), data, 0o644); err != nil {
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
		links, err := h.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, "eb") && l.Type() == "veth" {
				s.veths++
			}
		}
	})
	var eps []json.RawMessage
	if err := agent.NewClient(n.Socket).Get(context.Background(), "/v1/endpoints?node="+n.Name, &eps); err != nil {
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
	if err := labProbe(fresh.Path, b, 80, "TCP"); err != nil {
		t.Fatalf("the new pod does not reach x/b on node2: %v", err)
	}
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

	// GC: of two attachments, the one listed as valid stays and the other goes.
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
